"""A robot is configuration: one YAML file names an arm's URDF, end effector and camera (no ROS).

``config/robots/<name>.yaml`` (or any path) drives the built-in arm scene (``arm_reach``: an arm
reaching for a goal point, :mod:`ami_ros.sim.arm_reach`), ``ami-ros collect``, ``eval-plan``,
``eval-surprise``, ``bench``, ``demo``, ``bringup``, the ``sim`` node and the launch files::

    name: my_arm                  # bag directories, logs, the default model name
    urdf: urdf/my_arm.urdf        # absolute, or relative to this file, or to share/ami_ros
    end_effector: flange          # the link whose position goals are given for
    joints: []                    # default: the URDF's actuated joints from the root to it
    control_hz: 10.0              # control and frame rate the data and the model run at
    image_size: 64                # camera frame side, pixels (default of the CLI flags)
    goal_marker: true             # draw the green goal point (and its shadow)
    camera: {pos: [0.95, -0.7, 1.3], look_at: [0.0, 0.0, 0.2], fovy: 55.0}

:func:`load_robot` also takes a bare URDF (:func:`robot_from_urdf`: defaults for every key).
It reads and checks the file and the URDF it names with yourdfpy: a missing
end-effector link, joints without limits, moving links without inertia or an arm without visual
geometry are :class:`RobotError` naming the file and the fix. The MuJoCo side (visuals kept,
rendered) is checked when the scene is built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ami_ros.paths import config_path, share_dir
from ami_ros.robot import Chain, UrdfError, load_urdf

KEYS = ('name', 'urdf', 'end_effector', 'joints', 'control_hz', 'image_size', 'goal_marker',
        'camera')
CAMERA_KEYS = ('pos', 'look_at', 'fovy')
LIMIT_FIX = '<limit lower="-1.57" upper="1.57" velocity="1.0" effort="50.0"/>'


class RobotError(ValueError):
    """A robot config or URDF the simulator and the stack cannot use; the message says the fix."""


@dataclass(frozen=True)
class CameraConfig:
    """A fixed pinhole camera looking from ``pos`` at ``look_at`` (world frame, metres)."""

    pos: tuple[float, float, float] = (0.95, -0.7, 1.3)
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.2)
    fovy: float = 55.0
    """Vertical field of view, degrees."""


@dataclass(frozen=True)
class RobotConfig:
    """A serial arm: its URDF, end effector, joints, camera and rates (see the module doc)."""

    name: str
    urdf: Path
    end_effector: str
    joints: tuple[str, ...] = ()
    """Actuated joints in command order; empty = the URDF's from the root to the end effector."""
    control_hz: float = 10.0
    image_size: int = 64
    goal_marker: bool = True
    camera: CameraConfig = CameraConfig()
    source: Path | None = None
    """The file the config was read from (for messages)."""

    @property
    def where(self) -> str:
        return str(self.source or self.name)


def robot_path(robot: str | Path) -> Path:
    """The robot config file: a path, or the name of a shipped one (config/robots/<name>.yaml)."""
    text = str(robot)
    if not text:
        raise RobotError('no robot config given')
    path = Path(text).expanduser()
    if path.suffix in ('.yaml', '.yml', '.urdf') or '/' in text:
        if not path.is_file():
            raise RobotError(f'{path}: robot config not found')
        return path.resolve()
    shipped = config_path(f'robots/{text}.yaml')
    if not shipped.is_file():
        known = sorted(p.stem for p in config_path('robots').glob('*.yaml'))
        raise RobotError(f'no robot config {text!r}: give a YAML file (or a URDF), or one of '
                         f'{known}')
    return shipped


def default_robot(scene: str) -> Path | None:
    """The robot config shipped for a built-in scene (config/robots/<scene>.yaml), if any."""
    path = config_path(f'robots/{scene}.yaml')
    return path if path.is_file() else None


def _resolve_urdf(value, source: Path) -> Path:
    """The URDF path: absolute, relative to the config file, or relative to share/ami_ros."""
    if not isinstance(value, str) or not value:
        raise RobotError(f'{source}: urdf must be a path to the robot\'s URDF file')
    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [source.parent / path, share_dir() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise RobotError(f'{source}: URDF {value!r} not found (tried {", ".join(map(str, tried))}); '
                     f'give it absolute or relative to the config file')


def _vector(value, what: str, source: Path) -> tuple[float, float, float]:
    try:
        v = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        v = ()
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise RobotError(f'{source}: {what} must be 3 numbers [x, y, z] in metres, got {value!r}')
    return v  # type: ignore[return-value]


def _camera(data, source: Path) -> CameraConfig:
    if data is None:
        return CameraConfig()
    if not isinstance(data, dict) or set(data) - set(CAMERA_KEYS):
        raise RobotError(f'{source}: camera must be a mapping with keys {list(CAMERA_KEYS)}, got '
                         f'{data!r}')
    default = CameraConfig()
    pos = _vector(data.get('pos', default.pos), 'camera.pos', source)
    look_at = _vector(data.get('look_at', default.look_at), 'camera.look_at', source)
    fovy = float(data.get('fovy', default.fovy))
    if not 1.0 <= fovy <= 179.0:
        raise RobotError(f'{source}: camera.fovy must be in [1, 179] degrees, got {fovy}')
    forward = np.subtract(look_at, pos)
    if np.linalg.norm(forward) < 1e-6 or np.linalg.norm(np.cross(forward, [0, 0, 1])) < 1e-6:
        raise RobotError(f'{source}: camera.look_at must differ from camera.pos and not lie '
                         f'straight above or below it (the image\'s up is world z)')
    return CameraConfig(pos, look_at, fovy)


def parse_robot(data, source: Path) -> RobotConfig:
    """A RobotConfig from the mapping of a robot config file (paths resolved, URDF not read)."""
    if not isinstance(data, dict):
        raise RobotError(f'{source}: a robot config is a mapping with keys {list(KEYS)}')
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise RobotError(f'{source}: unknown keys {unknown}; known: {list(KEYS)}')
    for key in ('name', 'urdf', 'end_effector'):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RobotError(f'{source}: {key} is required (a non-empty string)')
    joints = data.get('joints') or ()
    if not isinstance(joints, (list, tuple)) or not all(isinstance(j, str) for j in joints):
        raise RobotError(f'{source}: joints must be a list of joint names, got {joints!r}')
    control_hz, image_size = float(data.get('control_hz', 10.0)), data.get('image_size', 64)
    if not 0.5 <= control_hz <= 1000.0:
        raise RobotError(f'{source}: control_hz must be in [0.5, 1000], got {control_hz}')
    if not isinstance(image_size, int) or not 16 <= image_size <= 1024:
        raise RobotError(f'{source}: image_size must be an integer in [16, 1024], got '
                         f'{image_size!r}')
    if not isinstance(data.get('goal_marker', True), bool):
        raise RobotError(f'{source}: goal_marker must be true or false')
    return RobotConfig(
        name=data['name'], urdf=_resolve_urdf(data['urdf'], source),
        end_effector=data['end_effector'], joints=tuple(joints), control_hz=control_hz,
        image_size=image_size, goal_marker=data.get('goal_marker', True),
        camera=_camera(data.get('camera'), source), source=source)


def load_robot(robot: str | Path | RobotConfig) -> RobotConfig:
    """Read a robot config (a path or a shipped name) and check its URDF; RobotError if bad."""
    if isinstance(robot, RobotConfig):
        return robot
    path = robot_path(robot)
    if path.suffix == '.urdf':
        config = robot_from_urdf(path)
    else:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise RobotError(f'{path}: cannot read the robot config: {e}') from None
        config = parse_robot(data, path)
    chain_joints(config)  # the URDF checks
    return config


ARM_REACH_LENGTH = 0.9
"""Root-to-tool length of urdf/arm_reach.urdf (m), whose view the default camera frames."""


def robot_from_urdf(path: Path) -> RobotConfig:
    """The robot config of a bare URDF (``--robot arm.urdf``): defaults a config file would set.

    Its name, the end of its one longest chain as the end effector, and arm_reach's camera
    scaled to the chain's length (root to tool at zero angles), so the whole reach is in view.
    """
    try:
        chain = Chain(path)
    except UrdfError as e:
        raise RobotError(f'{e}; or write a robot config that names end_effector '
                         f'(config/robots/arm_reach.yaml shows the keys)') from None
    length = sum(float(np.linalg.norm(np.asarray(j.origin)[:3, 3])) for j in chain.joints
                 if j.origin is not None)
    scale = max(length, 0.05) / ARM_REACH_LENGTH
    default = CameraConfig()
    camera = CameraConfig(tuple(scale * v for v in default.pos),
                          tuple(scale * v for v in default.look_at), default.fovy)
    return RobotConfig(name=_load_path(path).robot.name or path.stem, urdf=path.resolve(),
                       end_effector=chain.tip_link, camera=camera, source=path.resolve())


def _load_path(path: Path):
    try:
        return load_urdf(path)
    except UrdfError as e:
        raise RobotError(str(e)) from None


# ------------------------------------------------------------------------------------------------
# the URDF as the simulator needs it


def chain_joints(robot: RobotConfig) -> tuple[str, ...]:
    """The actuated joints in command order, after checking the URDF (RobotError names the fix)."""
    urdf = _load(robot)
    links = {link.name: link for link in urdf.robot.links}
    if robot.end_effector not in links:
        raise RobotError(f'{robot.where}: end_effector {robot.end_effector!r} is not a link of '
                         f'{robot.urdf}; its links: {sorted(links)}')
    try:
        chain = Chain(robot.urdf, robot.end_effector)
    except UrdfError as e:
        raise RobotError(f'{robot.where}: {e}; every actuated joint needs {LIMIT_FIX}') from None
    on_chain = chain.joint_names
    off_chain = sorted(set(urdf.actuated_joint_names) - set(on_chain))
    if off_chain:
        raise RobotError(f'{robot.where}: joints {off_chain} of {robot.urdf} are not between the '
                         f'root and {robot.end_effector!r}: only serial arms are supported (make '
                         f'them fixed, or pick the end effector at the end of the chain)')
    if robot.joints and sorted(robot.joints) != sorted(on_chain):
        raise RobotError(f'{robot.where}: joints {list(robot.joints)} must name each actuated '
                         f'joint of the chain once: {list(on_chain)}')
    names = robot.joints or on_chain
    for name in names:
        _check_joint(robot, urdf.joint_map[name])
    _check_links(robot, urdf, [j for j in chain.joints if j.type != 'fixed'])
    return tuple(names)


def _load(robot: RobotConfig):
    try:
        return load_urdf(robot.urdf)
    except UrdfError as e:
        raise RobotError(f'{robot.where}: {e}') from None


def _check_joint(robot: RobotConfig, joint) -> None:
    lim = joint.limit
    where = f'{robot.urdf}: joint {joint.name!r}'
    if joint.type != 'revolute':
        raise RobotError(f'{where} is {joint.type}; the arm scene drives revolute joints with '
                         f'limits only (make it revolute with {LIMIT_FIX})')
    if lim is None or None in (lim.lower, lim.upper, lim.velocity, lim.effort):
        raise RobotError(f'{where} has no complete limits: the servos and the safety layer need '
                         f'lower, upper, velocity and effort, e.g. {LIMIT_FIX}')
    if not (lim.lower < lim.upper and lim.velocity > 0 and lim.effort > 0):
        raise RobotError(f'{where} has bad limits (need lower < upper, velocity > 0, effort > 0): '
                         f'lower={lim.lower} upper={lim.upper} velocity={lim.velocity} '
                         f'effort={lim.effort}')


def _check_links(robot: RobotConfig, urdf, joints) -> None:
    """Every link a joint moves has mass and inertia; some link of the arm has a visual."""
    for joint in joints:
        link = urdf.link_map[joint.child]
        inertial = link.inertial
        inertia = None if inertial is None else inertial.inertia
        if inertial is None or inertial.mass is None or not inertial.mass > 0.0 or \
                inertia is None or not np.all(np.diag(np.asarray(inertia)) > 0.0):
            raise RobotError(f'{robot.urdf}: link {link.name!r} (moved by joint {joint.name!r}) '
                             f'has no mass or inertia; the physics needs one: add <inertial> '
                             f'with <mass value=".."/> and <inertia ixx=".." iyy=".." izz=".." '
                             f'ixy="0" ixz="0" iyz="0"/>')
    moved = _links_below(urdf, joints[0].child)
    if not any(urdf.link_map[name].visuals for name in moved):
        raise RobotError(f'{robot.urdf}: no link moved by the joints has <visual> geometry: the '
                         f'camera would see no arm (add <visual> elements to the links)')


def _links_below(urdf, root: str) -> set[str]:
    """``root`` and every link below it in the kinematic tree."""
    below, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for joint in urdf.robot.joints:
            if joint.parent == parent and joint.child not in below:
                below.add(joint.child)
                frontier.append(joint.child)
    return below


def read_joints(robot: RobotConfig):
    """(names, lower, upper, velocity, effort) of the robot's actuated joints, command order."""
    names = chain_joints(robot)
    joint_map = _load(robot).joint_map
    rows = [(joint_map[n].limit.lower, joint_map[n].limit.upper, joint_map[n].limit.velocity,
             joint_map[n].limit.effort) for n in names]
    if len(names) < 2:
        raise RobotError(f'{robot.where}: an arm needs at least 2 revolute joints, found '
                         f'{list(names)}')
    lower, upper, velocity, effort = (np.array(c, dtype=np.float64) for c in zip(*rows))
    return names, lower, upper, velocity, effort


def stack_overrides(robot: RobotConfig | None) -> dict[str, dict]:
    """{node: {parameter: value}} that point the stack's nodes at the robot's URDF and tool."""
    if robot is None:
        return {}
    return {'world_model': {'urdf': str(robot.urdf)},
            'planner': {'urdf': str(robot.urdf), 'tip_link': robot.end_effector}}
