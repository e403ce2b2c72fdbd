"""A robot is configuration: robot config files, the arm scene built from them, bad robots.

``config/robots/arm_reach.yaml`` must give the arm_reach scene exactly as before (the shipped
model was trained on its frames); ``config/robots/boom5.yaml`` (5 joints, end link ``flange``)
goes through collect -> train -> eval-plan by files and flags only; URDFs that cannot work fail
with the file and the fix, and ``collect`` refuses frames that do not show the arm.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from ami_ros.cli import main
from ami_ros.robot_config import RobotError, load_robot

pytest.importorskip('mujoco', reason='the arm scene needs MuJoCo')
os.environ.setdefault('MUJOCO_GL', 'egl')

from ami_ros.sim import SceneConfig, make_scene  # noqa: E402
from conftest import REPO, node_command  # noqa: E402

BOOM5 = REPO / 'config' / 'robots' / 'boom5.yaml'
BOOM5_JOINTS = ('turret_yaw', 'boom_pitch', 'stick_pitch', 'wrist_pitch', 'hand_roll')
BOOM5_URDF = (REPO / 'urdf' / 'boom5.urdf').read_text()


def _frames(scene, seeds=(0, 1), steps=5):
    out = []
    for seed in seeds:
        scene.reset(seed)
        out.append(scene.render())
        explore = scene.make_explorer(np.random.default_rng(seed))
        for _ in range(steps):
            scene.set_target(explore())
            scene.step()
            out.append(scene.render())
    return np.stack(out)


def test_arm_reach_robot_config_is_the_arm_reach_scene():
    """The shipped config builds the scene the shipped model was trained on, frame for frame."""
    default = make_scene('arm_reach', SceneConfig(seed=3))
    named = make_scene('arm_reach', SceneConfig(seed=3), robot='arm_reach')
    try:
        assert default.robot_name == named.robot_name == 'arm_reach'
        assert default.joint_names == ('shoulder_pan_joint', 'shoulder_lift_joint',
                                       'elbow_joint', 'wrist_pitch_joint')
        assert default.robot.end_effector == 'tool0' and default.camera_fovy_deg == 55.0
        # the shoulder on the base yaw axis, 0.65 m to tool0 (urdf/arm_reach.urdf)
        np.testing.assert_allclose(default._shoulder, [0.0, 0.0, 0.25], atol=1e-12)
        assert default._reach == pytest.approx(0.65, abs=1e-12)
        np.testing.assert_array_equal(_frames(default), _frames(named))
        np.testing.assert_array_equal(default.goal_position, named.goal_position)
    finally:
        default.close()
        named.close()


def test_boom5_scene_from_its_config():
    scene = make_scene('arm_reach', SceneConfig(image_size=48, seed=1), robot=str(BOOM5))
    try:
        assert scene.joint_names == BOOM5_JOINTS and scene.robot_name == 'boom5'
        assert scene.robot.end_effector == 'flange'
        # the boom pivot is off the yaw axis: the reach sphere is centred on the turret
        np.testing.assert_allclose(scene._shoulder, [0.0, 0.0, 0.1], atol=1e-12)
        assert scene._reach == pytest.approx(np.hypot(0.05, 0.12) + 0.69, abs=1e-9)
        rng = np.random.default_rng(0)
        for _ in range(20):  # every posture lies inside the sphere; its goal is accepted
            ee = scene.forward_kinematics(scene.random_configuration(rng))
            assert np.linalg.norm(ee - scene._shoulder) <= scene._reach + 1e-9
            scene.set_goal(np.maximum(ee, [-9, -9, 0.0]))
        frames = _frames(scene)
        assert frames.shape[1:] == (48, 48, 3) and len({f.tobytes() for f in frames}) > 5
        assert scene.ground_truth()['ee_position'].shape == (3,)
        # the oracle's private copy (make_scene(name, config)) is the same arm
        twin = make_scene(scene.name, scene.config)
        assert twin.joint_names == BOOM5_JOINTS
        twin.close()
    finally:
        scene.close()


def _robot(tmp_path: Path, urdf: str, **changes) -> Path:
    """A robot config like boom5's for ``urdf`` (the text of a URDF) in ``tmp_path``."""
    (tmp_path / 'arm.urdf').write_text(urdf)
    data = yaml.safe_load(BOOM5.read_text())
    data.update(urdf='arm.urdf', **changes)
    path = tmp_path / 'arm.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize('edit, words', [
    (lambda u: u, r"end_effector 'tool0' is not a link of .*arm\.urdf; its links: .*flange"),
    (lambda u: u.replace('<limit lower="-2.3" upper="2.3" velocity="2.2" effort="80.0"/>',
                         '<limit velocity="2.2" effort="80.0"/>'),
     r"arm\.urdf: revolute joint 'stick_pitch' has no position limits.*<limit lower="),
    (lambda u: u.replace('velocity="3.0" effort="30.0"', 'velocity="3.0"'),
     r"joint 'wrist_pitch' has no complete limits.*effort=\"50\.0\""),
    (lambda u: re.sub(r'<inertial>\s*<origin xyz="0 0 0.15" rpy="0 0 0"/>\s*<mass value="2.2"/>'
                      r'.*?</inertial>', '', u, flags=re.S),
     r"link 'boom' \(moved by joint 'boom_pitch'\) has no mass.*<inertial>"),
    (lambda u: re.sub(r'<visual>.*?</visual>', '', u, flags=re.S),
     r'arm\.urdf: no link moved by the joints has <visual> geometry.*add <visual>'),
], ids=['missing-end-effector', 'no-position-limits', 'no-effort-limit', 'no-inertia',
        'no-visuals'])
def test_bad_robots_fail_naming_the_file_and_the_fix(tmp_path, edit, words):
    changes = {'end_effector': 'tool0'} if 'end_effector' in words else {}
    path = _robot(tmp_path, edit(BOOM5_URDF), **changes)
    with pytest.raises(RobotError, match=words):
        load_robot(path)
    rc = main(['collect', '--robot', str(path), '--episodes', '1', '--steps', '5',
               '--out', str(tmp_path / 'data'), '--no-progress'])
    assert rc == 2 and not (tmp_path / 'data').exists()


def test_bad_robot_configs(tmp_path):
    with pytest.raises(RobotError, match=r"unknown keys \['tool'\]"):
        load_robot(_robot(tmp_path, BOOM5_URDF, tool='x'))
    missing = tmp_path / 'missing.yaml'
    missing.write_text(BOOM5.read_text().replace('../../urdf/boom5.urdf', 'missing.urdf'))
    with pytest.raises(RobotError, match="URDF 'missing.urdf' not found"):
        load_robot(missing)
    with pytest.raises(RobotError, match=r"joints \['hand_roll'\] must name each"):
        load_robot(_robot(tmp_path, BOOM5_URDF, joints=['hand_roll']))
    with pytest.raises(RobotError, match="no robot config 'nope'.*boom5"):
        load_robot('nope')
    with pytest.raises(ValueError, match='not scene .pusht'):
        make_scene('pusht', SceneConfig(), robot=str(BOOM5))


def test_urdf_without_the_mujoco_tag_still_shows_the_arm(tmp_path):
    """The scene tells MuJoCo to keep <visual> (it drops them unless told): the arm shows."""
    urdf = re.sub(r'<mujoco>.*?</mujoco>', '', BOOM5_URDF, flags=re.S)
    assert 'discardvisual' not in urdf
    scene = make_scene('arm_reach', SceneConfig(image_size=32), robot=str(_robot(tmp_path, urdf)))
    try:
        assert scene.robot.end_effector == 'flange'  # the fixed-joint link was kept too
        hidden = make_scene('arm_reach', SceneConfig(image_size=32), robot=str(_robot(
            tmp_path, urdf, goal_marker=False)))
        a, b = scene.render(), hidden.render()
        hidden.close()
        assert not np.array_equal(a, b), 'the goal marker is drawn, or hidden without it'
        frames = _frames(scene, seeds=(0,), steps=8)
        assert len({f.tobytes() for f in frames}) > 4, 'the arm moves in the images'
    finally:
        scene.close()


def test_a_bare_urdf_is_a_robot_too(tmp_path, capsys):
    """``--robot arm.urdf``: its name, the end of its chain, a camera scaled to its length."""
    urdf = tmp_path / 'bare.urdf'
    urdf.write_text(re.sub(r'<mujoco>.*?</mujoco>', '', BOOM5_URDF, flags=re.S))
    robot = load_robot(urdf)
    assert (robot.name, robot.end_effector, robot.urdf) == ('boom5', 'flange', urdf)
    np.testing.assert_allclose(robot.camera.pos, np.array([0.95, -0.7, 1.3]) * 0.92 / 0.9)
    out = tmp_path / 'data'
    assert main(['collect', '--robot', str(urdf), '--episodes', '1', '--steps', '12',
                 '--image-size', '32', '--out', str(out), '--no-progress', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['frames'] == 12  # the frame check passed
    assert [p.name for p in out.iterdir()] == ['boom5_0_0000']
    two_tips = BOOM5_URDF.replace('<link name="flange"/>', '<link name="flange"/>\n  <link '
                                  'name="camera_link"/>\n  <joint name="cam" type="fixed"><parent '
                                  'link="hand"/><child link="camera_link"/></joint>')
    urdf.write_text(two_tips)
    with pytest.raises(RobotError, match='cannot pick the tip link.*write a robot config'):
        load_robot(urdf)


def test_collect_refuses_frames_that_do_not_show_the_arm(tmp_path, capsys):
    """A camera looking away: identical frames while the joints move -> no bag, rc 1."""
    path = _robot(tmp_path, BOOM5_URDF, camera={'pos': [0.0, 0.0, 3.0],
                                                'look_at': [5.0, 0.0, 3.5], 'fovy': 40.0})
    out = tmp_path / 'data'
    rc = main(['collect', '--robot', str(path), '--episodes', '2', '--steps', '20',
               '--image-size', '32', '--out', str(out), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert 'the camera frames did not change while the joints moved' in err
    assert "robot config's camera" in err
    assert not out.exists() or not any(out.iterdir()), 'no useless bag is left behind'


TINY_TRAIN = {
    'model': {'image_size': 32, 'latent_dim': 8, 'cnn': {'channels': [8, 16, 16]},
              'predictor': {'history': 2, 'hidden': 32, 'layers': 2}, 'probe_hidden': 16},
    'loss': {'horizon': 2},
    'train': {'max_steps': 12, 'batch_size': 8, 'lr': 0.003, 'warmup_steps': 2,
              'num_threads': 1, 'val_every': 12, 'val_windows': 8, 'log_every': 6,
              'checkpoint_every': 12},
    'probe': {'steps': 10, 'targets': ['ee_position']},
}


@pytest.mark.timeout(120)
def test_boom5_collect_train_eval_plan_by_files_and_flags(tmp_path, capsys):
    data = tmp_path / 'data'
    rc = main(['collect', '--robot', str(BOOM5), '--episodes', '3', '--steps', '16',
               '--image-size', '32', '--out', str(data), '--json', '--no-progress'])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary['robot'] == 'boom5' and summary['frames'] == 48
    assert sorted(p.name for p in data.iterdir()) == [f'boom5_0_{i:04d}' for i in range(3)]
    from ami_ros.data.bag import read_bag
    episode = read_bag(data / 'boom5_0_0000', cache=False)
    assert episode.joint_positions.shape == (16, 5) and episode.joint_names == BOOM5_JOINTS

    config = tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    run = tmp_path / 'run'
    rc = main(['train', '--config', str(config), '--data', str(data), '--out', str(run),
               '--no-progress'])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()

    rc = main(['eval-plan', '--robot', str(BOOM5), '--checkpoint', str(run), '--episodes', '1',
               '--steps', '4', '--methods', 'world_model', 'random', '--threads', '1',
               '--out', str(tmp_path / 'plots'), '--json'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report['robot'] == 'boom5' and report['scene'] == 'arm_reach'
    for method in ('world_model', 'random'):
        m = report['methods'][method]
        assert m['episodes'] == 1 and 0.0 <= m['success_rate'] <= 1.0
        assert np.isfinite(m['final_error'])
    # the arm_reach model has 4 action dimensions: refused for the 5-joint arm
    rc = main(['eval-plan', '--robot', str(BOOM5), '--checkpoint', str(run / 'model'),
               '--scene', 'pusht', '--episodes', '1'])
    assert rc == 2 and 'not --scene pusht' in capsys.readouterr().err


def test_eval_plan_refuses_a_model_of_another_arm(tmp_path, capsys, tiny_arm_model):
    rc = main(['eval-plan', '--robot', 'boom5', '--checkpoint', str(tiny_arm_model),
               '--episodes', '1', '--steps', '2', '--methods', 'world_model'])
    assert rc == 2
    assert 'robot boom5 has 5 joints, the model 4 action dimensions' in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_sim_node_runs_the_robot_config(ros_node, ros_process, wait_for):
    """The sim node with ``robot:=boom5.yaml``: boom5's joints on /joint_states, its camera."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    from sensor_msgs.msg import CameraInfo, JointState
    from std_msgs.msg import Float64MultiArray

    joints, infos = [], []
    ros_node.create_subscription(JointState, 'joint_states', joints.append, 10)
    from rclpy.qos import qos_profile_sensor_data
    ros_node.create_subscription(CameraInfo, 'camera/camera_info', infos.append,
                                 qos_profile_sensor_data)
    forward = ros_node.create_publisher(Float64MultiArray, 'forward_position_controller/commands',
                                        10)
    sim = ros_process(node_command('sim', 'ami_ros.nodes.sim') + [
        '--ros-args', '-p', f'robot:={BOOM5}', '-p', 'image_size:=32', '-p', 'realtime:=false'],
        name='sim')
    assert wait_for(lambda: joints and infos and forward.get_subscription_count() > 0, 60.0), \
        sim.output()[-3000:]
    assert tuple(joints[-1].name) == BOOM5_JOINTS and len(joints[-1].position) == 5
    assert infos[-1].width == 32
    target = [0.3, 0.5, -0.4, 0.2, 1.0]
    forward.publish(Float64MultiArray(data=target))
    assert wait_for(lambda: np.abs(np.array(joints[-1].position) - target).max() < 0.02, 30.0)


def test_stack_configs_take_the_robot_urdf_and_end_effector():
    """What bringup and the launch file give the nodes: ``robot`` -> URDF, joints, tool."""
    from ami_ros.config import joint_names_for, load_scene_config

    cfg = load_scene_config('arm_reach', robot=BOOM5)
    assert cfg.world_model.robot == str(BOOM5) and cfg.planner.model_name == 'boom5'
    assert joint_names_for(cfg.world_model) == BOOM5_JOINTS
    assert cfg.limits().names == BOOM5_JOINTS
    np.testing.assert_allclose(cfg.limits().upper, [2.8, 1.9, 2.3, 2.0, 2.9])
    workspace = cfg.planner.workspace()
    assert workspace.chain.tip_link == 'flange' and workspace.chain.joint_names == BOOM5_JOINTS
    # without a robot: the scene's own arm, as before
    own = load_scene_config('arm_reach')
    assert own.planner.workspace().chain.tip_link == 'tool0' and own.planner.model_name == \
        'arm_reach' and len(own.limits().names) == 4
    with pytest.raises(ValueError, match="boom5.urdf: no link 'x'"):  # explicit tip_link wins
        load_scene_config('arm_reach', robot=BOOM5, overrides={'planner': {'tip_link': 'x'}}
                          ).planner.workspace()


def test_training_renders_the_robot_for_the_reader_sweep_and_generated_episodes():
    from ami_ros.cli.train import _apply_robot
    from ami_ros.model.config import ConfigError, DataConfig, GenerateConfig, RunConfig
    from ami_ros.train.dataset import episodes_from_scene
    from ami_ros.train.reader import calibration_sweep

    images, joints, ee = calibration_sweep('arm_reach', 3, 32, 0, robot=str(BOOM5))
    assert images.shape == (3, 32, 32, 3) and joints.shape == (3, 5) and ee.shape == (3, 3)
    cfg = RunConfig(data=DataConfig(generate=GenerateConfig(episodes=1, length=3,
                                                            image_size=16)))
    _apply_robot(cfg, 'boom5')
    assert cfg.reader.sweep_robot == cfg.data.generate.robot and \
        cfg.reader.sweep_robot.endswith('boom5.yaml')
    (episode,) = episodes_from_scene(cfg.data.generate)
    assert episode.joint_names == BOOM5_JOINTS
    with pytest.raises(ConfigError, match="no robot config 'nope'"):
        _apply_robot(cfg, 'nope')


@pytest.mark.timeout(180)
def test_bringup_drives_the_robot_of_its_config(ros_node, ros_process, wait_for, tmp_path):
    """``sim`` and ``ami-ros bringup`` with ``--robot``/``robot:=``: the stack commands boom5.

    A tiny boom5 model from collect + train (flags and files only); the sim in one process, the
    stack in another; a goal pose (the sim's own goal, a flange position) makes the planner
    send commands in boom5's joint names that the sim accepts, and the arm moves.
    """
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    data, run, config = tmp_path / 'data', tmp_path / 'run', tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    assert main(['collect', '--robot', str(BOOM5), '--episodes', '3', '--steps', '16',
                 '--image-size', '32', '--out', str(data), '--no-progress', '--json']) == 0
    assert main(['train', '--config', str(config), '--data', str(data), '--out', str(run),
                 '--no-progress']) == 0

    diags, joints, commands, goal = [], [], [], []
    ros_node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    ros_node.create_subscription(JointState, 'joint_states', joints.append, 10)
    ros_node.create_subscription(JointTrajectory, 'joint_trajectory_controller/joint_trajectory',
                                 commands.append, 10)
    ros_node.create_subscription(PoseStamped, '/sim/goal_pose', goal.append, 10)
    goal_pub = ros_node.create_publisher(PoseStamped, 'ami/goal_pose', 10)

    def status(name: str) -> dict[str, str]:
        found = [s for d in diags for s in d.status if s.name.split(':')[0] == name]
        return {kv.key: kv.value for kv in found[-1].values} if found else {}

    ros_process(node_command('sim', 'ami_ros.nodes.sim') + [
        '--ros-args', '-p', f'robot:={BOOM5}', '-p', 'image_size:=32', '-p', 'seed:=2'],
        name='sim')
    stack = ros_process(node_command('ami-ros', 'ami_ros.cli') + [
        'bringup', '--robot', str(BOOM5), '--use-sim-time', '--ros-args', '-p',
        f'model:={run}', '-p', 'planner:samples:=32', '-p', 'planner:elites:=4', '-p',
        'planner:iterations:=1', '-p', 'planner:horizon:=3'], name='bringup')
    assert wait_for(lambda: goal and joints and status('/planner').get('lifecycle_state') ==
                    'active' and goal_pub.get_subscription_count() > 0, 90.0), \
        f'stack not up: {status("/planner")}\n{stack.output()[-3000:]}'
    q0 = np.array(joints[-1].position)
    msg = PoseStamped()
    msg.header.frame_id = 'world'
    msg.pose.position = goal[-1].pose.position
    goal_pub.publish(msg)
    assert wait_for(lambda: int(status('sim').get('accepted_commands', 0)) >= 5, 30.0), \
        f'sim: {status("sim")}\nplanner: {status("/planner")}\n{stack.output()[-3000:]}'
    assert status('sim')['rejected_commands'] == '0'
    assert tuple(commands[-1].joint_names) == BOOM5_JOINTS
    assert wait_for(lambda: np.abs(np.array(joints[-1].position) - q0).max() > 0.02, 20.0)
