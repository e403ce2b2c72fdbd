"""Ground truth <-> named poses: one mapping shared by the sim node, the bag writer and the reader.

A scene's ``ground_truth()`` dict uses these key conventions:

* ``<name>_position`` (2,) or (3,), with an optional ``<name>_quaternion`` (4,) in (x, y, z, w):
  pose ``<name>``
* ``<name>_pose`` (3,) planar (x, y, theta) -> pose ``<name>`` at z = 0 rotated by theta about z
* anything else is a scalar or vector signal ``<name>`` (e.g. Push-T ``coverage``)

Poses are published / recorded as ``geometry_msgs/PoseStamped`` on ``/sim/<name>_pose`` and
signals as ``std_msgs/Float64MultiArray`` on ``/sim/<name>``. Reading back gives
``<name>_position`` (3,), ``<name>_quaternion`` (4,) and ``<name>_yaw`` (1,) for every pose, and the
signals unchanged.
"""
from __future__ import annotations

import math

import numpy as np

SIM_NAMESPACE = '/sim'


def yaw_quaternion(theta: float) -> np.ndarray:
    """Quaternion (x, y, z, w) of a rotation by ``theta`` about z."""
    return np.array([0.0, 0.0, math.sin(theta / 2.0), math.cos(theta / 2.0)])


def quaternion_yaw(q) -> float:
    """Yaw (rotation about z) of a quaternion given as (x, y, z, w)."""
    x, y, z, w = (float(v) for v in q)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


Pose = tuple[np.ndarray, np.ndarray]
"""(position (3,), quaternion (4,) as x, y, z, w)."""


def split_truth(truth: dict) -> tuple[dict[str, Pose], dict[str, np.ndarray]]:
    """Split a ground-truth dict into poses {name: (position, quaternion)} and signals."""
    poses, signals = {}, {}
    for key, value in truth.items():
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if key.endswith('_position'):
            name = key[:-len('_position')]
            pos = np.zeros(3)
            pos[:min(3, v.size)] = v[:3]
            quat = np.asarray(truth.get(f'{name}_quaternion', (0.0, 0.0, 0.0, 1.0)),
                              dtype=np.float64)
            poses[name] = (pos, quat)
        elif key.endswith('_pose') and v.size == 3:
            poses[key[:-len('_pose')]] = (np.array([v[0], v[1], 0.0]), yaw_quaternion(v[2]))
        elif key.endswith('_quaternion'):
            if key[:-len('_quaternion')] + '_position' not in truth:
                signals[key] = v
        else:
            signals[key] = v
    return poses, signals


def pose_topic(name: str) -> str:
    return f'{SIM_NAMESPACE}/{name}_pose'


def signal_topic(name: str) -> str:
    return f'{SIM_NAMESPACE}/{name}'


def truth_from_pose(name: str, position, quaternion) -> dict[str, np.ndarray]:
    """The ground-truth entries that a recorded pose ``name`` reads back as."""
    q = np.asarray(quaternion, dtype=np.float64)
    return {f'{name}_position': np.asarray(position, dtype=np.float64),
            f'{name}_quaternion': q,
            f'{name}_yaw': np.array([quaternion_yaw(q)])}
