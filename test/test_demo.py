"""``ami-ros demo``: the core pieces without ROS, then whole runs as a user starts them.

The runs use a tiny arm_reach world model trained here (a real, if weak, model: it seldom
reaches a goal, so the test checks the plumbing and the measurements, not success), one goal
with a short timeout, and the test's own ROS_DOMAIN_ID (conftest.py), which the demo keeps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault('MUJOCO_GL', 'egl')  # before MuJoCo is imported: no display here
pytest.importorskip('mujoco', reason='the arm_reach scene needs MuJoCo')

from ami_ros.demo import (DemoConfig, GoalMaker, GoalTracker, camera_to_command_ms,  # noqa: E402
                          pair_plans, place_at_rest, rate_hz)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
CLI = 'import sys; from ami_ros.cli import main; sys.exit(main(sys.argv[1:]))'


def demo(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', CLI, 'demo', *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie - exited, not yet reaped - counts as gone)."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------------------ core ---


def test_pairing_and_latency_from_publication_times():
    ms = 1_000_000
    commands = [100 * ms, 200 * ms, 300 * ms, 400 * ms]
    # markers follow planned commands by ~1 ms; the command at 300 ms was a hold (no marker);
    # the last marker is too far from any command to belong to one
    markers = [101 * ms, 201 * ms, 402 * ms, 480 * ms]
    assert pair_plans(commands, markers).tolist() == [0, 1, 3, -1]
    frames = {5_000: 70 * ms, 5_100: 170 * ms, 5_300: 375 * ms}  # stamp -> publication
    lat, idx, unknown = camera_to_command_ms(commands, markers, [5_000, 5_100, 5_300, 5_300],
                                             frames)
    np.testing.assert_allclose(lat, [30.0, 30.0, 25.0])
    assert idx.tolist() == [0, 1, 3] and unknown == 0
    # a marker naming a frame the observer never saw is counted, not guessed
    lat, _, unknown = camera_to_command_ms(commands, markers[:1], [4_900], frames)
    assert lat.size == 0 and unknown == 1
    # 10 commands 0.1 s apart in each of two windows: 10 Hz, the gap between windows ignored
    windows = [np.arange(10) * 100 * ms, 5_000 * ms + np.arange(10) * 100 * ms]
    assert rate_hz(windows) == pytest.approx(10.0)
    assert rate_hz([[1]]) is None


def test_goal_tracker_reaches_dwells_and_times_out():
    cfg = DemoConfig(timeout=2.0, dwell=0.3, tolerance=0.05)
    goal = np.zeros(3)
    tracker = GoalTracker(goal, start=10.0, config=cfg)
    assert not tracker.update(10.0, [1, 0, 0])  # at or before the start: ignored
    path = [0.5, 0.2, 0.04, 0.06, 0.03, 0.02]
    done = [tracker.update(10.0 + 0.1 * (i + 1), [d, 0, 0]) for i, d in enumerate(path)]
    assert done == [False] * 5 + [True]  # reached at step 3, +0.3 s of dwell
    r = tracker.result(1, initial_error=1.0, wall_s=0.6, commands=6)
    assert r.reached and r.steps == 3 and r.time_s == pytest.approx(0.3)
    assert r.final_error == pytest.approx(0.02) and r.held
    slow = GoalTracker(goal, start=0.0, config=cfg)
    done = [slow.update(0.1 * (i + 1), [0.5, 0, 0]) for i in range(20)]
    assert done.index(True) == 19  # 2 s of sim time
    r = slow.result(2, 0.5, 2.0, 20)
    assert not r.reached and r.steps is None and r.time_s is None and not r.held
    with pytest.raises(ValueError, match='timeout'):
        DemoConfig(timeout=0)


def test_goals_start_where_the_arm_is():
    maker = GoalMaker(DemoConfig(seed=3), image_size=32)
    try:
        scene = maker.scene
        q = scene.random_configuration(np.random.default_rng(1))
        place_at_rest(scene, q)
        np.testing.assert_allclose(scene.joint_positions, q, atol=1e-12)
        np.testing.assert_allclose(scene.target, q, atol=1e-12)
        scene.step()  # at rest on its target: it stays
        np.testing.assert_allclose(scene.joint_positions, q, atol=1e-3)
        goal = maker.make(q)
        assert goal.image.shape == (32, 32, 3) and goal.image.dtype == np.uint8
        # eval-plan's protocol: reached by exploring from q, and not already satisfied there
        assert np.linalg.norm(goal.ee_position - scene.forward_kinematics(q)) > 0.05
        np.testing.assert_allclose(scene.goal_position, goal.ee_position)
        with pytest.raises(ValueError, match='4 finite joint positions'):
            place_at_rest(scene, [0.0, np.nan, 0.0, 0.0])
    finally:
        maker.close()


# ------------------------------------------------------------------------------ whole runs ---


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    from ami_ros.cli import main

    assert main(['demo', '--checkpoint', str(tmp_path / 'nope'), '--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'nope' in err and 'no such checkpoint' in err
    assert main(['demo', '--goals', '0', '--out', str(tmp_path)]) == 2
    assert '--goals must be >= 1' in capsys.readouterr().err
    assert main(['demo', '--timeout-per-goal', '-1', '--out', str(tmp_path)]) == 2
    assert '--timeout-per-goal must be > 0' in capsys.readouterr().err


def test_demo_runs_records_and_leaves_no_process(ros_env, tiny_arm_model, tmp_path):
    from rosbags.highlevel import AnyReader

    out = tmp_path / 'demo'
    proc = demo(['--goals', '1', '--timeout-per-goal', '3', '--dwell', '0', '--processes', 'one',
                 '--checkpoint', str(tiny_arm_model), '--out', str(out), '--json',
                 '--startup-timeout', '60'], ros_env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)  # ONE JSON object on stdout, progress on stderr
    for key in ('goals', 'success_rate', 'loop_hz', 'latency_ms_p50', 'latency_ms_p99'):
        assert key in summary, key
    (goal,) = summary['goals']
    assert {'reached', 'final_error_m', 'steps', 'time_s', 'wall_s'} <= set(goal)
    assert summary['success_rate'] in (0.0, 1.0) and summary['success_rate'] == goal['reached']
    assert goal['final_error_m'] >= 0.0
    # the planner planned from camera frames, in real time, and said from which
    assert summary['loop_hz'] > 3.0, summary
    assert summary['latency_samples'] >= 5 and summary['unmatched_markers'] <= 1, summary
    assert 0.0 < summary['latency_ms_p50'] <= summary['latency_ms_p99'] < 1000.0, summary
    assert summary['domain_id'] == int(ros_env['ROS_DOMAIN_ID'])
    # no child process survived, and each one exited cleanly
    assert summary['pids'] and not [p for p in summary['pids'] if alive(p)]
    assert set(summary['exit_codes'].values()) == {0}, summary['exit_codes']
    # the bag: valid rosbag2 MCAP with camera, joints, commands, goals, ground truth
    bag = Path(summary['bag'])
    assert (bag / 'metadata.yaml').is_file() and list(bag.glob('*.mcap'))
    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        goal_images = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(
            connections=[c for c in reader.connections if c.topic == '/ami/goal_image'])]
    for topic in ('/camera/image_raw', '/joint_states', '/sim/ee_pose', '/sim/goal_pose',
                  '/joint_trajectory_controller/joint_trajectory', '/ami/goal_image',
                  '/sim/set_goal_pose'):
        assert counts.get(topic, 0) > 0, (topic, counts)
    assert len(goal_images) == 1 and goal_images[0].encoding == 'rgb8'
    png = Path(summary['plot'])
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert json.loads((out / 'demo.json').read_text())['goals'] == summary['goals']


def test_ctrl_c_stops_every_process_and_keeps_the_bag(ros_env, tiny_arm_model, tmp_path):
    out = tmp_path / 'demo'
    proc = demo(['--goals', '5', '--processes', 'two', '--checkpoint', str(tiny_arm_model),
                 '--out', str(out)], ros_env)
    children = []
    try:
        deadline = time.monotonic() + 90
        for line in proc.stderr:  # progress lines; wait for the first goal to be under way
            if 'stack up' in line or time.monotonic() > deadline:
                break
        children = [int(p) for p in subprocess.run(
            ['pgrep', '-P', str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) == 2, 'the sim and the stack processes'
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert not [p for p in children if alive(p)], 'a child process survived Ctrl-C'
    assert (out / 'bag' / 'metadata.yaml').is_file(), 'the bag was not closed'
