"""The robot from its URDF (no ROS import): joint limits, forward kinematics, reachable workspace.

* :func:`joint_limits`: position and velocity limits of the actuated joints, read by the safety
  layer (:meth:`ami_ros.safety.Limits.from_urdf`).
* :class:`Chain`: batched forward kinematics of the serial chain from the root to a tip link.
* :class:`Workspace`: whether a goal position is reachable by the tip (sampled configurations,
  then a damped least-squares refinement: inverse kinematics by numeric Jacobians).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


class GoalError(ValueError):
    """A goal that is ill-formed (NaN, wrong frame) or that the robot cannot reach."""


class UrdfError(ValueError):
    """A URDF that is missing, unreadable, or lacks the limits the safety layer needs."""


def joint_limits(path: str | Path, joint_names: Sequence[str] = (), velocity_scale: float = 1.0,
                 position_margin: float = 0.0) -> tuple:
    """Return (names, lower, upper, rate) of the URDF's actuated joints (or ``joint_names``).

    ``velocity_scale`` (0, 1] keeps commands below the URDF velocity; ``position_margin``
    (joint units) keeps them that far inside the position limits. Continuous joints have no
    position bounds. Raises :class:`UrdfError` naming the file and joint.
    """
    if not 0.0 < float(velocity_scale) <= 1.0:
        raise ValueError(f'velocity_scale must be in (0, 1], got {velocity_scale}')
    if not float(position_margin) >= 0.0:
        raise ValueError(f'position_margin must be >= 0, got {position_margin}')
    robot = load_urdf(path)
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
    return names, np.array(lower), np.array(upper), np.array(rate)


# ------------------------------------------------------------------------------------------------
# kinematics and the reachable workspace


def load_urdf(path: str | Path):
    """The parsed URDF (yourdfpy, no meshes); UrdfError if missing or unreadable."""
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
        robot = load_urdf(path)
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
        _, lower, upper, _ = joint_limits(path, self.joint_names)
        self.lower = np.where(np.isfinite(lower), lower, -math.pi)
        self.upper = np.where(np.isfinite(upper), upper, math.pi)

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
