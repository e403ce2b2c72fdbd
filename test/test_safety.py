"""The safety core (ami_ros.safety) without ROS: URDF limits, clamping, goals, watchdog.

The arm_reach URDF is the one the scene and the planner node use; its joint limits are
restated here from the file so that a change there has to be a conscious one.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ami_ros.paths import urdf_path
from ami_ros.safety import (Chain, GoalError, Limits, UnsafeCommand, UrdfError, Watchdog,
                            Workspace, check_goal_pose)

ARM = urdf_path('arm_reach')
ARM_JOINTS = ('shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint', 'wrist_pitch_joint')
ARM_LOWER = np.array([-2.9, -0.3, -2.4, -2.0])
ARM_UPPER = np.array([2.9, 2.0, 2.4, 2.0])
ARM_VELOCITY = np.array([2.0, 2.0, 2.5, 3.0])
DT = 0.1


@pytest.fixture(scope='module')
def limits():
    return Limits.from_urdf(ARM)


@pytest.fixture(scope='module')
def workspace():
    return Workspace.from_urdf(ARM, min_z=0.0)


def test_limits_come_from_the_urdf(limits):
    assert limits.names == ARM_JOINTS
    np.testing.assert_array_equal(limits.lower, ARM_LOWER)
    np.testing.assert_array_equal(limits.upper, ARM_UPPER)
    np.testing.assert_array_equal(limits.rate, ARM_VELOCITY)
    scaled = Limits.from_urdf(ARM, velocity_scale=0.5, position_margin=0.1)
    np.testing.assert_allclose(scaled.rate, 0.5 * ARM_VELOCITY)
    np.testing.assert_allclose(scaled.lower, ARM_LOWER + 0.1)
    # a subset, in the caller's order
    sub = Limits.from_urdf(ARM, ('elbow_joint', 'shoulder_pan_joint'))
    np.testing.assert_array_equal(sub.upper, [2.4, 2.9])
    gantry = Limits.from_urdf(urdf_path('pusht_gantry'))
    assert gantry.names == ('gantry_x', 'gantry_y')
    np.testing.assert_array_equal(gantry.upper, [0.512, 0.512])


def _urdf(tmp_path, joint: str) -> str:
    path = tmp_path / 'robot.urdf'
    path.write_text(f'''<?xml version="1.0"?>
<robot name="r"><link name="a"/><link name="b"/>
<joint name="j" type="{joint.split()[0]}"><parent link="a"/><child link="b"/>
<axis xyz="0 0 1"/>{' '.join(joint.split()[1:])}</joint></robot>''')
    return str(path)


def test_urdf_problems_name_the_file_and_joint(tmp_path):
    with pytest.raises(UrdfError, match='not found'):
        Limits.from_urdf(tmp_path / 'missing.urdf')
    no_velocity = _urdf(tmp_path, 'revolute <limit lower="-1" upper="1" effort="1"/>')
    with pytest.raises(UrdfError, match=r"robot.urdf: joint 'j' has no velocity limit"):
        Limits.from_urdf(no_velocity)
    with pytest.raises(UrdfError, match="no joint 'nope'"):
        Limits.from_urdf(ARM, ('nope',))
    with pytest.raises(UrdfError, match='narrower than twice position_margin'):
        Limits.from_urdf(urdf_path('pusht_gantry'), position_margin=0.3)
    continuous = Limits.from_urdf(_urdf(tmp_path, 'continuous <limit effort="1" velocity="2"/>'))
    assert continuous.lower[0] == -math.inf and continuous.upper[0] == math.inf
    safe, _ = continuous.clamp([100.0], previous=[0.0], dt=DT)
    assert safe[0] == pytest.approx(0.2)


def test_clamp_keeps_positions_inside_and_steps_below_velocity_times_dt(limits):
    q0 = np.zeros(4)
    safe, changed = limits.clamp([10.0, -10.0, 0.1, 0.0], previous=q0, dt=DT)
    assert changed
    np.testing.assert_allclose(safe, [0.2, -0.2, 0.1, 0.0])
    # without a previous command only the bounds apply
    safe, changed = limits.clamp([10.0, -10.0, 0.1, 0.0])
    np.testing.assert_array_equal(safe, [2.9, -0.3, 0.1, 0.0])
    assert changed
    safe, changed = limits.clamp([0.1, 0.1, 0.1, 0.1], previous=q0, dt=DT)
    assert not changed
    # bounds win over the rate limit when the previous command is already outside
    safe, _ = limits.clamp([5.0, 0, 0, 0], previous=[3.5, 0, 0, 0], dt=DT)
    assert safe[0] == 2.9


def test_random_commands_never_exceed_the_limits(limits):
    rng = np.random.default_rng(0)
    previous = np.zeros(4)
    for _ in range(2000):
        target = rng.normal(0.0, 5.0, 4) * rng.choice([1e-3, 1.0, 1e3])
        safe, _ = limits.clamp(target, previous=previous, dt=DT)
        assert np.all(safe >= ARM_LOWER) and np.all(safe <= ARM_UPPER)
        assert np.all(np.abs(safe - previous) <= ARM_VELOCITY * DT + 1e-12)
        limits.final_check(safe)
        previous = safe


def test_sequences_are_rate_limited_step_by_step(limits):
    seq = np.array([[3.0, 0, 0, 0], [3.0, 0, 0, 0], [-3.0, 0, 0, 0]])
    safe, changed = limits.clamp_sequence(seq, previous=np.zeros(4), dt=DT)
    assert changed
    np.testing.assert_allclose(safe[:, 0], [0.2, 0.4, 0.2])
    with pytest.raises(UnsafeCommand):
        limits.clamp_sequence(np.zeros(4), previous=np.zeros(4), dt=DT)


@pytest.mark.parametrize('bad', [[math.nan, 0, 0, 0], [0, math.inf, 0, 0], [0, 0, -math.inf, 0],
                                 [0, 0, 0], [0, 0, 0, 0, 0]])
def test_nan_inf_and_wrong_sizes_are_refused(limits, bad):
    with pytest.raises(UnsafeCommand):
        limits.clamp(bad, previous=np.zeros(4), dt=DT)
    with pytest.raises(UnsafeCommand):
        limits.final_check(bad)
    with pytest.raises(UnsafeCommand):
        limits.hold(bad)
    with pytest.raises(UnsafeCommand):  # a NaN previous command poisons nothing either
        limits.clamp(np.zeros(4), previous=bad, dt=DT)


def test_final_check_and_hold(limits):
    with pytest.raises(UnsafeCommand, match='elbow_joint=2.5 not in'):
        limits.final_check([0.0, 0.0, 2.5, 0.0])
    np.testing.assert_array_equal(limits.final_check(ARM_UPPER), ARM_UPPER)
    # hold = the measured position, inside the bounds, whatever the previous command was
    np.testing.assert_array_equal(limits.hold([0.5, -2.2, 0.0, 1.0]), [0.5, -0.3, 0.0, 1.0])


def test_twist_limits():
    twist = Limits.symmetric(('linear.x', 'angular.z'), (0.5, 1.0), (1.0, 2.0))
    safe, _ = twist.clamp([3.0, -3.0], previous=[0.0, 0.0], dt=DT)
    np.testing.assert_allclose(safe, [0.1, -0.2])
    safe, _ = twist.clamp([3.0, -3.0])
    np.testing.assert_allclose(safe, [0.5, -1.0])


def test_forward_kinematics_matches_mujoco():
    pytest.importorskip('mujoco', reason='the arm_reach scene needs MuJoCo')
    from ami_ros.sim import SceneConfig, make_scene

    chain = Chain(ARM)
    assert chain.tip_link == 'tool0' and chain.joint_names == ARM_JOINTS
    scene = make_scene('arm_reach', SceneConfig(image_size=16))
    try:
        rng = np.random.default_rng(1)
        for _ in range(20):
            q = rng.uniform(scene.lower, scene.upper)
            np.testing.assert_allclose(chain.positions(q)[0], scene.forward_kinematics(q),
                                       atol=1e-9)
    finally:
        scene.close()
    assert Chain(urdf_path('pusht_gantry')).tip_link == 'pusher'


def test_workspace_accepts_reachable_goals_and_rejects_the_rest(workspace):
    chain = workspace.chain
    rng = np.random.default_rng(7)
    q = rng.uniform(chain.lower, chain.upper, (200, 4))
    tips = chain.positions(q)
    tips = tips[tips[:, 2] > 0.02][:25]  # the scene's goals: above the floor
    for tip in tips:
        assert workspace.distance(tip) <= 0.005, tip
        workspace.check(tip)
    with pytest.raises(GoalError, match=r'outside the reachable workspace of tool0 \(nearest'):
        workspace.check([2.0, 0.0, 0.5])      # beyond the 0.9 m reach
    with pytest.raises(GoalError, match='outside the reachable workspace'):
        workspace.check([0.3, 0.0, -0.2])     # under the floor
    with pytest.raises(GoalError, match='finite'):
        workspace.check([math.nan, 0.0, 0.5])
    planar = Workspace.from_urdf(urdf_path('pusht_gantry'), axes='xy')
    planar.check([0.2, -0.3])
    with pytest.raises(GoalError):
        planar.check([0.2, 0.3])  # the gantry's y axis points to -y in the base frame


def test_goal_pose_checks():
    check_goal_pose([0.1, 0.2, 0.3], [0, 0, 0, 1], 'world', 'world')
    check_goal_pose([0.1, 0.2, 0.3], [0, 0, 0, 0], '', 'world')  # position-only goal
    with pytest.raises(GoalError, match='NaN'):
        check_goal_pose([math.nan, 0, 0], [0, 0, 0, 1], 'world', 'world')
    with pytest.raises(GoalError, match='NaN'):
        check_goal_pose([0, 0, 0], [0, 0, math.inf, 1], 'world', 'world')
    with pytest.raises(GoalError, match='unit quaternion'):
        check_goal_pose([0, 0, 0], [0, 0, 0, 2], 'world', 'world')
    with pytest.raises(GoalError, match="frame_id must be 'world'"):
        check_goal_pose([0, 0, 0], [0, 0, 0, 1], 'camera', 'world')


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_watchdog_timing_with_an_injected_clock():
    clock = FakeClock()
    dog = Watchdog(0.25, ('frame', 'belief'), clock=clock)
    status = dog.check()
    assert not status.ok and 'no frame received yet' in status.reason
    dog.feed('frame')
    dog.feed('belief')
    assert dog.check().ok
    clock.t += 0.25
    assert dog.check().ok, 'exactly at the timeout is still fresh'
    clock.t += 0.01
    status = dog.check()
    assert not status.ok
    assert status.reason.startswith('frame is 0.260 s old') and 'belief' in status.reason
    dog.feed('frame')
    status = dog.check()
    assert not status.ok and 'frame' not in status.reason and status.ages['frame'] == 0.0
    dog.feed('belief')
    assert dog.check().ok, 'resumes as soon as the data returns'
    clock.t -= 5.0  # a restarted simulation: /clock went back
    status = dog.check()
    assert not status.ok and 'clock jumped back' in status.reason
    dog.feed('frame', t=clock.t)
    dog.feed('belief', t=clock.t)
    assert dog.check().ok
    dog.forget()
    assert not dog.check().ok
    with pytest.raises(KeyError):
        dog.feed('camera')
    with pytest.raises(ValueError):
        Watchdog(0.0, ('frame',))
    with pytest.raises(ValueError):
        Watchdog(math.inf, ('frame',))
