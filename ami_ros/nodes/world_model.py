"""``world_model``: the belief over the model's state, what it says about the robot, and surprise.

The estimate stage (:class:`ami_ros.agent.Estimator`) on ROS topics. Subscribes ``ami/latent``
(from ``perception``), ``joint_states`` (put into the state of a model with proprioception, as
the agent does) and the commands actually sent (``joint_trajectory_controller/joint_trajectory``,
``forward_position_controller/commands``, ``cmd_vel``). Each latent is fused at its stamp with
the prediction from the model's last k beliefs under the commands in force; a timer at
``rate_hz`` (node clock: sim time under ``use_sim_time``) advances the belief to "now" with
predict-only steps when frames are missing; a late frame is fused at its stamp and rolled
forward again.

Publishes ``ami/belief`` (32FC1: the last k beliefs, one row each, oldest first - what the
planner rolls out from; the last row is the belief now; stamped with the belief's time,
frame_id = the camera frame's when a frame was just fused, empty after a predict-only step),
the probes' decoding of the belief - ``ami/estimate`` (``PoseArray``),
``ami/estimate/<name>_pose`` (``PoseStamped``) and ``ami/estimate/joint_states`` - and
``ami/surprise`` (``std_msgs/Float32``), with a WARN on ``/diagnostics`` while it is above
``surprise_threshold``.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from geometry_msgs.msg import PoseArray, PoseStamped, Twist
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from ami_ros.agent import Estimator, Perceiver
from ami_ros.config import WorldModelNodeConfig, joint_names_for
from ami_ros.nodes.common import RateMeter, seconds, time_msg
from ami_ros.nodes.lifecycle import (LatencyStats, ModelNode, latency_values, latent_to_msg,
                                     msg_to_latent, rate_values, run_lifecycle_node)
from ami_ros.nodes.messages import (FORWARD_TOPIC, TRAJECTORY_TOPIC, TWIST_TOPIC, estimate_msgs,
                                    joint_positions, trajectory_action, twist_action)

LATENT_TOPIC, BELIEF_TOPIC, ESTIMATE_TOPIC = 'ami/latent', 'ami/belief', 'ami/estimate'
COUNTED = {'init': 'resets', 'reset': 'resets', 'reset_stale': 'resets'}


class WorldModelNode(ModelNode):
    """The estimate stage as a node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('world_model', WorldModelNodeConfig, **kwargs)
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.latency = LatencyStats()
        self.counts = {k: 0 for k in ('latents', 'fused', 'late', 'gated', 'rejected_old',
                                      'rejected_nan', 'resets', 'surprising', 'commands')}
        self.estimator: Estimator | None = None

    def setup(self, config: WorldModelNodeConfig) -> None:
        self.joint_names = joint_names_for(config)
        self.estimator = Estimator(self.model, config.belief_config(), config.surprise_config())
        self.perceiver = Perceiver(self.model)
        self.monitor = self.estimator.monitor
        self._measured_stamp = -np.inf
        self._pose_probes = sorted(n[:-len('_position')] for n in self.model.probe_names
                                   if n.endswith('_position'))
        self._belief_pub = self.lifecycle_publisher(Image, BELIEF_TOPIC)
        self._surprise_pub = self.lifecycle_publisher(Float32, 'ami/surprise')
        self._poses_pub = self.lifecycle_publisher(PoseArray, ESTIMATE_TOPIC)
        self._pose_pubs = {n: self.lifecycle_publisher(PoseStamped, f'{ESTIMATE_TOPIC}/{n}_pose')
                           for n in self._pose_probes}
        self._joints_pub = self.lifecycle_publisher(JointState, f'{ESTIMATE_TOPIC}/joint_states')
        self.subscription(Image, LATENT_TOPIC, self._on_latent)
        self.subscription(JointState, 'joint_states', self._on_joint_states)
        names, fields = self.joint_names, config.twist_fields
        self.subscription(JointTrajectory, TRAJECTORY_TOPIC, lambda m: self._command(
            lambda: trajectory_action(m, names), seconds(m.header.stamp) or None))
        self.subscription(Float64MultiArray, FORWARD_TOPIC,
                          lambda m: self._command(lambda: m.data))
        self.subscription(Twist, TWIST_TOPIC, lambda m: self._command(
            lambda: twist_action(m, fields)))
        self.timer(1.0 / config.rate_hz, self._tick)

    def teardown(self) -> None:
        self.estimator = None

    def on_params(self, old, new) -> None:
        if self.estimator is not None:
            self.estimator.config = new.belief_config()  # the gain with the rest
            self.monitor.threshold = float(new.surprise_threshold)

    # -- inputs -----------------------------------------------------------------------------------

    def _on_latent(self, msg: Image) -> None:
        self.in_rate.tick()
        if not self.active:
            self.dropped += 1
            return
        t0 = time.perf_counter()
        try:
            z = msg_to_latent(msg)
            if z.shape != (1, self.model.latent_dim):
                raise ValueError(f'latent is {z.shape[0]}x{z.shape[1]}, this model\'s is '
                                 f'1x{self.model.latent_dim}')
        except ValueError as e:
            self.dropped += 1
            return self.record_error('latent', f'dropped a latent on {LATENT_TOPIC}: {e}')
        self.counts['latents'] += 1
        stamp, est = seconds(msg.header.stamp), self.estimator
        z = read = torch.from_numpy(z[0])  # as the camera read it
        if est.joints is not None and abs(self._measured_stamp - stamp) <= est.dt:
            z = self.perceiver.with_joints(z, est.joints).cpu()  # joints measured with it
        step = est.observe(z, stamp, read)
        reason = COUNTED.get(step.reason, step.reason)
        if reason in self.counts:
            self.counts[reason] += 1
        if step.reason in ('rejected_nan', 'rejected_old'):
            self.dropped += 1
            return self.record_error('latent' if step.reason == 'rejected_nan' else 'late',
                                     f'dropped a latent ({step.reason}) stamped {stamp:.3f} s, '
                                     f'belief at {est.stamp:.3f} s', 'warn')
        if step.surprise is not None:
            self._surprise_pub.publish(Float32(data=float(step.surprise)))
            self.counts['surprising'] += int(self.monitor.flagged)
        self._publish(msg.header.frame_id)
        self.latency.add(time.perf_counter() - t0)

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            q = joint_positions(msg, self.joint_names)
        except ValueError as e:
            self.dropped += 1
            return self.record_error('joint_states', str(e), 'warn')
        self.estimator.measured(q)
        self._measured_stamp = seconds(msg.header.stamp)

    def _command(self, read, stamp: float | None = None) -> None:
        """An executed command (``read()`` gives its action vector), in force from ``stamp``."""
        try:
            self.estimator.command(read(), self.now() if stamp is None else stamp)
        except ValueError as e:
            return self.record_error('command', f'ignored an executed command: {e}', 'warn')
        self.counts['commands'] += 1

    def _tick(self) -> None:
        if not self.active or self.estimator.stamp is None:
            return
        steps = self.estimator.advance_to(self.now(), self.params.config.max_predict_steps)
        if steps < 0:
            return self.record_error('clock', 'node clock jumped back: belief reset', 'warn')
        age = self.now() - self.estimator.stamp
        if steps == 0 and age > self.params.config.max_predict_steps * self.estimator.dt:
            return self.record_error('stale', f'no frame for {age:.2f} s: belief not '
                                              f'extrapolated further (frames stamped on another '
                                              f'clock? set use_sim_time)', 'warn')
        if steps > 0:
            self._publish('')

    # -- outputs --------------------------------------------------------------------------------

    def _publish(self, frame_id: str) -> None:
        est, cfg = self.estimator, self.params.config
        stamp = time_msg(max(est.stamp, 0.0))
        history = est.history().detach().float().cpu()  # (k', D)
        self._belief_pub.publish(latent_to_msg(history.numpy(), stamp, frame_id))
        self.out_rate.tick()
        with torch.no_grad():
            probes = {k: v[0].cpu().double().numpy() for k, v in self.model.probe(
                history[-1:].to(self.perceiver.device)).items()}
        poses, stamped, joints = estimate_msgs(probes, stamp, cfg.world_frame_id,
                                               self._pose_probes, self.joint_names)
        for name, msg in stamped.items():
            self._pose_pubs[name].publish(msg)
        self._poses_pub.publish(poses)
        if joints is not None:
            self._joints_pub.publish(joints)

    def status(self) -> tuple[str, str, dict]:
        est = self.estimator
        values = {**rate_values('input', self.in_rate), **rate_values('output', self.out_rate),
                  **latency_values('update_latency', self.latency), **self.counts,
                  'predicted': est.predicted if est else 0,
                  'surprise': self.monitor.score, 'surprise_threshold': self.monitor.threshold,
                  'belief_stamp': est.stamp if est and est.stamp is not None else -1.0}
        if self.active and self.monitor.flagged:
            return 'warn', (f'surprise {self.monitor.score:.2f} above '
                            f'{self.monitor.threshold:.2f}: the world diverged from the '
                            f'prediction'), values
        if self.active and est.stamp is None:
            return 'warn', f'no latent on {LATENT_TOPIC} yet', values
        return 'ok', '', values


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(WorldModelNode, args, name='world_model')


if __name__ == '__main__':
    raise SystemExit(main())
