"""A tiny analytic world for tests and smoke runs: a dot that follows its command with lag.

The "robot" is a 2-D point p in [-1, 1]^2 (its two joint positions). The command a_t (a position
target) is in force from frame t to t+1, and the point moves a fixed fraction of the way there:
``p_{t+1} = p_t + gain * (a_t - p_t)``. Frames are rendered analytically (a soft red disc on a
grey background), so episodes cost microseconds and the dynamics are known exactly. The
ground truth ``ee_position`` is the point in metres (``scale`` m per unit) at z = 0.
"""
from __future__ import annotations

import numpy as np

from ami_ros.data.episode import Episode

JOINT_NAMES = ('dot_x', 'dot_y')


def render_dot(p: np.ndarray, size: int, radius: float = 0.09) -> np.ndarray:
    """(H, W, 3) uint8 frame of a dot at p in [-1, 1]^2 (x to the right, y up)."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0                     # pixel centres in [-1, 1]
    xx, yy = np.meshgrid(c, -c)
    d2 = (xx - p[0]) ** 2 + (yy - p[1]) ** 2
    alpha = 1.0 / (1.0 + np.exp((np.sqrt(d2) - radius) / (0.5 / size)))  # anti-aliased edge
    bg = np.array([110.0, 110.0, 120.0])
    fg = np.array([230.0, 40.0, 30.0])
    img = bg + alpha[..., None] * (fg - bg)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_dot_episode(length: int = 40, image_size: int = 32, seed: int = 0, gain: float = 0.5,
                     control_hz: float = 10.0, scale: float = 0.2) -> Episode:
    """One episode: the explorer draws a new random waypoint every 2-6 steps."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-0.8, 0.8, size=2)
    target = p.copy()
    left = 0
    images, joints, actions, ee = [], [], [], []
    for _ in range(length):
        if left <= 0:
            target = rng.uniform(-0.85, 0.85, size=2)
            left = int(rng.integers(2, 7))
        left -= 1
        images.append(render_dot(p, image_size))
        joints.append(p.copy())
        actions.append(target.copy())
        ee.append([p[0] * scale, p[1] * scale, 0.0])
        p = p + gain * (target - p)
    return Episode(
        images=np.stack(images),
        joint_positions=np.asarray(joints, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.float32),
        stamps=np.arange(length, dtype=np.float64) / control_hz,
        joint_names=JOINT_NAMES,
        ground_truth={'ee_position': np.asarray(ee, dtype=np.float64)},
        source=f'dot:{seed}')


def make_dot_episodes(episodes: int, length: int = 40, image_size: int = 32,
                      seed: int = 0) -> list[Episode]:
    """``episodes`` independent dot episodes (episode i seeded with seed * 100003 + i)."""
    return [make_dot_episode(length, image_size, seed * 100003 + i) for i in range(episodes)]
