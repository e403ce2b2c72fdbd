"""``ami-ros demo``: the simulator and the whole stack on the shipped model, reaching goals.

Starts the built-in simulator (arm_reach, real time, 10 Hz) and the perception, world_model and
planner nodes as child processes talking real ROS 2 messages on a ROS_DOMAIN_ID of their own
(``--processes``: ``one`` process for all, ``two`` = simulator | stack (default), ``per-node``).
This process watches (``ami_ros/nodes/demo_driver.py``): for each goal it makes the goal as
``ami-ros eval-plan`` does from where the arm is, moves the simulator's goal marker there, sends
the goal image on ``/ami/goal_image`` and waits until the end effector is within the tolerance
(ground truth on ``/sim/ee_pose``) or the timeout passes. Then it prints a table per goal and the
totals (success rate, loop rate, camera -> command latency; one JSON object with ``--json``) and
writes, under ``--out``, the run's rosbag2 (MCAP), a PNG (frames per goal, error vs time) and
the children's logs. ``--bench`` runs the demo once with one process and once with one process
per node and times the core loop (no ROS) in the same run: the ROS layer's overhead.

Timing and clocks: :mod:`ami_ros.demo`.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ami_ros.cli import add_robot_argument, json_clean, robot_of

DOMAIN_IDS = range(102, 233)
"""Random ROS_DOMAIN_ID range when none is set: above the tests' 1..101, within Fast DDS's 232."""
LAYOUTS = ('one', 'two', 'per-node')
RESEND_S = 1.5
"""Wall seconds without a command after the first goal image before it is sent again."""
MAX_SENDS = 5
STACK_NODES = ('perception', 'world_model', 'planner')
CLI = 'import sys; from ami_ros.cli import main; sys.exit(main(sys.argv[1:]))'


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument('--goals', type=int, default=5, help='goals to reach, one after the other')
    p.add_argument('--checkpoint', default='arm_reach',
                   help='world model: shipped model name, checkpoint or training output dir')
    add_robot_argument(p)
    p.add_argument('--out', type=Path, default=Path('runs') / 'demo',
                   help='directory for the bag, the PNG, the JSON summary and the logs')
    p.add_argument('--timeout-per-goal', type=float, default=15.0,
                   help='sim seconds a goal may take before it counts as missed')
    p.add_argument('--dwell', type=float, default=1.0,
                   help='sim seconds the goal stays after it is reached')
    p.add_argument('--processes', choices=LAYOUTS, default='two',
                   help='one: sim and stack in one process; two: sim | stack; per-node: one '
                        'process per node')
    p.add_argument('--seed', type=int, default=0, help='seed of the goals')
    p.add_argument('--params', type=Path, default=None,
                   help='extra ROS parameters YAML applied after the package\'s (one block per '
                        'node, e.g. /**/planner: ros__parameters: {samples: 100})')
    p.add_argument('--startup-timeout', type=float, default=180.0,
                   help='wall seconds the processes may take to start and load the model')
    p.add_argument('--bench', action='store_true',
                   help='run with --processes one, then per-node, and time the core loop: '
                        'camera -> command latency through ROS and its overhead')
    p.add_argument('--json', action='store_true',
                   help='print one JSON object on stdout (progress on stderr)')


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- child processes ---
class Interrupt:
    """Signal handler that only takes note: the demo loop raises KeyboardInterrupt itself.

    Raised from inside an rclpy callback, KeyboardInterrupt can leave the executor waiting for
    work that never finishes (a hang or a crash at shutdown); checked between spins, it cannot.
    """

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt

    def install(self) -> dict:
        """Handle SIGINT (unless ignored, as for background jobs) and SIGTERM; the old ones."""
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, self)
        return previous


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the demo's finally-block is the only guard
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


class Stack:
    """The simulator and the stack as child processes; ``stop`` leaves none behind."""

    def __init__(self, layout: str, checkpoint: Path, env: dict, log_dir: Path,
                 params: Path | None = None, robot: Path | None = None):
        from ami_ros.paths import config_path

        if layout not in LAYOUTS:
            raise ValueError(f'processes must be one of {LAYOUTS}, got {layout!r}')
        py, model = sys.executable, f'model:={checkpoint}'
        extra = ['--params-file', str(params)] if params else []  # last: it overrides
        if robot is not None:  # the arm of the robot config, in the sim and the stack
            extra += ['-p', f'robot:={robot}']
        sim = [py, '-m', 'ami_ros.nodes.sim', '--ros-args', '--params-file',
               str(config_path('sim.yaml')), *extra]
        bringup = [py, '-c', CLI, 'bringup', '--scene', 'arm_reach']
        if layout == 'one':
            self.commands = {'sim+stack': bringup + ['--with-sim', '--ros-args', *extra,
                                                     '-p', model]}
        elif layout == 'two':
            self.commands = {'sim': sim, 'stack': bringup + ['--use-sim-time', '--ros-args',
                                                             *extra, '-p', model]}
        else:
            params = ['--ros-args']
            for name in ('ami_ros.yaml', 'arm_reach.yaml'):
                params += ['--params-file', str(config_path(name))]
            params += [*extra, '-p', model, '-p', 'use_sim_time:=true']
            self.commands = {'sim': sim, **{n: [py, '-m', f'ami_ros.nodes.{n}', *params]
                                            for n in STACK_NODES}}
        self.env, self.log_dir = env, Path(log_dir)
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        for name, command in self.commands.items():
            log = open(self.log_dir / f'{name}.log', 'wb')
            self._logs.append(log)
            # own session: a Ctrl-C reaches the demo alone, which then stops these in order
            self.procs[name] = subprocess.Popen(
                command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f'{name}.log'
        return path.read_text(errors='replace')[-chars:] if path.is_file() else ''

    def check(self) -> None:
        """Raise RuntimeError naming a child that exited, with the end of its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f'{name} exited with code {proc.returncode}; the end of '
                                   f'{self.log_dir / (name + ".log")}:\n{self.log_tail(name)}')

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGINT to every child (nodes shut down cleanly), SIGKILL to any left after timeout."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        for log in self._logs:
            log.close()
        return {name: proc.returncode for name, proc in self.procs.items()}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]


def ros_environment(out: Path) -> tuple[dict, int]:
    """(environment for the children, domain id): the caller's ROS_DOMAIN_ID, else a random one."""
    env = dict(os.environ)
    given = env.get('ROS_DOMAIN_ID', '').strip()
    if given:
        try:
            domain = int(given)
        except ValueError:
            raise ValueError(f'ROS_DOMAIN_ID={given!r} is not an integer') from None
        if not 0 <= domain <= 232:
            raise ValueError(f'ROS_DOMAIN_ID={domain} is outside 0..232 (Fast DDS)')
    else:
        domain = random.choice(DOMAIN_IDS)
        # a domain of our own, and nobody else's robot on the network in it
        env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env['ROS_DOMAIN_ID'] = str(domain)
    env.setdefault('ROS_LOG_DIR', str(out / 'ros_log'))
    env.setdefault('MUJOCO_GL', 'egl')
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '0'
    return env, domain


def _fresh_bag_dir(path: Path) -> Path:
    """``path`` free for a new bag; an earlier demo bag there (MCAP + metadata) is replaced."""
    if path.exists():
        names = {p.name for p in path.iterdir()}
        if not names or all(n == 'metadata.yaml' or n.endswith(('.mcap', '.db3')) for n in names):
            shutil.rmtree(path)
        else:
            raise ValueError(f'{path} exists and is not a bag from an earlier demo: move it away')
    return path


# ------------------------------------------------------------------------------------ session ---
class Session:
    """One demo run: children up, goals one by one, children down (see the module docstring)."""

    def __init__(self, args, layout: str, out: Path, checkpoint: Path, interrupt: Interrupt):
        from ami_ros.demo import DemoConfig

        self.args, self.layout, self.out, self.checkpoint = args, layout, out, checkpoint
        self.interrupt = interrupt
        self.config = DemoConfig(goals=args.goals, seed=args.seed,
                                 timeout=args.timeout_per_goal, dwell=args.dwell)
        self.env, self.domain = ros_environment(out)
        self.robot = getattr(args, 'robot_file', None)
        self.stack = Stack(layout, checkpoint, self.env, out / 'logs', args.params, self.robot)

    def run(self) -> dict:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from ami_ros.demo import GoalMaker
        from ami_ros.nodes.demo_driver import DemoDriver

        bag = _fresh_bag_dir(self.out / 'bag')
        os.environ['ROS_LOG_DIR'] = self.env['ROS_LOG_DIR']
        wall0 = time.monotonic()
        self.stack.start()
        _log(f'demo: {self.layout} ({", ".join(self.stack.procs)}), ROS_DOMAIN_ID '
             f'{self.domain}, model {self.checkpoint}; logs in {self.stack.log_dir}')
        context = rclpy.Context()
        # no rclpy signal handlers: Ctrl-C stays a KeyboardInterrupt, so finally-blocks run
        rclpy.init(context=context, domain_id=self.domain,
                   signal_handler_options=SignalHandlerOptions.NO)
        executor = SingleThreadedExecutor(context=context)
        driver = maker = None
        try:
            try:
                driver = DemoDriver(bag, context=context)
                executor.add_node(driver)
                self.driver, self.executor = driver, executor
                self._wait_ready()
                startup_s = time.monotonic() - wall0
                _log(f'demo: stack up in {startup_s:.1f} s')
                maker = GoalMaker(self.config, image_size=driver.frame_shape[0],
                                  robot=self.robot)
                goals = self._goals(maker)
            finally:
                if maker is not None:
                    maker.close()
                exit_codes = self.stack.stop()
            wall_s = time.monotonic() - wall0
            self.interrupt.check()
            # with the stack stopped: the core loop has the CPU the nodes shared
            core = self._core_loop(context, goals) if self.args.bench else None
        finally:
            executor.shutdown(timeout_sec=5.0)
            if driver is not None:
                driver.destroy_node()  # closes the bag
            context.try_shutdown()
        return self._summary(goals, startup_s, wall_s, exit_codes, core, bag)

    def _goals(self, maker) -> list[dict]:
        """Every goal of the run, one after the other (``ami-ros soak`` runs them for a time)."""
        return [self._goal(i, maker) for i in range(self.config.goals)]

    # -- waiting --------------------------------------------------------------------------------

    def _spin(self, seconds: float = 0.05) -> None:
        self.interrupt.check()
        self.stack.check()
        self.executor.spin_once(timeout_sec=seconds)

    def _wait_ready(self) -> None:
        d, deadline = self.driver, time.monotonic() + float(self.args.startup_timeout)
        checks = {
            'camera frames': lambda: d.frame_shape is not None,
            'ground truth': lambda: bool(d.ee),
            'joint states': lambda: d.joint_positions is not None,
            'the simulator\'s goal marker topic': lambda: d.sim_goal_pub.get_subscription_count(),
            'the planner (configured)': lambda: d.goal_image_pub.get_subscription_count(),
            'beliefs (perception + world_model)': lambda: d.counts.get(
                '/ami/estimate/ee_pose', 0) > 0,
        }
        while True:
            missing = [name for name, ok in checks.items() if not ok()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f'the stack did not come up in {self.args.startup_timeout} s: '
                                   f'no {", ".join(missing)} (logs in {self.stack.log_dir})')
            self._spin(0.1)

    def _goal(self, index: int, maker) -> dict:
        import numpy as np

        from ami_ros.demo import GoalTracker

        d = self.driver
        goal = maker.make(d.joint_positions.copy())
        d.frames = []
        # the goal starts at the sim time of the last ground truth published before it is sent
        # (samples queued while the goal was made come in first)
        last = latest = d.ee[-1] if d.ee else None
        d.ee.clear()
        tracker = None
        wall0, t0_ns = time.monotonic(), time.time_ns()
        d.send_goal(goal.image, goal.ee_position)
        # Right after discovery DDS may drop a message to a reader that has not yet matched the
        # writer. The planner commands nothing before its first goal: until a command comes,
        # the first goal is sent again (and its clock restarts). Likewise until the simulator's
        # ground truth shows its goal marker moved (the camera must show the goal too).
        unconfirmed, sends = not d.commands_ns, 1
        # sim time stands still if the simulator stalls: a wall-clock guard on top
        wall_limit = 3.0 * (self.config.timeout + self.config.dwell) + 30.0
        done = False
        while not done:
            self._spin()
            marker_moved = d.goal_truth is not None and np.allclose(
                d.goal_truth, goal.ee_position, atol=1e-6)
            unconfirmed = unconfirmed and not d.commands_ns
            late = time.monotonic() - wall0 > RESEND_S
            if unconfirmed and late and sends >= MAX_SENDS:
                raise RuntimeError(f'the planner sent no command after {sends} goal images '
                                   f'(logs in {self.stack.log_dir})')
            if (unconfirmed or not marker_moved) and late and sends < MAX_SENDS:
                _log(f'demo: goal {index + 1}: ' + ('no command' if unconfirmed else 'the '
                     'goal marker did not move') + f' {RESEND_S} s after the goal was sent; '
                     f'sending it again')
                last, tracker = latest, None  # the goal starts again from now
                wall0, t0_ns = time.monotonic(), time.time_ns()
                d.send_goal(goal.image, goal.ee_position)
                sends += 1
            while d.ee and not done:
                sample = latest = d.ee.pop(0)
                if sample[2] < t0_ns:
                    last = sample
                    continue
                if tracker is None:
                    start = last[0] if last is not None else sample[0] - 1.0 / maker.control_hz
                    tracker = GoalTracker(np.asarray(goal.ee_position), start, self.config)
                    initial = float(np.linalg.norm((last or sample)[1] - goal.ee_position))
                done = tracker.update(sample[0], sample[1])
            if not done and time.monotonic() - wall0 > wall_limit:
                _log(f'demo: goal {index + 1}: sim time did not advance for {wall_limit:.0f} s '
                     f'of wall time; giving up on it')
                break
        if tracker is None:
            raise RuntimeError(f'goal {index + 1}: no ground truth from the simulator on '
                               f'/sim/ee_pose after the goal was sent')
        t1_ns = time.time_ns()
        commands = [t for t in d.commands_ns if t0_ns <= t <= t1_ns]
        result = tracker.result(index + 1, initial, time.monotonic() - wall0, len(commands))
        _log(f'demo: goal {index + 1}/{self.config.goals}: '
             + (f'reached in {result.time_s:.1f} s ({result.steps} steps)' if result.reached
                else f'NOT reached in {self.config.timeout:.0f} s')
             + f', error {result.initial_error:.3f} -> {result.final_error:.3f} m, '
               f'{len(commands)} commands')
        frames = [f for f in d.frames if f[0] >= tracker.start]
        d.frames = None
        return {'result': result, 'window_ns': commands, 'goal_image': goal.image,
                'frames': frames, 'errors': list(tracker.errors), 'start': tracker.start,
                'reach_time': tracker.reach_time, 'reached': result.reached}

    # -- bench: the core loop, no ROS ------------------------------------------------------------

    def _core_loop(self, context, goals: list) -> dict:
        """Time encode + belief update + plan with the planner node's own backend and MPC."""
        import yaml
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.parameter import Parameter

        from ami_ros.demo import percentiles_ms, time_core_loop
        from ami_ros.nodes.planner import PlannerNode
        from ami_ros.paths import config_path

        frames = [im for g in goals for _, im in g['frames']][-40:]
        if not frames:
            return {}
        # the planner's parameters as its process read them: the same files, then the model
        values = {}
        files = [config_path('ami_ros.yaml'), config_path('arm_reach.yaml')]
        for path in files + ([self.args.params] if self.args.params else []):
            data = yaml.safe_load(Path(path).read_text()) or {}
            for key in ('/**', '/**/planner'):
                values.update((data.get(key) or {}).get('ros__parameters') or {})
        values.update(model=str(self.checkpoint), autostart=False)
        if self.robot is not None:
            values.update(robot=str(self.robot))
        node = PlannerNode(context=context, parameter_overrides=[
            Parameter(k, value=v) for k, v in values.items()])
        try:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f'planner for the core loop: {node.last_error}')
            ms = time_core_loop(node.model, node.controller.config, frames, goals[-1]['goal_image'],
                                self.driver.joint_positions, repeats=40, warmup=5)
        finally:
            node.destroy_node()
        p50, p99 = percentiles_ms(ms)
        return {'core_loop_ms_p50': p50, 'core_loop_ms_p99': p99, 'samples': len(ms)}

    # -- results --------------------------------------------------------------------------------

    @property
    def _model_name(self) -> str:
        c = self.checkpoint  # a training output's checkpoint is <run>/model
        return c.parent.name if c.name == 'model' else c.name

    def _summary(self, goals, startup_s, wall_s, exit_codes, core, bag) -> dict:
        import numpy as np

        from ami_ros.demo import camera_to_command_ms, percentiles_ms, plot_demo, rate_hz

        d = self.driver
        results = [g['result'] for g in goals]
        marker_ns = [m[0] for m in d.markers]
        latency, planned, unknown = camera_to_command_ms(
            d.commands_ns, marker_ns, [m[1] for m in d.markers], d.frame_published)
        p50, p99 = percentiles_ms(latency)
        loop_hz = rate_hz([g['window_ns'] for g in goals])
        # what the world model believes about the end effector vs where it is (same sim stamp):
        # a goal the belief cannot resolve, the planner cannot reach
        belief_err = [float(np.linalg.norm(xyz - d.ee_truth[t])) for t, xyz in d.ee_estimates
                      if t in d.ee_truth]
        diag = d.diagnostics

        def value(node: str, key: str):
            try:
                return float(diag.get(node, {}).get(key))
            except (TypeError, ValueError):
                return None

        nodes = {'encode_ms_p50': value('/perception', 'encode_latency_p50_ms'),
                 'belief_update_ms_p50': value('/world_model', 'update_latency_p50_ms'),
                 'plan_ms_p50': value('/planner', 'plan_latency_p50_ms'),
                 'plan_ms_p99': value('/planner', 'plan_latency_p99_ms'),
                 'planner_tick_ms_p50': value('/planner', 'tick_latency_p50_ms'),
                 'sim_real_time_factor': value('sim: arm_reach', 'real_time_factor')}
        plot = plot_demo(goals, self.out / 'demo.png',
                         f'ami-ros demo: {sum(r.reached for r in results)}/{len(results)} goals '
                         f'reached ({self.layout} process layout, model {self._model_name})',
                         self.config.tolerance)
        summary = {
            'goals': [r.row() for r in results],
            'success_rate': sum(r.reached for r in results) / len(results),
            'held_rate': sum(r.held for r in results) / len(results),
            'mean_final_error_m': float(np.mean([r.final_error for r in results])),
            'belief_ee_error_m_p50': float(np.median(belief_err)) if belief_err else None,
            'belief_ee_error_m_p90': float(np.percentile(belief_err, 90)) if belief_err
            else None,
            'loop_hz': loop_hz,
            'latency_ms_p50': p50, 'latency_ms_p99': p99,
            'latency_samples': int(latency.size),
            'planned_commands': int(planned.size),
            'commands': int(sum(len(g['window_ns']) for g in goals)),
            'unmatched_markers': int(unknown),
            'nodes': nodes,
            'processes': self.layout, 'pids': self.stack.pids, 'exit_codes': exit_codes,
            'domain_id': self.domain, 'checkpoint': str(self.checkpoint),
            'startup_s': startup_s, 'wall_s': wall_s,
            'bag': str(bag), 'plot': str(plot), 'logs': str(self.stack.log_dir),
            'messages': dict(sorted(d.counts.items())),
            'config': {'goals': self.config.goals, 'seed': self.config.seed,
                       'timeout_per_goal_s': self.config.timeout, 'dwell_s': self.config.dwell,
                       'tolerance_m': self.config.tolerance,
                       'goal_steps': self.config.goal_steps},
            'clock': 'latency and loop rate: DDS source timestamps (system clock at publication,'
                     ' one clock for all processes); goal times: sim time',
        }
        if core:
            summary['core_loop'] = core
            if p50 is not None and core.get('core_loop_ms_p50'):
                summary['ros_overhead_ratio'] = p50 / core['core_loop_ms_p50']
                summary['ros_overhead_ms'] = p50 - core['core_loop_ms_p50']
        return summary


# ------------------------------------------------------------------------------------ output ---
def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f'ami-ros demo ({summary["processes"]})')
    for col in ('goal', 'reached', 'time (s)', 'steps', 'error start (m)', 'final error (m)',
                'held', 'commands', 'wall (s)'):
        table.add_column(col, justify='right')
    for g in summary['goals']:
        table.add_row(str(g['goal']), '[green]yes[/]' if g['reached'] else '[red]no[/]',
                      '-' if g['time_s'] is None else f'{g["time_s"]:.1f}',
                      '-' if g['steps'] is None else str(g['steps']),
                      f'{g["initial_error_m"]:.3f}', f'{g["final_error_m"]:.3f}',
                      'yes' if g['held'] else 'no', str(g['commands']), f'{g["wall_s"]:.1f}')
    console.print(table)
    fmt = (lambda v, f='.1f': '-' if v is None else format(v, f))  # noqa: E731
    console.print(
        f'success rate {summary["success_rate"]:.2f} ({sum(g["reached"] for g in summary["goals"])}'
        f'/{len(summary["goals"])}), loop {fmt(summary["loop_hz"])} Hz, camera -> command '
        f'latency p50 {fmt(summary["latency_ms_p50"])} ms, p99 {fmt(summary["latency_ms_p99"])} '
        f'ms ({summary["latency_samples"]} planned commands)')
    if summary.get('belief_ee_error_m_p50') is not None:
        console.print(f'the world model\'s end-effector estimate vs ground truth: p50 '
                      f'{summary["belief_ee_error_m_p50"]:.3f} m, p90 '
                      f'{summary["belief_ee_error_m_p90"]:.3f} m (goals need < '
                      f'{summary["config"]["tolerance_m"]} m)')
    console.print(f'bag {summary["bag"]}\nplot {summary["plot"]}')


def print_bench(bench: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title='camera -> command latency through ROS vs the core loop')
    for col in ('processes', 'latency p50 (ms)', 'p99 (ms)', 'loop (Hz)', 'core loop p50 (ms)',
                'ROS - core (ms)', 'ROS / core', 'success'):
        table.add_column(col, justify='right')
    fmt = (lambda v, f='.1f': '-' if v is None else format(v, f))  # noqa: E731
    for layout, s in bench['runs'].items():
        core = s.get('core_loop', {})
        table.add_row(layout, fmt(s['latency_ms_p50']), fmt(s['latency_ms_p99']),
                      fmt(s['loop_hz']), fmt(core.get('core_loop_ms_p50')),
                      fmt(s.get('ros_overhead_ms')), fmt(s.get('ros_overhead_ratio'), '.2f'),
                      f'{s["success_rate"]:.2f}')
    Console().print(table)


def arm_reach_checkpoint(name_or_dir, command: str, robot=None) -> Path:
    """The checkpoint directory of a model for the arm.

    ``robot``: a RobotConfig (default: the 4-joint arm_reach arm). ValueError if the model's
    action dimensions are not the arm's joints.
    """
    from ami_ros.model.checkpoint import read_checkpoint_config, resolve_checkpoint
    from ami_ros.robot_config import chain_joints

    checkpoint = resolve_checkpoint(name_or_dir).resolve()
    config, _ = read_checkpoint_config(checkpoint)
    joints = 4 if robot is None else len(chain_joints(robot))
    name = 'arm_reach' if robot is None else robot.name
    if config.action_dim != joints:
        raise ValueError(f'{checkpoint}: the {command} drives the {joints}-joint {name} arm; '
                         f'this model has {config.action_dim} action dimensions')
    return checkpoint


def run_and_report(command: str, work, path: Path, as_json: bool, table) -> dict | None:
    """Run ``work(interrupt)``, then write its summary to ``path`` and print it.

    Ctrl-C becomes a clean stop of the children; the summary goes out as one JSON object
    (``as_json``) or through ``table``. Returns it, or None after printing the error when the
    run failed.
    """
    interrupt = Interrupt()
    previous = interrupt.install()
    try:
        summary = work(interrupt)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f'ami-ros {command}: error: {exc}', file=sys.stderr)
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = json_clean(summary)
    path.write_text(json.dumps(summary, indent=1) + '\n')
    if as_json:
        print(json.dumps(summary))
    else:
        table(summary)
    return summary


def run(args) -> int:
    from ami_ros.model.checkpoint import CheckpointError

    try:
        if args.goals < 1:
            raise ValueError(f'--goals must be >= 1, got {args.goals}')
        for name in ('timeout_per_goal', 'startup_timeout'):
            if not getattr(args, name) > 0:
                raise ValueError(f'--{name.replace("_", "-")} must be > 0, got '
                                 f'{getattr(args, name)}')
        if args.dwell < 0:
            raise ValueError(f'--dwell must be >= 0, got {args.dwell}')
        if args.params is not None:
            args.params = args.params.expanduser().resolve()
            if not args.params.is_file():
                raise ValueError(f'{args.params}: parameters file not found')
        robot = robot_of(args)
        args.robot_file = None if robot is None else robot.source
        checkpoint = arm_reach_checkpoint(args.checkpoint, 'demo', robot)
        out = args.out.expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, ValueError, OSError) as exc:
        hint = (' (train it with `ami-ros train --config config/train_arm_reach.yaml`, or pass '
                '--checkpoint DIR)' if args.checkpoint == 'arm_reach' else '')
        print(f'ami-ros demo: error: {exc}{hint}', file=sys.stderr)
        return 2

    def work(interrupt):
        if not args.bench:
            return Session(args, args.processes, out, checkpoint, interrupt).run()
        runs = {layout: Session(args, layout, out / layout, checkpoint, interrupt).run()
                for layout in ('one', 'per-node')}
        return {'runs': runs, 'clock': runs['one']['clock']}

    summary = run_and_report('demo', work, out / ('bench.json' if args.bench else 'demo.json'),
                             args.json, print_bench if args.bench else print_table)
    return 1 if summary is None else 0
