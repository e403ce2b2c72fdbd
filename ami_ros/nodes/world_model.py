"""``world_model``: the belief over the latent state, what it says about the robot, and surprise.

Subscribes ``ami/latent`` (32FC1 latents from ``perception``), ``joint_states`` and the commands
actually sent (``joint_trajectory_controller/joint_trajectory``, ``forward_position_controller/
commands``, ``cmd_vel``). A :class:`~ami_ros.estimation.BeliefFilter` fuses each latent with the
prediction rolled forward from the previous belief under those commands; a timer at ``rate_hz``
(node clock: sim time under ``use_sim_time``) advances the belief to "now" with predict-only steps
when frames are missing, and a late frame is fused at its stamp and rolled forward again
(latency compensation).

Publishes ``ami/belief`` (32FC1, one row, stamped with the belief's time), the probes' decoding of
it - ``ami/estimate`` (``PoseArray``), ``ami/estimate/<name>_pose`` (``PoseStamped``) and
``ami/estimate/joint_states`` (``JointState``) - and ``ami/surprise`` (``std_msgs/Float32``, the
innovation in units of the usual prediction error), with a WARN on ``/diagnostics`` while it is
above ``surprise_threshold``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from geometry_msgs.msg import Pose, PoseArray, PoseStamped, Twist
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from ami_ros.estimation import BeliefConfig, BeliefFilter, SurpriseConfig, SurpriseMonitor
from ami_ros.nodes.common import RateMeter, seconds, time_msg
from ami_ros.nodes.lifecycle import (LatencyStats, ModelNode, ModelNodeConfig, latency_values,
                                     latent_to_msg, msg_to_latent, rate_values,
                                     run_lifecycle_node)
from ami_ros.paths import urdf_path
from ami_ros.safety import Limits, UrdfError
from ami_ros.sim.truth import yaw_quaternion

LATENT_TOPIC = 'ami/latent'
BELIEF_TOPIC = 'ami/belief'
SURPRISE_TOPIC = 'ami/surprise'
ESTIMATE_TOPIC = 'ami/estimate'
TRAJECTORY_TOPIC = 'joint_trajectory_controller/joint_trajectory'
FORWARD_TOPIC = 'forward_position_controller/commands'
TWIST_TOPIC = 'cmd_vel'
TWIST_FIELDS = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')


@dataclass
class WorldModelNodeConfig(ModelNodeConfig):
    """Parameters of the ``world_model`` node."""

    rate_hz: float = 10.0
    """Belief steps per second (1 / the control period the model was trained at)."""
    gain: float = 0.5
    """Filter gain K in [0, 1]: weight of a new latent against the prediction."""
    history: int = 20
    """Belief steps kept for fusing late frames (latency compensation)."""
    max_advance: int = 10
    """A frame this many steps ahead of the belief or more restarts it instead."""
    max_predict_steps: int = 20
    """At most this many predict-only steps without a frame; beyond, the belief waits for the
    next frame (and a gap this large usually means frames stamped on another clock)."""
    surprise_threshold: float = 4.0
    """Surprise score (innovation / typical innovation) above which /diagnostics warns."""
    surprise_window: int = 100
    """Recent innovations the typical one is the median of."""
    reset_threshold: float = 0.0
    """Surprise above which the belief restarts from the frame (0 = never)."""
    gate_threshold: float = 0.0
    """Surprise above which a frame is not fused, the belief keeps the model's prediction: an
    occluded or corrupt frame does not drag the belief (0 = fuse every frame)."""
    gate_max_frames: int = 5
    """Frames gated in a row after which the next surprising one restarts the belief."""
    joint_names: tuple[str, ...] = ()
    """Joints of the action vector, in the model's order; empty = the URDF's actuated joints."""
    urdf: str = ''
    """URDF for the joint names; empty = the scene's URDF."""
    twist_fields: tuple[str, ...] = ('linear.x', 'angular.z')
    """Fields of a cmd_vel Twist that form the action vector (mobile bases)."""
    world_frame_id: str = 'world'
    """frame_id of the estimated poses."""

    def __post_init__(self):
        super().__post_init__()
        bad = [f for f in self.twist_fields if f not in TWIST_FIELDS]
        if bad:
            raise ValueError(f'twist_fields {bad} are not Twist fields {list(TWIST_FIELDS)}')
        for name in ('reset_threshold', 'gate_threshold'):
            if getattr(self, name) < 0.0:
                raise ValueError(f'{name} must be > 0 or 0 (off), got {getattr(self, name)}')


def joint_names_for(config) -> tuple[str, ...]:
    """The configured joint names, or the actuated joints of the (scene's) URDF."""
    if config.joint_names:
        return tuple(config.joint_names)
    path = config.urdf or str(urdf_path(config.scene))
    try:
        return Limits.from_urdf(path).names
    except UrdfError as e:
        raise ValueError(f'cannot get the joint names: {e}') from None


class WorldModelNode(ModelNode):
    """Belief filter node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('world_model', WorldModelNodeConfig, ranges={
            'rate_hz': (0.5, 1000.0), 'gain': (0.0, 1.0), 'history': (1, 1000),
            'max_advance': (0, 1000), 'max_predict_steps': (1, 100000),
            'surprise_threshold': (0.01, 1e6), 'surprise_window': (1, 100000),
            'reset_threshold': (0.0, 1e6), 'gate_threshold': (0.0, 1e6),
            'gate_max_frames': (0, 1000)},
            read_only=('rate_hz', 'history', 'surprise_window', 'joint_names', 'urdf'), **kwargs)
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.latency = LatencyStats()
        self.counts = {k: 0 for k in ('latents', 'fused', 'late', 'gated', 'predicted',
                                      'rejected_old', 'rejected_nan', 'resets', 'surprising',
                                      'commands')}
        self.filter: BeliefFilter | None = None

    # -- configure ------------------------------------------------------------------------------

    def setup(self, config: WorldModelNodeConfig) -> None:
        self.joint_names = joint_names_for(config)
        self._dt = 1.0 / config.rate_hz
        self._device = getattr(self.model, 'device', torch.device('cpu'))
        self.monitor = SurpriseMonitor(SurpriseConfig(
            window=config.surprise_window, min_count=min(10, config.surprise_window),
            threshold=config.surprise_threshold))
        self.filter = BeliefFilter(self._belief_config(config), self._predict, self.monitor,
                                   getattr(self.model, 'innovation_scale', None))
        self._commands: list[tuple[float, np.ndarray]] = []  # (time, action) oldest first
        self._measured: np.ndarray | None = None
        self._measured_stamp = -math.inf
        self._pose_probes = sorted(n[:-len('_position')] for n in self.model.probe_names
                                   if n.endswith('_position'))
        self._belief_pub = self.lifecycle_publisher(Image, BELIEF_TOPIC)
        self._surprise_pub = self.lifecycle_publisher(Float32, SURPRISE_TOPIC)
        self._poses_pub = self.lifecycle_publisher(PoseArray, ESTIMATE_TOPIC)
        self._pose_pubs = {n: self.lifecycle_publisher(PoseStamped, f'{ESTIMATE_TOPIC}/{n}_pose')
                           for n in self._pose_probes}
        self._joints_pub = self.lifecycle_publisher(JointState, f'{ESTIMATE_TOPIC}/joint_states')
        self.subscription(Image, LATENT_TOPIC, self._on_latent)
        self.subscription(JointState, 'joint_states', self._on_joint_states)
        self.subscription(JointTrajectory, TRAJECTORY_TOPIC, self._on_trajectory)
        self.subscription(Float64MultiArray, FORWARD_TOPIC, self._on_forward)
        self.subscription(Twist, TWIST_TOPIC, self._on_twist)
        self.timer(self._dt, self._tick)

    def teardown(self) -> None:
        self.filter = None

    def _belief_config(self, config: WorldModelNodeConfig) -> BeliefConfig:
        return BeliefConfig(
            gain=config.gain, dt=self._dt, history=config.history,
            max_advance=config.max_advance, reset_threshold=config.reset_threshold or None,
            gate_threshold=config.gate_threshold or None, gate_max_frames=config.gate_max_frames)

    def on_params(self, old, new) -> None:
        if self.filter is not None:
            self.filter.config = self._belief_config(new)  # the gain with the rest
            self.monitor.threshold = float(new.surprise_threshold)

    # -- the model step the filter calls --------------------------------------------------------

    def _predict(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One control step from a single latent (D,) under action (A,) -> (D,)."""
        z = z.to(device=self._device, dtype=torch.float32)
        a = action.to(device=self._device, dtype=torch.float32).reshape(1, 1, -1)
        return self.model.rollout(z.reshape(1, 1, -1), a)[0, 0].cpu()

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
        stamp = seconds(msg.header.stamp)
        z = self._with_measured_joints(z, stamp)
        if self.filter.stamp is not None:
            # predict up to the frame's time with the commands sent, so that it is fused with a
            # prediction for its own stamp (a frame too far ahead restarts the belief instead)
            steps = round((stamp - self.filter.stamp) / self._dt)
            if 0 < steps <= self.params.config.max_advance:
                self._advance(steps)
        with torch.no_grad():
            step = self.filter.update(torch.from_numpy(z[0]), stamp)
        reason = {'init': 'resets', 'reset': 'resets', 'reset_stale': 'resets'}.get(
            step.reason, step.reason)
        if reason in self.counts:
            self.counts[reason] += 1
        if step.reason in ('rejected_nan', 'rejected_old'):
            self.dropped += 1
        if step.reason == 'rejected_nan':
            return self.record_error('latent', 'dropped a latent with NaN/inf')
        if step.reason == 'rejected_old':
            return self.record_error('late', f'dropped a latent stamped '
                                             f'{self.filter.stamp - seconds(msg.header.stamp):.3f}'
                                             f' s before the belief (beyond history)', 'warn')
        if step.surprise is not None:
            self._surprise_pub.publish(Float32(data=float(step.surprise)))
            if self.monitor.flagged:
                self.counts['surprising'] += 1
        self._publish(msg.header.frame_id)
        self.latency.add(time.perf_counter() - t0)

    def _with_measured_joints(self, z: np.ndarray, stamp: float) -> np.ndarray:
        """The latent with its joint part from ``/joint_states`` (models with proprioception).

        Joint states measured within one control period of the frame replace what perception
        read from the image.
        """
        if not getattr(self.model, 'has_proprio', False) or self._measured is None or \
                abs(self._measured_stamp - stamp) > self._dt or \
                not np.all(np.isfinite(self._measured)):
            return z
        with torch.no_grad():
            q = torch.as_tensor(self._measured[None], dtype=torch.float32, device=self._device)
            s = self.model.with_joints(torch.as_tensor(z, device=self._device), q)
        return s.cpu().numpy()

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            index = [list(msg.name).index(n) for n in self.joint_names]
            measured = np.asarray(msg.position, dtype=np.float64)[index]
            if not np.all(np.isfinite(measured)):
                self.dropped += 1
                return self.record_error('joint_states', f'dropped joint_states with NaN/inf '
                                                         f'positions {measured.tolist()}', 'warn')
            self._measured = measured
            self._measured_stamp = seconds(msg.header.stamp)
        except (ValueError, IndexError):
            self.record_error('joint_states', f'joint_states lacks joints {self.joint_names}: '
                                              f'has {list(msg.name)}', 'warn')

    def _command(self, action, stamp: float | None = None) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.model.action_dim,) or not np.all(np.isfinite(a)):
            return self.record_error('command', f'ignored an executed command {a.tolist()}: '
                                                f'the model needs {self.model.action_dim} finite '
                                                f'values', 'warn')
        self._commands.append((self.now() if stamp is None else stamp, a))
        del self._commands[:-64]
        self.counts['commands'] += 1

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        # the first point is where the controller is asked to be one step from now: the target
        # in force over the next control period, as in training (position targets)
        names = list(msg.joint_names)
        if not msg.points or len(msg.points[0].positions) != len(names):
            return self.record_error('command', 'ignored an executed trajectory without a first '
                                                'point matching its joint_names', 'warn')
        try:
            order = [names.index(n) for n in self.joint_names]
        except ValueError:
            return self.record_error('command', f'trajectory joints {names} do not cover '
                                                f'{list(self.joint_names)}', 'warn')
        start = seconds(msg.header.stamp)  # 0 = "now", as joint_trajectory_controller reads it
        self._command(np.asarray(msg.points[0].positions)[order], start or None)

    def _on_forward(self, msg: Float64MultiArray) -> None:
        self._command(msg.data)

    def _on_twist(self, msg: Twist) -> None:
        fields = self.params.config.twist_fields
        self._command([getattr(getattr(msg, f.split('.')[0]), f.split('.')[1]) for f in fields])

    def _action_at(self, t: float) -> np.ndarray | None:
        """The command in force at belief time t.

        The last one sent by t + dt/2, else the measured joint positions (a robot with no
        command holds still), else None.
        """
        for when, action in reversed(self._commands):
            if when <= t + self._dt / 2:
                return action
        if self._measured is not None and self._measured.shape == (self.model.action_dim,):
            return self._measured
        return None

    # -- the clock: predict-only steps up to now ------------------------------------------------

    def _tick(self) -> None:
        if not self.active or self.filter.stamp is None:
            return
        now = self.now()
        steps = int(math.floor((now - self.filter.stamp) / self._dt + 1e-6))
        if steps < -self.params.config.max_predict_steps:  # the clock went back: a restarted sim
            self.filter = BeliefFilter(self.filter.config, self._predict, self.monitor,
                                       self.filter.innovation_scale)
            return self.record_error('clock', 'node clock jumped back: belief reset', 'warn')
        if steps > self.params.config.max_predict_steps:
            return self.record_error('stale', f'no frame for {now - self.filter.stamp:.2f} s: '
                                              f'belief not extrapolated further (frames stamped '
                                              f'on another clock? set use_sim_time)', 'warn')
        if self._advance(steps):
            self._publish('')

    def _advance(self, steps: int) -> bool:
        """Predict-only steps with the commands in force; whether any was made."""
        predicted = False
        for _ in range(max(steps, 0)):
            action = self._action_at(self.filter.stamp)
            if action is None:
                break
            with torch.no_grad():
                self.filter.predict(torch.from_numpy(action))
            self.counts['predicted'] += 1
            predicted = True
        return predicted

    # -- outputs --------------------------------------------------------------------------------

    def _publish(self, frame_id: str) -> None:
        cfg = self.params.config
        z = self.filter.z.detach().float()
        stamp_s = self.filter.stamp
        stamp = time_msg(max(stamp_s, 0.0))
        self._belief_pub.publish(latent_to_msg(z.cpu().numpy(), stamp, frame_id))
        self.out_rate.tick()
        with torch.no_grad():
            probes = {k: v[0].cpu().double().numpy() for k, v in
                      self.model.probe(z.to(self._device)[None]).items()}
        poses = PoseArray()
        poses.header.stamp, poses.header.frame_id = stamp, cfg.world_frame_id
        for name in self._pose_probes:
            pose = Pose()
            p = np.zeros(3)
            value = probes[f'{name}_position']
            p[:min(3, value.size)] = value[:3]
            pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p)
            q = yaw_quaternion(float(probes[f'{name}_yaw'][0])) if f'{name}_yaw' in probes \
                else (0.0, 0.0, 0.0, 1.0)
            o = pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in q)
            poses.poses.append(pose)
            msg = PoseStamped(pose=pose)
            msg.header = poses.header
            self._pose_pubs[name].publish(msg)
        self._poses_pub.publish(poses)
        if 'joint_positions' in probes and probes['joint_positions'].size == len(self.joint_names):
            js = JointState(name=list(self.joint_names),
                            position=probes['joint_positions'].tolist())
            js.header.stamp = stamp
            self._joints_pub.publish(js)

    def status(self) -> tuple[str, str, dict]:
        values = {**rate_values('input', self.in_rate), **rate_values('output', self.out_rate),
                  **latency_values('update_latency', self.latency), **self.counts,
                  'surprise': self.monitor.score, 'surprise_threshold': self.monitor.threshold,
                  'belief_stamp': self.filter.stamp if self.filter.stamp is not None else -1.0}
        if self.active and self.monitor.flagged:
            return 'warn', (f'surprise {self.monitor.score:.2f} above '
                            f'{self.monitor.threshold:.2f}: the world diverged from the '
                            f'prediction'), values
        if self.active and self.filter.stamp is None:
            return 'warn', f'no latent on {LATENT_TOPIC} yet', values
        return 'ok', '', values


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(WorldModelNode, args, name='world_model')


if __name__ == '__main__':
    raise SystemExit(main())
