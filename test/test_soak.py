"""``ami-ros soak``: the stack runs goal after goal and no process's memory grows.

The short version of the 30-minute soak (docs/benchmarks.md): one minute of goals on the tiny
arm_reach model, run as a user starts it (a subprocess, the test's own ROS_DOMAIN_ID).
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, node_command

os.environ.setdefault('MUJOCO_GL', 'egl')

from ami_ros.cli.soak import growth, rss_kb  # noqa: E402


def test_rss_of_this_process_and_its_children():
    me = rss_kb(os.getpid())
    assert me > 10_000  # this interpreter with numpy: tens of MB
    child = subprocess.Popen(['sleep', '30'])
    try:
        assert rss_kb(os.getpid()) > me  # the child counts too
    finally:
        child.kill()
        child.wait()
    assert rss_kb(child.pid) == 0  # gone


def test_growth_after_warmup():
    flat = [(t, 100_000 + (5_000 if t < 10 else 0)) for t in range(0, 60, 2)]
    g = growth(flat, warmup=10)  # the warm-up's bump does not count
    # a flat series: zero up to the line fit's rounding (1.7e-12 MB/h seen with another BLAS)
    assert g['growth_percent'] == pytest.approx(0.0, abs=1e-6)
    assert g['slope_mb_per_hour'] == pytest.approx(0.0, abs=1e-6)
    leak = [(t, 100_000 + 1_000 * t) for t in range(0, 60, 2)]
    g = growth(leak, warmup=10)
    assert g['growth_percent'] > 30 and g['slope_mb_per_hour'] > 1000
    assert growth(leak[:8], warmup=10)['growth_percent'] is None  # too few samples


@pytest.mark.timeout(240)
def test_one_minute_soak(ros_env, tiny_arm_model, tmp_path):
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    pytest.importorskip('mujoco', reason='the arm_reach scene needs MuJoCo')
    out = tmp_path / 'soak'
    proc = subprocess.run(
        node_command('ami-ros', 'ami_ros.cli') + [
            'soak', '--checkpoint', str(tiny_arm_model), '--out', str(out), '--minutes', '1',
            '--warmup', '20', '--sample-every', '2', '--goal-period', '6', '--dwell', '3',
            '--startup-timeout', '120', '--json'],
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=220)
    summary = json.loads(proc.stdout) if proc.stdout.strip() else {}
    assert proc.returncode == 0, f'exit {proc.returncode}: {summary.get("failures")}\n' \
                                 f'{proc.stderr[-4000:]}'
    assert summary == json.loads((out / 'soak.json').read_text())
    assert summary['goals'] >= 5 and summary['commands'] > 300
    assert set(summary['memory']) == {'sim', 'stack'}
    for m in summary['memory'].values():
        assert m['samples_after_warmup'] >= 6 and abs(m['growth_percent']) <= 5.0
    assert all(code == 0 for code in summary['exit_codes'].values())
