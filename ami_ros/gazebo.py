"""The files Gazebo (gz sim) needs to run a robot config.

A URDF with ros2_control and a camera, the controllers YAML of ros2_control, and a world. No ROS
import; ``launch/gazebo.launch.py`` writes these files and starts Gazebo, gz_ros2_control,
ros_gz_bridge and the stack on them.

The generated URDF is the robot's own, plus:

* a ``world`` link the root link is fixed to (the arm stands where the built-in simulator has it);
* a ``<ros2_control>`` block (``gz_ros2_control/GazeboSimSystem``): a ``position`` command
  interface within the URDF limits and ``position`` / ``velocity`` state interfaces on every
  actuated joint of the robot config, in command order;
* the gz_ros2_control plugin, reading the controllers YAML;
* a camera link and sensor where the robot config puts the camera (same look-at point, field of
  view, image size and rate), publishing ``camera/image_raw`` (and ``camera/camera_info``).

The controllers YAML has ``joint_state_broadcaster`` and both position controllers the planner can
drive (``output`` parameter): ``joint_trajectory_controller`` and ``forward_position_controller``;
the launch file activates one of them. Gazebo renders its own pictures: a model trained on the
built-in simulator's frames does not transfer, record bags in Gazebo and train on them.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ami_ros.robot_config import RobotConfig, chain_joints, load_robot

CONTROLLERS = ('joint_trajectory_controller', 'forward_position_controller')
"""Position controllers the generated controllers YAML declares (one is activated)."""
CONTROLLER_TYPES = {
    'joint_state_broadcaster': 'joint_state_broadcaster/JointStateBroadcaster',
    'joint_trajectory_controller': 'joint_trajectory_controller/JointTrajectoryController',
    'forward_position_controller': 'position_controllers/JointGroupPositionController',
}
CAMERA_LINK = 'ami_camera_link'
CAMERA_TOPIC = 'camera/image_raw'
WORLD_LINK = 'world'


@dataclass(frozen=True)
class GazeboFiles:
    """Paths of the files :func:`write_gazebo_files` wrote."""

    urdf: Path
    controllers: Path
    world: Path


def camera_rpy(pos, look_at) -> tuple[float, float, float]:
    """URDF (roll, pitch, yaw) of a Gazebo camera at ``pos`` looking at ``look_at``.

    A Gazebo camera looks along its link's +x with +z up; URDF rpy is R = Rz(yaw) Ry(pitch)
    Rx(roll), so +x maps to (cos yaw cos pitch, sin yaw cos pitch, -sin pitch).
    """
    forward = np.asarray(look_at, float) - np.asarray(pos, float)
    norm = float(np.linalg.norm(forward))
    if norm == 0.0:
        raise ValueError(f'camera at {list(pos)} looks at itself')
    fx, fy, fz = forward / norm
    return 0.0, float(-math.asin(np.clip(fz, -1.0, 1.0))), float(math.atan2(fy, fx))


def _root_link(root: ET.Element) -> str:
    children = {j.find('child').get('link') for j in root.iter('joint')
                if j.find('child') is not None}
    roots = [link.get('name') for link in root.findall('link') if link.get('name') not in children]
    if len(roots) != 1:
        raise ValueError(f'expected one root link, found {roots}')
    return roots[0]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        element.text = str(text)
    return element


def _fixed(root: ET.Element, name: str, parent: str, child: str, xyz, rpy=(0.0, 0.0, 0.0)):
    joint = _sub(root, 'joint', name=name, type='fixed')
    _sub(joint, 'parent', link=parent)
    _sub(joint, 'child', link=child)
    _sub(joint, 'origin', xyz=' '.join(f'{v:.6g}' for v in xyz),
         rpy=' '.join(f'{v:.6g}' for v in rpy))


def _add_ros2_control(root: ET.Element, robot: RobotConfig, joints) -> None:
    block = _sub(root, 'ros2_control', name=robot.name, type='system')
    hardware = _sub(block, 'hardware')
    _sub(hardware, 'plugin', 'gz_ros2_control/GazeboSimSystem')
    limits = {j.get('name'): j.find('limit') for j in root.iter('joint')}
    for name in joints:
        joint = _sub(block, 'joint', name=name)
        command = _sub(joint, 'command_interface', name='position')
        _sub(command, 'param', limits[name].get('lower'), name='min')
        _sub(command, 'param', limits[name].get('upper'), name='max')
        state = _sub(joint, 'state_interface', name='position')
        _sub(state, 'param', '0.0', name='initial_value')
        _sub(joint, 'state_interface', name='velocity')


def _add_camera(root: ET.Element, robot: RobotConfig) -> None:
    cam = robot.camera
    link = _sub(root, 'link', name=CAMERA_LINK)
    inertial = _sub(link, 'inertial')  # Gazebo drops links without mass
    _sub(inertial, 'mass', value='0.01')
    _sub(inertial, 'inertia', ixx='1e-6', iyy='1e-6', izz='1e-6', ixy='0', ixz='0', iyz='0')
    _fixed(root, f'{CAMERA_LINK}_joint', WORLD_LINK, CAMERA_LINK, cam.pos,
           camera_rpy(cam.pos, cam.look_at))
    gazebo = _sub(root, 'gazebo', reference=CAMERA_LINK)
    sensor = _sub(gazebo, 'sensor', name='ami_camera', type='camera')
    _sub(sensor, 'always_on', 'true')
    _sub(sensor, 'update_rate', f'{robot.control_hz:g}')
    _sub(sensor, 'topic', CAMERA_TOPIC)
    camera = _sub(sensor, 'camera')
    _sub(camera, 'horizontal_fov', f'{math.radians(cam.fovy):.6f}')  # square frames
    image = _sub(camera, 'image')
    _sub(image, 'width', robot.image_size)
    _sub(image, 'height', robot.image_size)
    _sub(image, 'format', 'R8G8B8')
    clip = _sub(camera, 'clip')
    _sub(clip, 'near', '0.05')
    _sub(clip, 'far', '20')


def gazebo_urdf(robot: RobotConfig | str | Path, controllers: str | Path) -> str:
    """The robot's URDF for Gazebo (see the module docstring), as text."""
    robot = load_robot(robot)
    joints = chain_joints(robot)
    root = ET.parse(robot.urdf).getroot()
    for element in root.findall('mujoco'):  # the built-in simulator's compiler hints
        root.remove(element)
    base = _root_link(root)
    if base != WORLD_LINK:
        _sub(root, 'link', name=WORLD_LINK)
        _fixed(root, f'{WORLD_LINK}_to_{base}', WORLD_LINK, base, (0.0, 0.0, 0.0))
    _add_ros2_control(root, robot, joints)
    plugin = _sub(_sub(root, 'gazebo'), 'plugin', filename='gz_ros2_control-system',
                  name='gz_ros2_control::GazeboSimROS2ControlPlugin')
    _sub(plugin, 'parameters', str(controllers))
    _add_camera(root, robot)
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding='unicode') + '\n'


def controllers_config(robot: RobotConfig | str | Path, update_rate: int = 100) -> dict:
    """ros2_control's controllers YAML (as a dict) for the robot's joints, in command order."""
    robot = load_robot(robot)
    joints = list(chain_joints(robot))
    manager = {'update_rate': int(update_rate),
               **{name: {'type': kind} for name, kind in CONTROLLER_TYPES.items()}}
    return {
        'controller_manager': {'ros__parameters': manager},
        'joint_trajectory_controller': {'ros__parameters': {
            'joints': joints, 'command_interfaces': ['position'],
            'state_interfaces': ['position', 'velocity'],
            'allow_partial_joints_goal': False}},
        'forward_position_controller': {'ros__parameters': {'joints': list(joints)}},
    }


WORLD_SDF = """<?xml version="1.0"?>
<sdf version="1.9">
  <world name="ami_ros">
    <physics name="1ms" type="ignored">
      <max_step_size>0.001</max_step_size>
      <real_time_factor>1.0</real_time_factor>
    </physics>
    <plugin filename="gz-sim-physics-system" name="gz::sim::systems::Physics"/>
    <plugin filename="gz-sim-user-commands-system" name="gz::sim::systems::UserCommands"/>
    <plugin filename="gz-sim-scene-broadcaster-system" name="gz::sim::systems::SceneBroadcaster"/>
    <plugin filename="gz-sim-sensors-system" name="gz::sim::systems::Sensors">
      <render_engine>ogre2</render_engine>
    </plugin>
    <light type="directional" name="sun">
      <cast_shadows>false</cast_shadows>
      <pose>0.6 -0.4 2.5 0 0 0</pose>
      <diffuse>0.6 0.6 0.6 1</diffuse>
      <specular>0 0 0 1</specular>
      <direction>-0.3 0.2 -1.0</direction>
    </light>
    <model name="floor">
      <static>true</static>
      <link name="link">
        <collision name="collision">
          <geometry><plane><normal>0 0 1</normal><size>20 20</size></plane></geometry>
        </collision>
        <visual name="visual">
          <geometry><plane><normal>0 0 1</normal><size>20 20</size></plane></geometry>
          <material>
            <ambient>0.62 0.64 0.66 1</ambient>
            <diffuse>0.62 0.64 0.66 1</diffuse>
          </material>
        </visual>
      </link>
    </model>
  </world>
</sdf>
"""
"""The world: physics at 1 kHz, the systems a camera and ros2_control need, a sun, a floor
coloured as the built-in simulator's."""


def write_gazebo_files(robot: RobotConfig | str | Path, out: str | Path) -> GazeboFiles:
    """Write ``<name>.urdf``, ``<name>_controllers.yaml`` and ``world.sdf`` under ``out``."""
    robot = load_robot(robot)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = GazeboFiles(out / f'{robot.name}.urdf', out / f'{robot.name}_controllers.yaml',
                        out / 'world.sdf')
    files.controllers.write_text(yaml.safe_dump(controllers_config(robot), sort_keys=False))
    files.urdf.write_text(gazebo_urdf(robot, files.controllers.resolve()))
    files.world.write_text(WORLD_SDF)
    return files
