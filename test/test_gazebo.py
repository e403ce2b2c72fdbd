"""The Gazebo files generated from a robot config (ami_ros.gazebo) and launch/gazebo.launch.py.

Gazebo cannot run here: these tests check what can be checked without it. The generated URDF
parses and its ros2_control block, controllers and camera follow the robot config; the world is
valid XML with the systems a camera and ros2_control need; the launch file declares described
arguments and hands the stack Gazebo's clock.
"""
from __future__ import annotations

import ast
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from ami_ros.gazebo import (CAMERA_LINK, CONTROLLER_TYPES, CONTROLLERS, camera_rpy,
                            write_gazebo_files)
from ami_ros.robot_config import chain_joints, load_robot

REPO = Path(__file__).resolve().parents[1]
ROBOTS = sorted(p.stem for p in (REPO / 'config' / 'robots').glob('*.yaml'))
LAUNCH = REPO / 'launch' / 'gazebo.launch.py'


def _rotation(rpy) -> np.ndarray:
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.mark.parametrize('look_at', [(0.0, 0.0, 0.2), (1.0, 2.0, 0.0), (-1.0, -0.5, 3.0)])
def test_camera_looks_at_its_target(look_at):
    pos = np.array([0.95, -0.7, 1.3])
    forward = _rotation(camera_rpy(pos, look_at)) @ [1.0, 0.0, 0.0]
    want = (np.asarray(look_at) - pos) / np.linalg.norm(np.asarray(look_at) - pos)
    assert np.allclose(forward, want, atol=1e-9)
    up = _rotation(camera_rpy(pos, look_at)) @ [0.0, 0.0, 1.0]
    assert up[2] > 0.0, 'image up is world up'


@pytest.mark.parametrize('name', ROBOTS)
def test_generated_urdf_and_controllers_follow_the_robot_config(name, tmp_path):
    import yourdfpy

    robot = load_robot(name)
    joints = list(chain_joints(robot))
    files = write_gazebo_files(robot, tmp_path)
    urdf = yourdfpy.URDF.load(str(files.urdf), build_scene_graph=True, load_meshes=False)
    assert urdf.base_link == 'world', 'the arm is fixed to the world'
    assert set(joints) <= set(urdf.actuated_joint_names)
    root = ET.parse(files.urdf).getroot()
    assert root.find('mujoco') is None
    block = root.find('ros2_control')
    assert block.find('hardware/plugin').text == 'gz_ros2_control/GazeboSimSystem'
    assert [j.get('name') for j in block.findall('joint')] == joints, 'command order'
    for joint in block.findall('joint'):
        limit = urdf.joint_map[joint.get('name')].limit
        params = {p.get('name'): float(p.text) for p in joint.findall('command_interface/param')}
        assert joint.find('command_interface').get('name') == 'position'
        assert params == pytest.approx({'min': limit.lower, 'max': limit.upper})
        states = [s.get('name') for s in joint.findall('state_interface')]
        assert states == ['position', 'velocity']
    plugin = root.find("gazebo/plugin[@filename='gz_ros2_control-system']")
    assert Path(plugin.find('parameters').text) == files.controllers.resolve()
    sensor = root.find(f"gazebo[@reference='{CAMERA_LINK}']/sensor")
    assert float(sensor.find('update_rate').text) == robot.control_hz
    assert int(sensor.find('camera/image/width').text) == robot.image_size
    assert float(sensor.find('camera/horizontal_fov').text) == pytest.approx(
        math.radians(robot.camera.fovy), abs=1e-6)
    camera_origin = urdf.joint_map[f'{CAMERA_LINK}_joint'].origin[:3, 3]
    assert np.allclose(camera_origin, robot.camera.pos)

    controllers = yaml.safe_load(files.controllers.read_text())
    manager = controllers['controller_manager']['ros__parameters']
    assert {k: v['type'] for k, v in manager.items() if isinstance(v, dict)} == CONTROLLER_TYPES
    for name in CONTROLLERS:
        assert controllers[name]['ros__parameters']['joints'] == joints


def test_world_has_the_systems_a_camera_and_ros2_control_need(tmp_path):
    world = ET.parse(write_gazebo_files('arm_reach', tmp_path).world).getroot()
    plugins = {p.get('name') for p in world.iter('plugin')}
    assert {'gz::sim::systems::Physics', 'gz::sim::systems::Sensors',
            'gz::sim::systems::SceneBroadcaster', 'gz::sim::systems::UserCommands'} <= plugins
    assert world.find('world/model/static').text == 'true'


def test_bad_robot_is_refused_before_anything_is_written(tmp_path):
    from ami_ros.robot_config import RobotError

    bad = tmp_path / 'bad.yaml'
    bad.write_text((REPO / 'config' / 'robots' / 'arm_reach.yaml').read_text().replace(
        'end_effector: tool0', 'end_effector: no_such_link').replace(
        'urdf: urdf/arm_reach.urdf', f'urdf: {REPO / "urdf" / "arm_reach.urdf"}'))
    with pytest.raises(RobotError, match='no_such_link'):
        write_gazebo_files(bad, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def _declared(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    found = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'DeclareLaunchArgument':
            kw = {k.arg: k.value for k in call.keywords}
            text = ''.join(v.value for v in ast.walk(kw['description'])
                           if isinstance(v, ast.Constant))
            found[call.args[0].value] = (text, kw)
    return found


def test_gazebo_launch_arguments_and_the_stack_on_gazebo_time():
    declared = _declared(LAUNCH)
    assert set(declared) == {'robot', 'controller', 'headless', 'out_dir', 'params_file'}
    for name, (text, _) in declared.items():
        assert len(text) > 20, f'argument {name!r} needs a real description'
    source = LAUNCH.read_text()
    assert "'use_sim_time': 'true'" in source and "'use_sim': 'false'" in source
    assert "'ami_bringup.launch.py'" in source and "'gz_sim.launch.py'" in source
    for topic in ('/clock@rosgraph_msgs/msg/Clock', '@sensor_msgs/msg/Image',
                  '@sensor_msgs/msg/CameraInfo'):
        assert topic in source
