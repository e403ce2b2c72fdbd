"""``planner``: latent-space MPC from the belief towards a goal, through the safety layer.

Subscribes ``ami/belief`` (from ``world_model``), ``ami/latent`` (watched for fresh frames),
``joint_states`` and the goals ``ami/goal_image`` (``sensor_msgs/Image``, any supported encoding
and size: centre-cropped and resized like camera frames, then encoded) and ``ami/goal_pose``
(``geometry_msgs/PoseStamped`` in ``world_frame_id``: a goal for the probe ``goal_probe``, checked
against the robot's reachable workspace). The newest goal replaces any earlier one.

A timer at ``rate_hz`` (node clock: sim time under ``use_sim_time``) replans with CEM or MPPI
(:class:`ami_ros.control.LatentMPC`, warm-started, bounded and rate-limited) and publishes the
command on the interface named by ``output``: ``joint_trajectory`` (JointTrajectory to
``joint_trajectory_controller/joint_trajectory``, the first ``trajectory_points`` plan steps
``1/rate_hz`` apart), ``forward_position`` (Float64MultiArray to
``forward_position_controller/commands``) or ``twist`` (Twist to ``cmd_vel``), and the predicted
path of the probed end effector on ``ami/plan_markers`` (a LINE_STRIP stamped with the newest
camera frame the plan's belief holds, sent right after its command).

Safety (:mod:`ami_ros.safety`), always on, between the plan and every message:

* positions clamped to the URDF limits, each step within ``velocity_limit * velocity_scale * dt``
  of the previous command (Twist: ``twist_max`` and ``twist_accel``);
* a watchdog: when the newest frame, belief or joint state is older than ``stale_timeout`` the
  planner holds - the measured position (JointTrajectory / Float64MultiArray) or a zero Twist -
  at the next control tick, says why on ``/diagnostics``, and resumes when data returns;
* ``ami/enable`` (``std_srvs/SetBool``): disabled = hold;
* a final check right before publishing: a command with NaN/inf or beyond the limits is never
  sent (the hold is sent instead);
* ill-formed or unreachable goals (NaN, wrong frame, wrong encoding, outside the workspace) are
  rejected with the reason in the log and an ERROR on ``/diagnostics``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, PoseStamped, Twist
from rclpy.event_handler import SubscriptionEventCallbacks
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from ami_ros.control import LatentMPC, MPCConfig
from ami_ros.data.images import ImageDecodeError, decode_image, resize_image
from ami_ros.nodes.common import RateMeter, latched_qos, seconds
from ami_ros.nodes.lifecycle import (LatencyStats, ModelNode, ModelNodeConfig, latency_values,
                                     msg_to_latent, rate_values, run_lifecycle_node)
from ami_ros.nodes.perception import center_square
from ami_ros.nodes.world_model import (FORWARD_TOPIC, TRAJECTORY_TOPIC, TWIST_FIELDS,
                                       TWIST_TOPIC, joint_names_for)
from ami_ros.paths import urdf_path
from ami_ros.planning import PlannerConfig
from ami_ros.safety import (GoalError, Limits, UnsafeCommand, UrdfError, Watchdog, Workspace,
                            check_goal_pose)

OUTPUTS = ('joint_trajectory', 'forward_position', 'twist')


@dataclass
class PlannerNodeConfig(ModelNodeConfig):
    """Parameters of the ``planner`` node."""

    output: str = 'joint_trajectory'
    """Command interface: joint_trajectory, forward_position or twist. Applied on configure."""
    rate_hz: float = 10.0
    """Replanning and control rate (one command per period)."""
    replan_on: str = 'timer'
    """When to plan: timer (every 1/rate_hz of the node clock) or frame (as soon as a belief
    corrected by a new camera frame arrives, at most twice per period; the timer steps in only
    when no frame came for 1.5 periods). frame saves up to a period of camera -> command
    latency."""
    planner: str = 'cem'
    """Sampling planner: cem or mppi."""
    horizon: int = 8
    """Plan length in control steps."""
    samples: int = 200
    """Candidate action sequences per iteration."""
    iterations: int = 4
    """Refinements of the sampling distribution per plan."""
    elites: int = 20
    """CEM: lowest-cost samples the distribution is refitted to (<= samples)."""
    temperature: float = 0.5
    """MPPI: softmax temperature in cost units."""
    init_std: float = 0.3
    """Sampling std at the start of each plan, action units (rad, m or m/s)."""
    momentum: float = 0.1
    """Weight of the old mean in each refit."""
    seed: int = 0
    """Seed of the planner's random stream."""
    metric: str = 'l2'
    """Latent distance to an image goal: l1, l2, euclidean or cosine."""
    terminal_weight: float = 1.0
    """Weight of the last predicted step's distance to the goal."""
    running_weight: float = 0.1
    """Weight of every earlier step's distance (> 0 prefers getting there sooner)."""
    probe_weight: float = 1.0
    """Weight of the pose-goal cost (distance of the probed quantity, its units)."""
    visual_weight: float = 1.0
    """Models with proprioception: weight of the visual latent's distance in image-goal costs."""
    ee_weight: float = 0.0
    """Models with proprioception: weight of the end effector's distance (m) to the one read
    from the goal image."""
    joint_weight: float = 0.0
    """Models with proprioception: weight of the joints' distance (rad) to the posture read
    from the goal image."""
    command_weight: float = 0.0
    """Models with proprioception: weight of the end effector's distance (m) to the goal at the
    last planned command, where the position servos bring the arm to rest."""
    goal_guide: bool = False
    """Models with proprioception, image goals: the goal posture (inverse kinematics of the end
    effector read from the goal image, from its joint reading) and the path to it are among the
    planner's candidates at every tick."""
    trajectory_points: int = 1
    """joint_trajectory output: plan steps sent per message (the controller follows them if the
    next message is late)."""
    joint_names: tuple[str, ...] = ()
    """Joints of the action vector in the model's order; empty = the URDF's actuated joints."""
    urdf: str = ''
    """URDF with the joint limits; empty = the scene's URDF."""
    velocity_scale: float = 1.0
    """Commands move at most this fraction of the URDF velocity limits."""
    position_margin: float = 0.0
    """Commands stay this far inside the URDF position limits (rad or m)."""
    twist_fields: tuple[str, ...] = ('linear.x', 'angular.z')
    """twist output: the Twist fields of the action vector."""
    twist_max: tuple[float, ...] = (0.5, 1.0)
    """twist output: speed limit per field (m/s, rad/s)."""
    twist_accel: tuple[float, ...] = (1.0, 2.0)
    """twist output: acceleration limit per field (m/s^2, rad/s^2)."""
    stale_timeout: float = 0.25
    """Hold when the newest frame, belief or joint state is older than this (s, node clock)."""
    start_enabled: bool = True
    """Whether commands flow before anyone calls ami/enable."""
    crop: str = 'center'
    """How a non-square goal image is made square (as perception does): center or none."""
    world_frame_id: str = 'world'
    """Frame goal poses must be in (no tf lookup is done)."""
    goal_probe: str = 'ee_position'
    """Probe a goal pose's position is compared with (e.g. ee_position, block_position)."""
    workspace_check: bool = True
    """Reject goal poses the URDF chain's tip cannot reach."""
    workspace_axes: str = 'xyz'
    """Coordinates the workspace check compares (xyz, or xy for planar goals)."""
    workspace_tolerance: float = 0.03
    """A goal this close (m) to a reachable tip position is accepted."""
    workspace_min_z: float = 0.0
    """Tip positions below this height (m) count as unreachable (the floor)."""
    tip_link: str = ''
    """Link the workspace is computed for; empty = the URDF chain's last link."""

    def __post_init__(self):
        super().__post_init__()
        if self.elites > self.samples:
            raise ValueError(f'elites={self.elites} must be <= samples={self.samples}')
        bad = [f for f in self.twist_fields if f not in TWIST_FIELDS]
        if bad:
            raise ValueError(f'twist_fields {bad} are not Twist fields {list(TWIST_FIELDS)}')
        n = len(self.twist_fields)
        if len(self.twist_max) != n or len(self.twist_accel) != n:
            raise ValueError(f'twist_max {self.twist_max} and twist_accel {self.twist_accel} '
                             f'need one value per twist field {self.twist_fields}')
        if any(v <= 0 for v in self.twist_max + self.twist_accel):
            raise ValueError('twist_max and twist_accel must be > 0')


class _BeliefMPC(LatentMPC):
    """A LatentMPC whose belief comes from the world_model node instead of camera frames.

    ``LatentMPC.observe`` encodes and filters frames itself; in the ROS stack that happens in the
    perception and world_model nodes, so these set its belief history and the command in force
    (what the safety layer actually sent) directly.
    """

    def set_belief(self, z_hist: list[torch.Tensor], stamp: float) -> None:
        self.filter.reset(z_hist[-1], stamp)
        self._hist.clear()
        self._hist.extend(z_hist)

    def set_command(self, command: np.ndarray) -> None:
        self._command = np.asarray(command, dtype=np.float64).copy()


class PlannerNode(ModelNode):
    """MPC + safety node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('planner', PlannerNodeConfig, ranges={
            'rate_hz': (0.5, 1000.0), 'horizon': (1, 200), 'samples': (2, 100000),
            'iterations': (1, 100), 'elites': (1, 100000), 'temperature': (1e-6, 1e6),
            'init_std': (1e-6, 100.0), 'momentum': (0.0, 0.99), 'seed': (0, 2**31 - 1),
            'terminal_weight': (0.0, 1e6), 'running_weight': (0.0, 1e6),
            'probe_weight': (0.0, 1e6), 'trajectory_points': (1, 200),
            'visual_weight': (0.0, 1e6), 'ee_weight': (0.0, 1e6), 'joint_weight': (0.0, 1e6),
            'command_weight': (0.0, 1e6),
            'velocity_scale': (0.01, 1.0), 'position_margin': (0.0, 10.0),
            'stale_timeout': (0.01, 60.0), 'workspace_tolerance': (1e-4, 10.0),
            'workspace_min_z': (-100.0, 100.0)},
            choices={'output': OUTPUTS, 'planner': ('cem', 'mppi'), 'replan_on': ('timer', 'frame'),
                     'metric': ('l1', 'l2', 'euclidean', 'cosine'), 'crop': ('center', 'none')},
            read_only=('rate_hz',), **kwargs)
        self.rates = {k: RateMeter() for k in ('belief', 'frame', 'command')}
        self.plan_latency, self.tick_latency = LatencyStats(), LatencyStats()
        self.counts = {k: 0 for k in ('commands', 'hold_ticks', 'clamped', 'plans', 'goals',
                                      'rejected_goals', 'unsafe_blocked')}
        self.mpc = None
        self.state, self.hold_reason, self.goal = 'idle', '', 'none'

    # -- configure ------------------------------------------------------------------------------

    def setup(self, config: PlannerNodeConfig) -> None:
        self._dt = 1.0 / config.rate_hz
        self._position = config.output != 'twist'
        names = joint_names_for(config) if self._position else config.twist_fields
        urdf = config.urdf or str(urdf_path(config.scene))
        try:
            self.limits = Limits.from_urdf(urdf, names, config.velocity_scale,
                                           config.position_margin) if self._position else \
                Limits.symmetric(names, config.twist_max, config.twist_accel)
            self.workspace = Workspace.from_urdf(
                urdf, config.tip_link, axes=config.workspace_axes,
                tolerance=config.workspace_tolerance, min_z=config.workspace_min_z) \
                if self._position and config.workspace_check else None
        except UrdfError as e:
            raise ValueError(str(e)) from None
        if self.model.action_dim != self.limits.size:
            raise ValueError(f'the model has {self.model.action_dim} action dims, the '
                             f'{config.output} output {self.limits.size}: {list(names)}')
        self.mpc = _BeliefMPC(self.model, self._mpc_config(config))
        with torch.no_grad():
            self._probe_dims = {k: int(v.shape[-1]) for k, v in self.model.probe(
                torch.zeros(1, self.model.latent_dim, device=self.model.device)).items()}
        self._hist: list[torch.Tensor] = []  # the latest belief latents (D,), oldest first
        self._belief_stamp = 0.0
        self._frame_stamp = None  # stamp of the newest camera frame fused into the belief
        self._goal_setter, self._goal_position = None, None
        self._last_goal_key = None
        self._measured = None
        self._last_command = None  # (A,) the last command published
        self._hold_target = None
        self._last_control = -np.inf  # node-clock time of the last control tick
        self._last_frame_tick = -np.inf  # ... and of the last one a camera frame drove
        self._last_sent = -np.inf     # ... and of the last command sent
        self.enabled = config.start_enabled
        inputs = ('frame', 'belief') + (('joint_states',) if self._position else ())
        self.watchdog = Watchdog(config.stale_timeout, inputs, clock=self.now)
        msg_type, topic = {'joint_trajectory': (JointTrajectory, TRAJECTORY_TOPIC),
                           'forward_position': (Float64MultiArray, FORWARD_TOPIC),
                           'twist': (Twist, TWIST_TOPIC)}[config.output]
        self._cmd_pub = self.lifecycle_publisher(msg_type, topic)
        self._marker_pub = self.lifecycle_publisher(MarkerArray, 'ami/plan_markers')
        self.subscription(Image, 'ami/belief', self._on_belief)
        self.subscription(Image, 'ami/latent', self._on_latent)
        if self._position:
            self.subscription(JointState, 'joint_states', self._on_joint_states)
        # Goals: a volatile subscription (any publisher, e.g. `ros2 topic pub`) and a latched
        # one, which hands a (re)started planner the goal a transient-local publisher keeps.
        # A goal arriving on both is taken once (same stamp and kind).
        # (A volatile publisher is "incompatible" with the latched one: its messages come in
        # through the volatile subscription, so rclpy's warning about it is silenced.)
        quiet = SubscriptionEventCallbacks(incompatible_qos=lambda info: None)
        for qos, events in ((10, None), (latched_qos(), quiet)):
            self.subscription(Image, 'ami/goal_image', self._once(self._on_goal_image), qos,
                              event_callbacks=events)
            self.subscription(PoseStamped, 'ami/goal_pose', self._once(self._on_goal_pose),
                              qos, event_callbacks=events)
        self.service(SetBool, 'ami/enable', self._on_enable)
        self.service(Trigger, '~/clear_goal', self._on_clear_goal)
        self.timer(self._dt, self._on_timer)

    def _mpc_config(self, c: PlannerNodeConfig) -> MPCConfig:
        planning = PlannerConfig(
            action_dim=self.limits.size, horizon=c.horizon, n_samples=c.samples,
            iterations=c.iterations, n_elites=c.elites, temperature=c.temperature,
            init_std=c.init_std, momentum=c.momentum, seed=c.seed)
        # the watchdog below judges staleness: no second, differently-clocked check inside
        return MPCConfig(planning=planning, planner=c.planner, metric=c.metric,
                         terminal_weight=c.terminal_weight, running_weight=c.running_weight,
                         probe_weight=c.probe_weight, visual_weight=c.visual_weight,
                         ee_weight=c.ee_weight, joint_weight=c.joint_weight,
                         command_weight=c.command_weight, goal_guide=c.goal_guide,
                         max_belief_age=None).with_limits(
            self.limits.lower, self.limits.upper, self.limits.rate, self._dt)

    def teardown(self) -> None:
        self.mpc = None

    def backend_sizes(self, config: PlannerNodeConfig) -> dict[str, int]:
        return {'horizon': config.horizon, 'planning_batch': config.samples}

    def on_params(self, old, new) -> None:
        if self.mpc is None:
            return
        if new.stale_timeout != old.stale_timeout:
            self.watchdog.timeout = float(new.stale_timeout)
        planning = ('planner', 'horizon', 'samples', 'iterations', 'elites', 'temperature',
                    'init_std', 'momentum', 'seed', 'metric', 'terminal_weight',
                    'running_weight', 'probe_weight', 'visual_weight', 'ee_weight', 'joint_weight',
                    'command_weight', 'goal_guide')
        if any(getattr(old, k) != getattr(new, k) for k in planning):
            self.get_logger().info('planner parameters changed: the plan restarts')
            self.mpc = _BeliefMPC(self.model, self._mpc_config(new))
            if self._hist:
                self.mpc.set_belief(self._hist, self._belief_stamp)
            if self._last_command is not None:  # the rate limit goes on from what was sent
                self.mpc.set_command(self._last_command)
            if self._goal_setter is not None:
                self._goal_setter()

    def on_active(self, active: bool) -> None:
        if not active and self.goal != 'none':
            self._hold('deactivated')  # leave the robot holding, not coasting on the last plan

    # -- inputs -----------------------------------------------------------------------------------

    def _on_latent(self, msg: Image) -> None:
        self.watchdog.feed('frame')
        self.rates['frame'].tick()

    def _on_belief(self, msg: Image) -> None:
        try:
            z = msg_to_latent(msg)
            if z.shape != (1, self.model.latent_dim) or not np.all(np.isfinite(z)):
                raise ValueError(f'need 1x{self.model.latent_dim} finite values, got '
                                 f'{z.shape[0]}x{z.shape[1]}')
        except ValueError as e:
            self.dropped += 1
            return self.record_error('belief', f'dropped a belief: {e}')
        self.watchdog.feed('belief')
        self.rates['belief'].tick()
        stamp = seconds(msg.header.stamp)
        z_t = torch.from_numpy(z[0])
        # one latent per control step: a corrected belief for the same step (a frame fused after
        # the predict-only step) replaces the prediction; an older stamp (a reset) starts over
        if self._hist and abs(stamp - self._belief_stamp) < 0.5 * self._dt:
            self._hist[-1] = z_t
        elif self._hist and stamp > self._belief_stamp:
            self._hist = (self._hist + [z_t])[-int(self.model.history):]
        else:
            self._hist = [z_t]
        self._belief_stamp = stamp
        if msg.header.frame_id:  # fused from a camera frame (predict-only beliefs have none)
            self._frame_stamp = msg.header.stamp
        self.mpc.set_belief(self._hist, stamp)
        if (msg.header.frame_id and self.params.config.replan_on == 'frame'
                and self.now() - self._last_control >= 0.5 * self._dt):
            self._last_frame_tick = self.now()
            self._tick()

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            index = [list(msg.name).index(n) for n in self.limits.names]
            q = np.asarray(msg.position, dtype=np.float64)[index]
        except (ValueError, IndexError):
            return self.record_error('joint_states', f'joint_states lacks joints '
                                                     f'{list(self.limits.names)}', 'warn')
        if not np.all(np.isfinite(q)):
            self.dropped += 1
            return self.record_error('joint_states', f'dropped joint_states with NaN/inf '
                                                     f'positions {q.tolist()}', 'warn')
        self._measured = q
        self.watchdog.feed('joint_states')

    def _reject_goal(self, what: str, reason: str) -> None:
        self.counts['rejected_goals'] += 1
        self.record_error('goal', f'rejected {what}: {reason}')

    def _once(self, callback):
        """``callback`` for goal messages, skipping one already taken through the other QoS."""
        def on_goal(msg) -> None:
            # the same message twice: same kind, stamp, frame and content (a corrected goal
            # re-sent with the same stamp is a new goal)
            content = bytes(msg.data) if isinstance(msg, Image) else (
                msg.pose.position.x, msg.pose.position.y, msg.pose.position.z,
                msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
                msg.pose.orientation.w)
            key = (type(msg).__name__, msg.header.stamp.sec, msg.header.stamp.nanosec,
                   msg.header.frame_id, hash(content))
            if key == self._last_goal_key and key[1:3] != (0, 0):
                return
            self._last_goal_key = key
            callback(msg)
        on_goal.__name__ = callback.__name__
        return on_goal

    def _on_goal_image(self, msg: Image) -> None:
        if self.mpc is None:
            return
        try:
            rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                               msg.data)
            if self.params.config.crop == 'center':
                rgb = center_square(rgb)
            size = int(self.model.image_size)
            if rgb.shape[:2] != (size, size):
                self.get_logger().info(f'goal image {msg.width}x{msg.height} resized to the '
                                       f'model input {size}x{size}')
            rgb = np.ascontiguousarray(resize_image(rgb, size))
            self._replace_goal(lambda: self.mpc.set_goal_image(rgb))
        except (ImageDecodeError, ValueError) as e:
            return self._reject_goal('goal image', str(e))
        self._new_goal('image', lambda: self.mpc.set_goal_image(rgb), None)

    def _on_goal_pose(self, msg: PoseStamped) -> None:
        if self.mpc is None:
            return
        cfg = self.params.config
        p, o = msg.pose.position, msg.pose.orientation
        position = np.array([p.x, p.y, p.z])
        try:
            check_goal_pose(position, [o.x, o.y, o.z, o.w], msg.header.frame_id,
                            cfg.world_frame_id)
            if cfg.goal_probe not in self.model.probe_names:
                raise GoalError(f'the model has no probe {cfg.goal_probe!r} to compare a pose '
                                f'with (probes: {sorted(self.model.probe_names)})')
            if self.workspace is not None:
                index = ['xyz'.index(a) for a in cfg.workspace_axes]
                self.workspace.check(position[index])
            value = position[:self._probe_dims[cfg.goal_probe]]
            self._replace_goal(lambda: self.mpc.set_goal_pose(cfg.goal_probe, value))
        except (GoalError, ValueError) as e:
            return self._reject_goal(f'goal pose {np.round(position, 4).tolist()}', str(e))
        self._new_goal('pose', lambda: self.mpc.set_goal_pose(cfg.goal_probe, value), position)

    def _replace_goal(self, setter) -> None:
        """The newest goal replaces the old one; if it cannot be set, the old one stays."""
        self.mpc.clear_goal()
        try:
            setter()
        except ValueError:
            self.mpc.clear_goal()
            if self._goal_setter is not None:
                self._goal_setter()
            raise

    def _new_goal(self, kind: str, setter, position) -> None:
        """Remember an accepted goal: ``setter`` sets it again on a rebuilt MPC."""
        self.goal, self._goal_setter, self._goal_position = kind, setter, position
        self.counts['goals'] += 1
        self.get_logger().info(f'new {kind} goal' + (
            f' at {np.round(position, 4).tolist()}' if position is not None else ''))

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        self.enabled = bool(request.data)
        response.success = True
        response.message = 'commands enabled' if self.enabled else 'disabled: holding'
        self.get_logger().info(f'ami/enable: {response.message}')
        return response

    def _on_clear_goal(self, request, response):
        if self.mpc is not None:
            self.mpc.clear_goal()
        self.goal, self._goal_setter, self._goal_position = 'none', None, None
        response.success, response.message = True, 'goal cleared'
        return response

    # -- the control tick -----------------------------------------------------------------------

    def _on_timer(self) -> None:
        # replan_on=frame: frames drive the loop, the timer steps in when they stop coming.
        # Only a frame-driven tick defers the timer: once frames stop, the timer acts at every
        # period (so the watchdog holds within stale_timeout + one period).
        if self.params.config.replan_on == 'frame' and \
                self.now() - self._last_frame_tick < 1.5 * self._dt:
            return
        self._tick()

    def _tick(self) -> None:
        if not self.active or self.goal == 'none':
            self.state, self.hold_reason = 'idle', ''
            return
        self._last_control = self.now()
        t0 = time.perf_counter()
        check = self.watchdog.check()
        if not self.enabled:
            self._hold('disabled by ami/enable')
        elif not check.ok:
            self._hold(check.reason)
        else:
            self._plan()
        self.tick_latency.add(time.perf_counter() - t0)

    def _plan(self) -> None:
        q = self._measured if self._position else np.zeros(self.limits.size)
        try:
            target, info = self.mpc.act(q)
        except ValueError as e:
            return self._hold(f'cannot plan: {e}')
        result = info['result']
        if result is None:  # LatentMPC had nothing to plan from (no goal / belief): it holds
            return self._hold(f'planner: {info["reason"]}')
        self.counts['plans'] += 1
        self.plan_latency.add(info['plan_ms'] * 1e-3)
        plan = result.actions.detach().cpu().double().numpy()
        n = self.params.config.trajectory_points if self.params.config.output == \
            'joint_trajectory' else 1
        seq = plan[:n].copy()
        seq[0] = target
        previous = self._last_command if self._last_command is not None else (
            self.limits.hold(q) if self._position else np.zeros(self.limits.size))
        # timed trajectory points are dt apart whenever they are sent; a bare position or
        # velocity target sent sooner than dt after the last one may move only that much less
        dt = self._dt if self.params.config.output == 'joint_trajectory' else \
            min(self._dt, max(self.now() - self._last_sent, 0.0))
        try:
            safe, clamped = self.limits.clamp_sequence(seq, previous, dt)
        except UnsafeCommand as e:
            self.counts['unsafe_blocked'] += 1
            self.record_error('unsafe', f'plan not sent: {e}')
            return self._hold(f'unsafe plan: {e}')
        self.counts['clamped'] += int(clamped)
        if not self._send(safe):
            return self._hold('a planned command failed the final check')
        if self.state == 'holding':
            self.get_logger().info('resumed planning')
        self.state, self.hold_reason, self._hold_target = 'planning', '', None
        self.plan_cost = float(info['cost'])
        self._publish_markers(result)

    def _hold(self, reason: str) -> None:
        if self.state != 'holding':  # the reason's details (ages) go to /diagnostics
            self.get_logger().warning(f'holding: {reason}')
        if self._hold_target is None:
            if not self._position:
                self._hold_target = np.zeros(self.limits.size)
            elif self._measured is not None:
                self._hold_target = self.limits.hold(self._measured)
            else:
                self._hold_target = self._last_command  # no feedback: keep the last command
        self.state, self.hold_reason = 'holding', reason
        self.counts['hold_ticks'] += 1
        if self._hold_target is not None:
            self._send(self._hold_target[None])

    def _send(self, seq: np.ndarray) -> bool:
        """Publish (K, A) commands after the final check; False (and nothing sent) if unsafe."""
        try:
            seq = np.stack([self.limits.final_check(c) for c in seq])
        except UnsafeCommand as e:
            self.counts['unsafe_blocked'] += 1
            self.record_error('unsafe', f'command not sent: {e}')
            return False
        cfg = self.params.config
        if cfg.output == 'joint_trajectory':
            msg = JointTrajectory(joint_names=list(self.limits.names))  # stamp 0: start now
            for i, c in enumerate(seq):
                t = (i + 1) * self._dt
                msg.points.append(JointTrajectoryPoint(
                    positions=c.tolist(), time_from_start=Duration(
                        sec=int(t), nanosec=int(round((t - int(t)) * 1e9)) % 10**9)))
        elif cfg.output == 'forward_position':
            msg = Float64MultiArray(data=seq[0].tolist())
        else:
            msg = Twist()
            for name, v in zip(self.limits.names, seq[0]):
                part, axis = name.split('.')
                setattr(getattr(msg, part), axis, float(v))
        self._cmd_pub.publish(msg)
        self._last_sent = self.now()
        self._last_command = seq[0].copy()
        self.mpc.set_command(seq[0])
        self.counts['commands'] += 1
        self.rates['command'].tick()
        return True

    def _publish_markers(self, result) -> None:
        cfg = self.params.config
        probe = cfg.goal_probe if cfg.goal_probe.endswith('_position') else 'ee_position'
        if result is None or result.predicted is None or probe not in self.model.probe_names:
            return
        with torch.no_grad():
            path = self.model.probe(result.predicted)[probe].detach().cpu().double().numpy()
        line = Marker(ns='ami_plan', id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
        line.header.frame_id = cfg.world_frame_id
        # the plan is as of the newest camera frame in its belief: observers measure
        # camera -> command latency from this stamp (ami-ros demo)
        line.header.stamp = self._frame_stamp or self.get_clock().now().to_msg()
        line.scale.x = 0.01
        line.color.r, line.color.g, line.color.b, line.color.a = 0.1, 0.8, 1.0, 1.0
        line.pose.orientation.w = 1.0
        for p in path:
            xyz = np.zeros(3)
            xyz[:min(3, p.size)] = p[:3]
            line.points.append(Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])))
        markers = [line]
        if self._goal_position is not None:
            goal = Marker(ns='ami_plan', id=1, type=Marker.SPHERE, action=Marker.ADD)
            goal.header = line.header
            goal.pose.position = Point(**dict(zip('xyz', map(float, self._goal_position))))
            goal.pose.orientation.w = 1.0
            goal.scale.x = goal.scale.y = goal.scale.z = 0.04
            goal.color.g, goal.color.a = 1.0, 0.8
            markers.append(goal)
        self._marker_pub.publish(MarkerArray(markers=markers))

    # -- diagnostics ------------------------------------------------------------------------------

    def status(self) -> tuple[str, str, dict]:
        values = {k: v for name, meter in self.rates.items()
                  for k, v in rate_values(name, meter).items()}
        values.update({**latency_values('plan_latency', self.plan_latency),
                       **latency_values('tick_latency', self.tick_latency), **self.counts,
                       'state': self.state, 'hold_reason': self.hold_reason, 'goal': self.goal,
                       'watchdog': self.watchdog.check().reason or 'ok',
                       'enabled': self.enabled, 'output': self.params.config.output,
                       'planner': self.params.config.planner,
                       'plan_cost': getattr(self, 'plan_cost', float('nan'))})
        if self.state == 'holding':
            return 'warn', f'holding: {self.hold_reason}', values
        return 'ok', self.state, values


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(PlannerNode, args, name='planner')


if __name__ == '__main__':
    raise SystemExit(main())
