"""Push-T (LeRobot's gym-pusht 0.1.8, pymunk) as a built-in scene: a pusher on a 2-axis gantry.

The robot is the gantry of ``urdf/pusht_gantry.urdf``: prismatic joints ``gantry_x`` and
``gantry_y`` whose position targets are the env's action (where its PD loop drives the pusher).

Units and frames
    Joint values are metres, 1 gym-pusht unit (a pixel of its 512 x 512 board) = 1 mm
    (:data:`METRES_PER_UNIT`), so the env's action space [0, 512] is [0, 0.512] m. Limits and
    velocity limits come from the URDF, which must lie inside that action space. Both joints grow
    like the env's board coordinates: x to the right of the image, y down it. Ground-truth poses
    are in the URDF's ``board`` frame (origin at the image's top-left corner, x right, y down,
    z into the table), positions in metres, angles in radians wrapped to [-pi, pi) and
    measured from x towards y, as pymunk measures the block's angle.

Rate
    gym-pusht runs at 10 Hz (its ``render_fps``), each step 10 physics substeps of 10 ms. That is
    the benchmark rate and :class:`SceneConfig`'s default. Other rates whose period is a whole
    number of 10 ms substeps (20, 25, 50, 100 Hz, 5 Hz, ...) are accepted and change the number
    of substeps; anything else raises ``ValueError``.

Episode
    ``reset`` draws gym-pusht's own random initial state (pusher and T anywhere), from the env's
    RNG seeded with ``config.seed`` at construction, or with ``seed`` when given. The goal is the
    benchmark's fixed T pose (256, 256, pi/4) units, not random. Success is the env's: coverage of
    the goal T by the block above its ``success_threshold`` (0.95).

State
    :meth:`get_state` is a flat float64 vector laid out as :data:`STATE_FIELDS` (env units).
    pymunk also keeps a contact cache that warm-starts its solver, and with a pusher driving the
    block that hidden state decides whole trajectories (runs that differ only in it end up 100s of
    units apart within 30 steps). So by default (``exact_restore=True``) every ``step`` starts
    from a pymunk space rebuilt from ``get_state()`` alone: the vector is then the whole state,
    and "restore, then step" reproduces a run bit for bit. ``exact_restore=False`` steps the env's
    space on as gym-pusht does and reproduces gym-pusht bit for bit (states, pixels, success);
    restoring is then exact only away from contact. Rebuilding costs ~0.25 ms a step.

Speed (CPU time on a loaded 2-core machine; gym-pusht's own step with 96 px pixels: 2.5 ms)
    explorer + step + render: 2.1 ms at 64 px, 2.3 ms at 96 px (1.6 ms without exact_restore);
    render alone ~0.8-1.0 ms, at any size up to 256 px.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ami_ros.paths import urdf_path
from ami_ros.sim.base import Scene, SceneConfig

# pygame greets on import unless told not to (gym_pusht imports it)
os.environ.setdefault('PYGAME_HIDE_SUPPORT_PROMPT', '1')
import cv2  # noqa: E402  (opencv-python-headless, as gym-pusht uses it)
import pygame  # noqa: E402
from gym_pusht.envs.pusht import PushTEnv  # noqa: E402

METRES_PER_UNIT = 0.001
"""Joint metres per gym-pusht unit (board pixel)."""

URDF_NAME = 'pusht_gantry'
JOINT_NAMES = ('gantry_x', 'gantry_y')
ENV_ACTION_RANGE = (0.0, 512.0)
"""gym-pusht's action space bounds (env units); the URDF limits must lie inside it."""

STATE_FIELDS = (
    'agent_x', 'agent_y', 'agent_vx', 'agent_vy',
    'block_x', 'block_y', 'block_angle', 'block_vx', 'block_vy', 'block_omega',
    'target_x', 'target_y',
)
"""Layout of :meth:`PushTScene.get_state`: env units (positions, per-second velocities), radians.
The block's (x, y) is its body origin, the point gym-pusht's poses refer to; its velocity is that
of its centre of gravity, as pymunk stores it. The target is the env's action (env units)."""

ARENA = (7.0, 504.0)
"""Inner faces of gym-pusht's walls in env units (segments at 5 and 506 with radius 2)."""

AGENT_RADIUS = 15.0
"""The pusher's radius in env units (gym-pusht's ``add_circle(..., 15)``)."""

ANGLE_UNITS_PER_RAD = 20.0 / (np.pi / 9.0)
"""Env units per radian of the block angle when poses are compared: DINO-WM's success region
is 20 units of position and pi/9 of angle, so both count alike."""


def _wrap_angle(a: float) -> float:
    """Angle in [-pi, pi)."""
    return (a + np.pi) % (2.0 * np.pi) - np.pi


@lru_cache(maxsize=None)
def _read_limits(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, velocity) of JOINT_NAMES from a URDF, with errors naming the file.

    Cached per path: the caller copies the arrays.
    """
    import yourdfpy  # slow to import (trimesh); only needed here

    if not path.is_file():
        raise FileNotFoundError(f'pusht: URDF not found: {path}')
    robot = yourdfpy.URDF.load(str(path), build_scene_graph=False, load_meshes=False)
    lower, upper, velocity = [], [], []
    for name in JOINT_NAMES:
        joint = robot.joint_map.get(name)
        if joint is None or joint.type != 'prismatic' or joint.limit is None:
            raise ValueError(f'pusht: {path} needs a prismatic joint {name!r} with <limit>')
        lim = joint.limit
        if lim.lower is None or lim.upper is None or lim.velocity is None:
            raise ValueError(f'pusht: {path}: joint {name!r} needs lower, upper and velocity')
        lo, hi = float(lim.lower), float(lim.upper)
        env_lo, env_hi = (v * METRES_PER_UNIT for v in ENV_ACTION_RANGE)
        if not env_lo <= lo < hi <= env_hi + 1e-12:
            raise ValueError(
                f'pusht: {path}: joint {name!r} limits [{lo}, {hi}] m must be an interval inside '
                f'the env action space [{env_lo}, {env_hi}] m')
        if not float(lim.velocity) > 0.0:
            raise ValueError(f'pusht: {path}: joint {name!r} velocity {lim.velocity} must be > 0')
        lower.append(lo)
        upper.append(hi)
        velocity.append(float(lim.velocity))
    return np.array(lower), np.array(upper), np.array(velocity)


def _check_rate(env: PushTEnv, control_hz: float) -> int:
    """How many physics substeps the env makes per step at ``control_hz``; rejects other rates."""
    # the same expression PushTEnv.step uses
    n = int(1 / (env.dt * control_hz))
    if n < 1 or abs(n * env.dt * control_hz - 1.0) > 1e-9:
        raise ValueError(
            f'pusht: control_hz={control_hz} is not a whole number of the env\'s '
            f'{env.dt * 1000:.0f} ms physics substeps per step; use e.g. 10 (the benchmark), '
            f'5, 20, 25, 50 or 100')
    return n


class PushTScene(Scene):
    """gym-pusht's Push-T behind the :class:`Scene` interface (see the module docstring)."""

    name = 'pusht'
    joint_names = JOINT_NAMES

    def __init__(self, config: SceneConfig, *, exact_restore: bool = True):
        """Make the Push-T scene.

        ``exact_restore``: rebuild the pymunk space from the state before every step, so that
        the state vector is the whole state (see the module docstring); False steps gym-pusht's
        space on as gym-pusht does, bit for bit, and restoring is then only close in contact.
        """
        super().__init__(config)
        self.exact_restore = bool(exact_restore)
        self.lower, self.upper, self.velocity_limit = (
            a.copy() for a in _read_limits(urdf_path(URDF_NAME)))
        size = int(config.image_size)
        # The class directly, not gym.make: no TimeLimit (300 steps) or checker wrappers, and
        # 'state' observations so that step() does not render; render() draws on request.
        self._env = PushTEnv(obs_type='state', render_mode='rgb_array',
                             observation_width=size, observation_height=size)
        _check_rate(self._env, float(config.control_hz))
        self._env.control_hz = float(config.control_hz)
        self._target = np.zeros(2)
        self._action = np.zeros(2)  # the env's action in env units; what step() applies
        self._coverage = 0.0
        self._trial: PushTScene | None = None  # where candidate plans are tried, made on use
        self.reset(seed=int(config.seed))

    # -- episode -------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """gym-pusht's random initial state; the target starts at the pusher (hold still)."""
        self._env.reset(seed=seed)
        self._hold_here()
        self._coverage = float(self._env._get_coverage())

    def _hold_here(self) -> None:
        here = np.clip(self.joint_positions, self.lower, self.upper)
        self._target = here
        self._action = here / METRES_PER_UNIT

    def set_target(self, target: np.ndarray) -> None:
        t = self.check_target(target)
        self._target = t.copy()
        self._action = t / METRES_PER_UNIT

    def step(self) -> None:
        if self.exact_restore:
            # start every step from a space built from get_state() alone (see the module doc)
            self._restore(self.get_state())
        # the env's own step: PD control of the pusher, substeps, coverage and success
        _, _, _, _, info = self._env.step(self._action.copy())
        self._coverage = float(info['coverage'])

    def render(self) -> np.ndarray:
        """gym-pusht's 'pixels' observation at ``config.image_size``, pixel for pixel.

        The env draws the board at 512 x 512 and shrinks it with cv2.resize (bilinear); this does
        the same, but reads the canvas with one contiguous copy instead of the env's transpose of
        pygame's strided view, which took most of the time.
        """
        canvas = self._env._draw()
        side = canvas.get_width()
        rgb = np.frombuffer(pygame.image.tobytes(canvas, 'RGB'), dtype=np.uint8)
        rgb = rgb.reshape(canvas.get_height(), side, 3)
        size = int(self.config.image_size)
        return cv2.resize(rgb, (size, size))

    # -- joint state ---------------------------------------------------------------------------

    @property
    def joint_positions(self) -> np.ndarray:
        return np.array(self._env.agent.position, dtype=np.float64) * METRES_PER_UNIT

    @property
    def joint_velocities(self) -> np.ndarray:
        return np.array(self._env.agent.velocity, dtype=np.float64) * METRES_PER_UNIT

    @property
    def target(self) -> np.ndarray:
        return self._target.copy()

    # -- evaluation ----------------------------------------------------------------------------

    @property
    def coverage(self) -> float:
        """Fraction of the goal T covered by the block (the env's reward before scaling)."""
        return self._coverage

    def block_pose_units(self) -> np.ndarray:
        """(3,) the block's body-origin pose in env units: x, y, angle (radians, unwrapped)."""
        b = self._env.block
        return np.array([b.position.x, b.position.y, b.angle], dtype=np.float64)

    def ground_truth(self) -> dict[str, np.ndarray]:
        """Board-frame poses in metres and radians (see the module docstring), and coverage."""
        bx, by, ba = self.block_pose_units()
        gx, gy, ga = (float(v) for v in self._env.goal_pose)
        s = METRES_PER_UNIT
        return {
            'agent_position': self.joint_positions,
            'block_pose': np.array([bx * s, by * s, _wrap_angle(ba)]),
            'goal_pose': np.array([gx * s, gy * s, _wrap_angle(ga)]),
            'coverage': np.array([self._coverage]),
        }

    def success(self) -> bool:
        return bool(self._coverage > self._env.success_threshold)

    def make_explorer(self, rng: np.random.Generator):
        return PushTExplorer(self, rng)

    def make_expert(self, rng: np.random.Generator):
        """An expert-like pusher towards the goal T (:class:`PushTExpert`)."""
        return PushTExpert(self, rng)

    def candidate_plans(self, n: int, horizon: int, block: int,
                        rng: np.random.Generator) -> np.ndarray:
        """(<= n, horizon, 2) target sequences (m) of scripted pushes from the current state.

        Each is one of the explorer's pushes (a random point of the T, pushed from a random
        side, the way round the T included), run on a private copy of the scene for horizon x
        block steps and read at the end of each block. Searches start from the best of them:
        the ways round the T are a few discrete choices a Gaussian around one plan rarely
        samples. The live scene is not touched.
        """
        if self._trial is None:
            self._trial = PushTScene(self.config)
        trial, start = self._trial, self.get_state()
        plans = []
        for _ in range(int(n)):
            trial.set_state(start)
            pusher = PushTExplorer(trial, rng)
            push = pusher._plan_push()
            if push is not None:
                targets = pusher.rehearse(push, int(horizon) * int(block))
                plans.append(targets[int(block) - 1::int(block)])
        return np.asarray(plans, dtype=np.float64).reshape(-1, int(horizon), 2)

    # -- full state ----------------------------------------------------------------------------

    def get_state(self) -> np.ndarray:
        a, b = self._env.agent, self._env.block
        return np.array([
            a.position.x, a.position.y, a.velocity.x, a.velocity.y,
            b.position.x, b.position.y, b.angle, b.velocity.x, b.velocity.y, b.angular_velocity,
            self._action[0], self._action[1],
        ], dtype=np.float64)

    def set_state(self, state: np.ndarray) -> None:
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (len(STATE_FIELDS),):
            raise ValueError(f'pusht: state must be {len(STATE_FIELDS)} finite numbers '
                             f'{STATE_FIELDS}, got shape {s.shape}')
        if not np.all(np.isfinite(s)):
            raise ValueError(f'pusht: state has non-finite values: {s.tolist()}')
        self._restore(s)
        self._action = s[10:12].copy()
        self._target = self._action * METRES_PER_UNIT
        self._coverage = float(self._env._get_coverage())

    def _restore(self, s: np.ndarray) -> None:
        """Rebuild the pymunk space with the bodies of state ``s`` (the target is not touched)."""
        env = self._env
        # A fresh space drops pymunk's contact cache, so restoring is repeatable.
        env._setup()
        env.agent.position = (s[0], s[1])
        env.agent.velocity = (s[2], s[3])
        # Angle first: pymunk turns a body about its centre of gravity, which for the T is not
        # its origin, so setting the position last puts the origin exactly where asked.
        env.block.angle = s[6]
        env.block.position = (s[4], s[5])
        env.block.velocity = (s[7], s[8])
        env.block.angular_velocity = s[9]
        # shapes cache their world geometry at each physics step; drawing and queries read it
        for shape in (*env.agent.shapes, *env._block_shapes):
            shape.cache_bb()

    def set_block_pose(self, x: float, y: float, angle: float) -> None:
        """Place the block at rest at a body-origin pose in env units (e.g. the goal)."""
        s = self.get_state()
        s[4:10] = (x, y, angle, 0.0, 0.0, 0.0)
        self.set_state(s)

    @property
    def goal_pose_units(self) -> np.ndarray:
        """(3,) the goal T pose in env units: x, y, angle."""
        return np.array(self._env.goal_pose, dtype=np.float64)


@dataclass
class _Push:
    """One planned push: approach ``start``, then move the target along ``direction``."""

    start: np.ndarray       # (2,) env units, where the pusher waits before pushing
    direction: np.ndarray   # (2,) unit vector
    speed: float            # env units per second of the target along direction
    steps: int              # control steps of pushing
    local_point: np.ndarray  # (2,) the point of the T aimed at, in the T's body frame


class PushTExplorer:
    """Exploration for data collection: pushes that hit the T, mixed with random moves.

    A push picks a point inside the T and a random direction (inwards when the T is far from the
    centre, so that it stays clear of the walls), goes to where the pusher would first touch the T
    along that line, backed off a little (round the T when the straight way would hit it), then
    moves the target towards the point, at a random speed for a random number of steps, stopping
    before it would press the T against a wall. With probability
    ``wander_probability`` a segment is instead a few steps towards a random point of the
    workspace. Targets change by at most the URDF velocity limit times the control period per
    axis, and stay inside the joint limits. Call once per control step; returns a target in metres.
    """

    wander_probability = 0.2
    approach_backoff = 12.0         # env units between the pusher and the T before a push
    approach_max_steps = 8          # give up on reaching the start after this many steps
    approach_tolerance = 8.0        # env units; close enough to the start of a push
    waypoint_tolerance = 25.0       # env units; close enough to a waypoint round the T
    waypoint_max_steps = 2          # steps towards one waypoint at most
    push_speed = (80.0, 260.0)      # env units / s
    push_steps = (5, 14)            # inclusive range
    wander_steps = (2, 6)           # inclusive range
    wall_clearance = 30.0           # env units the T should keep from the walls when pushed
    centre_radius = 120.0           # beyond this distance from the centre, push the T inwards

    def __init__(self, scene: PushTScene, rng: np.random.Generator):
        self.scene = scene
        self.rng = rng
        self._lo = scene.lower / METRES_PER_UNIT
        self._hi = scene.upper / METRES_PER_UNIT
        self._max_move = scene.velocity_limit * scene.control_dt / METRES_PER_UNIT  # (2,)
        self.phase = 'wander'  # what the last target was for: approach, push or wander (logs)
        self._goals = self._segments()

    def __call__(self) -> np.ndarray:
        return self._step_towards(next(self._goals))

    def _step_towards(self, goal: np.ndarray) -> np.ndarray:
        """The target (m) one control step from the one in force towards ``goal`` (env units)."""
        last = self.scene.target / METRES_PER_UNIT
        move = np.clip(goal - last, -self._max_move, self._max_move)
        return np.clip(last + move, self._lo, self._hi) * METRES_PER_UNIT

    def _segments(self):
        """Endless goals (env units), one per control step, segment after segment."""
        while True:
            push = self._plan_push() if self.rng.random() >= self.wander_probability else None
            if push is None:
                self.phase = 'wander'
                goal = self.rng.uniform(self._lo, self._hi)
                yield from [goal] * int(self.rng.integers(self.wander_steps[0],
                                                          self.wander_steps[1] + 1))
                continue
            yield from self._run_push(push)

    def rehearse(self, push: _Push, steps: int | None = None) -> list[np.ndarray]:
        """Drive this explorer's own scene through ``push``, stepping as the explorer steps.

        ``steps``: None = until the push ends; else exactly that many steps, the pusher
        staying at the push's last goal once it is done. Returns the targets (m) sent.
        """
        goals, targets, goal = self._run_push(push), [], None
        while steps is None or len(targets) < steps:
            goal = next(goals, goal if steps is not None else None)
            if goal is None:
                break
            targets.append(self._step_towards(goal))
            self.scene.set_target(targets[-1])
            self.scene.step()
        return targets

    def _run_push(self, push: _Push):
        """Goals (env units) that approach the push's start, then push."""
        self.phase = 'approach'
        for waypoint in self._route_to(push.start):
            for _ in range(self.waypoint_max_steps):
                if np.linalg.norm(self._pusher() - waypoint) < self.waypoint_tolerance:
                    break
                yield waypoint
        for _ in range(self.approach_max_steps):
            if np.linalg.norm(self._pusher() - push.start) < self.approach_tolerance:
                break
            yield push.start
        # aim at the chosen point of the T again: the approach may have nudged it
        self.phase = 'push'
        block = self.scene._env.block
        here = self._pusher()
        aim = np.array(block.local_to_world(tuple(push.local_point))) - here
        direction = aim / np.linalg.norm(aim) if np.linalg.norm(aim) > 1.0 else push.direction
        step = direction * push.speed * self.scene.control_dt
        for k in range(push.steps):
            if self._nears_wall(self._keypoints(), direction, self.wall_clearance / 2):
                break  # pinning the T against a wall would push it through
            yield here + step * (k + 1)

    def _route_to(self, goal: np.ndarray) -> list[np.ndarray]:
        """Waypoints (env units) around the T when the straight way to ``goal`` would hit it."""
        env = self.scene._env
        here = self._pusher()
        hits = [s.segment_query(tuple(here), tuple(goal), AGENT_RADIUS + 2.0)
                for s in env._block_shapes]
        if all(h.shape is None for h in hits):
            return []
        # along a circle about the T's centre of gravity that clears its far corners
        centre = np.array(env.block.local_to_world(env.block.center_of_gravity))
        radius = np.linalg.norm(self._keypoints() - centre, axis=1).max() + AGENT_RADIUS + 8.0
        a0, a1 = (np.arctan2(*(p - centre)[::-1]) for p in (here, goal))
        turn = _wrap_angle(a1 - a0)  # the shorter way round
        n = int(np.ceil(abs(turn) / np.radians(40.0)))
        margin = AGENT_RADIUS + 2.0
        return [np.clip(centre + radius * np.array([np.cos(a), np.sin(a)]),
                        self._lo + margin, self._hi - margin)
                for a in a0 + turn * np.arange(n + 1) / max(n, 1)]

    def _keypoints(self) -> np.ndarray:
        """(8, 2) the T's corners, env units."""
        return PushTEnv.get_keypoints(self.scene._env._block_shapes)

    @staticmethod
    def _nears_wall(points: np.ndarray, direction: np.ndarray, clearance: float) -> bool:
        """Whether moving ``points`` along ``direction`` heads into a wall closer than clearance."""
        lo, hi = ARENA[0] + clearance, ARENA[1] - clearance
        return bool(np.any((direction < 0) & (points.min(axis=0) < lo))
                    or np.any((direction > 0) & (points.max(axis=0) > hi)))

    def _pusher(self) -> np.ndarray:
        return np.array(self.scene._env.agent.position, dtype=np.float64)

    def _plan_push(self) -> _Push | None:
        """A push whose start lies inside the workspace, or None after a few tries."""
        block = self.scene._env.block
        shapes = self.scene._env._block_shapes
        margin = AGENT_RADIUS + 2.0
        centre = (self._lo + self._hi) / 2
        for _ in range(10):
            # a point inside the T: one of its two rectangles, chosen by area, then uniform in it
            areas = np.array([s.area for s in shapes])
            shape = shapes[int(self.rng.choice(len(shapes), p=areas / areas.sum()))]
            verts = np.array([tuple(v) for v in shape.get_vertices()])
            local = self.rng.uniform(verts.min(axis=0), verts.max(axis=0))
            point = np.array(block.local_to_world(tuple(local)))
            angle = self.rng.uniform(-np.pi, np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
            # far from the centre, push inwards only, so the T keeps away from the walls
            inwards = centre - np.array(block.local_to_world(block.center_of_gravity))
            if np.linalg.norm(inwards) > self.centre_radius and direction @ inwards < 0:
                direction = -direction
            far = point - direction * 400.0
            # first contact of the pusher's disc moving from far towards the point
            hits = [s.segment_query(tuple(far), tuple(point), AGENT_RADIUS) for s in shapes]
            alphas = [h.alpha for h in hits if h.shape is not None]
            if not alphas:
                continue
            touch = far + (point - far) * min(alphas)
            start = touch - direction * self.approach_backoff
            if np.any(start < self._lo + margin) or np.any(start > self._hi - margin):
                continue
            speed = float(self.rng.uniform(*self.push_speed))
            steps = int(self.rng.integers(self.push_steps[0], self.push_steps[1] + 1))
            if self._nears_wall(self._keypoints(), direction, self.wall_clearance):
                continue
            return _Push(start, direction, speed, steps, local)
        return None


class PushTExpert(PushTExplorer):
    """An expert-like pusher: pushes that bring the T closest to the goal pose (the green T).

    Of a few candidate pushes, each tried first on a private copy of the scene, the best one;
    no wandering. The world-model benchmarks take Push-T goals from expert pushes towards the
    target (their recorded demonstrations are not available here).
    """

    wander_probability = 0.0
    candidates = 8

    def __init__(self, scene: PushTScene, rng: np.random.Generator):
        self._trial = PushTScene(scene.config)  # where candidate pushes are tried
        super().__init__(scene, rng)

    def _plan_push(self) -> _Push | None:
        pushes = [p for p in (super(PushTExpert, self)._plan_push()
                              for _ in range(self.candidates)) if p is not None]
        if not pushes:
            return None
        return min(pushes, key=self._pose_error_after)

    def _pose_error_after(self, push: _Push) -> float:
        """The T's pose error to the goal pose (env units, pi/9 = 20) after trying ``push``."""
        trial = self._trial
        trial.set_state(self.scene.get_state())
        PushTExplorer(trial, self.rng).rehearse(push)
        x, y, a = trial.block_pose_units()
        gx, gy, ga = trial.goal_pose_units
        return float(np.hypot(x - gx, y - gy) + ANGLE_UNITS_PER_RAD * abs(_wrap_angle(a - ga)))
