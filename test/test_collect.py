"""``ami-ros collect``: scenes driven by their explorer into one rosbag2 bag per episode."""
from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from ami_ros.cli import main
from ami_ros.data.bag import SIM_EPOCH_NS, read_bag
from ami_ros.sim import SCENES

os.environ.setdefault('MUJOCO_GL', 'egl')

from test_bag import DotScene  # noqa: E402  (a tiny analytic scene shared with test_bag)

JOINT_STATES = ('/joint_states', 'sensor_msgs/msg/JointState')
COMMAND = ('/forward_position_controller/commands', 'std_msgs/msg/Float64MultiArray')


@pytest.fixture
def dot_scene(monkeypatch):
    monkeypatch.setitem(SCENES, 'dot', f'{DotScene.__module__}:DotScene')
    return 'dot'


def topics_of(path):
    with AnyReader([path]) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def check_bags(out, scene, seed, episodes, steps, joints):
    bags = sorted(p for p in out.iterdir())
    assert [p.name for p in bags] == [f'{scene}_{seed}_{i:04d}' for i in range(episodes)]
    starts = []
    for path in bags:
        topics = topics_of(path)
        assert topics['/camera/image_raw'] == ('sensor_msgs/msg/Image', steps)
        assert topics[JOINT_STATES[0]] == (JOINT_STATES[1], steps)
        assert topics[COMMAND[0]] == (COMMAND[1], steps)
        assert any(t.startswith('/sim/') for t in topics)
        ep = read_bag(path, cache=False)
        assert len(ep) >= steps and ep.joint_positions.shape == (steps, joints)
        # the explorer moves the robot (it may also hold still for a while): frames and joints
        # vary, commands are not the state
        assert len({im.tobytes() for im in ep.images}) >= max(3, steps // 4)
        assert np.ptp(ep.joint_positions, axis=0).max() > 1e-3
        assert not np.allclose(ep.actions, ep.joint_positions)
        np.testing.assert_allclose(np.diff(ep.stamps), 0.1, atol=1e-6)
        starts.append(ep.stamps[0])
    assert starts[0] == SIM_EPOCH_NS / 1e9 and all(np.diff(starts) > steps * 0.1)
    return bags


def test_collect_dot_scene_writes_bags_and_summary(tmp_path, dot_scene, capsys):
    out = tmp_path / 'data'
    rc = main(['collect', '--scene', dot_scene, '--episodes', '2', '--steps', '15',
               '--image-size', '32', '--seed', '4', '--out', str(out), '--json',
               '--no-progress'])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['episodes'] == 2 and summary['frames'] == 30 and summary['bytes'] > 0
    assert summary['frames_per_s'] > 0 and summary['out'] == str(out.resolve())
    bags = check_bags(out, 'dot', 4, 2, 15, 2)
    # episodes differ (reset with seed + i)
    a, b = (read_bag(p, cache=False) for p in bags)
    assert not np.array_equal(a.joint_positions[0], b.joint_positions[0])


def test_collect_sqlite3_and_table(tmp_path, dot_scene, capsys):
    out = tmp_path / 'sq'
    assert main(['collect', '--scene', dot_scene, '--episodes', '1', '--steps', '12',
                 '--image-size', '16', '--storage', 'sqlite3', '--out', str(out),
                 '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert 'frames/s' in printed and '12' in printed
    bag = out / 'dot_0_0000'
    assert any(p.suffix == '.db3' for p in bag.iterdir())
    check_bags(out, 'dot', 0, 1, 12, 2)


def test_collect_refuses_to_overwrite(tmp_path, dot_scene, capsys):
    out = tmp_path / 'data'
    args = ['collect', '--scene', dot_scene, '--episodes', '2', '--steps', '3', '--image-size',
            '16', '--out', str(out), '--no-progress']
    assert main(args) == 0
    mcap = out / 'dot_0_0001' / 'dot_0_0001.mcap'
    before = mcap.stat().st_mtime_ns, mcap.read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert 'refusing to overwrite' in err and str(out / 'dot_0_0000') in err
    assert (mcap.stat().st_mtime_ns, mcap.read_bytes()) == before
    # a different seed writes new bags beside them
    assert main(args + ['--seed', '9']) == 0
    assert (out / 'dot_9_0001').is_dir()


def test_collect_bad_arguments(tmp_path, dot_scene, capsys):
    out = tmp_path / 'x'
    assert main(['collect', '--scene', dot_scene, '--episodes', '0', '--out', str(out)]) == 2
    assert 'episodes must be in' in capsys.readouterr().err
    assert main(['collect', '--scene', dot_scene, '--image-size', '8', '--out', str(out)]) == 2
    assert 'image_size must be in [16, 1024], got 8' in capsys.readouterr().err
    assert not out.exists()


class _FailingDot(DotScene):
    """Its explorer leaves the joint limits after 4 steps: set_target must refuse."""

    def make_explorer(self, rng):
        calls = iter(range(10**6))
        return lambda: np.array([0.0, 0.0]) if next(calls) < 4 else np.array([5.0, 0.0])


def test_failed_episode_leaves_no_partial_bag(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(SCENES, 'failing', f'{__name__}:_FailingDot')
    out = tmp_path / 'data'
    rc = main(['collect', '--scene', 'failing', '--episodes', '1', '--steps', '10',
               '--image-size', '16', '--out', str(out), '--no-progress'])
    assert rc == 1
    err = capsys.readouterr().err
    assert 'beyond URDF limits' in err
    assert not (out / 'failing_0_0000').exists()


def test_collect_arm_reach(tmp_path, capsys):
    try:
        importlib.import_module('ami_ros.sim.arm_reach')
    except ImportError as err:
        pytest.skip(f'ami_ros.sim.arm_reach is not importable yet: {err}')
    out = tmp_path / 'arm'
    rc = main(['collect', '--scene', 'arm_reach', '--episodes', '2', '--steps', '25',
               '--image-size', '64', '--out', str(out), '--json', '--no-progress'])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary['frames'] == 50
    bags = check_bags(out, 'arm_reach', 0, 2, 25, joints=4)
    ep = read_bag(bags[0], cache=False)
    assert ep.images.shape[1:] == (64, 64, 3)
    assert {'ee_position', 'ee_quaternion', 'ee_yaw', 'goal_position'} <= set(ep.ground_truth)


def test_collect_pusht_with_its_expert_pushes_the_t_towards_the_goal(tmp_path, capsys):
    """``--policy expert``: the expert-like pusher drives the recording (pusht only)."""
    pytest.importorskip('pymunk', reason='the pusht scene needs pymunk')
    out = tmp_path / 'expert'
    rc = main(['collect', '--scene', 'pusht', '--policy', 'expert', '--episodes', '2',
               '--steps', '40', '--out', str(out), '--no-progress'])
    assert rc == 0, capsys.readouterr().err
    for bag in check_bags(out, 'pusht', 0, 2, 40, joints=2):
        truth = read_bag(bag, cache=False).ground_truth
        turn = truth['block_yaw'][:, 0] - truth['goal_yaw'][:, 0]
        error = (np.linalg.norm(truth['block_position'] - truth['goal_position'], axis=1)
                 + 0.1 * np.abs(np.angle(np.exp(1j * turn))))  # m, and 0.1 m per rad
        assert error[-1] < error[0] - 0.01, error[[0, -1]]  # nearer the green T
    assert main(['collect', '--scene', 'reacher', '--policy', 'expert', '--out',
                 str(tmp_path / 'r')]) == 2
    assert "scene 'reacher' has no expert" in capsys.readouterr().err
