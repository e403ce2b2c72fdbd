"""The ``reacher`` scene: dm_control's suite reacher, a planar 2-link arm under joint torques.

The model is dm_control's own ``reacher.xml`` (the suite's ``reacher-easy``: 0.02 s physics
step, motors of gear 0.05 with controls in [-1, 1], a fixed top-down camera), run with MuJoCo's
own renderer. Episodes start as the suite's do: the shoulder uniform over a turn, the wrist
uniform over its limited range, the target anywhere 5-20 cm from the base.

Unlike ``arm_reach``, commands are joint **efforts** (ros2_control's effort interface,
``effort_controllers/JointGroupEffortController``): ``set_target`` sets the normalised torque
held for the next control period. One ``step()`` is one control period (0.1 s at the default
10 Hz): ``frameskip`` = 5 physics steps with the same torque, the action repeat of the
world-model benchmarks on this task.

The target is hidden in the camera frame by default (the benchmarks' setting: the goal is given
as an image of the arm, not as the red sphere).
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

# MuJoCo picks its GL back end when it is imported: default to headless EGL (no display here).
os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from ami_ros.sim.base import Scene, SceneConfig  # noqa: E402

JOINTS = ('shoulder', 'wrist')
CAMERA = 'fixed'
STATE_FIELDS = ('shoulder', 'wrist', 'shoulder_vel', 'wrist_vel', 'effort_shoulder',
                'effort_wrist', 'target_x', 'target_y')
"""Layout of :meth:`ReacherScene.get_state` (rad, rad/s, normalised effort, m)."""


def _load_model() -> mujoco.MjModel:
    try:
        from dm_control.suite import common
    except ImportError as exc:  # pragma: no cover - dm-control is in requirements.txt
        raise RuntimeError('the reacher scene needs dm-control (pip install dm-control, see '
                           'requirements.txt)') from exc
    xml = common.read_model('reacher.xml')
    return mujoco.MjModel.from_xml_string(xml, common.ASSETS)


@dataclass
class ReacherConfig(SceneConfig):
    """Settings of the ``reacher`` scene (plus the common :class:`SceneConfig` ones)."""

    target_size: float = 0.05
    """Radius of the target sphere, m (suite reacher-easy: 0.05; hard: 0.015)."""
    show_target: bool = False
    """Draw the target in the camera frame (hidden by default: goals are arm images)."""
    joint_tolerance: float = 0.05
    """success(): every joint within this many radians of the goal posture (set_goal_posture)."""


class ReacherScene(Scene):
    """dm_control's reacher with effort commands and a fixed top-down camera."""

    name = 'reacher'
    joint_names = JOINTS
    control_mode = 'effort'
    camera_fovy_deg = 45.0

    def __init__(self, config: SceneConfig):
        if not isinstance(config, ReacherConfig):
            config = ReacherConfig(**{k: getattr(config, k) for k in
                                      ('image_size', 'control_hz', 'seed')})
        super().__init__(config)
        self._model = _load_model()
        self._data = mujoco.MjData(self._model)
        dt = float(self._model.opt.timestep)
        self.frameskip = int(round(self.control_dt / dt))
        if self.frameskip < 1 or abs(self.frameskip * dt - self.control_dt) > 1e-9:
            raise ValueError(f'reacher: control period {self.control_dt} s is not a whole number '
                             f'of physics steps of {dt} s')
        self.lower = np.array([-1.0, -1.0])
        self.upper = np.array([1.0, 1.0])
        # effort units per second: the full range within one control period (no rate limit)
        self.velocity_limit = np.full(2, 2.0 / self.control_dt)
        self._qadr = [self._model.joint(n).qposadr[0] for n in JOINTS]
        self._vadr = [self._model.joint(n).dofadr[0] for n in JOINTS]
        wrist = self._model.joint('wrist').range
        self._wrist_range = (float(wrist[0]), float(wrist[1]))
        self._target_geom = self._model.geom('target').id
        self._finger_geom = self._model.geom('finger').id
        self._model.geom_size[self._target_geom, 0] = float(config.target_size)
        if not config.show_target:
            self._model.geom_rgba[self._target_geom, 3] = 0.0
        self._effort = np.zeros(2)
        self._goal_posture: np.ndarray | None = None
        self._renderer: mujoco.Renderer | None = None
        self._close_renderer = None
        self._rng = np.random.default_rng(config.seed)
        self.reset(config.seed)

    # ---------------------------------------------------------------------- episode ---
    def reset(self, seed: int | None = None) -> None:
        """The suite's episode start: random posture and target, at rest, no torque."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self._model, self._data)
        self._data.qpos[self._qadr[0]] = self._rng.uniform(-np.pi, np.pi)
        self._data.qpos[self._qadr[1]] = self._rng.uniform(*self._wrist_range)
        angle, radius = self._rng.uniform(0, 2 * np.pi), self._rng.uniform(0.05, 0.20)
        self._model.geom_pos[self._target_geom, :2] = radius * np.sin(angle), radius * np.cos(angle)
        self._effort = np.zeros(2)
        self._goal_posture = None
        mujoco.mj_forward(self._model, self._data)

    def set_target(self, target: np.ndarray) -> None:
        """Set the normalised joint efforts (in [-1, 1]) held from now on."""
        self._effort = self.check_target(target)

    def step(self) -> None:
        self._data.ctrl[:] = self._effort
        mujoco.mj_step(self._model, self._data, nstep=self.frameskip)

    def render(self) -> np.ndarray:
        if self._renderer is None:
            size = int(self.config.image_size)
            self._renderer = mujoco.Renderer(self._model, height=size, width=size)
            # closed explicitly before interpreter exit (EGL may be gone by __del__ time)
            self._close_renderer = weakref.finalize(self, self._renderer.close)
        self._renderer.update_scene(self._data, camera=CAMERA)
        return self._renderer.render().copy()

    # ------------------------------------------------------------------------ state ---
    @property
    def joint_positions(self) -> np.ndarray:
        return self._data.qpos[self._qadr].astype(np.float64)

    @property
    def joint_velocities(self) -> np.ndarray:
        return self._data.qvel[self._vadr].astype(np.float64)

    @property
    def target(self) -> np.ndarray:
        return self._effort.copy()

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {'joint_positions': self.joint_positions,
                'fingertip_position': self._data.geom_xpos[self._finger_geom].copy(),
                'target_position': self._model.geom_pos[self._target_geom].copy()}

    def set_goal_posture(self, posture) -> None:
        """The joint configuration :meth:`success` compares with (None: the target sphere)."""
        self._goal_posture = None if posture is None else np.asarray(posture, np.float64).copy()

    def posture_error(self, posture) -> np.ndarray:
        """(2,) absolute joint errors to ``posture``, rad.

        Raw angles, as the benchmarks compare them: a full turn of the shoulder is not the same
        posture.
        """
        return np.abs(self.joint_positions - np.asarray(posture, dtype=np.float64))

    def success(self) -> bool:
        """Whether the goal is met.

        Every joint within ``joint_tolerance`` of the goal posture when one is set, else the
        fingertip touching the target sphere (the suite's reward).
        """
        if self._goal_posture is not None:
            tol = float(self.config.joint_tolerance)
            return bool(np.all(self.posture_error(self._goal_posture) <= tol))
        tip = self._data.geom_xpos[self._finger_geom, :2]
        goal = self._model.geom_pos[self._target_geom, :2]
        radii = self._model.geom_size[[self._target_geom, self._finger_geom], 0].sum()
        return bool(np.linalg.norm(tip - goal) <= radii)

    def make_explorer(self, rng: np.random.Generator):
        """The random policy of the benchmarks' data: uniform efforts every control period."""
        return lambda: rng.uniform(self.lower, self.upper)

    def get_state(self) -> np.ndarray:
        return np.concatenate([self.joint_positions, self.joint_velocities, self._effort,
                               self._model.geom_pos[self._target_geom, :2]])

    def set_state(self, state: np.ndarray) -> None:
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (len(STATE_FIELDS),):
            raise ValueError(f'reacher state must have {len(STATE_FIELDS)} values '
                             f'{STATE_FIELDS}, got shape {s.shape}')
        self._data.qpos[self._qadr] = s[0:2]
        self._data.qvel[self._vadr] = s[2:4]
        self._data.act[:] = 0.0
        self._effort = s[4:6].copy()
        self._model.geom_pos[self._target_geom, :2] = s[6:8]
        mujoco.mj_forward(self._model, self._data)

    def close(self) -> None:
        if self._close_renderer is not None:
            self._close_renderer()
            self._close_renderer = self._renderer = None
