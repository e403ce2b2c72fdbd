"""The ``sim`` node as a real process (``.venv/bin/sim --ros-args ...``), checked over DDS.

Each test has its own ROS_DOMAIN_ID and its own node process (see conftest.py) and waits on
conditions with timeouts. The arm_reach scene is also built in this process, to know the joint
names, limits and ground-truth names the node must show.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import re

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
pytest.importorskip('mujoco', reason='arm_reach needs MuJoCo')

from builtin_interfaces.msg import Duration  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ami_ros.nodes.common import msg_to_image, seconds  # noqa: E402
from ami_ros.sim import SceneConfig, make_scene  # noqa: E402
from ami_ros.sim.truth import pose_topic, signal_topic, split_truth  # noqa: E402
from conftest import REPO, node_command  # noqa: E402

CONTROL_HZ = 20.0
SIM_ARGS = ['-p', 'scene:=arm_reach', '-p', 'image_size:=64', '-p', f'control_hz:={CONTROL_HZ}',
            '-p', 'render_hz:=10.0', '-p', 'diagnostics_hz:=10.0', '-p', 'seed:=3']
START_TIMEOUT = 30.0   # process start, MuJoCo model build and DDS discovery on a busy machine
MOVE_TIMEOUT = 15.0
TOL = 0.02             # rad: the servos settle well inside this


@pytest.fixture(scope='module')
def arm():
    """The arm_reach scene in this process: joint names, limits, ground-truth keys, FK."""
    scene = make_scene('arm_reach', SceneConfig(image_size=64, control_hz=CONTROL_HZ))
    yield scene
    scene.close()


class SimClient:
    """Test side of the sim node: latest messages, counters, publishers and service calls."""

    def __init__(self, node, wait_for, truth_names=()):
        self.node, self.wait_for = node, wait_for
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.joints: list[JointState] = []
        self.diags: list[DiagnosticArray] = []
        self.clocks: list[Clock] = []
        self.truth: dict[str, list] = {}
        node.create_subscription(Image, 'camera/image_raw', self.images.append,
                                 qos_profile_sensor_data)
        node.create_subscription(CameraInfo, 'camera/camera_info', self.infos.append,
                                 qos_profile_sensor_data)
        node.create_subscription(JointState, 'joint_states', self.joints.append, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self.diags.append, 10)
        node.create_subscription(Clock, '/clock', self.clocks.append, 10)
        for topic, msg_type in truth_names:
            self.truth[topic] = []
            node.create_subscription(msg_type, topic, self.truth[topic].append, 10)
        self.trajectory_pub = node.create_publisher(
            JointTrajectory, 'joint_trajectory_controller/joint_trajectory', 10)
        self.forward_pub = node.create_publisher(
            Float64MultiArray, 'forward_position_controller/commands', 10)
        self.goal_pub = node.create_publisher(PoseStamped, '/sim/set_goal_pose', 10)

    def wait_ready(self) -> None:
        """Frames, joint states and diagnostics flow, and the node hears our commands."""
        pubs = (self.trajectory_pub, self.forward_pub, self.goal_pub)
        assert self.wait_for(
            lambda: self.images and self.joints and self.diags
            and all(p.get_subscription_count() > 0 for p in pubs), START_TIMEOUT), \
            'sim node did not come up (no frames / joint states / diagnostics / subscribers)'

    @property
    def position(self) -> np.ndarray:
        return np.array(self.joints[-1].position)

    def diag_values(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.diags[-1].status[0].values}

    def settled_at(self, target, tol: float = TOL, timeout: float = MOVE_TIMEOUT) -> bool:
        target = np.asarray(target)
        return self.wait_for(lambda: np.max(np.abs(self.position - target)) < tol, timeout)

    def more_joint_states(self, n: int) -> bool:
        count = len(self.joints)
        return self.wait_for(lambda: len(self.joints) >= count + n, 5.0)

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        assert self.wait_for(client.service_is_ready, START_TIMEOUT), f'no service {name}'
        future = client.call_async(request)
        assert self.wait_for(future.done, timeout), f'{name} did not answer'
        self.node.destroy_client(client)
        return future.result()


def trajectory(names, points, stamp_zero: bool = True) -> JointTrajectory:
    """A JointTrajectory from [(time_from_start seconds, positions), ...]."""
    msg = JointTrajectory(joint_names=list(names))
    for t, positions in points:
        sec = math.floor(t)
        msg.points.append(JointTrajectoryPoint(
            positions=[float(v) for v in positions],
            time_from_start=Duration(sec=int(sec), nanosec=int(round((t - sec) * 1e9)))))
    return msg


def start_sim(ros_process, *extra: str):
    command = node_command('sim', 'ami_ros.nodes.sim')
    return ros_process(command + ['--ros-args', *SIM_ARGS, *extra], name='sim')


def reachable_target(arm, q0: np.ndarray, delta) -> np.ndarray:
    """q0 + delta inside the limits, with the tool well above the floor (no contact to block it)."""
    margin = 0.1
    target = np.clip(q0 + np.asarray(delta), arm.lower + margin, arm.upper - margin)
    for s in np.linspace(0.0, 1.0, 11):  # the straight path in joint space stays clear too
        assert arm.forward_kinematics(q0 + s * (target - q0))[2] > 0.1, 'test target too low'
    return target


def test_streams_frames_joint_states_truth_and_clock(ros_node, ros_process, wait_for, arm):
    poses, signals = split_truth(arm.ground_truth())
    truth = [(pose_topic(n), PoseStamped) for n in poses]
    truth += [(signal_topic(n), Float64MultiArray) for n in list(signals) + ['success']]
    sim = SimClient(ros_node, wait_for, truth)
    start_sim(ros_process)
    sim.wait_ready()
    assert wait_for(lambda: len(sim.images) >= 3 and sim.infos and sim.clocks
                    and all(sim.truth.values()), 10.0), \
        f'missing topics: {[t for t, v in sim.truth.items() if not v]}'

    img = sim.images[-1]
    assert (img.width, img.height, img.encoding, img.step) == (64, 64, 'rgb8', 64 * 3)
    assert len(img.data) == 64 * 64 * 3 and img.header.frame_id == 'camera_optical_frame'
    pixels = msg_to_image(img)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 5.0, 'blank frame'
    info = sim.infos[-1]
    assert (info.width, info.height) == (64, 64) and info.k[0] > 0 and info.k[8] == 1.0

    js = sim.joints[-1]
    assert tuple(js.name) == arm.joint_names
    assert len(js.position) == len(js.velocity) == arm.num_joints
    assert np.all((arm.lower - 1e-3 <= js.position) & (js.position <= arm.upper + 1e-3))
    # stamps are sim time: multiples of the control period, far from wall-clock epoch seconds
    dt = 1.0 / CONTROL_HZ
    for stamp in (js.header.stamp, img.header.stamp, sim.diags[-1].header.stamp):
        t = seconds(stamp)
        assert 0.0 < t < 1e5 and abs(t / dt - round(t / dt)) < 1e-6, t
    times = [seconds(m.header.stamp) for m in sim.joints]
    assert np.all(np.diff(times) > 0), 'joint_states stamps must increase'
    assert seconds(sim.images[1].header.stamp) - seconds(sim.images[0].header.stamp) == \
        pytest.approx(0.1, abs=1e-6), 'frames at render_hz=10 in sim time'
    ee = sim.truth[pose_topic('ee')][-1]
    assert ee.header.frame_id == 'world'
    q = ee.pose.orientation
    assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, rel_tol=1e-6)
    values = sim.diag_values()
    assert values['rejected_commands'] == '0' and float(values['sim_time']) > 0.0


def test_follows_joint_trajectory_in_any_joint_order(ros_node, ros_process, wait_for, arm):
    sim = SimClient(ros_node, wait_for)
    start_sim(ros_process)
    sim.wait_ready()
    q0 = sim.position
    frame_before = msg_to_image(sim.images[-1]).astype(np.int16)
    final = reachable_target(arm, q0, [0.6, 0.3, -0.4, 0.5])
    middle = 0.5 * (q0 + final)
    order = [2, 0, 3, 1]  # names shuffled: the node must reorder by name
    names = [arm.joint_names[i] for i in order]
    sent_at = seconds(sim.joints[-1].header.stamp)
    sim.trajectory_pub.publish(trajectory(names, [(0.5, middle[order]), (1.0, final[order])]))

    assert sim.settled_at(final), f'did not reach {final}, at {sim.position}'
    arrived = next(seconds(m.header.stamp) for m in sim.joints
                   if np.max(np.abs(np.array(m.position) - final)) < TOL)
    # interpolated over the trajectory's 1 s of sim time, not jumped to (that takes ~0.3 s here)
    assert arrived - sent_at >= 0.9, f'reached the final point {arrived - sent_at:.2f} s after'
    assert wait_for(lambda: seconds(sim.images[-1].header.stamp) >= arrived, 5.0)
    change = np.abs(msg_to_image(sim.images[-1]).astype(np.int16) - frame_before).mean()
    assert change > 1.0, f'camera frame did not change when the arm moved ({change:.2f})'
    assert int(sim.diag_values()['accepted_commands']) >= 1


def test_follows_forward_position_commands(ros_node, ros_process, wait_for, arm):
    sim = SimClient(ros_node, wait_for)
    start_sim(ros_process)
    sim.wait_ready()
    target = reachable_target(arm, sim.position, [-0.5, 0.2, 0.3, -0.4])
    sim.forward_pub.publish(Float64MultiArray(data=target.tolist()))
    assert sim.settled_at(target), f'did not reach {target}, at {sim.position}'


def test_bad_commands_are_rejected_and_node_keeps_running(ros_node, ros_process, wait_for, arm):
    sim = SimClient(ros_node, wait_for)
    proc = start_sim(ros_process)
    sim.wait_ready()
    q0 = sim.position
    names = list(arm.joint_names)
    far = reachable_target(arm, q0, [0.8, 0.3, -0.5, 0.6])
    beyond = far.copy()
    beyond[1] = arm.upper[1] + 0.3
    nan = far.copy()
    nan[2] = float('nan')
    bad_forward = [far[:-1], nan, beyond, np.where(np.arange(len(far)) == 0, np.inf, far)]
    bad_trajectories = [
        trajectory(names[:-1] + ['no_such_joint'], [(1.0, far)]),    # unknown joint
        trajectory(names[:-1], [(1.0, far[:-1])]),                    # partial goal
        trajectory(names, []),                                        # empty
        trajectory(names, [(1.0, beyond)]),                           # beyond URDF limits
        trajectory(names, [(1.0, far), (0.5, far)]),                  # time going backwards
        trajectory(names, [(1.0, nan)]),                              # NaN
        trajectory(names, [(1.0, far[:-1])]),                         # wrong point length
    ]
    for data in bad_forward:
        sim.forward_pub.publish(Float64MultiArray(data=[float(v) for v in data]))
    for msg in bad_trajectories:
        sim.trajectory_pub.publish(msg)
    n_bad = len(bad_forward) + len(bad_trajectories)

    assert wait_for(lambda: sim.diag_values()['rejected_commands'] == str(n_bad), 10.0), \
        f'diagnostics: {sim.diag_values()}'
    values = sim.diag_values()
    assert values['accepted_commands'] == '0'
    assert values['last_error'], 'the last rejection reason is shown'
    assert any(s.level == b'\x01' and 'rejected' in s.message
               for d in sim.diags for s in d.status), 'a WARN status names the rejections'
    assert sim.more_joint_states(10), 'joint_states stopped after bad commands'
    assert np.max(np.abs(sim.position - q0)) < TOL, 'a rejected command moved the arm'
    assert np.all(np.isfinite(sim.position))

    # throttled: one line per topic per second, not one per bad command
    logged = proc.output().count('rejected command on')
    assert 1 <= logged < n_bad, proc.output()
    # the first rejection on each topic is logged with its reason
    assert 'no_such_joint' in proc.output() and 'shape' in proc.output(), proc.output()

    # still accepts good commands afterwards
    sim.forward_pub.publish(Float64MultiArray(data=far.tolist()))
    assert sim.settled_at(far), f'did not reach {far} after the bad commands'
    assert sim.wait_for(lambda: sim.diag_values()['accepted_commands'] == '1', 5.0)


def test_reset_and_goal_services(ros_node, ros_process, wait_for, arm):
    goal_topic = pose_topic('goal')
    sim = SimClient(ros_node, wait_for, [(goal_topic, PoseStamped)])
    start_sim(ros_process)
    sim.wait_ready()
    assert wait_for(lambda: sim.truth[goal_topic], 5.0)

    def goal():
        p = sim.truth[goal_topic][-1].pose.position
        return np.array([p.x, p.y, p.z])

    # ~/set_goal: a new random goal, the arm stays where it is
    q_before, goal_before = sim.position, goal()
    response = sim.call(Trigger, '/sim/set_goal', Trigger.Request())
    assert response.success, response.message
    assert wait_for(lambda: np.linalg.norm(goal() - goal_before) > 1e-3, 5.0)
    assert np.max(np.abs(sim.position - q_before)) < TOL

    # ~/set_goal_pose topic: the goal goes where we say (a point the arm can reach)
    wanted = arm.forward_kinematics(reachable_target(arm, q_before, [0.3, 0.2, 0.2, 0.1]))
    msg = PoseStamped()
    msg.header.frame_id = 'world'
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = wanted.tolist()
    sim.goal_pub.publish(msg)
    assert wait_for(lambda: np.linalg.norm(goal() - wanted) < 1e-6, 5.0), goal()
    # an unreachable goal is a rejected command
    msg.pose.position.z = -1.0
    sim.goal_pub.publish(msg)
    assert wait_for(lambda: sim.diag_values()['rejected_commands'] == '1', 5.0)

    # ~/reset: a new episode
    response = sim.call(Trigger, '/sim/reset', Trigger.Request())
    assert response.success and 'episode 1' in response.message
    assert wait_for(lambda: sim.diag_values()['episode'] == '1', 5.0)
    assert wait_for(lambda: np.linalg.norm(goal() - wanted) > 1e-3, 5.0), 'reset drew a new goal'


def test_parameters_are_validated_at_runtime(ros_node, ros_process, wait_for):
    sim = SimClient(ros_node, wait_for)
    start_sim(ros_process)
    sim.wait_ready()

    def set_param(name, value):
        request = SetParameters.Request(
            parameters=[ParameterMsg(name=name, value=Parameter(name, value=value)
                                     .get_parameter_value())])
        return sim.call(SetParameters, '/sim/set_parameters', request).results[0]

    def get_param(name):
        request = GetParameters.Request(names=[name])
        value = sim.call(GetParameters, '/sim/get_parameters', request).values[0]
        return Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value

    result = set_param('render_hz', 40.0)  # above control_hz (20)
    assert not result.successful and 'render_hz' in result.reason
    result = set_param('render_hz', -1.0)
    assert not result.successful
    result = set_param('scene', 'pusht')  # fixed at start-up
    assert not result.successful and 'read-only' in result.reason
    result = set_param('realtime', 'yes')  # wrong type
    assert not result.successful
    assert get_param('render_hz') == 10.0 and get_param('scene') == 'arm_reach'

    result = set_param('render_hz', 5)  # an integer is fine for a rate
    assert result.successful, result.reason
    assert wait_for(lambda: sim.diag_values()['render_hz'] == '5', 5.0)
    count = len(sim.images)
    assert wait_for(lambda: len(sim.images) >= count + 3, 5.0)
    stamps = [seconds(m.header.stamp) for m in sim.images[-2:]]
    assert stamps[1] - stamps[0] == pytest.approx(0.2, abs=1e-6), 'frames now at 5 Hz sim time'

    # realtime off: steps as fast as the CPU allows, and still hears commands between steps
    assert set_param('realtime', False).successful
    assert wait_for(lambda: float(sim.diag_values()['real_time_factor']) > 2.0, 10.0), \
        sim.diag_values()
    sim.forward_pub.publish(Float64MultiArray(data=sim.position.tolist()))
    assert wait_for(lambda: sim.diag_values()['accepted_commands'] == '1', 10.0)
    assert set_param('realtime', True).successful
    assert wait_for(lambda: float(sim.diag_values()['real_time_factor']) < 1.5, 10.0), \
        sim.diag_values()


@pytest.mark.parametrize('bad, words', [
    ('scene:=nope', ('scene', 'nope')),
    ('render_hz:=50.0', ('render_hz', 'control_hz')),
    ('image_size:=4000', ('image_size', '4000')),
])
def test_bad_startup_parameters_exit_with_a_clear_message(ros_env, ros_process, bad, words):
    proc = ros_process(node_command('sim', 'ami_ros.nodes.sim') + ['--ros-args', '-p', bad],
                       name='sim')
    assert proc.wait(timeout=START_TIMEOUT) == 2
    out = proc.output()
    assert 'FATAL' in out and 'Traceback' not in out, out
    assert all(w in out for w in words), out


def test_params_file_and_namespace(ros_node, ros_process, wait_for, tmp_path):
    """config/sim.yaml applies to a namespaced node; all its topics move into the namespace."""
    params = (REPO / 'config' / 'sim.yaml').read_text()
    params = re.sub(r'image_size: \d+ ', 'image_size: 32 ', params)
    assert 'image_size: 32 ' in params
    params_file = tmp_path / 'sim.yaml'
    params_file.write_text(params)
    images, truth = [], []
    ros_node.create_subscription(Image, '/robot1/camera/image_raw', images.append,
                                 qos_profile_sensor_data)
    ros_node.create_subscription(PoseStamped, '/robot1' + pose_topic('ee'), truth.append, 10)
    ros_process(node_command('sim', 'ami_ros.nodes.sim') + [
        '--ros-args', '--params-file', str(params_file), '-r', '__ns:=/robot1'], name='sim')
    assert wait_for(lambda: images and truth, START_TIMEOUT)
    assert (images[-1].width, images[-1].height) == (32, 32)


def test_config_file_matches_the_node_config():
    yaml = pytest.importorskip('yaml')
    from ami_ros.nodes.sim import SimNodeConfig

    blocks = yaml.safe_load((REPO / 'config' / 'sim.yaml').read_text())
    params = blocks['/**/sim']['ros__parameters']
    fields = {f.name for f in dataclasses.fields(SimNodeConfig)}
    assert set(params) == fields, f'sim.yaml and SimNodeConfig differ in {set(params) ^ fields}'
    SimNodeConfig(**params)  # valid as shipped


def test_launch_file_builds_a_sim_node():
    """Runs only where launch_ros is installed (a real ROS 2 install; not on PyPI)."""
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (not on PyPI)')
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location('sim_launch', REPO / 'launch' / 'sim.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description().entities
    args = {e.name: e for e in entities if isinstance(e, DeclareLaunchArgument)}
    assert set(args) == {'scene', 'robot', 'sim_params_file', 'namespace', 'use_sim_time',
                         'image_size'}
    assert all(a.description for a in args.values())
    nodes = [e for e in entities if isinstance(e, Node)]
    assert len(nodes) == 1
    exe = nodes[0].node_executable  # a str or, in newer launch_ros, TextSubstitutions
    assert (exe if isinstance(exe, str) else ''.join(getattr(s, 'text', '?') for s in exe)) == 'sim'


def test_pusht_scene(ros_node, ros_process, wait_for):
    """The same node serves Push-T: gantry joints, its ground truth, commands, a fixed goal."""
    pytest.importorskip('gym_pusht', reason='gym-pusht is not installed')
    scene = make_scene('pusht', SceneConfig(image_size=64, control_hz=CONTROL_HZ))
    poses, signals = split_truth(scene.ground_truth())
    truth = [(pose_topic(n), PoseStamped) for n in poses]
    truth += [(signal_topic(n), Float64MultiArray) for n in signals]
    sim = SimClient(ros_node, wait_for, truth)
    ros_process(node_command('sim', 'ami_ros.nodes.sim') + [
        '--ros-args', *SIM_ARGS, '-p', 'scene:=pusht'], name='sim')
    sim.wait_ready()
    assert wait_for(lambda: all(sim.truth.values()), 5.0), \
        [t for t, v in sim.truth.items() if not v]
    assert tuple(sim.joints[-1].name) == scene.joint_names
    img = sim.images[-1]
    assert (img.width, img.height, img.encoding) == (64, 64, 'rgb8')

    target = 0.5 * (scene.lower + scene.upper)
    start = np.linalg.norm(sim.position - target)
    sim.forward_pub.publish(Float64MultiArray(data=target.tolist()))
    assert wait_for(lambda: np.linalg.norm(sim.position - target) < max(0.01, 0.3 * start),
                    MOVE_TIMEOUT), f'pusher at {sim.position}, target {target}'
    response = sim.call(Trigger, '/sim/set_goal', Trigger.Request())
    assert not response.success and 'fixed goal' in response.message
