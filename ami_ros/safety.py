"""The safety layer of the command path (no ROS import): limits, clamping, goal checks, watchdog.

Every command the planner node publishes goes through this module, whatever the planner did:

* :class:`Limits` - per-dimension bounds and a rate limit. For joint position commands they come
  from the URDF (:meth:`Limits.from_urdf`: position limits, and the velocity limit as the largest
  change per second); for velocity commands (``Twist``) from configured speed and acceleration
  limits (:meth:`Limits.symmetric`).
* :meth:`Limits.clamp` / :meth:`Limits.clamp_sequence`: a command inside the bounds whose change
  from the previous command is at most ``rate * dt`` per step; NaN/inf is refused
  (:class:`UnsafeCommand`), never passed on.
* :meth:`Limits.hold` and :meth:`Limits.final_check`: the hold command (the measured position,
  inside the limits) and the last check right before a message is built.
* the robot's URDF (limits, kinematics, the reachable :class:`Workspace` goals are checked
  against) is read by :mod:`ami_ros.robot`.
* :func:`check_goal_pose`: NaN/inf, quaternion and frame checks of a goal pose.
* :class:`Watchdog`: which inputs are older than ``timeout`` by an injected clock, with reasons.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ami_ros.robot import Chain, GoalError, UrdfError, Workspace, joint_limits

__all__ = ['Chain', 'GoalError', 'Limits', 'UnsafeCommand', 'UrdfError', 'Watchdog', 'Workspace',
           'check_goal_pose']


class UnsafeCommand(ValueError):
    """A command that must not be sent (wrong size, NaN/inf, beyond the limits)."""


# ------------------------------------------------------------------------------------------------
# limits and clamping


@dataclass(frozen=True)
class Limits:
    """Bounds and rate limits of a command vector, one entry per dimension (joint / axis)."""

    names: tuple[str, ...]
    """Name of each dimension (joint names for position commands)."""
    lower: np.ndarray
    """(A,) smallest allowed value; -inf = unbounded."""
    upper: np.ndarray
    """(A,) largest allowed value; +inf = unbounded."""
    rate: np.ndarray
    """(A,) largest change per second (> 0): the velocity limit of a position command, the
    acceleration limit of a velocity command."""

    def __post_init__(self):
        a = len(self.names)
        for name in ('lower', 'upper', 'rate'):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (a,):
                raise ValueError(f'limits: {name} has shape {v.shape}, expected ({a},) for '
                                 f'{list(self.names)}')
            object.__setattr__(self, name, v)
        if np.any(np.isnan(self.lower)) or np.any(np.isnan(self.upper)):
            raise ValueError(f'limits: NaN bounds {self.lower.tolist()} / {self.upper.tolist()}')
        bad = self.lower > self.upper
        if np.any(bad):
            raise ValueError(f'limits: lower > upper for {np.asarray(self.names)[bad].tolist()}')
        if not np.all((self.rate > 0) & np.isfinite(self.rate)):
            raise ValueError(f'limits: rate limits must be finite and > 0, got '
                             f'{self.rate.tolist()}')

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_urdf(cls, path: str | Path, joint_names: Sequence[str] = (),
                  velocity_scale: float = 1.0, position_margin: float = 0.0) -> Limits:
        """Position and velocity limits of the URDF's actuated joints (or of ``joint_names``).

        ``velocity_scale`` (0, 1] keeps commands below the URDF velocity; ``position_margin``
        (joint units) keeps them that far inside the position limits. Continuous joints have no
        position bounds. Raises :class:`UrdfError` naming the file and joint.
        """
        return cls(*joint_limits(path, joint_names, velocity_scale, position_margin))

    @classmethod
    def symmetric(cls, names: Sequence[str], max_value: Sequence[float] | float,
                  max_rate: Sequence[float] | float) -> Limits:
        """Bounds [-max_value, max_value] and a rate limit, e.g. for Twist speed commands."""
        a = len(names)
        hi = np.broadcast_to(np.asarray(max_value, dtype=np.float64), (a,)).copy()
        rate = np.broadcast_to(np.asarray(max_rate, dtype=np.float64), (a,)).copy()
        if not np.all(hi >= 0.0):
            raise ValueError(f'max_value must be >= 0, got {hi.tolist()}')
        return cls(tuple(names), -hi, hi, rate)

    @property
    def size(self) -> int:
        return len(self.names)

    # -- commands ---------------------------------------------------------------------------------

    def _vector(self, value, what: str) -> np.ndarray:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        if v.shape != (self.size,):
            raise UnsafeCommand(f'{what} has {v.size} values, expected {self.size} for '
                                f'{list(self.names)}')
        if not np.all(np.isfinite(v)):
            raise UnsafeCommand(f'{what} contains NaN/inf: {v.tolist()}')
        return v

    def clamp(self, target, previous=None, dt: float | None = None) -> tuple[np.ndarray, bool]:
        """(safe command, whether it was changed): inside the bounds, within rate*dt of previous.

        The bounds win where both cannot hold (a previous command outside the bounds, e.g. after
        the limits were tightened). Raises :class:`UnsafeCommand` for NaN/inf or a wrong size.
        """
        t = self._vector(target, 'command')
        safe = t
        if previous is not None:
            if dt is None or not float(dt) > 0.0:
                raise ValueError(f'dt must be > 0 seconds to rate-limit, got {dt}')
            p = self._vector(previous, 'previous command')
            step = self.rate * float(dt)
            safe = np.clip(safe, p - step, p + step)
        safe = np.clip(safe, self.lower, self.upper)
        # a change below 1e-6 is float32 rounding of a planner that kept the limits itself
        return safe, bool(np.any(np.abs(safe - t) > 1e-6 * np.maximum(1.0, np.abs(t))))

    def clamp_sequence(self, targets, previous=None,
                       dt: float | None = None) -> tuple[np.ndarray, bool]:
        """Clamp (H, A) commands due every ``dt`` seconds, each rate-limited from the one before."""
        seq = np.asarray(targets, dtype=np.float64)
        if seq.ndim != 2 or seq.shape[0] < 1:
            raise UnsafeCommand(f'command sequence must be (H >= 1, {self.size}), got {seq.shape}')
        out, changed = [], False
        for i, target in enumerate(seq):
            safe, c = self.clamp(target, previous, dt if previous is not None else None)
            out.append(safe)
            changed |= c
            previous = safe
        return np.stack(out), changed

    def hold(self, measured) -> np.ndarray:
        """The hold command for a measured position: that position, inside the bounds.

        Not rate-limited on purpose: commanding where the robot is asks for no motion (what
        joint_trajectory_controller does when it holds position).
        """
        return np.clip(self._vector(measured, 'measured position'), self.lower, self.upper)

    def final_check(self, command) -> np.ndarray:
        """Last check before publishing: finite, right size, inside the bounds (1e-9 slack)."""
        c = self._vector(command, 'command')
        bad = (c < self.lower - 1e-9) | (c > self.upper + 1e-9)
        if np.any(bad):
            names = [f'{n}={v:.6g} not in [{lo:.6g}, {hi:.6g}]' for n, v, lo, hi, b in
                     zip(self.names, c, self.lower, self.upper, bad) if b]
            raise UnsafeCommand(f'command beyond limits: {", ".join(names)}')
        return c


def check_goal_pose(position, quaternion, frame_id: str, expected_frame: str) -> None:
    """Raise :class:`GoalError` for a goal pose with NaN/inf, a bad quaternion or a wrong frame.

    A quaternion of all zeros means "no orientation" and is accepted (position-only goals).
    """
    p = np.asarray(position, dtype=np.float64)
    q = np.asarray(quaternion, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise GoalError(f'goal position contains NaN/inf: {p.tolist()}')
    if not np.all(np.isfinite(q)):
        raise GoalError(f'goal orientation contains NaN/inf: {q.tolist()}')
    norm = float(np.linalg.norm(q))
    if norm != 0.0 and abs(norm - 1.0) > 1e-3:
        raise GoalError(f'goal orientation (x, y, z, w) {q.tolist()} is not a unit quaternion '
                        f'(norm {norm:.4f})')
    if frame_id not in ('', expected_frame):
        raise GoalError(f'goal frame_id must be {expected_frame!r} (or empty), got {frame_id!r} '
                        f'(no tf lookup is done)')


# ------------------------------------------------------------------------------------------------
# watchdog


@dataclass(frozen=True)
class WatchdogStatus:
    """What :meth:`Watchdog.check` found."""

    ok: bool
    """Every watched input is fresh."""
    reason: str
    """'' when ok, else which inputs are stale and by how much."""
    ages: dict
    """{input: age in seconds, or None if never received}."""


class Watchdog:
    """Tracks when each watched input last arrived; stale after ``timeout`` seconds.

    ``clock`` gives the current time in seconds (injected: the node's ROS clock, sim time under
    ``use_sim_time``, or a fake in tests). ``feed(name)`` records an arrival; ``check()`` says
    whether all inputs are fresh and, if not, why. A clock that jumps back (a restarted
    simulation) makes earlier arrivals stale until the input arrives again.
    """

    def __init__(self, timeout: float, inputs: Iterable[str],
                 clock: Callable[[], float] = time.monotonic):
        if not 0.0 < float(timeout) < math.inf:
            raise ValueError(f'watchdog timeout must be a finite number > 0 s, got {timeout}')
        self.timeout = float(timeout)
        self.inputs = tuple(inputs)
        if not self.inputs:
            raise ValueError('watchdog needs at least one input to watch')
        self._clock = clock
        self._last: dict[str, Optional[float]] = {name: None for name in self.inputs}

    def feed(self, name: str, t: float | None = None) -> None:
        """Record that ``name`` arrived at ``t`` (default: now)."""
        if name not in self._last:
            raise KeyError(f'watchdog does not watch {name!r}; it watches {list(self.inputs)}')
        self._last[name] = self._clock() if t is None else float(t)

    def forget(self) -> None:
        """Treat every input as never received (e.g. after a reset)."""
        self._last = {name: None for name in self.inputs}

    def check(self, now: float | None = None) -> WatchdogStatus:
        now = self._clock() if now is None else float(now)
        ages, problems = {}, []
        for name, last in self._last.items():
            if last is None:
                ages[name] = None
                problems.append(f'no {name} received yet')
                continue
            age = now - last
            ages[name] = age
            if age < 0.0:
                problems.append(f'{name}: clock jumped back {-age:.3f} s since the last one')
            elif age > self.timeout:
                problems.append(f'{name} is {age:.3f} s old (stale_timeout {self.timeout:g} s)')
        return WatchdogStatus(not problems, '; '.join(problems), ages)
