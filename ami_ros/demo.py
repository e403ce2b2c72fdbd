"""The core of ``ami-ros demo`` (no ROS import): goals, goal tracking, timing statistics, figure.

Goals follow ``ami-ros eval-plan``'s protocol (DINO-WM's, :func:`~ami_ros.evaluation.plan_eval.
make_goal`): a *twin* core scene is put where the robot is (its measured joint positions, at
rest), the scene's exploration policy runs ``goal_steps`` steps from there, and the end-effector
position reached is the goal. The stack sees it only as the image the twin renders there (the
arm at the goal, the green goal marker on its end effector); the simulator's own marker is moved
to the same point so that the camera shows it during the goal.

Timing comes from DDS source timestamps: the system clock (``CLOCK_REALTIME``) read by the
middleware when a message is published, one clock for every process on the machine.

* loop rate: planner commands per second of that clock while a goal is active;
* camera -> command latency: publication of a planned command minus publication of the camera
  frame its plan's belief was last corrected with. The planner stamps the predicted-path marker
  it publishes right after each planned command with that frame's stamp (sim time); the frame's
  publication time is looked up by the stamp.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ami_ros.evaluation.plan_eval import Goal, PlanEvalConfig, make_goal
from ami_ros.sim import Scene, SceneConfig
from ami_ros.sim.arm_reach import ArmReachScene


@dataclass
class DemoConfig:
    """What ``ami-ros demo`` runs."""

    goals: int = 5
    """Goals, one after the other, each from where the robot is when it is made."""
    seed: int = 0
    """Seed of the goal generator (the exploration that makes each goal)."""
    timeout: float = 15.0
    """Sim seconds a goal may take before it counts as not reached."""
    dwell: float = 1.0
    """Sim seconds the goal stays after it is reached (the error at the end is reported)."""
    tolerance: float = 0.05
    """Reached: end effector within this distance of the goal, metres (eval-plan's)."""
    goal_steps: int = 25
    """Exploration steps from the robot's position to the goal (DINO-WM: 25)."""

    def __post_init__(self):
        if int(self.goals) < 1:
            raise ValueError(f'goals must be >= 1, got {self.goals}')
        if int(self.goal_steps) < 1:
            raise ValueError(f'goal_steps must be >= 1, got {self.goal_steps}')
        for name in ('timeout', 'tolerance'):
            if not 0.0 < float(getattr(self, name)) < math.inf:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if not 0.0 <= float(self.dwell) < math.inf:
            raise ValueError(f'dwell must be >= 0 seconds, got {self.dwell}')


# ------------------------------------------------------------------------------------ goals ---
def place_at_rest(scene: Scene, q) -> None:
    """Put the arm of a core ``arm_reach`` scene at joint positions ``q`` (J,), at rest.

    Edits the flat ``get_state()`` vector: MuJoCo's integration state begins (time, qpos, qvel)
    and the arm's joints are all its degrees of freedom; the scene's own tail holds setpoint,
    setpoint velocity, target and goal joints (J each). The result is checked, so a change of
    layout fails loudly instead of placing the arm wrongly.
    """
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    j = scene.num_joints
    if q.shape != (j,) or not np.all(np.isfinite(q)):
        raise ValueError(f'{scene.name}: need {j} finite joint positions, got {q.tolist()}')
    hold = np.clip(q, scene.lower, scene.upper)  # a measured position may be a hair outside
    state = scene.get_state()
    state[1:1 + j] = q          # qpos
    state[1 + j:1 + 2 * j] = 0.0  # qvel
    n = state.size
    state[n - 4 * j:n - 3 * j] = hold  # servo setpoint
    state[n - 3 * j:n - 2 * j] = 0.0   # setpoint velocity
    state[n - 2 * j:n - j] = hold      # target in force
    state[n - j:] = np.nan             # goal joints: unknown
    scene.set_state(state)
    if not (np.allclose(scene.joint_positions, q, atol=1e-9)
            and np.allclose(scene.joint_velocities, 0.0, atol=1e-9)):
        raise RuntimeError(f'{scene.name}: the state layout changed; the arm is at '
                           f'{scene.joint_positions.tolist()}, not {q.tolist()}')


class GoalMaker:
    """Goals by eval-plan's generator from the robot's current joint positions (a twin scene)."""

    def __init__(self, config: DemoConfig, image_size: int, control_hz: float = 10.0,
                 robot=None):
        self.config = config
        self.scene = ArmReachScene(SceneConfig(image_size=int(image_size),
                                               control_hz=float(control_hz),
                                               seed=int(config.seed)), robot=robot)
        self.control_hz = float(control_hz)
        self.rng = np.random.default_rng(int(config.seed))
        self.eval = PlanEvalConfig(goal_steps=int(config.goal_steps),
                                   tolerance=float(config.tolerance))

    def make(self, joint_positions) -> Goal:
        """A goal reached by ``goal_steps`` exploration steps from ``joint_positions``."""
        place_at_rest(self.scene, joint_positions)
        _, goal = make_goal(self.scene, self.rng, self.eval)
        return goal

    def close(self) -> None:
        self.scene.close()


# ------------------------------------------------------------------------------ one goal ---
@dataclass
class GoalResult:
    """How one goal went (errors in metres, times in sim seconds unless named wall)."""

    index: int
    goal_position: list
    reached: bool
    initial_error: float
    final_error: float
    held: bool
    """Still within tolerance at the end (after the dwell)."""
    steps: Optional[int]
    """Control steps (ground-truth samples) from sending the goal to first within tolerance."""
    time_s: Optional[float]
    """Sim seconds from sending the goal to first within tolerance."""
    wall_s: float
    """Wall seconds the goal took, dwell or timeout included."""
    commands: int = 0
    """Commands the planner sent while the goal was active."""
    min_error: float = math.nan
    """Closest approach to the goal, metres."""

    def row(self) -> dict:
        return {'goal': self.index, 'reached': self.reached,
                'final_error_m': round(self.final_error, 4),
                'initial_error_m': round(self.initial_error, 4), 'held': self.held,
                'steps': self.steps, 'time_s': None if self.time_s is None else
                round(self.time_s, 2), 'wall_s': round(self.wall_s, 2),
                'commands': self.commands, 'min_error_m': round(self.min_error, 4),
                'goal_position': [round(float(v), 4) for v in self.goal_position]}


@dataclass
class GoalTracker:
    """Judges one goal from ground-truth end-effector samples, stamped in sim time."""

    goal_position: np.ndarray
    start: float
    """Sim time the goal was sent."""
    config: DemoConfig
    errors: list = field(default_factory=list)
    """(sim time, error m) of every sample after the start."""
    reach_time: Optional[float] = None
    steps: int = 0
    reach_steps: Optional[int] = None

    def update(self, t: float, ee_position) -> bool:
        """Add a sample; whether the goal is over (reached and dwelt, or timed out)."""
        if t <= self.start:
            return False
        err = float(np.linalg.norm(np.asarray(ee_position, dtype=np.float64)
                                   - self.goal_position))
        self.errors.append((float(t), err))
        self.steps += 1
        if self.reach_time is None and err <= float(self.config.tolerance):
            self.reach_time, self.reach_steps = float(t), self.steps
        if self.reach_time is not None:
            return t - self.reach_time >= float(self.config.dwell) - 1e-9
        return t - self.start >= float(self.config.timeout) - 1e-9

    def result(self, index: int, initial_error: float, wall_s: float,
               commands: int) -> GoalResult:
        final = self.errors[-1][1] if self.errors else initial_error
        return GoalResult(
            index=index, goal_position=[float(v) for v in self.goal_position],
            reached=self.reach_time is not None, initial_error=float(initial_error),
            final_error=float(final), held=final <= float(self.config.tolerance),
            steps=self.reach_steps,
            time_s=None if self.reach_time is None else self.reach_time - self.start,
            wall_s=float(wall_s), commands=int(commands),
            min_error=min((e for _, e in self.errors), default=float(initial_error)))


# ---------------------------------------------------------------------------------- timing ---
def percentiles_ms(values_ms) -> tuple[Optional[float], Optional[float]]:
    """(p50, p99) of a list of milliseconds; (None, None) when empty."""
    v = np.asarray(list(values_ms), dtype=np.float64)
    if v.size == 0:
        return None, None
    p50, p99 = np.percentile(v, [50, 99])
    return float(p50), float(p99)


def pair_plans(command_ns, marker_ns, max_gap_ns: int = 50_000_000) -> np.ndarray:
    """For each marker, the index of the command it follows, or -1.

    The planner publishes the predicted-path marker right after a planned command (hold
    commands have none): a marker belongs to the latest command published at or before it,
    within ``max_gap_ns``, that no earlier marker took.
    """
    c = np.asarray(command_ns, dtype=np.int64)   # (C,) sorted
    out = np.full(len(marker_ns), -1, dtype=np.int64)
    taken = set()
    for k, m in enumerate(np.asarray(marker_ns, dtype=np.int64)):
        i = int(np.searchsorted(c, m, side='right')) - 1
        if i >= 0 and m - c[i] <= max_gap_ns and i not in taken:
            out[k] = i
            taken.add(i)
    return out


def camera_to_command_ms(command_ns, marker_ns, marker_frame_stamps,
                         frame_published: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(latencies ms, index of the command each belongs to, markers whose frame is unknown).

    ``marker_frame_stamps`` holds each marker's stamp (the frame's, integer ns of sim time);
    ``frame_published`` maps a camera frame's stamp to its publication time (ns).
    """
    pairs = pair_plans(command_ns, marker_ns)
    lat, idx, unknown = [], [], 0
    for k, i in enumerate(pairs):
        if i < 0:
            continue
        pub = frame_published.get(int(marker_frame_stamps[k]))
        if pub is None:
            unknown += 1
            continue
        lat.append((int(command_ns[i]) - int(pub)) * 1e-6)
        idx.append(int(i))
    return np.asarray(lat, dtype=np.float64), np.asarray(idx, dtype=np.int64), unknown


def rate_hz(windows_ns) -> Optional[float]:
    """Events per second over several windows: each (event times ns) of one active period."""
    events = spans = 0.0
    for times in windows_ns:
        t = np.sort(np.asarray(times, dtype=np.int64))
        if t.size >= 2:
            events += t.size - 1
            spans += (t[-1] - t[0]) * 1e-9
    return events / spans if spans > 0 else None


# -------------------------------------------------------------------------------- core loop ---
def time_core_loop(model, mpc_config, frames: list, goal_image: np.ndarray, q,
                   repeats: int = 30, warmup: int = 5) -> list:
    """Milliseconds per control step of the core loop, without ROS.

    One step: encode a frame, update the belief (predict + fuse), plan - the
    :class:`~ami_ros.agent.Agent`: the stages the nodes run, with their model and settings.
    """
    import torch

    from ami_ros.agent import Agent

    agent = Agent(model, mpc_config)
    agent.set_goal_image(goal_image)
    q = np.asarray(q, dtype=np.float64)
    dt = float(mpc_config.belief.dt)
    out = []
    command = q.copy()
    with torch.no_grad():
        for k in range(int(warmup) + int(repeats)):
            t0 = time.perf_counter()
            agent.observe(frames[k % len(frames)], k * dt, command)
            command, _ = agent.act(q, k * dt)
            if k >= warmup:
                out.append(1e3 * (time.perf_counter() - t0))
    return out


# ---------------------------------------------------------------------------------- figure ---
def plot_demo(goals: list, path: Path, title: str, tolerance: float,
              frames_per_goal: int = 6) -> Path:
    """Filmstrip (goal image + frames) per goal above the end-effector error vs sim time.

    ``goals``: per goal a dict with ``goal_image`` (H, W, 3), ``frames`` [(sim time, image)],
    ``errors`` [(sim time, m)], ``start`` (sim time sent), ``reach_time`` (or None), ``reached``.
    """
    import matplotlib

    matplotlib.use('Agg')  # files only; never opens a window
    import matplotlib.pyplot as plt

    rows = len(goals)
    cols = frames_per_goal + 1
    fig = plt.figure(figsize=(1.25 * cols + 0.4, 1.3 * rows + 2.8))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [2.0],
                            hspace=0.35, wspace=0.05)
    for r, g in enumerate(goals):
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(g['goal_image'])
        ax.set_title(f'goal {r + 1}', fontsize=7, color='green')
        ax.set_axis_off()
        frames = g['frames']
        if frames:
            idx = np.unique(np.linspace(0, len(frames) - 1, frames_per_goal).round().astype(int))
            for c, i in enumerate(idx, start=1):
                t, image = frames[i]
                ax = fig.add_subplot(grid[r, c])
                ax.imshow(image)
                ax.set_title(f'+{t - g["start"]:.1f} s', fontsize=6)
                ax.set_axis_off()
    ax = fig.add_subplot(grid[rows, :])
    for r, g in enumerate(goals):
        if g['errors']:
            t, e = np.asarray(g['errors']).T
            ax.plot(t, e, color='tab:blue' if g['reached'] else 'tab:red', lw=1.2)
        ax.axvline(g['start'], color='grey', lw=0.8, ls='--')
        ax.text(g['start'], 1.0, f' {r + 1}', transform=ax.get_xaxis_transform(), fontsize=7,
                va='top')
        if g['reach_time'] is not None:
            ax.axvline(g['reach_time'], color='green', lw=0.6, alpha=0.6)
    ax.axhline(tolerance, color='green', lw=0.8, ls=':', label=f'tolerance {tolerance} m')
    ax.set_xlabel('sim time (s); dashed: goal sent, green: reached')
    ax.set_ylabel('end-effector error (m)')
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper right')
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)
    return path


__all__ = ['DemoConfig', 'GoalMaker', 'GoalResult', 'GoalTracker', 'camera_to_command_ms',
           'pair_plans', 'percentiles_ms', 'place_at_rest', 'plot_demo', 'rate_hz',
           'time_core_loop']
