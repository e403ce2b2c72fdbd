"""``sim``: a built-in scene behind the topics Gazebo + gz_ros2_control + ros_gz_bridge would offer.

Publishes (relative names resolve in the node's namespace)
    ``camera/image_raw`` (``sensor_msgs/Image``, rgb8) and ``camera/camera_info`` at ``render_hz``,
    sensor-data QoS; ``joint_states`` every control step; ground truth ``sim/<name>_pose``
    (``PoseStamped``) and ``sim/<name>`` (``Float64MultiArray``, see :mod:`ami_ros.sim.truth`);
    ``/clock``; ``/diagnostics``. Every stamp is the simulation time of the state shown: sim time
    starts at 0 and runs on across resets (as in Gazebo, consumers set ``use_sim_time:=true``).

Subscribes
    ``joint_trajectory_controller/joint_trajectory`` (``trajectory_msgs/JointTrajectory``) with
    joint_trajectory_controller semantics: joint names in any order but all of them (no partial
    goals), ``time_from_start`` strictly increasing, linear interpolation in sim time from the
    current position, a zero ``header.stamp`` meaning "start now"; point velocities are checked
    but not used. A trajectory with no points is *rejected* (JTC would cancel; here the current
    motion simply goes on). ``forward_position_controller/commands`` (``Float64MultiArray``):
    position targets in ``joint_states`` order, replacing any trajectory. ``~/set_goal_pose``
    (``PoseStamped``, world frame): move the goal, for scenes that have a movable goal.

Services
    ``~/reset`` (``std_srvs/Trigger``): a new episode (new start and goal); ``~/set_goal``
    (``std_srvs/Trigger``): a new random goal drawn as ``reset`` draws it, the robot left as is.

Bad commands (unknown/missing joints, wrong lengths, NaN/inf, beyond URDF limits, empty or
non-monotonic trajectories) are never applied: they are logged (throttled per topic) and counted
on ``/diagnostics``, and the node runs on.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ami_ros.nodes.common import (ConfigParameters, RateMeter, ThrottledLog, camera_info_msg,
                                  diagnostic_status, guarded, image_to_msg, run_node, seconds,
                                  time_msg)
from ami_ros.sim import (ARM_SCENES, EFFORT_SCENES, SCENES, CommandError, Scene, SceneConfig,
                         make_scene)
from ami_ros.sim.truth import pose_topic, signal_topic, split_truth

TRAJECTORY_TOPIC = 'joint_trajectory_controller/joint_trajectory'
FORWARD_TOPIC = 'forward_position_controller/commands'
GOAL_TOPIC = '~/set_goal_pose'
MAX_START_DELAY = 60.0
"""A trajectory may start at most this many sim seconds ahead: a later stamp is in another
time base (a publisher on wall time, not /clock), and following it would hold the arm for years."""


@dataclass
class SimNodeConfig:
    """Parameters of the ``sim`` node (one ROS parameter per field)."""

    scene: str = 'arm_reach'
    """Built-in scene to simulate (see ami_ros.sim.SCENES)."""
    robot: str = ''
    """Robot config of the arm scene (a YAML path, or a name in share/ami_ros/config/robots such
    as boom5): the arm's URDF, end effector and camera. Empty = the scene's own robot."""
    image_size: int = 64
    """Side of the square camera frame, pixels."""
    control_hz: float = 10.0
    """Control rate: one scene step, one joint_states message, per period of sim time."""
    render_hz: float = 10.0
    """Camera rate in sim time, at most control_hz (frames come from every k-th step)."""
    realtime: bool = True
    """Pace the steps to the wall clock; false = step as fast as the CPU allows."""
    seed: int = 0
    """Seed of the first episode; later resets continue the scene's random stream."""
    world_frame_id: str = 'world'
    """Frame of the ground-truth poses and of goals sent to ~/set_goal_pose."""
    camera_frame_id: str = 'camera_optical_frame'
    """frame_id of camera/image_raw and camera/camera_info."""
    camera_fovy_deg: float = 0.0
    """Vertical field of view written into camera_info, degrees; 0 = the scene's camera (the
    robot config's fovy; 55 for scenes without a perspective camera)."""
    diagnostics_hz: float = 1.0
    """Rate of /diagnostics messages, wall-clock Hz."""

    def __post_init__(self):
        if self.scene not in SCENES:
            raise ValueError(f'scene must be one of {sorted(SCENES)}, got {self.scene!r}')
        if self.scene in EFFORT_SCENES:
            raise ValueError(f'scene {self.scene!r} takes joint efforts; the sim node serves '
                             f'position-controlled scenes only (use it with ami-ros collect '
                             f'and eval-plan)')
        self.scene_config()  # image_size and control_hz are judged by the core's SceneConfig
        if not 0.0 < float(self.render_hz) <= float(self.control_hz):
            raise ValueError(f'render_hz must be in (0, control_hz={self.control_hz}], '
                             f'got {self.render_hz}')
        if not 0.0 <= float(self.camera_fovy_deg) < 180.0:
            raise ValueError(f'camera_fovy_deg must be in (0, 180) or 0 (the scene\'s), got '
                             f'{self.camera_fovy_deg}')
        if self.robot and self.scene not in ARM_SCENES:
            raise ValueError(f'robot {self.robot!r}: a robot config drives the arm scene '
                             f'{list(ARM_SCENES)}, not scene {self.scene!r}')
        if not 0.1 <= float(self.diagnostics_hz) <= 100.0:
            raise ValueError(f'diagnostics_hz must be in [0.1, 100], got {self.diagnostics_hz}')
        for name in ('world_frame_id', 'camera_frame_id'):
            if not getattr(self, name):
                raise ValueError(f'{name} must not be empty')

    def scene_config(self) -> SceneConfig:
        return SceneConfig(image_size=self.image_size, control_hz=self.control_hz, seed=self.seed)


class TrajectoryFollower:
    """Joint positions along a validated trajectory, linear in sim time (no ROS types).

    ``times`` (P,) absolute sim times, ``positions`` (P, J). Before the first time the first
    position holds, after the last the last one.
    """

    def __init__(self, times: np.ndarray, positions: np.ndarray):
        self.times = np.asarray(times, dtype=np.float64)            # (P,)
        self.positions = np.asarray(positions, dtype=np.float64)    # (P, J)

    @classmethod
    def from_start(cls, start_time: float, start_position: np.ndarray,
                   time_from_start: np.ndarray, positions: np.ndarray) -> TrajectoryFollower:
        """Begin at ``start_position`` at ``start_time``; point i is due at start + tfs[i]."""
        times = start_time + np.asarray(time_from_start, dtype=np.float64)
        if time_from_start[0] > 0.0:  # a first point due "now" replaces the current position
            times = np.concatenate([[start_time], times])
            positions = np.vstack([start_position, positions])
        return cls(times, positions)

    def sample(self, t: float) -> np.ndarray:
        return np.array([np.interp(t, self.times, p) for p in self.positions.T])  # (J,)

    def done(self, t: float) -> bool:
        return t >= self.times[-1]


class SimNode(Node):
    """The ROS face of a :class:`ami_ros.sim.Scene` (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('sim', **kwargs)
        self.params = ConfigParameters(
            self, SimNodeConfig,
            choices={'scene': tuple(s for s in SCENES if s not in EFFORT_SCENES)},
            ranges={'image_size': (16, 1024), 'control_hz': (0.5, 1000.0),
                    'render_hz': (0.01, 1000.0), 'camera_fovy_deg': (0.0, 179.0),
                    'diagnostics_hz': (0.1, 100.0)},
            read_only=('scene', 'robot', 'image_size', 'control_hz', 'seed'),
            on_change=self._on_params)
        cfg = self.params.config
        try:
            self.scene = make_scene(cfg.scene, cfg.scene_config(), robot=cfg.robot or None)
        except (ImportError, OSError, RuntimeError) as e:
            raise ValueError(f'cannot create scene {cfg.scene!r}: {e}') from e
        self._fovy = self.scene.camera_fovy_deg or 55.0  # camera_info when camera_fovy_deg is 0
        self.scene.reset(seed=cfg.seed)
        self.sim_time = 0.0
        self.steps = self.episode = self.accepted = self.rejected = 0
        self.last_error = ''
        self._rejected_reported = 0
        self._trajectory: TrajectoryFollower | None = None
        self._next_render = -math.inf  # sim time of the next frame: the first step renders
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)  # pacing ignores use_sim_time
        self._step_rate, self._frame_rate = RateMeter(), RateMeter()
        self._rtf_mark = (time.monotonic(), 0.0)
        self._log = ThrottledLog(self.get_logger(), period_sec=1.0)

        self._image_pub = self.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
        self._info_pub = self.create_publisher(CameraInfo, 'camera/camera_info',
                                               qos_profile_sensor_data)
        self._joint_pub = self.create_publisher(JointState, 'joint_states', 10)
        self._clock_pub = self.create_publisher(ClockMsg, '/clock', 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._truth_pubs: dict[str, object] = {}
        self.create_subscription(JointTrajectory, TRAJECTORY_TOPIC,
                                 self._guard(self._on_trajectory), 10)
        self.create_subscription(Float64MultiArray, FORWARD_TOPIC, self._guard(self._on_forward),
                                 10)
        self.create_subscription(PoseStamped, GOAL_TOPIC, self._guard(self._on_goal_pose), 10)
        self.create_service(Trigger, '~/reset', self._guard(self._on_reset))
        self.create_service(Trigger, '~/set_goal', self._guard(self._on_set_goal))
        self._step_timer = self._diag_timer = None
        self._make_timers()
        robot = getattr(self.scene, 'robot_name', cfg.scene)
        self.get_logger().info(
            f'{cfg.scene} ({robot}): joints {list(self.scene.joint_names)}, {cfg.control_hz} Hz '
            f'control, {cfg.render_hz} Hz {cfg.image_size}px camera, realtime={cfg.realtime}')

    def _guard(self, callback):
        """``callback`` that logs, counts and survives its exceptions (see :func:`guarded`)."""
        def on_error(key: str, message: str) -> None:
            self.rejected += 1
            self.last_error = message
            self._log.log(key, message)
        return guarded(callback, on_error)

    # -- the loop: core calls only ----------------------------------------------------------------

    def _tick(self) -> None:
        dt = self.scene.control_dt
        if self._trajectory is not None:
            # the point due at the end of this step, so the last one is reached on time
            self.scene.set_target(self._trajectory.sample(self.sim_time + dt))
            if self._trajectory.done(self.sim_time + dt):
                self._trajectory = None
        self.scene.step()
        self.steps += 1
        self.sim_time = self.steps * dt  # no float drift over long runs
        self._step_rate.tick()
        self._publish_state()
        if self.sim_time + 1e-9 >= self._next_render:
            self._publish_frame()
            period = 1.0 / float(self.params.config.render_hz)
            self._next_render += period  # from the schedule, not from now: no drift
            if self._next_render <= self.sim_time + 1e-9:  # first frame, or render_hz changed
                self._next_render = self.sim_time + period

    def _publish_state(self) -> None:
        stamp = time_msg(self.sim_time)
        self._clock_pub.publish(ClockMsg(clock=stamp))
        js = JointState(name=list(self.scene.joint_names),
                        position=self.scene.joint_positions.tolist(),
                        velocity=self.scene.joint_velocities.tolist())
        js.header.stamp = stamp
        self._joint_pub.publish(js)
        poses, signals = split_truth(self.scene.ground_truth())
        signals.setdefault('success', np.array([float(self.scene.success())]))
        for name, (position, quat) in poses.items():
            msg = PoseStamped()
            msg.header.stamp = stamp
            msg.header.frame_id = self.params.config.world_frame_id
            p, o = msg.pose.position, msg.pose.orientation
            p.x, p.y, p.z = (float(v) for v in position)
            o.x, o.y, o.z, o.w = (float(v) for v in quat)
            self._truth_pub(PoseStamped, pose_topic(name)).publish(msg)
        for name, value in signals.items():
            self._truth_pub(Float64MultiArray, signal_topic(name)).publish(
                Float64MultiArray(data=[float(v) for v in value]))

    def _truth_pub(self, msg_type, topic: str):
        if topic not in self._truth_pubs:  # the scene's ground truth names, met on first use
            self._truth_pubs[topic] = self.create_publisher(msg_type, topic.lstrip('/'), 10)
        return self._truth_pubs[topic]

    def _publish_frame(self) -> None:
        cfg, stamp = self.params.config, time_msg(self.sim_time)
        image = self.scene.render()
        self._image_pub.publish(image_to_msg(image, stamp, cfg.camera_frame_id, 'rgb8'))
        fovy = float(cfg.camera_fovy_deg) or self._fovy
        self._info_pub.publish(camera_info_msg(image.shape[1], image.shape[0], fovy, stamp,
                                               cfg.camera_frame_id))
        self._frame_rate.tick()

    # -- commands ---------------------------------------------------------------------------------

    def _reject(self, source: str, error: Exception) -> None:
        self.rejected += 1
        self.last_error = f'{source}: {error}'
        self._log.log(source, f'rejected command on {source} (not applied): {error}')

    def _on_forward(self, msg: Float64MultiArray) -> None:
        try:
            target = self.scene.check_target(np.asarray(msg.data, dtype=np.float64))
        except CommandError as e:
            return self._reject(FORWARD_TOPIC, e)
        self._trajectory = None
        self.scene.set_target(target)
        self.accepted += 1

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            follower = self._follower(msg)
        except CommandError as e:
            return self._reject(TRAJECTORY_TOPIC, e)
        self._trajectory = follower
        self.accepted += 1

    def _follower(self, msg: JointTrajectory) -> TrajectoryFollower:
        """Validate a JointTrajectory; CommandError says what is wrong."""
        names = list(self.scene.joint_names)
        given = list(msg.joint_names)
        if len(set(given)) != len(given):
            raise CommandError(f'joint_names has duplicates: {given}')
        unknown = [n for n in given if n not in names]
        missing = [n for n in names if n not in given]
        if unknown or missing:
            raise CommandError(f'joint_names must name exactly the joints {names} (partial goals '
                               f'are not supported): unknown {unknown}, missing {missing}')
        if not msg.points:
            raise CommandError('empty trajectory (no points); this sim holds its current motion '
                               'instead of cancelling as joint_trajectory_controller would')
        order = [given.index(n) for n in names]
        tfs = np.array([seconds(p.time_from_start) for p in msg.points])
        if tfs[0] < 0.0 or np.any(np.diff(tfs) <= 0.0):
            raise CommandError(f'time_from_start must be >= 0 and strictly increasing, got '
                               f'{tfs.tolist()}')
        positions = []
        for i, point in enumerate(msg.points):
            if len(point.positions) != len(names):
                raise CommandError(f'point {i} has {len(point.positions)} positions, expected '
                                   f'{len(names)}')
            for field in ('velocities', 'accelerations'):
                values = np.asarray(getattr(point, field), dtype=np.float64)
                if values.size not in (0, len(names)) or not np.all(np.isfinite(values)):
                    raise CommandError(f'point {i} {field} must be empty or {len(names)} finite '
                                       f'numbers, got {values.tolist()}')
            try:
                positions.append(self.scene.check_target(np.asarray(point.positions)[order]))
            except CommandError as e:
                raise CommandError(f'point {i}: {e}') from None
        start = seconds(msg.header.stamp) if seconds(msg.header.stamp) > 0.0 else self.sim_time
        if start + tfs[-1] < self.sim_time:
            raise CommandError(f'trajectory ends in the past (at {start + tfs[-1]:.3f} s, sim '
                               f'time is {self.sim_time:.3f} s)')
        if start > self.sim_time + MAX_START_DELAY:
            raise CommandError(f'header.stamp {start:.3f} s is more than {MAX_START_DELAY} s '
                               f'after sim time {self.sim_time:.3f} s: stamp with /clock time '
                               f'(use_sim_time) or leave it zero to start now')
        here = np.clip(self.scene.joint_positions, self.scene.lower, self.scene.upper)
        return TrajectoryFollower.from_start(start, here, tfs, np.array(positions))

    def _on_goal_pose(self, msg: PoseStamped) -> None:
        source = self.resolve_topic_name(GOAL_TOPIC)
        frame = self.params.config.world_frame_id
        try:
            if msg.header.frame_id not in ('', frame):
                raise CommandError(f'goal frame_id must be {frame!r}, got {msg.header.frame_id!r}')
            p = msg.pose.position
            self.scene.set_goal(np.array([p.x, p.y, p.z]))
        except (CommandError, NotImplementedError) as e:
            return self._reject(source, e)
        self.accepted += 1

    def _on_reset(self, request, response):
        self.scene.reset()
        self._trajectory = None
        self.episode += 1
        response.success, response.message = True, f'episode {self.episode} started'
        return response

    def _on_set_goal(self, request, response):
        if type(self.scene).set_goal is Scene.set_goal:
            response.success, response.message = False, f'scene {self.scene.name} has a fixed goal'
            return response
        # draw a goal exactly as reset() does, then put the robot back where it was
        state = self.scene.get_state()
        self.scene.reset()
        poses = split_truth(self.scene.ground_truth())[0]
        self.scene.set_state(state)
        try:
            if 'goal' not in poses:
                raise CommandError(f'scene {self.scene.name} reports no goal pose')
            goal = poses['goal'][0]
            self.scene.set_goal(goal)
        except CommandError as e:
            response.success, response.message = False, str(e)
            return response
        response.success = True
        response.message = f'new goal at {np.round(goal, 4).tolist()}'
        return response

    # -- parameters, timers, diagnostics ----------------------------------------------------------

    def _make_timers(self) -> None:
        cfg = self.params.config
        for timer in (self._step_timer, self._diag_timer):
            if timer is not None:
                self.destroy_timer(timer)
        # a zero period makes the timer always ready: the executor steps as fast as it can while
        # still serving subscriptions and services between steps
        period = self.scene.control_dt if cfg.realtime else 0.0
        self._step_timer = self.create_timer(period, self._guard(self._tick), clock=self._steady)
        self._diag_timer = self.create_timer(1.0 / cfg.diagnostics_hz,
                                             self._guard(self._publish_diagnostics),
                                             clock=self._steady)

    def _on_params(self, old: SimNodeConfig, new: SimNodeConfig) -> None:
        if (old.realtime, old.diagnostics_hz) != (new.realtime, new.diagnostics_hz):
            self._make_timers()
        if new.render_hz != old.render_hz:
            self._next_render = -math.inf

    def _publish_diagnostics(self) -> None:
        cfg = self.params.config
        now = time.monotonic()
        wall0, sim0 = self._rtf_mark
        rtf = (self.sim_time - sim0) / (now - wall0) if now > wall0 else 0.0
        self._rtf_mark = (now, self.sim_time)
        fresh = self.rejected - self._rejected_reported
        self._rejected_reported = self.rejected
        level = DiagnosticStatus.WARN if fresh else DiagnosticStatus.OK
        message = f'{fresh} command(s) rejected, last: {self.last_error}' if fresh else 'running'
        status = diagnostic_status(f'{self.get_name()}: {cfg.scene}', cfg.scene, level, message, {
            'sim_time': self.sim_time, 'steps': self.steps, 'episode': self.episode,
            'control_hz': float(cfg.control_hz), 'control_rate_hz': self._step_rate.rate(),
            'render_hz': float(cfg.render_hz), 'render_rate_hz': self._frame_rate.rate(),
            'real_time_factor': rtf, 'realtime': cfg.realtime,
            'accepted_commands': self.accepted, 'rejected_commands': self.rejected,
            'last_error': self.last_error, 'trajectory_active': self._trajectory is not None,
            'success': self.scene.success()})
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = time_msg(self.sim_time)
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        if hasattr(self, 'scene'):
            # free the offscreen GL context while the process can still do it cleanly
            self.scene.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(SimNode, args, name='sim')


if __name__ == '__main__':
    raise SystemExit(main())
