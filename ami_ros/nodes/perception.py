"""``perception``: camera frames in, world-model latents out.

The perceive stage (:class:`ami_ros.agent.Perceiver`) on ROS topics. Subscribes
``camera/image_raw`` (``sensor_msgs/Image``, sensor-data QoS, any encoding of
:data:`ami_ros.data.images.SUPPORTED_ENCODINGS`, padded rows, either byte order, any size),
prepares it as the training data was prepared (:func:`ami_ros.data.images.prepare_image`: the
whole frame resized to the model's square input) and publishes the encoder's latent on
``ami/latent``: a ``32FC1`` image, one row, with the header (stamp, frame_id) of the camera
frame it came from.

A frame that cannot be decoded (unsupported encoding, 0x0 or absurd size, data shorter than
``step * height``) is dropped with a throttled error log and an ERROR on ``/diagnostics``; the node
runs on. Lifecycle: the model is loaded on configure; frames are encoded only while active.
"""
from __future__ import annotations

import time

import numpy as np
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ami_ros.agent import Perceiver
from ami_ros.config import PerceptionConfig
from ami_ros.data.images import ImageDecodeError
from ami_ros.nodes.common import RateMeter
from ami_ros.nodes.lifecycle import (LatencyStats, ModelNode, latency_values,
                                     latent_to_msg, rate_values, run_lifecycle_node)

IMAGE_TOPIC = 'camera/image_raw'
LATENT_TOPIC = 'ami/latent'
MAX_STAMP_LAG = 10.0
"""Frames stamped further from the node clock than this are on another clock (a camera's own
time base, sim time without use_sim_time): their stamp latency is not reported."""


class PerceptionNode(ModelNode):
    """Encodes every camera frame into a latent (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('perception', PerceptionConfig, **kwargs)
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.encode_latency, self.stamp_latency = LatencyStats(), LatencyStats()
        self.frames = self.encoded = self.bad_frames = 0
        self._pub = None

    def setup(self, config: PerceptionConfig) -> None:
        self.perceiver = Perceiver(self.model)
        self._size = self.perceiver.image_size
        # the first call allocates and plans: not on the first real frame
        self.perceiver.encode(np.zeros((self._size, self._size, 3), np.uint8))
        self._pub = self.lifecycle_publisher(Image, LATENT_TOPIC)
        self.subscription(Image, IMAGE_TOPIC, self._on_image, qos_profile_sensor_data)
        self._topic = self.resolve_topic_name(IMAGE_TOPIC)

    def teardown(self) -> None:
        self._pub = None

    def _on_image(self, msg: Image) -> None:
        self.frames += 1
        self.in_rate.tick()
        if not self.active:
            self.dropped += 1
            return
        t0 = time.perf_counter()
        try:
            rgb = self.perceiver.decode(msg.encoding, msg.height, msg.width, msg.step,
                                        msg.is_bigendian, msg.data)
        except ImageDecodeError as e:
            self.bad_frames += 1
            self.dropped += 1
            return self.record_error('image', f'dropped a frame on {self._topic}: {e}')
        z = self.perceiver.encode(rgb)  # (D,) or None
        if z is None:
            self.dropped += 1
            return self.record_error('latent', 'the encoder returned NaN/inf for a frame: '
                                               'not published')
        z = z.cpu().numpy().reshape(1, -1)  # one row: the state of this frame
        self._pub.publish(latent_to_msg(z, msg.header.stamp, msg.header.frame_id))
        self.encoded += 1
        self.out_rate.tick()
        self.encode_latency.add(time.perf_counter() - t0)
        age = self.stamp_age(msg.header.stamp)
        if 0.0 <= age < MAX_STAMP_LAG:
            self.stamp_latency.add(age)

    def status(self) -> tuple[str, str, dict]:
        values = {**rate_values('input', self.in_rate), **rate_values('output', self.out_rate),
                  **latency_values('encode_latency', self.encode_latency),
                  **latency_values('stamp_latency', self.stamp_latency),
                  'frames': self.frames, 'encoded': self.encoded,
                  'bad_frames': self.bad_frames, 'model_image_size': self._size}
        if self.active and self.frames == 0:
            return 'warn', f'no frames on {self._topic} yet', values
        return 'ok', '', values


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(PerceptionNode, args, name='perception')


if __name__ == '__main__':
    raise SystemExit(main())
