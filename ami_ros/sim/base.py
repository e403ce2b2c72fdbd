"""The simulator interface shared by every built-in scene (no ROS import).

A scene is a robot whose actuators take joint *position targets* (ros2_control position
interfaces), observed through a fixed camera. One ``step()`` advances one control period.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


class CommandError(ValueError):
    """A command that must not be applied (wrong length, NaN/inf, beyond limits)."""


@dataclass
class SceneConfig:
    """Settings common to every scene."""

    image_size: int = 64
    """Side of the square RGB camera frame in pixels (64 for the model; larger on request)."""
    control_hz: float = 10.0
    """Control (and frame) rate: one ``step()`` advances 1 / control_hz seconds of sim time."""
    seed: int = 0
    """Seed for the scene's own randomness (initial state, goals)."""

    def __post_init__(self):
        if not 16 <= int(self.image_size) <= 1024:
            raise ValueError(f'image_size must be in [16, 1024], got {self.image_size}')
        if not 0.5 <= float(self.control_hz) <= 1000.0:
            raise ValueError(f'control_hz must be in [0.5, 1000], got {self.control_hz}')


class Scene(abc.ABC):
    """A simulated robot with position-controlled joints and a camera."""

    name: str
    joint_names: tuple[str, ...]
    lower: np.ndarray          # (J,) position limits from the URDF
    upper: np.ndarray          # (J,)
    velocity_limit: np.ndarray  # (J,) from the URDF
    camera_fovy_deg: float | None = None
    """Vertical field of view of the scene's pinhole camera; None for a non-perspective view."""
    control_mode: str = 'position'
    """What ``set_target`` takes: 'position' (joint position targets; holding = staying where
    the joints are) or 'effort' (normalised joint torques; holding = no torque)."""

    def __init__(self, config: SceneConfig):
        self.config = config

    @property
    def control_dt(self) -> float:
        return 1.0 / float(self.config.control_hz)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: random initial configuration and a new random goal."""

    @abc.abstractmethod
    def set_target(self, target: np.ndarray) -> None:
        """Set the joint command (see ``control_mode``) held from now on; CommandError if unsafe."""

    @abc.abstractmethod
    def step(self) -> None:
        """Advance the simulation by one control period towards the current target."""

    @abc.abstractmethod
    def render(self) -> np.ndarray:
        """The camera frame, (H, W, 3) uint8 RGB."""

    @property
    @abc.abstractmethod
    def joint_positions(self) -> np.ndarray:
        """(J,) float64."""

    @property
    @abc.abstractmethod
    def joint_velocities(self) -> np.ndarray:
        """(J,) float64."""

    @property
    @abc.abstractmethod
    def target(self) -> np.ndarray:
        """(J,) the position target in force."""

    @abc.abstractmethod
    def ground_truth(self) -> dict[str, np.ndarray]:
        """Named physical state for evaluation, e.g. ``ee_position`` (3,), ``goal_position``."""

    @abc.abstractmethod
    def success(self) -> bool:
        """Whether the scene's goal is reached, as the scene defines it."""

    @abc.abstractmethod
    def make_explorer(self, rng: np.random.Generator):
        """Make an exploration policy for data collection.

        Returns a callable ``() -> target`` (J,), called once per control step, whose targets cover
        the workspace (and, for manipulation, make contact).
        """

    def hold_command(self) -> np.ndarray:
        """The command that holds the robot: where the joints are, or no torque (effort)."""
        if self.control_mode == 'effort':
            return np.zeros(self.num_joints)
        return np.clip(self.joint_positions, self.lower, self.upper)

    @abc.abstractmethod
    def get_state(self) -> np.ndarray:
        """A flat copy of the full simulator state (to restore with ``set_state``)."""

    @abc.abstractmethod
    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state`` (for oracle planning and goal generation)."""

    def set_goal(self, position) -> None:
        """Move the goal to ``position`` (scene units); scenes with a fixed goal refuse."""
        raise NotImplementedError(f'{self.name}: the goal of this scene is fixed')

    def close(self) -> None:
        """Free renderers and other native resources (the scene is unusable afterwards)."""

    limit_tolerance: float = 1e-3
    """A target this close past a URDF limit (rad or m) is clamped onto it, not rejected: a
    measured position held as the target (read back from ``/joint_states``) may sit a hair
    past the limit it rests on."""

    def check_target(self, target) -> np.ndarray:
        """Validate a position target: shape, finiteness and URDF limits. Returns float64 (J,).

        Within ``limit_tolerance`` past a limit the target is clamped onto it; further is an
        error naming each joint with enough digits to see by how much.
        """
        t = np.asarray(target, dtype=np.float64)
        if t.shape != (self.num_joints,):
            raise CommandError(
                f'{self.name}: target has shape {t.shape}, expected ({self.num_joints},) '
                f'for joints {list(self.joint_names)}')
        if not np.all(np.isfinite(t)):
            raise CommandError(f'{self.name}: target contains NaN/inf: {t.tolist()}')
        tol = float(self.limit_tolerance)
        bad = (t < self.lower - tol) | (t > self.upper + tol)
        if np.any(bad):
            names = [f'{n}={v:.6g} not in [{lo:.6g}, {hi:.6g}] (off by '
                     f'{max(lo - v, v - hi):.3g})' for n, v, lo, hi, b in
                     zip(self.joint_names, t, self.lower, self.upper, bad) if b]
            raise CommandError(f'{self.name}: target beyond URDF limits (tolerance {tol:g}): '
                               f'{", ".join(names)}')
        return np.minimum(np.maximum(t, self.lower), self.upper)
