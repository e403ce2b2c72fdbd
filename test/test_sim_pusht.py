"""The `pusht` scene: gym-pusht's Push-T behind the Scene interface (no ROS)."""
import numpy as np
import pytest

from ami_ros.sim import CommandError, SceneConfig, make_scene

pusht = pytest.importorskip('ami_ros.sim.pusht', reason='gym-pusht (pymunk, pygame) not installed')

ROYAL_BLUE = np.array([65, 105, 225])  # gym-pusht's pusher colour


def scene(**kw):
    return make_scene('pusht', SceneConfig(**kw))


def blue_centroid(frame):
    """(col, row) centre of the pusher's pixels."""
    mask = np.abs(frame.astype(int) - ROYAL_BLUE).sum(axis=-1) < 60
    rows, cols = np.nonzero(mask)
    assert rows.size > 0, 'pusher not visible'
    return np.array([cols.mean(), rows.mean()])


def run(sc, explorer, n):
    """States after each of n explorer steps, (n, len(STATE_FIELDS))."""
    out = []
    for _ in range(n):
        sc.set_target(explorer())
        sc.step()
        out.append(sc.get_state())
    return np.array(out)


def test_construction_reads_the_urdf():
    sc = scene()
    assert isinstance(sc, pusht.PushTScene)
    assert sc.joint_names == ('gantry_x', 'gantry_y')
    np.testing.assert_array_equal(sc.lower, [0.0, 0.0])
    np.testing.assert_array_equal(sc.upper, [0.512, 0.512])
    np.testing.assert_array_equal(sc.velocity_limit, [2.0, 2.0])
    assert sc.control_dt == pytest.approx(0.1)
    for size in (64, 96, 41):
        frame = scene(image_size=size).render()
        assert frame.shape == (size, size, 3) and frame.dtype == np.uint8


def test_rates():
    sc = scene(control_hz=20.0, seed=1)
    here = sc.joint_positions
    sc.set_target(here + [0.05, 0.0])
    sc.step()
    moved_20 = sc.joint_positions - here
    sc10 = scene(seed=1)
    sc10.set_target(here + [0.05, 0.0])
    sc10.step()
    assert 0 < moved_20[0] < (sc10.joint_positions - here)[0]  # half the time, less travel
    with pytest.raises(ValueError, match='control_hz=7'):
        scene(control_hz=7.0)


def test_deterministic_with_seed():
    a, b, c = scene(seed=5), scene(seed=5), scene(seed=6)
    np.testing.assert_array_equal(a.get_state(), b.get_state())
    assert not np.array_equal(a.get_state(), c.get_state())
    sa = run(a, a.make_explorer(np.random.default_rng(0)), 40)
    sb = run(b, b.make_explorer(np.random.default_rng(0)), 40)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(a.render(), b.render())
    # reset(seed) restarts the draw; reset() goes on with the stream from config.seed
    a.reset(seed=11)
    b.reset(seed=11)
    np.testing.assert_array_equal(a.get_state(), b.get_state())
    a.reset()
    b.reset()
    np.testing.assert_array_equal(a.get_state(), b.get_state())
    first = a.get_state()
    a.reset()
    assert not np.array_equal(first, a.get_state())


def test_ground_truth_units_and_goal():
    sc = scene(seed=2)
    gt = sc.ground_truth()
    assert {k: v.shape for k, v in gt.items()} == {
        'agent_position': (2,), 'block_pose': (3,), 'goal_pose': (3,), 'coverage': (1,)}
    np.testing.assert_allclose(gt['goal_pose'], [0.256, 0.256, np.pi / 4])
    np.testing.assert_allclose(gt['agent_position'], sc.joint_positions)
    x, y, a = sc.block_pose_units()
    np.testing.assert_allclose(gt['block_pose'][:2], [x / 1000, y / 1000])
    assert -np.pi <= gt['block_pose'][2] < np.pi
    assert np.cos(gt['block_pose'][2]) == pytest.approx(np.cos(a))
    assert 0.0 <= gt['coverage'][0] <= 1.0


def test_limits_respected():
    sc = scene(seed=3)
    for corner in ([0.0, 0.0], [0.512, 0.512], [0.0, 0.512]):
        sc.set_target(corner)  # the limits themselves are allowed
        np.testing.assert_array_equal(sc.target, corner)
        for _ in range(15):
            sc.step()
        # the PD loop settles on the target without leaving the range
        np.testing.assert_allclose(sc.joint_positions, corner, atol=2e-3)
        assert np.all(sc.joint_positions >= sc.lower - 2e-3)
        assert np.all(sc.joint_positions <= sc.upper + 2e-3)
    # explorer targets stay inside the limits and within the velocity limit per step
    ex = sc.make_explorer(np.random.default_rng(1))
    last = sc.target
    for _ in range(150):
        t = ex()
        assert np.all(t >= sc.lower) and np.all(t <= sc.upper)
        assert np.all(np.abs(t - last) <= sc.velocity_limit * sc.control_dt + 1e-12)
        sc.set_target(t)
        sc.step()
        last = t


def test_velocity_limit_bounds_the_pd_loop():
    """Bang-bang targets between opposite corners: the fastest the env's PD loop goes."""
    sc = scene(seed=4)
    top = 0.0
    for i in range(40):
        sc.set_target(sc.upper if (i // 2) % 2 == 0 else sc.lower)
        sc.step()
        top = max(top, np.abs(sc.joint_velocities).max())
    assert 0.8 * sc.velocity_limit.max() < top <= sc.velocity_limit.max()


def test_bad_targets_raise_and_are_not_applied():
    sc = scene(seed=5)
    sc.set_target([0.2, 0.3])
    before_target, before_state = sc.target, sc.get_state()
    bad = ([0.1], [0.1, 0.2, 0.3], [np.nan, 0.1], [0.1, np.inf], [-0.01, 0.2], [0.2, 0.52],
           [[0.1, 0.2]])
    for t in bad:
        with pytest.raises(CommandError):
            sc.set_target(t)
        np.testing.assert_array_equal(sc.target, before_target)
        np.testing.assert_array_equal(sc.get_state(), before_state)
    sc.step()
    for _ in range(20):
        sc.step()
    np.testing.assert_allclose(sc.joint_positions, [0.2, 0.3], atol=2e-3)


def test_frames_follow_the_pusher():
    sc = scene(image_size=64, seed=6)
    s = sc.get_state()
    s[4:10] = (400.0, 120.0, 0.0, 0.0, 0.0, 0.0)  # the T out of the way, top right
    s[0:4] = (100.0, 400.0, 0.0, 0.0)
    s[10:12] = (100.0, 400.0)
    sc.set_state(s)
    f0 = sc.render()
    # x to the right of the image, y down it
    np.testing.assert_allclose(blue_centroid(f0), [100 / 8 - 0.5, 400 / 8 - 0.5], atol=1.0)
    sc.set_target([0.3, 0.2])
    for _ in range(10):
        sc.step()
    f1 = sc.render()
    assert np.abs(f1.astype(int) - f0).sum() > 0
    np.testing.assert_allclose(blue_centroid(f1), sc.joint_positions * 1000 / 8 - 0.5, atol=1.0)
    assert sc.ground_truth()['block_pose'][0] == pytest.approx(0.4)  # not touched


def test_success_detection():
    for seed in range(5):
        sc = scene(seed=seed)
        assert not sc.success()
        assert sc.ground_truth()['coverage'][0] < 0.95
    s = sc.get_state()
    s[0:4] = (40.0, 40.0, 0.0, 0.0)  # the pusher in a corner, clear of the goal
    s[10:12] = (40.0, 40.0)
    sc.set_state(s)
    sc.set_block_pose(*sc.goal_pose_units)
    assert sc.success()
    assert sc.ground_truth()['coverage'][0] > 0.999
    np.testing.assert_allclose(sc.ground_truth()['block_pose'], sc.ground_truth()['goal_pose'],
                               atol=1e-9)
    sc.step()  # the env's own step agrees
    assert sc.success()
    x, y, a = sc.goal_pose_units
    sc.set_block_pose(x + 40.0, y, a)  # shifted by a third of the T's width
    assert not sc.success()


def test_explorer_moves_the_block():
    sc = scene(seed=7)
    ex = sc.make_explorer(np.random.default_rng(3))
    start = sc.get_state()
    poses = np.vstack([start, run(sc, ex, 150)])[:, 4:7]
    step = np.abs(np.diff(poses, axis=0))
    moved = (np.linalg.norm(step[:, :2], axis=1) > 0.5) | (step[:, 2] > 0.005)
    assert moved.mean() > 0.3, f'the block moved in only {moved.mean():.0%} of the steps'
    # and the T stays in the arena (pushes stop short of pinning it against a wall)
    corners = pusht.PushTEnv.get_keypoints(sc._env._block_shapes)
    assert corners.min() > pusht.ARENA[0] - 10 and corners.max() < pusht.ARENA[1] + 10


def test_state_round_trip_is_exact():
    sc = scene(seed=8)
    ex = sc.make_explorer(np.random.default_rng(4))
    run(sc, ex, 10)
    s0 = sc.get_state()
    targets = [ex() for _ in range(25)]

    def replay():
        out = []
        for t in targets:
            sc.set_target(t)
            sc.step()
            out.append(sc.get_state())
        return np.array(out), sc.render()

    first, frame = replay()
    assert np.abs(first[:, 4:7] - s0[4:7]).max() > 1.0, 'test needs contact with the block'
    sc.set_state(s0)
    np.testing.assert_array_equal(sc.get_state(), s0)
    again, frame_again = replay()
    np.testing.assert_array_equal(again, first)  # bit for bit, across contacts
    np.testing.assert_array_equal(frame_again, frame)
    with pytest.raises(ValueError, match='12 finite numbers'):
        sc.set_state(s0[:5])
    bad = s0.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        sc.set_state(bad)


def test_matches_gym_pusht_bit_for_bit_without_exact_restore():
    env = pusht.PushTEnv(obs_type='pixels_agent_pos', render_mode='rgb_array')
    env.reset(seed=9)
    sc = pusht.PushTScene(SceneConfig(image_size=96, seed=9), exact_restore=False)
    ex = sc.make_explorer(np.random.default_rng(5))
    for _ in range(40):
        t = ex()
        sc.set_target(t)
        sc.step()
        obs, _, _, _, info = env.step(t / pusht.METRES_PER_UNIT)
        np.testing.assert_array_equal(sc.get_state()[:2], obs['agent_pos'])
        np.testing.assert_array_equal(sc.block_pose_units(), info['block_pose'])
        np.testing.assert_array_equal(sc.render(), obs['pixels'])
        assert sc.success() == info['is_success']
        assert sc.coverage == info['coverage']


def test_expert_pushes_the_block_towards_the_goal_pose():
    """The expert-like pusher (the benchmarks' eval goals) brings the T towards the target T."""
    scene = make_scene('pusht', SceneConfig(image_size=32))

    def error():
        x, y, a = scene.block_pose_units()
        gx, gy, ga = scene.goal_pose_units
        angle = abs((a - ga + np.pi) % (2 * np.pi) - np.pi)
        return np.hypot(x - gx, y - gy) + 20 / (np.pi / 9) * angle

    before, after = [], []
    for seed in range(3):
        scene.reset(seed=seed)
        before.append(error())
        expert = scene.make_expert(np.random.default_rng(seed))
        for _ in range(80):
            scene.set_target(expert())
            scene.step()
        after.append(error())
    assert np.mean(after) < 0.5 * np.mean(before), (before, after)


def test_candidate_plans_are_pushes_within_bounds_and_leave_the_scene_alone():
    """The oracle's scripted starts: (<= n, H, 2) targets in bounds; some move the T."""
    sc = scene(image_size=32, seed=3)
    before = sc.get_state()
    plans = sc.candidate_plans(6, horizon=5, block=5, rng=np.random.default_rng(0))
    assert np.array_equal(sc.get_state(), before)  # tried on a private copy
    assert 1 <= len(plans) <= 6 and plans.shape[1:] == (5, 2)
    assert np.all(plans >= sc.lower - 1e-9) and np.all(plans <= sc.upper + 1e-9)
    moved = []
    for plan in plans:  # held 5 steps each, as the oracle runs them
        sc.set_state(before)
        for target in np.repeat(plan, 5, axis=0):
            sc.set_target(target)
            sc.step()
        moved.append(np.hypot(*(sc.get_state()[4:6] - before[4:6])))
    assert max(moved) > 5.0, moved  # env units: at least one push reaches the T
