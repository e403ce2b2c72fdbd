"""``perception``: camera frames in, world-model latents out.

Subscribes ``camera/image_raw`` (``sensor_msgs/Image``, sensor-data QoS, any encoding of
:data:`ami_ros.data.images.SUPPORTED_ENCODINGS`, padded rows, either byte order, any size),
centre-crops it to a square (parameter ``crop``), resizes it to the model's input size and
publishes the encoder's latent on ``ami/latent``: a ``32FC1`` image, rows = tokens, cols = latent
dims, with the header (stamp, frame_id) of the camera frame it came from.

A frame that cannot be decoded (unsupported encoding, 0x0 or absurd size, data shorter than
``step * height``) is dropped with a throttled error log and an ERROR on ``/diagnostics``; the node
runs on. Lifecycle: the model is loaded on configure; frames are encoded only while active.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ami_ros.data.images import ImageDecodeError, decode_image, resize_image
from ami_ros.nodes.common import RateMeter
from ami_ros.nodes.lifecycle import (LatencyStats, ModelNode, ModelNodeConfig, latency_values,
                                     latent_to_msg, rate_values, run_lifecycle_node)

IMAGE_TOPIC = 'camera/image_raw'
LATENT_TOPIC = 'ami/latent'
MAX_STAMP_LAG = 10.0
"""Frames stamped further from the node clock than this are on another clock (a camera's own
time base, sim time without use_sim_time): their stamp latency is not reported."""


@dataclass
class PerceptionConfig(ModelNodeConfig):
    """Parameters of the ``perception`` node."""

    crop: str = 'center'
    """How a non-square frame becomes the model's square input: center (crop the middle square,
    keeps the aspect ratio) or none (squash the whole frame)."""


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, C) image (a view, no copy)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


class PerceptionNode(ModelNode):
    """Encodes every camera frame into a latent (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('perception', PerceptionConfig, choices={'crop': ('center', 'none')},
                         **kwargs)
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.encode_latency, self.stamp_latency = LatencyStats(), LatencyStats()
        self.frames = self.encoded = self.bad_frames = 0
        self._pub = None

    def setup(self, config: PerceptionConfig) -> None:
        self._size = int(self.model.image_size)
        self._device = getattr(self.model, 'device', torch.device('cpu'))
        with torch.no_grad():  # the first call allocates and plans: not on the first real frame
            self.model.encode(torch.zeros((1, self._size, self._size, 3), dtype=torch.uint8,
                                          device=self._device))
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
            rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                               msg.data)
        except ImageDecodeError as e:
            self.bad_frames += 1
            self.dropped += 1
            return self.record_error('image', f'dropped a frame on {self._topic}: {e}')
        if self.params.config.crop == 'center':
            rgb = center_square(rgb)
        rgb = np.ascontiguousarray(resize_image(rgb, self._size))  # (S, S, 3) uint8
        with torch.no_grad():
            z = self.model.encode(torch.from_numpy(rgb[None]).to(self._device))  # (1, D)
        z = z.detach().cpu().numpy().reshape(1, -1)  # rows = tokens (1 global latent)
        if not np.all(np.isfinite(z)):
            self.dropped += 1
            return self.record_error('latent', 'the encoder returned NaN/inf for a frame: '
                                               'not published')
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
