"""Behaviour of the built-in ``arm_reach`` MuJoCo scene (core, no ROS)."""
import os
import xml.etree.ElementTree as ET

os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

mujoco = pytest.importorskip('mujoco')
pytest.importorskip('yourdfpy')

from ami_ros.paths import urdf_path  # noqa: E402
from ami_ros.sim import CommandError, SceneConfig, make_scene  # noqa: E402
from ami_ros.sim.arm_reach import ArmReachConfig, ArmReachScene  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _render_error():
    """Why offscreen rendering is impossible here, or None when it works."""
    try:
        renderer = mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 16, 16)
    except Exception as exc:  # any GL back-end failure means: cannot render on this machine
        return (f'MuJoCo offscreen rendering unavailable '
                f'(MUJOCO_GL={os.environ["MUJOCO_GL"]}): {exc}')
    renderer.close()
    return None


_RENDER_ERROR = _render_error()
needs_render = pytest.mark.skipif(_RENDER_ERROR is not None, reason=str(_RENDER_ERROR))


@pytest.fixture
def scenes():
    """Factory for scenes that are closed (GL context freed) after the test."""
    made = []

    def make(**kwargs):
        scene = ArmReachScene(ArmReachConfig(**kwargs))
        made.append(scene)
        return scene

    yield make
    for scene in made:
        scene.close()


def _green_mask(frame):
    """Pixels of the goal marker's green, (H, W) bool."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return (g > 150) & (r < 110) & (b < 130) & (g - r > 80)


def _settle(scene, target, seconds):
    scene.set_target(target)
    for _ in range(int(round(seconds / scene.control_dt))):
        scene.step()


def test_make_scene_reads_limits_from_urdf():
    scene = make_scene('arm_reach', SceneConfig(image_size=32, seed=3))
    try:
        assert isinstance(scene, ArmReachScene) and scene.name == 'arm_reach'
        assert scene.config.goal_tolerance == pytest.approx(0.05)
        assert scene.config.image_size == 32 and scene.config.seed == 3
        root = ET.parse(urdf_path('arm_reach')).getroot()
        revolute = [j for j in root.iter('joint') if j.get('type') == 'revolute']
        assert len(revolute) >= 3
        assert scene.joint_names == tuple(j.get('name') for j in revolute)
        for i, joint in enumerate(revolute):
            limit = joint.find('limit')
            assert scene.lower[i] == float(limit.get('lower'))
            assert scene.upper[i] == float(limit.get('upper'))
            assert scene.velocity_limit[i] == float(limit.get('velocity'))
        assert scene.control_dt == pytest.approx(0.1)
        assert np.all(scene.lower <= scene.joint_positions)
        assert np.all(scene.joint_positions <= scene.upper)
    finally:
        scene.close()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match='goal_tolerance'):
        ArmReachConfig(goal_tolerance=0.0)
    with pytest.raises(ValueError, match='speed_scale'):
        ArmReachConfig(speed_scale=1.5)
    with pytest.raises(ValueError, match='explore_min_steps'):
        ArmReachConfig(explore_min_steps=10, explore_max_steps=3)
    with pytest.raises(ValueError, match='image_size'):
        ArmReachConfig(image_size=4)


@needs_render
def test_deterministic_given_seed(scenes):
    def rollout(scene, seed):
        scene.reset(seed)
        explore = scene.make_explorer(np.random.default_rng(seed))
        frames, joints = [scene.render()], [scene.joint_positions]
        for _ in range(15):
            scene.set_target(explore())
            scene.step()
            frames.append(scene.render())
            joints.append(scene.joint_positions)
        return np.stack(frames), np.stack(joints), scene.goal_position

    a, b = scenes(seed=0), scenes(seed=99)
    frames_a, joints_a, goal_a = rollout(a, 7)
    frames_b, joints_b, goal_b = rollout(b, 7)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(joints_a, joints_b)
    np.testing.assert_array_equal(goal_a, goal_b)
    frames_c, joints_c, goal_c = rollout(b, 8)
    assert not np.allclose(joints_a[0], joints_c[0])
    assert not np.allclose(goal_a, goal_c)


def test_random_targets_respect_position_and_velocity_limits(scenes):
    # 100 Hz control, so velocities are sampled every 5 physics steps. Targets are random
    # collision-free configurations: contact forces (a crash into the floor) may push a joint.
    scene = scenes(control_hz=100.0, seed=1)
    rng = np.random.default_rng(5)
    worst = np.zeros(scene.num_joints)
    moved = np.zeros(scene.num_joints)
    for episode in range(3):
        scene.reset(episode)
        start = scene.joint_positions
        for k in range(600):
            if k % 60 == 0 or rng.random() < 0.02:  # long moves and abrupt reversals
                scene.set_target(scene.random_configuration(rng))
            scene.step()
            q = scene.joint_positions
            assert np.all(q >= scene.lower - 1e-3) and np.all(q <= scene.upper + 1e-3), q
            worst = np.maximum(worst, np.abs(scene.joint_velocities) / scene.velocity_limit)
            moved = np.maximum(moved, np.abs(q - start))
    assert np.all(worst <= 1.02), f'|qdot| / URDF limit reached {worst}'
    assert np.all(worst > 0.8), f'the arm should move near its limit speed, got {worst}'
    assert np.all(moved > 1.0)


def test_targets_at_the_joint_limits_are_held_within_them(scenes):
    scene = scenes(seed=13)
    lo, hi = scene.lower, scene.upper
    # Each joint to each of its limits, from collision-free poses (others folded to fit).
    for q in ([hi[0], 0, 0, 0], [lo[0], 0, 0, 0], [0, 0, hi[2], hi[3]], [0, 0, lo[2], lo[3]],
              [0, hi[1], lo[2], lo[3]], [0, lo[1], hi[2], hi[3]]):
        _settle(scene, np.array(q, dtype=float), 4.0)
        pos = scene.joint_positions
        assert np.all(pos >= lo - 1e-3) and np.all(pos <= hi + 1e-3), pos
        np.testing.assert_allclose(pos, q, atol=5e-3)


@needs_render
def test_frames_change_when_the_arm_moves_and_show_the_goal(scenes):
    scene = scenes(seed=4)
    _settle(scene, np.zeros(scene.num_joints), 2.0)
    # Goals in front of the arm, away from the upright links, in view of the camera.
    scene.set_goal([0.35, -0.25, 0.1])
    left = scene.render()
    scene.set_goal([0.3, 0.35, 0.1])
    right = scene.render()
    assert left.shape == (64, 64, 3) and left.dtype == np.uint8
    mask_l, mask_r = _green_mask(left), _green_mask(right)
    assert mask_l.sum() >= 3 and mask_r.sum() >= 3, 'goal marker not visible'
    col_l = np.argwhere(mask_l)[:, 1].mean()
    col_r = np.argwhere(mask_r)[:, 1].mean()
    assert abs(col_l - col_r) > 5, 'goal marker did not move in the image'

    before = scene.render()
    _settle(scene, np.array([1.5, 1.2, 0.5, 0.5]), 2.0)
    after = scene.render()
    changed = np.any(before != after, axis=-1).mean()
    assert changed > 0.01, f'only {changed:.4f} of the pixels changed when the arm moved'


@pytest.mark.parametrize('bad', [
    np.zeros(3), np.zeros(5), [0.0, np.nan, 0.0, 0.0], [0.0, 0.0, np.inf, 0.0],
    [10.0, 0.0, 0.0, 0.0], [0.0, -2.5, 0.0, 0.0], 'abc'])
def test_bad_targets_raise_and_are_not_applied(scenes, bad):
    scene = scenes(seed=5)
    good = np.array([0.3, 0.2, 0.1, 0.0])
    scene.set_target(good)
    with pytest.raises(CommandError):
        scene.set_target(bad)
    np.testing.assert_array_equal(scene.target, good)
    for _ in range(20):
        scene.step()
    assert np.abs(scene.joint_positions - good).max() < 0.02


def test_targets_a_hair_past_a_limit_are_clamped_further_ones_rejected_with_digits(scenes):
    """A measured position read back from /joint_states may sit just past the limit it rests on."""
    scene = scenes(seed=5)
    lo, hi = scene.lower.copy(), scene.upper.copy()
    hair = lo.copy()
    hair[1] -= 0.5 * scene.limit_tolerance
    scene.set_target(hair)
    np.testing.assert_array_equal(scene.target, lo)  # clamped onto the limit
    far = lo.copy()
    far[1] -= 0.01
    with pytest.raises(CommandError, match=r'shoulder_lift_joint=-0\.31 not in \[-0\.3, 2\] '
                                           r'\(off by 0\.01\)'):
        scene.set_target(far)
    scene.set_target(hi)
    np.testing.assert_array_equal(scene.target, hi)


def test_bad_goals_raise(scenes):
    scene = scenes(seed=6)
    goal = scene.goal_position
    for bad in ([0.0, 0.0], [np.nan, 0.0, 0.3], [2.0, 0.0, 0.3], [0.3, 0.0, -0.2]):
        with pytest.raises(CommandError):
            scene.set_goal(bad)
    np.testing.assert_array_equal(scene.goal_position, goal)


def test_success_when_driven_to_a_goal_from_known_joints(scenes):
    scene = scenes(seed=7)
    q_goal = np.array([-0.8, 0.9, 0.7, 0.5])
    goal = scene.forward_kinematics(q_goal)
    scene.set_goal(goal)
    _settle(scene, np.array([1.2, 0.2, -0.8, 0.0]), 2.0)
    assert not scene.success()
    _settle(scene, q_goal, 3.0)
    assert scene.success()
    truth = scene.ground_truth()
    assert np.linalg.norm(truth['ee_position'] - goal) < 0.01
    np.testing.assert_allclose(truth['goal_position'], goal)
    assert truth['ee_quaternion'].shape == (4,)
    assert np.linalg.norm(truth['ee_quaternion']) == pytest.approx(1.0)


def test_ground_truth_quaternion_is_xyzw(scenes):
    scene = scenes(seed=8)
    # Pitch joints about y sum to the tool's pitch; pan 0 -> rotation about y by that angle.
    _settle(scene, np.array([0.0, 0.5, 0.4, 0.3]), 2.5)
    pitch = scene.joint_positions[1:].sum()
    expected = np.array([0.0, np.sin(pitch / 2), 0.0, np.cos(pitch / 2)])
    np.testing.assert_allclose(scene.ground_truth()['ee_quaternion'], expected, atol=1e-6)


def test_reset_goals_are_reachable_and_above_the_floor(scenes):
    scene = scenes(seed=9)
    for seed in range(3):
        scene.reset(seed)
        goal = scene.goal_position
        assert goal[2] >= scene.config.min_goal_height
        q_goal = scene.goal_joints
        assert np.all(q_goal >= scene.lower) and np.all(q_goal <= scene.upper)
        assert not scene.success()
        _settle(scene, q_goal, 3.0)
        assert scene.success(), f'seed {seed}: goal {goal} not reached at {q_goal}'
    scene.set_goal([0.3, 0.2, 0.3])
    assert scene.goal_joints is None


@needs_render
@pytest.mark.parametrize('samples', [0, 2])
def test_state_round_trip_reproduces_frames_exactly(scenes, samples):
    scene = scenes(seed=10, render_samples=samples)
    explore = scene.make_explorer(np.random.default_rng(1))
    for _ in range(5):
        scene.set_target(explore())
        scene.step()
    state = scene.get_state()
    assert state.dtype == np.float64 and state.ndim == 1
    frame0 = scene.render()
    targets = [explore() for _ in range(8)]

    def play():
        frames = []
        for t in targets:
            scene.set_target(t)
            scene.step()
            frames.append(scene.render())
        return np.stack(frames), scene.joint_positions, scene.joint_velocities

    first = play()
    scene.reset(123)  # somewhere else entirely
    scene.set_state(state)
    np.testing.assert_array_equal(scene.render(), frame0)
    second = play()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match='shape'):
        scene.set_state(state[:-1])


@needs_render
def test_image_size_is_configurable(scenes):
    big, small = scenes(image_size=128, seed=12), scenes(image_size=64, seed=12)
    frame = big.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    # Same camera, same view: the 128 frame averaged 2x2 is close to the 64 frame.
    pooled = frame.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(pooled - small.render()).mean() < 6.0


def test_explorer_is_smooth_valid_and_covers_the_range(scenes):
    scene = scenes(seed=11)
    explore = scene.make_explorer(np.random.default_rng(2))
    cmds = []
    for _ in range(400):
        cmd = explore()
        scene.set_target(cmd)  # never raises: always within limits
        cmds.append(cmd)
    cmds = np.stack(cmds)                                       # (T, J)
    steps = np.abs(np.diff(cmds, axis=0))
    assert np.all(steps <= scene.velocity_limit * scene.control_dt + 1e-12)
    span = (cmds.max(0) - cmds.min(0)) / (scene.upper - scene.lower)
    assert np.all(span > 0.5), f'explorer covered only {span} of the joint ranges'
    held = np.all(steps < 1e-12, axis=1).mean()
    assert 0.0 < held < 0.5, f'fraction of held steps {held}'
    # After a reset the explorer continues from the new pose, not from its old command.
    scene.reset(3)
    first = explore()
    assert np.all(np.abs(first - scene.target) <= scene.velocity_limit * scene.control_dt + 1e-12)
