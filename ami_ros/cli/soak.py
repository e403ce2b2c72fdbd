"""``ami-ros soak``: the demo for a long time, goal after goal, with each process's memory sampled.

Runs what ``ami-ros demo`` runs (the built-in simulator and the stack as child processes on a
ROS_DOMAIN_ID of their own, goal images from where the arm is) for ``--minutes`` of wall time: a
new goal every ``--goal-period`` seconds or so (a goal ends ``--dwell`` sim seconds after it is
reached, or at the period if it is not). Every ``--sample-every`` seconds it reads the resident
set size (RSS, ``/proc/<pid>/status``) of each child process and its descendants.

It holds when every child is alive at the end, the planner commanded through every goal and no
process's RSS grew by more than ``--max-growth`` percent after ``--warmup`` seconds (the median
of the first three samples after the warm-up against the median of the last three: the allocator
and the first goals settle first). Table (one JSON object with ``--json``) on stdout,
``soak.json`` and the children's logs under ``--out``; exit code 0 when it holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


PAGE_KB = os.sysconf('SC_PAGE_SIZE') // 1024 if hasattr(os, 'sysconf') else 4


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument('--minutes', type=float, default=30.0, help='wall minutes of goals')
    p.add_argument('--goal-period', type=float, default=15.0,
                   help='sim seconds a goal lasts if it is not reached (its timeout)')
    p.add_argument('--dwell', type=float, default=10.0,
                   help='sim seconds a goal stays after it is reached')
    p.add_argument('--sample-every', type=float, default=10.0,
                   help='wall seconds between memory samples')
    p.add_argument('--warmup', type=float, default=120.0,
                   help='wall seconds after start-up before memory growth counts')
    p.add_argument('--max-growth', type=float, default=5.0,
                   help='largest RSS growth after the warm-up that holds, percent')
    p.add_argument('--checkpoint', default='arm_reach',
                   help='world model: shipped model name, checkpoint or training output dir')
    p.add_argument('--processes', choices=('one', 'two', 'per-node'), default='two',
                   help='one: sim and stack in one process; two: sim | stack; per-node')
    p.add_argument('--seed', type=int, default=0, help='seed of the goals')
    p.add_argument('--params', type=Path, default=None,
                   help='extra ROS parameters YAML applied after the package\'s')
    p.add_argument('--startup-timeout', type=float, default=180.0,
                   help='wall seconds the processes may take to start and load the model')
    p.add_argument('--out', type=Path, default=Path('runs') / 'soak',
                   help='directory for soak.json, the bag and the children\'s logs')
    p.add_argument('--json', action='store_true', help='print one JSON object on stdout')


def rss_kb(pid: int) -> int:
    """Resident set size of a process and all its descendants, kB (0 once it is gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f'/proc/{p}/statm') as f:
                total += int(f.read().split()[1]) * PAGE_KB
            with open(f'/proc/{p}/task/{p}/children') as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def growth(samples: list[tuple[float, int]], warmup: float) -> dict:
    """RSS growth after ``warmup`` seconds: median of the first three vs the last three samples."""
    import numpy as np

    after = [kb for t, kb in samples if t >= warmup]
    if len(after) < 6:
        return {'samples_after_warmup': len(after), 'growth_percent': None}
    first, last = float(np.median(after[:3])), float(np.median(after[-3:]))
    t = np.array([s[0] for s in samples if s[0] >= warmup]) / 3600.0
    slope = float(np.polyfit(t, np.array(after, float) / 1024.0, 1)[0])
    return {'samples_after_warmup': len(after), 'rss_mb_start': first / 1024.0,
            'rss_mb_end': last / 1024.0, 'rss_mb_max': max(after) / 1024.0,
            'growth_percent': 100.0 * (last - first) / first, 'slope_mb_per_hour': slope}


def _soak_session(args, out: Path, checkpoint: Path, interrupt):
    """A demo session whose goals run until the time is up, sampling memory as it spins."""
    from ami_ros.cli.demo import Session

    class Soak(Session):
        def __init__(self):
            args.goals = max(1, int(args.minutes * 60.0 / args.goal_period))  # for the log only
            args.timeout_per_goal = args.goal_period
            super().__init__(args, args.processes, out, checkpoint, interrupt)
            self.memory: dict[str, list[tuple[float, int]]] = {}
            self._t0 = self._next = None

        def _spin(self, seconds: float = 0.05) -> None:
            super()._spin(seconds)
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = self._next = now
            if now >= self._next:
                self._next = now + args.sample_every
                for name, proc in self.stack.procs.items():
                    self.memory.setdefault(name, []).append((now - self._t0,
                                                             rss_kb(proc.pid)))

        def _goals(self, maker) -> list[dict]:
            goals, end = [], time.monotonic() + 60.0 * args.minutes
            while time.monotonic() < end:
                goal = self._goal(len(goals), maker)
                goal['frames'] = goal['goal_image'] = None  # 30 minutes of frames stay out
                goals.append(goal)
            return goals

        def _summary(self, goals, startup_s, wall_s, exit_codes, core, bag) -> dict:
            from ami_ros.demo import camera_to_command_ms, percentiles_ms, rate_hz

            d, results = self.driver, [g['result'] for g in goals]
            latency, _, _ = camera_to_command_ms(d.commands_ns, [m[0] for m in d.markers],
                                                 [m[1] for m in d.markers], d.frame_published)
            p50, p99 = percentiles_ms(latency)
            memory = {name: {**growth(s, args.warmup), 'samples': [[round(t, 1), kb]
                                                                   for t, kb in s]}
                      for name, s in self.memory.items()}
            silent = [r.index for r in results if r.commands == 0]
            failures = [f'{n}: RSS grew {m["growth_percent"]:.1f} % after the warm-up'
                        for n, m in memory.items() if m['growth_percent'] is not None
                        and m['growth_percent'] > args.max_growth]
            failures += [f'{n}: too few samples after the warm-up' for n, m in memory.items()
                         if m['growth_percent'] is None]
            failures += [f'{n} exited with code {c}' for n, c in exit_codes.items()
                         if c not in (0, None)]
            if silent:
                failures.append(f'no command during goals {silent}')
            return {
                'ok': not failures, 'failures': failures, 'minutes': wall_s / 60.0,
                'goals': len(results), 'success_rate': sum(r.reached for r in results)
                / max(1, len(results)), 'held_rate': sum(r.held for r in results)
                / max(1, len(results)), 'commands': len(d.commands_ns),
                'loop_hz': rate_hz([g['window_ns'] for g in goals]),
                'latency_ms_p50': p50, 'latency_ms_p99': p99, 'memory': memory,
                'processes': self.layout, 'exit_codes': exit_codes, 'startup_s': startup_s,
                'config': {k: getattr(args, k) for k in ('minutes', 'goal_period', 'dwell',
                                                         'sample_every', 'warmup',
                                                         'max_growth', 'seed')},
                'bag': str(bag), 'logs': str(self.stack.log_dir)}

    return Soak()


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f'ami-ros soak: {summary["minutes"]:.1f} min, {summary["goals"]} goals '
                        f'({summary["success_rate"]:.0%} reached, {summary["held_rate"]:.0%} '
                        f'held), {summary["commands"]} commands at {summary["loop_hz"]:.2f} Hz')
    for col in ('process', 'RSS start MB', 'end MB', 'max MB', 'growth %', 'MB/hour',
                'samples'):
        table.add_column(col, justify='left' if col == 'process' else 'right')
    for name, m in summary['memory'].items():
        if m['growth_percent'] is None:
            table.add_row(name, '-', '-', '-', '-', '-', str(m['samples_after_warmup']))
            continue
        table.add_row(name, f'{m["rss_mb_start"]:.1f}', f'{m["rss_mb_end"]:.1f}',
                      f'{m["rss_mb_max"]:.1f}', f'{m["growth_percent"]:+.2f}',
                      f'{m["slope_mb_per_hour"]:+.1f}', str(m['samples_after_warmup']))
    console.print(table)
    console.print(('[green]PASS[/]' if summary['ok'] else '[red]FAIL[/]: '
                   + '; '.join(summary['failures'])) + f' (logs in {summary["logs"]})')


def run(args) -> int:
    from ami_ros.cli.demo import arm_reach_checkpoint, run_and_report
    from ami_ros.model.checkpoint import CheckpointError

    try:
        for name in ('minutes', 'goal_period', 'sample_every', 'max_growth'):
            if not getattr(args, name) > 0:
                raise ValueError(f'--{name.replace("_", "-")} must be > 0, got '
                                 f'{getattr(args, name)}')
        if not 0 <= args.warmup < 60.0 * args.minutes:
            raise ValueError(f'--warmup must be in [0, --minutes x 60), got {args.warmup}')
        checkpoint = arm_reach_checkpoint(args.checkpoint, 'soak')
        out = args.out.expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f'ami-ros soak: error: {exc}', file=sys.stderr)
        return 2
    args.bench = False

    def work(interrupt):
        return _soak_session(args, out, checkpoint, interrupt).run()

    summary = run_and_report('soak', work, out / 'soak.json',
                             args.json, print_table)
    return 1 if summary is None or not summary['ok'] else 0
