"""Clean shutdown: every stack node exits within 2 s of SIGINT, with exit code 0.

A launcher (``ros2 launch``, systemd, a supervisor) stops the stack with SIGINT and escalates to
SIGTERM after a few seconds; a node that takes longer is killed mid-way (an integrator saw all
three nodes escalated to SIGTERM in 1 of 5 launches). Both ways the stack runs are measured, as
real processes started and stopped the way a launcher does it:

* ``ami-ros bringup`` (perception, world_model and planner in one process): 20 launches;
* ``perception``, ``world_model`` and ``planner`` as three processes, all three sent SIGINT at
  the same moment (as ``ros2 launch`` does): 5 launches, 15 processes (20 would take the test
  past its time budget on two cores; the three nodes are the same code as in the bring-up).

Every launch runs against one simulator (so the nodes are busy with frames, beliefs and commands
when SIGINT comes) and reaches the active state (each node's ``lifecycle_state`` on
``/diagnostics``) before it is stopped. To keep the test short, a few launches start at the
same time (importing torch and loading the model is the slow part), each under node names of its
own (``-r planner:__node:=planner_3``); they are then stopped one after the other, the others
still running, which loads the machine more than one launch would. Recorded per process: the
time from SIGINT to its exit (polled every 5 ms), its exit code, and whether its nodes left the
ROS graph (a node that exits without destroying its DDS participant stays visible to the others
for the participant lease, ~20 s). min / median / max are printed.
"""
from __future__ import annotations

import copy
import re
import signal
import statistics
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, node_command

NODES = ('perception', 'world_model', 'planner')
EXIT_LIMIT_S = 2.0
"""Longest accepted time from SIGINT to process exit (a launcher escalates a few seconds later)."""
KILL_AFTER_S = 15.0
"""A process still running this long after SIGINT is killed and counted as a failure."""
UP_TIMEOUT_S = 120.0
GRAPH_TIMEOUT_S = 2.0
"""Longest accepted time after the exit until a launch's nodes have left the ROS graph."""
BRINGUP_LAUNCHES = 20
PER_NODE_LAUNCHES = 5
CONCURRENT = 6
"""Processes started at the same time (bring-ups, or nodes of the per-node layout)."""


def _stack_params(tmp_path: Path, model: Path, slots: int) -> Path:
    """config/ami_ros.yaml for the tiny model, each node's block under every slot's node name."""
    params = yaml.safe_load((REPO / 'config' / 'ami_ros.yaml').read_text())
    params['/**']['ros__parameters'].update(model=str(model), diagnostics_hz=5.0)
    params['/**/planner']['ros__parameters'].update(samples=48, elites=8, iterations=2,
                                                    horizon=4)
    for node in NODES:
        block = params.pop(f'/**/{node}')
        for slot in range(slots):
            params[f'/**/{node}_{slot}'] = copy.deepcopy(block)  # no YAML aliases for rcl
    path = tmp_path / 'stack.yaml'
    path.write_text(yaml.safe_dump(params))
    return path


def _renames(slot: int) -> list[str]:
    out = []
    for node in NODES:
        out += ['-r', f'{node}:__node:={node}_{slot}']
    return out


class _Diagnostics:
    """The latest /diagnostics values of every node, by node name, with their stamps."""

    def __init__(self, ros_node):
        from diagnostic_msgs.msg import DiagnosticArray

        self.latest: dict[str, tuple[float, dict[str, str]]] = {}
        ros_node.create_subscription(DiagnosticArray, '/diagnostics', self._on_msg, 50)

    def _on_msg(self, msg) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        for status in msg.status:
            self.latest[status.name.split(':')[0]] = (
                stamp, {kv.key: kv.value for kv in status.values})

    def active(self, node: str, since: float) -> bool:
        """Whether ``node`` reported itself active in a message stamped after ``since``.

        The stamp tells a new launch from an old one of the same name that was stopped.
        """
        stamp, values = self.latest.get(node, (0.0, {}))
        return stamp >= since and values.get('lifecycle_state') == 'active'


def _stop(procs) -> list[tuple[float, int]]:
    """SIGINT to every process at once; (seconds to exit, exit code) of each.

    A process still running after KILL_AFTER_S is killed (its time is then inf).
    """
    t0 = time.monotonic()
    for proc in procs:
        proc.popen.send_signal(signal.SIGINT)
    done: dict[int, tuple[float, int]] = {}
    while len(done) < len(procs):
        now = time.monotonic()
        for i, proc in enumerate(procs):
            if i not in done and proc.popen.poll() is not None:
                done[i] = (now - t0, proc.popen.returncode)
        if now - t0 > KILL_AFTER_S:
            for i, proc in enumerate(procs):
                if i not in done:
                    proc.popen.kill()
                    done[i] = (float('inf'), proc.popen.wait(10.0))
        time.sleep(0.005)
    return [done[i] for i in range(len(procs))]


def _run_launches(layout: str, launches: int, ros_node, ros_process, wait_for, tmp_path,
                  model: Path) -> list[tuple[str, float, int, str]]:
    """Start, wait for active, SIGINT ``launches`` stacks; (name, seconds, code, log) each."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    pytest.importorskip('mujoco', reason='the arm_reach scene needs MuJoCo')
    diags = _Diagnostics(ros_node)
    per_launch = 1 if layout == 'bringup' else len(NODES)
    slots = max(1, CONCURRENT // per_launch)
    params = _stack_params(tmp_path, model, slots)
    sim = ros_process(node_command('sim', 'ami_ros.nodes.sim') + [
        '--ros-args', '-p', 'scene:=arm_reach', '-p', 'image_size:=32', '-p', 'seed:=2'],
        name='sim')

    def start(launch: int, slot: int):
        if layout == 'bringup':
            args = node_command('ami-ros', 'ami_ros.cli') + [
                'bringup', '--params', str(params), '--scene', 'arm_reach',
                '--ros-args', *_renames(slot)]
            return [('ami-ros bringup', ros_process(args, name=f'bringup{launch}'))]
        return [(node, ros_process(node_command(node, f'ami_ros.nodes.{node}') + [
            '--ros-args', '--params-file', str(params), '-p', f'model:={model}',
            '-r', f'__node:={node}_{slot}'], name=f'{node}{launch}')) for node in NODES]

    results, lingering = [], []
    launch = 0
    while launch < launches:
        batch = [(launch + s, s) for s in range(min(slots, launches - launch))]
        started = time.time()  # the nodes stamp /diagnostics with the wall clock
        running = [(n, start(n, s), s) for n, s in batch]
        names = [f'/{node}_{s}' for _, _, s in running for node in NODES]
        assert wait_for(lambda: all(diags.active(n, started) for n in names), UP_TIMEOUT_S), \
            f'not active: {[n for n in names if not diags.active(n, started)]}\n' + '\n'.join(
                p.output()[-2000:] for _, procs, _ in running for _, p in procs)
        assert sim.alive(), sim.output()[-3000:]
        for n, procs, slot in running:
            wait_for(lambda: False, 0.2)  # the stack keeps working between two stops
            for _, proc in procs:
                ros_process.processes.remove(proc)  # stopped on purpose, not a failure
            for (label, proc), (seconds, code) in zip(procs, _stop([p for _, p in procs])):
                proc.stop()  # closes its log
                results.append((f'launch {n}: {label}', seconds, code, proc.output()[-2000:]))
            mine = {f'{node}_{slot}' for node in NODES}
            if not wait_for(lambda: not mine & set(ros_node.get_node_names()), GRAPH_TIMEOUT_S):
                lingering.append(f'launch {n}: {sorted(mine & set(ros_node.get_node_names()))}')
        launch += len(batch)
    # Reported, not asserted: on a loaded 2-core machine the participant's goodbye (UDP) is
    # now and then lost and the others drop it only when its lease expires (seen in 2 of 20
    # launches during a full test run); the process itself has exited by then.
    if lingering:
        print(f'nodes still in the ROS graph {GRAPH_TIMEOUT_S} s after their process exited: '
              f'{lingering}')
    return results


def _report(layout: str, results) -> None:
    times = [seconds for _, seconds, _, _ in results]
    print(f'\n{layout}: {len(results)} processes, SIGINT to exit: min {min(times):.3f} s, '
          f'median {statistics.median(times):.3f} s, max {max(times):.3f} s; exit codes '
          f'{sorted({code for _, _, code, _ in results})}')
    bad = [(name, seconds, code, log) for name, seconds, code, log in results
           if code != 0 or not seconds <= EXIT_LIMIT_S]
    assert not bad, f'{len(bad)} of {len(results)} processes of the {layout} layout did not ' \
        f'exit with code 0 within {EXIT_LIMIT_S} s of SIGINT:\n' + '\n'.join(
            f'{name}: {seconds:.3f} s, exit code {code}\n{log[-1500:]}'
            for name, seconds, code, log in bad[:3])


@pytest.mark.timeout(300)
def test_bringup_exits_within_2_s_of_sigint(ros_node, ros_process, wait_for, tmp_path,
                                            tiny_arm_model):
    results = _run_launches('bringup', BRINGUP_LAUNCHES, ros_node, ros_process, wait_for,
                            tmp_path, tiny_arm_model)
    _report('ami-ros bringup', results)
    # the clean-up ran to its end: the summary table (printed last) is in every output
    unfinished = [name for name, _, _, log in results if not re.search(r'/planner_\d+ ', log)]
    assert not unfinished, f'no summary printed at exit: {unfinished}'


@pytest.mark.timeout(300)
def test_node_processes_exit_within_2_s_of_sigint(ros_node, ros_process, wait_for, tmp_path,
                                                  tiny_arm_model):
    results = _run_launches('per-node', PER_NODE_LAUNCHES, ros_node, ros_process, wait_for,
                            tmp_path, tiny_arm_model)
    _report('per-node processes', results)


def _sigint_when_ready(code: str) -> tuple[int, float, str, str]:
    """Run ``code`` in a fresh interpreter, SIGINT it once it prints 'ready'.

    Returns its exit code, the seconds from SIGINT to exit, and the rest of its stdout and its
    stderr.
    """
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=10.0)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, elapsed, proc.stdout.read(), proc.stderr.read()


def test_a_stop_that_hangs_still_ends_the_process():
    """The watchdog of StopSignals ends a process whose main thread never answers the signal."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    code, elapsed, stdout, stderr = _sigint_when_ready(
        'import threading\n'
        'from ami_ros.nodes.common import StopSignals\n'
        'stop = StopSignals(grace=0.5)\n'
        "print('ready', flush=True)\n"
        'threading.Event().wait()  # a main thread stuck: it never checks stop.requested\n'
        "print('not reached', flush=True)\n")
    assert code == 0 and 0.4 <= elapsed <= 5.0, (code, elapsed)
    assert 'not finished: exiting now' in stderr
    assert 'not reached' not in stdout


def test_a_stop_stuck_holding_the_gil_still_ends_the_process():
    """A stop stuck in a C call that holds the GIL ends by faulthandler's backstop, with stacks.

    The watchdog thread cannot run then; the catastrophic regular expression below holds the
    GIL for minutes (sre never releases it), as a deadlocked finalizer or DDS teardown would.
    """
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    code, elapsed, stdout, stderr = _sigint_when_ready(
        'import re, time\n'
        'from ami_ros.nodes.common import StopSignals\n'
        'stop = StopSignals(grace=0.5)\n'
        "print('ready', flush=True)\n"
        'while stop.requested is None:\n'
        '    time.sleep(0.01)\n'
        "re.match(r'(a+)+$', 'a' * 60 + 'b')  # the clean-up, stuck with the GIL held\n"
        "print('not reached', flush=True)\n")
    assert code == 1 and 1.4 <= elapsed <= 6.0, (code, elapsed, stderr[-2000:])
    assert 'Timeout' in stderr and '<string>' in stderr, stderr[-2000:]  # the stuck line's stack
    assert 'not reached' not in stdout
