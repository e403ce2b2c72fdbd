"""One config per scene for the whole stack (no ROS import).

``config/<scene>.yaml`` is a ROS 2 parameters file: one block per node (``/**/perception``,
``/**/world_model``, ``/**/planner``), applied by the launch file and ``ami-ros bringup`` after
``config/ami_ros.yaml`` (interfaces and defaults shared by every scene, no planning or belief
values), plus ``/**/eval_plan`` (no node has that name: read by ``ami-ros eval-plan`` only).
The same file drives the nodes, eval-plan, eval-surprise, bench and the demo: the
:class:`~ami_ros.agent.Agent`'s :class:`~ami_ros.control.MPCConfig` is made from the planner and
world_model blocks (:meth:`SceneConfig.mpc`), so what the robot runs is what eval measures.

Each field below is a ROS parameter: its docstring is the description, ``metadata`` its range
and choices (:class:`~ami_ros.nodes.common.ConfigParameters` reads them); the dataclass
validates the values once, for ROS and for the command line alike.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ami_ros.control.config import MPCConfig
from ami_ros.estimation import BeliefConfig, SurpriseConfig
from ami_ros.planning import PlannerConfig
from ami_ros.sim import ARM_SCENES, SCENES

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
TWIST_FIELDS = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')
OUTPUTS = ('joint_trajectory', 'forward_position', 'twist')
NODES = ('perception', 'world_model', 'planner')


def _p(default, lo=None, hi=None, choices=None, read_only=False):
    """A field with its ROS range / choices / read-only flag in the metadata."""
    meta: dict[str, Any] = {}
    if lo is not None:
        meta['range'] = (lo, hi)
    if choices is not None:
        meta['choices'] = tuple(choices)
    if read_only:
        meta['read_only'] = True
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(config) -> None:
    """Raise ValueError naming the field when a value is outside its range or choices."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            rng, choices = f.metadata.get('range'), f.metadata.get('choices')
            if rng is not None and not rng[0] <= v <= rng[1]:  # NaN fails too
                raise ValueError(f'{f.name} must be in [{rng[0]}, {rng[1]}], got {v!r}')
            if choices is not None and v not in choices:
                raise ValueError(f'{f.name} must be one of {list(choices)}, got {v!r}')


@dataclass
class ModelNodeConfig:
    """Parameters every ami_ros model node has (the node's own come after these)."""

    scene: str = _p('arm_reach', choices=tuple(SCENES))
    """Scene (robot) the stack runs for: picks the default model and URDF."""
    robot: str = _p('', read_only=True)
    """Robot config (a YAML path, or the name of one in share/ami_ros/config/robots) of an arm:
    its URDF and end-effector link stand in for empty urdf and tip_link, its name for an empty
    model. Empty = the scene's own robot (config/robots/<scene>.yaml where there is one)."""
    model: str = ''
    """World-model checkpoint: a directory, or the name of a shipped model under
    share/ami_ros/models; empty = the model shipped for ``scene`` (or named as the robot).
    Applied on configure."""
    backend: str = _p('torch', choices=BACKENDS)
    """Inference backend: torch, onnxruntime or tensorrt. Applied on configure."""
    device: str = 'auto'
    """Device of the torch backend: auto (CUDA when available), cpu, cuda or cuda:N."""
    backend_fallback: tuple[str, ...] = _p(('torch',))
    """Backends tried in order when ``backend`` cannot be loaded here (no GPU, no engine)."""
    torch_threads: int = _p(0, 0, 256)
    """CPU threads of the backend (torch's are process-wide; 0 = the library's default).
    Applied on configure."""
    autostart: bool = True
    """Configure and activate at start-up; false = wait for a lifecycle manager."""
    diagnostics_hz: float = _p(1.0, 0.1, 100.0)
    """Rate of this node's /diagnostics messages, wall-clock Hz."""

    def __post_init__(self):
        check_fields(self)
        if self.device != 'auto' and self.device != 'cpu' and not self.device.startswith('cuda'):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got "
                             f'{self.device!r}')
        bad = [b for b in self.backend_fallback if b not in BACKENDS]
        if bad:
            raise ValueError(f'backend_fallback {bad} are not backends {list(BACKENDS)}')
        if self.robot:
            check_robot_scene(self.scene)
            self.robot_config()  # a bad robot or URDF fails here, naming the fix

    @property
    def model_name(self) -> str:
        return self.model or (self.robot_config().name if self.robot else self.scene)

    def robot_config(self):
        """The :class:`~ami_ros.robot_config.RobotConfig` in force, or None (no arm config)."""
        from ami_ros.robot_config import default_robot, load_robot

        robot = self.robot or default_robot(self.scene)
        return None if robot is None else load_robot(robot)


def check_robot_scene(scene: str) -> None:
    """Robot configs describe arms: only the arm scene takes one."""
    if scene not in ARM_SCENES:
        raise ValueError(f'a robot config drives the arm scene {list(ARM_SCENES)}, not scene '
                         f'{scene!r}')


def robot_urdf(config) -> str:
    """The URDF of a node config: its ``urdf``, the robot config's, or the scene's."""
    from ami_ros.paths import urdf_path

    if config.urdf:
        return config.urdf
    robot = config.robot_config()
    return str(robot.urdf if robot is not None else urdf_path(config.scene))


@dataclass
class PerceptionConfig(ModelNodeConfig):
    """Parameters of the ``perception`` node (those every model node has)."""


@dataclass
class WorldModelNodeConfig(ModelNodeConfig):
    """Parameters of the ``world_model`` node: the estimate stage."""

    rate_hz: float = _p(10.0, 0.5, 1000.0, read_only=True)
    """Belief steps per second (1 / the control period the model was trained at)."""
    gain: float = _p(1.0, 0.0, 1.0)
    """Filter gain K in [0, 1]: weight of a new frame's state against the prediction."""
    history: int = _p(20, 1, 1000, read_only=True)
    """Belief steps kept for fusing late frames (latency compensation)."""
    max_advance: int = _p(10, 0, 1000)
    """A frame this many steps ahead of the belief or more restarts it instead."""
    max_predict_steps: int = _p(20, 1, 100000)
    """At most this many predict-only steps without a frame; beyond, the belief waits for the
    next frame (and a gap this large usually means frames stamped on another clock)."""
    surprise_threshold: float = _p(4.0, 0.01, 1e6)
    """Surprise score (innovation / typical innovation) above which /diagnostics warns."""
    surprise_window: int = _p(100, 1, 100000, read_only=True)
    """Recent innovations the typical one is the median of."""
    surprise_channels: tuple[str, ...] = _p((), read_only=True)
    """Innovation channels scored, each against its own typical value, the surprise being the
    largest: all, visual, joints, ee, reading (the camera's reading of the joints against the
    measured ones). Empty: all (the RMS over the whole state)."""
    reset_threshold: float = _p(0.0, 0.0, 1e6)
    """Surprise above which the belief restarts from the frame (0 = never)."""
    gate_threshold: float = _p(0.0, 0.0, 1e6)
    """Surprise above which a frame is not fused, the belief keeps the model's prediction: an
    occluded or corrupt frame does not drag the belief (0 = fuse every frame)."""
    gate_max_frames: int = _p(5, 0, 1000)
    """Frames gated in a row after which the next surprising one restarts the belief."""
    joint_names: tuple[str, ...] = _p((), read_only=True)
    """Joints of the action vector, in the model's order; empty = the URDF's actuated joints."""
    urdf: str = _p('', read_only=True)
    """URDF for the joint names and limits; empty = the robot config's, or the scene's URDF."""
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
        self.belief_config()
        self.surprise_config()

    def belief_config(self) -> BeliefConfig:
        return BeliefConfig(
            gain=self.gain, dt=1.0 / self.rate_hz, history=self.history,
            max_advance=self.max_advance, reset_threshold=self.reset_threshold or None,
            gate_threshold=self.gate_threshold or None, gate_max_frames=self.gate_max_frames)

    def surprise_config(self) -> SurpriseConfig:
        return SurpriseConfig(window=self.surprise_window,
                              min_count=min(10, self.surprise_window),
                              threshold=self.surprise_threshold,
                              channels=tuple(self.surprise_channels))


AGENT_FIELDS = ('planner', 'horizon', 'samples', 'iterations', 'elites', 'temperature',
                'init_std', 'min_std', 'momentum', 'seed', 'metric', 'terminal_weight',
                'running_weight', 'smoothness_weight', 'probe_weight', 'visual_weight',
                'ee_weight', 'joint_weight', 'command_weight', 'goal_guide')
"""The planner parameters that make up the agent's settings (:meth:`PlannerNodeConfig.mpc`)."""


@dataclass
class PlannerNodeConfig(ModelNodeConfig):
    """Parameters of the ``planner`` node: the control stage, and the command interface."""

    output: str = _p('joint_trajectory', choices=OUTPUTS)
    """Command interface: joint_trajectory, forward_position or twist. Applied on configure."""
    rate_hz: float = _p(10.0, 0.5, 1000.0, read_only=True)
    """Replanning and control rate (one command per period)."""
    replan_on: str = _p('frame', choices=('timer', 'frame'))
    """When to plan: timer (every 1/rate_hz of the node clock) or frame (as soon as a belief
    corrected by a new camera frame arrives, at most twice per period; the timer steps in only
    when no frame came for 1.5 periods). frame saves up to a period of camera -> command
    latency."""
    planner: str = _p('cem', choices=('cem', 'mppi'))
    """Sampling planner: cem or mppi."""
    horizon: int = _p(8, 1, 200)
    """Plan length in planned actions (control steps, or blocks of ``action_block`` steps)."""
    action_block: int = _p(1, 1, 50)
    """Control steps each planned action is held (frameskip): the plan looks horizon x
    action_block steps ahead for the search cost of horizon actions; the planner still plans
    every control step."""
    samples: int = _p(200, 2, 100000)
    """Candidate action sequences per iteration."""
    iterations: int = _p(4, 1, 100)
    """Refinements of the sampling distribution per plan."""
    elites: int = _p(20, 1, 100000)
    """CEM: lowest-cost samples the distribution is refitted to (<= samples)."""
    temperature: float = _p(0.5, 1e-6, 1e6)
    """MPPI: softmax temperature in cost units."""
    init_std: float = _p(0.5, 1e-6, 100.0)
    """Sampling std at the start of each plan, action units (rad, m or m/s)."""
    min_std: float = _p(0.02, 0.0, 100.0)
    """Floor of the refitted std, action units."""
    momentum: float = _p(0.1, 0.0, 0.99)
    """Weight of the old mean in each refit."""
    seed: int = _p(0, 0, 2**31 - 1)
    """Seed of the planner's random stream."""
    metric: str = _p('l2', choices=('l1', 'l2', 'euclidean', 'cosine'))
    """Latent distance to an image goal: l1, l2, euclidean or cosine."""
    terminal_weight: float = _p(1.0, 0.0, 1e6)
    """Weight of the last predicted step's distance to the goal."""
    running_weight: float = _p(0.1, 0.0, 1e6)
    """Weight of every earlier step's distance (> 0 prefers getting there sooner)."""
    smoothness_weight: float = _p(0.0, 0.0, 1e6)
    """Weight of the squared change between consecutive planned commands (0 = off)."""
    probe_weight: float = _p(1.0, 0.0, 1e6)
    """Weight of the pose-goal cost (distance of the probed quantity, its units)."""
    visual_weight: float = _p(1.0, 0.0, 1e6)
    """Models with proprioception: weight of the visual latent's distance in image-goal costs."""
    ee_weight: float = _p(0.0, 0.0, 1e6)
    """Models with proprioception: weight of the end effector's distance (m) to the one read
    from the goal image."""
    joint_weight: float = _p(0.0, 0.0, 1e6)
    """Models with proprioception: weight of the joints' distance (rad) to the posture read
    from the goal image."""
    command_weight: float = _p(0.0, 0.0, 1e6)
    """Models with proprioception: weight of the end effector's distance (m) to the goal at the
    last planned command, where the position servos bring the arm to rest."""
    goal_guide: bool = False
    """Models with proprioception, image goals: the goal posture (inverse kinematics of the end
    effector read from the goal image, from its joint reading) and the path to it are among the
    planner's candidates at every tick."""
    trajectory_points: int = _p(1, 1, 200)
    """joint_trajectory output: plan steps sent per message (the controller follows them if the
    next message is late)."""
    joint_names: tuple[str, ...] = ()
    """Joints of the action vector in the model's order; empty = the URDF's actuated joints."""
    urdf: str = ''
    """URDF with the joint limits; empty = the robot config's, or the scene's URDF."""
    velocity_scale: float = _p(1.0, 0.01, 1.0)
    """Commands move at most this fraction of the URDF velocity limits."""
    position_margin: float = _p(0.0, 0.0, 10.0)
    """Commands stay this far inside the URDF position limits (rad or m)."""
    twist_fields: tuple[str, ...] = ('linear.x', 'angular.z')
    """twist output: the Twist fields of the action vector."""
    twist_max: tuple[float, ...] = (0.5, 1.0)
    """twist output: speed limit per field (m/s, rad/s)."""
    twist_accel: tuple[float, ...] = (1.0, 2.0)
    """twist output: acceleration limit per field (m/s^2, rad/s^2)."""
    stale_timeout: float = _p(0.25, 0.01, 60.0)
    """Hold when the newest frame, belief or joint state is older than this (s, node clock;
    the agent holds on a belief this old)."""
    start_enabled: bool = True
    """Whether commands flow before anyone calls ami/enable."""
    world_frame_id: str = 'world'
    """Frame goal poses must be in (no tf lookup is done)."""
    goal_probe: str = 'ee_position'
    """Probe a goal pose's position is compared with (e.g. ee_position, block_position)."""
    workspace_check: bool = True
    """Reject goal poses the URDF chain's tip cannot reach."""
    workspace_axes: str = 'xyz'
    """Coordinates the workspace check compares (xyz, or xy for planar goals)."""
    workspace_tolerance: float = _p(0.03, 1e-4, 10.0)
    """A goal this close (m) to a reachable tip position is accepted."""
    workspace_min_z: float = _p(0.0, -100.0, 100.0)
    """Tip positions below this height (m) count as unreachable (the floor)."""
    tip_link: str = ''
    """Link the workspace is computed for; empty = the robot config's end effector, or the URDF
    chain's last link."""

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

    @property
    def rollout_steps(self) -> int:
        """Steps the model rolls out per candidate: every held step (horizon x action_block)."""
        return int(self.horizon) * int(self.action_block)

    def mpc(self, world: WorldModelNodeConfig, limits, max_belief_age=None) -> MPCConfig:
        """Return the control stage's settings for a robot with these safety ``limits``.

        ``limits``: :class:`~ami_ros.safety.Limits` (bounds, and the rate limit as the
        planner's).
        """
        planning = PlannerConfig(
            action_dim=limits.size, horizon=self.horizon, n_samples=self.samples,
            iterations=self.iterations, n_elites=self.elites, temperature=self.temperature,
            init_std=self.init_std, min_std=self.min_std, momentum=self.momentum, seed=self.seed,
            action_block=self.action_block)
        dt = 1.0 / self.rate_hz
        return MPCConfig(
            planning=planning, planner=self.planner, metric=self.metric,
            terminal_weight=self.terminal_weight, running_weight=self.running_weight,
            smoothness_weight=self.smoothness_weight, probe_weight=self.probe_weight,
            visual_weight=self.visual_weight, ee_weight=self.ee_weight,
            joint_weight=self.joint_weight, command_weight=self.command_weight,
            goal_guide=self.goal_guide, belief=world.belief_config(),
            surprise=world.surprise_config(),
            max_belief_age=max_belief_age).with_limits(limits.lower, limits.upper, limits.rate, dt)

    def limits(self, joint_names=()):
        """The safety layer's limits: the URDF's (position commands) or the Twist ones."""
        from ami_ros.safety import Limits

        if self.output == 'twist':
            return Limits.symmetric(self.twist_fields, self.twist_max, self.twist_accel)
        return Limits.from_urdf(robot_urdf(self), joint_names, self.velocity_scale,
                                self.position_margin)

    def workspace(self):
        """The reachable workspace goal poses are checked against, or None (no check)."""
        from ami_ros.robot import Workspace

        if self.output == 'twist' or not self.workspace_check:
            return None
        robot = self.robot_config()
        tip = self.tip_link or (robot.end_effector if robot is not None else '')
        return Workspace.from_urdf(robot_urdf(self), tip, axes=self.workspace_axes,
                                   tolerance=self.workspace_tolerance,
                                   min_z=self.workspace_min_z)


def joint_names_for(config) -> tuple[str, ...]:
    """The configured joint names, or the robot's (its config's order), or the URDF's actuated."""
    from ami_ros.robot_config import chain_joints
    from ami_ros.safety import Limits, UrdfError

    if config.joint_names:
        return tuple(config.joint_names)
    robot = config.robot_config()
    if robot is not None and not config.urdf:
        return chain_joints(robot)
    try:
        return Limits.from_urdf(robot_urdf(config)).names
    except UrdfError as e:
        raise ValueError(f'cannot get the joint names: {e}') from None


# ------------------------------------------------------------------------------------------------
# the scene file

NODE_CONFIGS = {'perception': PerceptionConfig, 'world_model': WorldModelNodeConfig,
                'planner': PlannerNodeConfig}


@dataclass
class SceneConfig:
    """The nodes' configs and eval-plan's block as one scene file (and ami_ros.yaml) set them."""

    perception: PerceptionConfig
    world_model: WorldModelNodeConfig
    planner: PlannerNodeConfig
    eval: dict
    files: tuple[Path, ...]
    protocols: dict = dataclasses.field(default_factory=dict)
    """eval-plan's protocols by name: 'own' (the ``/**/eval_plan`` block), 'swm' (the
    world-model benchmarks', ``/**/eval_plan_swm``), those the file has."""

    def eval_protocol(self, name: str | None = None) -> tuple[str, dict]:
        """(name, eval block) of a protocol; None: 'own', or the only one the scene has."""
        if name is None:
            name = 'own' if 'own' in self.protocols or not self.protocols else \
                next(iter(self.protocols))
        if name not in self.protocols and not (name == 'own' and not self.protocols):
            raise ValueError(f'{self.files[-1]}: no {name!r} eval-plan protocol (block '
                             f'/**/{PROTOCOL_BLOCKS[name]}); it has {sorted(self.protocols)}')
        return name, dict(self.protocols.get(name, {}))

    def limits(self):
        """The safety limits of the scene's robot (position commands, URDF)."""
        return self.planner.limits(joint_names_for(self.world_model))

    def mpc(self, limits=None, max_belief_age=None) -> MPCConfig:
        """The Agent's config: the planner and world_model blocks, with the robot's limits."""
        return self.planner.mpc(self.world_model, limits or self.limits(), max_belief_age)

    def replace(self, **planner) -> 'SceneConfig':
        """A copy with some planner parameters changed (e.g. a planning budget)."""
        return dataclasses.replace(self, planner=dataclasses.replace(self.planner, **planner))


def _node_values(data: dict, node: str, where: str) -> dict:
    """The parameters a ROS params file gives ``node``: /** first, then its own block."""
    values: dict = {}
    for key in ('/**', f'/**/{node}'):
        block = data.get(key)
        if block is None:
            continue
        params = block.get('ros__parameters') if isinstance(block, dict) else None
        if not isinstance(params, dict):
            raise ValueError(f'{where}: block {key!r} needs a ros__parameters mapping')
        values.update(params)
    return values


def _build(cls, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f'{where}: unknown parameters {unknown} for {cls.__name__}')
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f'{where}: {e}') from None


PROTOCOL_BLOCKS = {'own': 'eval_plan', 'swm': 'eval_plan_swm'}
"""eval-plan's protocols and the blocks of a scene file that hold them."""
BLOCKS = ('/**',) + tuple(f'/**/{n}' for n in NODES + tuple(PROTOCOL_BLOCKS.values()))
"""The blocks a scene file may have."""


def load_scene_config(scene: str, path: str | Path | None = None,
                      overrides: dict | None = None, robot: str | Path | None = None
                      ) -> SceneConfig:
    """Return the stack's config for ``scene`` (and ``robot``, a robot config, for arms).

    config/ami_ros.yaml, then ``path`` (default config/<scene>.yaml), then ``robot``, then
    ``overrides`` {node: {param: value}}. ValueError naming the file for an unknown block or
    parameter, a bad value, or a file of another scene.
    """
    from ami_ros.paths import config_path

    path = Path(path) if path is not None else Path(config_path(f'{scene}.yaml'))
    files = (Path(config_path('ami_ros.yaml')), path)
    data: dict = {'/**': {'ros__parameters': {'scene': scene}}}
    for f in files:
        try:
            loaded = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f'{f}: cannot read the config: {e}') from None
        unknown = sorted(set(loaded) - set(BLOCKS)) if isinstance(loaded, dict) else [loaded]
        if unknown:
            raise ValueError(f'{f}: unknown blocks {unknown}; known: {list(BLOCKS)}')
        for key, block in loaded.items():
            params = (block or {}).get('ros__parameters') if isinstance(block, dict) else None
            if not isinstance(params, dict):
                raise ValueError(f'{f}: block {key!r} needs a ros__parameters mapping')
            data.setdefault(key, {'ros__parameters': {}})['ros__parameters'].update(params)
    if robot:
        data['/**']['ros__parameters']['robot'] = str(robot)
    nodes = {}
    for name, cls in NODE_CONFIGS.items():
        values = _node_values(data, name, str(path))
        values.update((overrides or {}).get(name, {}))
        nodes[name] = _build(cls, values, f'{path}: {name}')
    if nodes['planner'].scene != scene:
        raise ValueError(f'{path} is the config of scene {nodes["planner"].scene!r}, not '
                         f'{scene!r}')
    protocols = {name: dict(data[f'/**/{block}']['ros__parameters'])
                 for name, block in PROTOCOL_BLOCKS.items() if f'/**/{block}' in data}
    return SceneConfig(nodes['perception'], nodes['world_model'], nodes['planner'],
                       protocols.get('own', {}), files, protocols)
