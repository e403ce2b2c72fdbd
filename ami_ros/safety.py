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
* :class:`Workspace`: whether a goal position is reachable by the robot's tip, from forward
  kinematics of the URDF chain (sampled configurations, then a damped least-squares refinement).
* :func:`check_goal_pose`: NaN/inf, quaternion and frame checks of a goal pose.
* :class:`Watchdog`: which inputs are older than ``timeout`` by an injected clock, with reasons.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np


class UnsafeCommand(ValueError):
    """A command that must not be sent (wrong size, NaN/inf, beyond the limits)."""


class GoalError(ValueError):
    """A goal that is ill-formed (NaN, wrong frame) or that the robot cannot reach."""


class UrdfError(ValueError):
    """A URDF that is missing, unreadable, or lacks the limits the safety layer needs."""


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
        if not 0.0 < float(velocity_scale) <= 1.0:
            raise ValueError(f'velocity_scale must be in (0, 1], got {velocity_scale}')
        if not float(position_margin) >= 0.0:
            raise ValueError(f'position_margin must be >= 0, got {position_margin}')
        robot = _load_urdf(path)
        names = tuple(joint_names) or tuple(robot.actuated_joint_names)
        if not names:
            raise UrdfError(f'{path}: no actuated joints')
        lower, upper, rate = [], [], []
        for name in names:
            joint = robot.joint_map.get(name)
            if joint is None:
                raise UrdfError(f'{path}: no joint {name!r}; joints: {sorted(robot.joint_map)}')
            lim = joint.limit
            if joint.type in ('revolute', 'prismatic'):
                if lim is None or lim.lower is None or lim.upper is None:
                    raise UrdfError(f'{path}: {joint.type} joint {name!r} has no position limits')
                lo, hi = float(lim.lower), float(lim.upper)
            elif joint.type == 'continuous':
                lo, hi = -math.inf, math.inf
            else:
                raise UrdfError(f'{path}: joint {name!r} is {joint.type}, not a commandable '
                                f'revolute, prismatic or continuous joint')
            if lim is None or lim.velocity is None or not float(lim.velocity) > 0.0:
                raise UrdfError(f'{path}: joint {name!r} has no velocity limit > 0 (the safety '
                                f'layer needs one)')
            if math.isfinite(lo) and hi - lo <= 2 * float(position_margin):
                raise UrdfError(f'{path}: joint {name!r} range [{lo}, {hi}] is narrower than '
                                f'twice position_margin={position_margin}')
            lower.append(lo + float(position_margin))
            upper.append(hi - float(position_margin))
            rate.append(float(lim.velocity) * float(velocity_scale))
        return cls(names, np.array(lower), np.array(upper), np.array(rate))

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


# ------------------------------------------------------------------------------------------------
# URDF kinematics and the reachable workspace


def _load_urdf(path: str | Path):
    import yourdfpy  # local: only what reads URDFs needs it

    path = Path(path)
    if not path.is_file():
        raise UrdfError(f'{path}: URDF not found')
    try:
        return yourdfpy.URDF.load(str(path), build_scene_graph=False, load_meshes=False)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise UrdfError(f'{path}: cannot read URDF: {e}') from None


def _axis_rotations(axis: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) about a unit ``axis`` by angles q (N,) (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    s, c = np.sin(q)[:, None, None], np.cos(q)[:, None, None]
    return np.eye(3) + s * kx + (1.0 - c) * (kx @ kx)


class Chain:
    """Forward kinematics of the URDF's serial chain from the root to ``tip_link`` (batched)."""

    def __init__(self, path: str | Path, tip_link: str = ''):
        robot = _load_urdf(path)
        joints = {j.child: j for j in robot.robot.joints}
        parents = {j.parent for j in robot.robot.joints}
        if tip_link:
            if tip_link not in {link.name for link in robot.robot.links}:
                raise UrdfError(f'{path}: no link {tip_link!r}')
        else:
            # the leaf with the most movable joints above it: tool0, the pusher, ...
            leaves = [c for c in joints if c not in parents]
            depth = {leaf: sum(1 for j in self._path(joints, leaf) if j.type != 'fixed')
                     for leaf in leaves}
            best = max(depth.values(), default=0)
            tips = [leaf for leaf, d in depth.items() if d == best]
            if best == 0 or len(tips) != 1:
                raise UrdfError(f'{path}: cannot pick the tip link among {sorted(leaves)}; set '
                                f'tip_link')
            tip_link = tips[0]
        self.tip_link = tip_link
        self.joints = self._path(joints, tip_link)
        for j in self.joints:
            if j.type not in ('fixed', 'revolute', 'prismatic', 'continuous'):
                raise UrdfError(f'{path}: joint {j.name!r} of type {j.type} is not supported')
            if j.mimic is not None:
                raise UrdfError(f'{path}: mimic joint {j.name!r} is not supported')
        self.joint_names = tuple(j.name for j in self.joints if j.type != 'fixed')
        if not self.joint_names:
            raise UrdfError(f'{path}: no movable joint between the root and {tip_link!r}')
        limits = Limits.from_urdf(path, self.joint_names)
        self.lower = np.where(np.isfinite(limits.lower), limits.lower, -math.pi)
        self.upper = np.where(np.isfinite(limits.upper), limits.upper, math.pi)

    @staticmethod
    def _path(joints: dict, link: str) -> list:
        path = []
        while link in joints:
            path.append(joints[link])
            link = joints[link].parent
        return path[::-1]

    def positions(self, q: np.ndarray) -> np.ndarray:
        """Tip position in the root frame of each joint configuration: q (N, J) -> (N, 3)."""
        q = np.atleast_2d(np.asarray(q, dtype=np.float64))
        n = q.shape[0]
        t = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()  # (N, 4, 4)
        i = 0
        for j in self.joints:
            origin = np.eye(4) if j.origin is None else np.asarray(j.origin, dtype=np.float64)
            t = t @ origin
            if j.type == 'fixed':
                continue
            axis = np.asarray(j.axis if j.axis is not None else (1.0, 0.0, 0.0), dtype=np.float64)
            motion = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()  # (N, 4, 4)
            if j.type == 'prismatic':
                motion[:, :3, 3] = q[:, i, None] * axis / np.linalg.norm(axis)
            else:
                motion[:, :3, :3] = _axis_rotations(axis, q[:, i])
            t = t @ motion
            i += 1
        return t[:, :3, 3]


@dataclass
class Workspace:
    """The set of tip positions the robot can reach, checked by forward kinematics.

    ``reachable(p)`` finds the sampled configurations whose tips lie nearest to ``p`` along
    ``axes``, refines them by damped least squares within the joint limits, and accepts ``p``
    when a tip comes within ``tolerance``. Tip positions below ``min_z`` (a floor the URDF does
    not know) do not count.
    """

    chain: Chain
    axes: str = 'xyz'
    """Coordinates compared: 'xyz', or e.g. 'xy' for a planar goal."""
    tolerance: float = 0.03
    """Largest distance (m) from a reachable tip position at which a goal still counts."""
    min_z: float = -math.inf
    """Tip positions below this height (m) are not reachable (the floor)."""
    samples: int = 4096
    """Random configurations drawn (seeded) to start the search from."""
    seed: int = 0
    _index: np.ndarray = field(init=False, repr=False)
    _q: np.ndarray = field(init=False, repr=False)
    _tips: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if not self.axes or set(self.axes) - set('xyz') or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"workspace axes must be letters of 'xyz', got {self.axes!r}")
        if not float(self.tolerance) > 0.0:
            raise ValueError(f'workspace tolerance must be > 0 m, got {self.tolerance}')
        if int(self.samples) < 16:
            raise ValueError(f'workspace samples must be >= 16, got {self.samples}')
        self._index = np.array(['xyz'.index(a) for a in self.axes])
        rng = np.random.default_rng(self.seed)
        q = rng.uniform(self.chain.lower, self.chain.upper,
                        (int(self.samples), len(self.chain.joint_names)))
        tips = self.chain.positions(q)
        keep = tips[:, 2] >= self.min_z
        if not np.any(keep):
            raise ValueError(f'no sampled tip position is above min_z={self.min_z} m')
        self._q, self._tips = q[keep], tips[keep]

    @classmethod
    def from_urdf(cls, path: str | Path, tip_link: str = '', **kwargs) -> Workspace:
        return cls(Chain(path, tip_link), **kwargs)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower (3,), upper (3,)) of the sampled tip positions."""
        return self._tips.min(axis=0), self._tips.max(axis=0)

    def distance(self, point, seeds: int = 8, iterations: int = 40) -> float:
        """Smallest distance in metres (along ``axes``) from a point to a reachable tip."""
        p = np.asarray(point, dtype=np.float64).reshape(-1)
        if p.shape != (len(self.axes),) or not np.all(np.isfinite(p)):
            raise GoalError(f'goal must be {len(self.axes)} finite numbers ({self.axes}), got '
                            f'{p.tolist()}')
        ax = self._index
        d = np.linalg.norm(self._tips[:, ax] - p, axis=1)  # (S,)
        q = self._q[np.argsort(d)[:seeds]].copy()  # (K, J) nearest samples as IK seeds
        best = float(d.min())
        eps, damping = 1e-5, 1e-3
        lo, hi = self.chain.lower, self.chain.upper
        for _ in range(iterations):
            tip = self.chain.positions(q)  # (K, 3)
            err = p - tip[:, ax]  # (K, P)
            ok = tip[:, 2] >= self.min_z
            dist = np.linalg.norm(err, axis=1)
            if np.any(ok):
                best = min(best, float(dist[ok].min()))
            if best <= 1e-4:
                break
            # numeric Jacobian (K, P, J) from one batched FK call
            k, nj = q.shape
            dq = q[:, None, :] + eps * np.eye(nj)[None]  # (K, J, J)
            moved = self.chain.positions(dq.reshape(-1, nj)).reshape(k, nj, 3)[:, :, ax]
            jac = np.transpose((moved - tip[:, None, ax]) / eps, (0, 2, 1))  # (K, P, J)
            jjt = jac @ np.transpose(jac, (0, 2, 1)) + damping * np.eye(len(ax))  # (K, P, P)
            step = np.transpose(jac, (0, 2, 1)) @ np.linalg.solve(jjt, err[:, :, None])
            q = np.clip(q + step[:, :, 0], lo, hi)  # (K, J)
        return best

    def check(self, point) -> float:
        """Raise :class:`GoalError` unless ``point`` is reachable; returns its distance."""
        d = self.distance(point)
        if d > float(self.tolerance):
            lo, hi = self.bounds
            box = ', '.join(f'{a} [{lo[i]:.3f}, {hi[i]:.3f}]' for a, i in
                            zip(self.axes, self._index))
            raise GoalError(f'goal {np.round(np.asarray(point, float), 4).tolist()} is outside the '
                            f'reachable workspace of {self.chain.tip_link} (nearest reachable '
                            f'point {d:.3f} m away, tolerance {self.tolerance} m; reach: {box} m)')
        return d


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
