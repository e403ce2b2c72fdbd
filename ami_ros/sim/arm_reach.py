"""The ``arm_reach`` scene: a serial arm reaching for a goal point (MuJoCo, no ROS).

The arm is configuration: a robot config (:mod:`ami_ros.robot_config`, default
``config/robots/arm_reach.yaml``: the 4-joint ``urdf/arm_reach.urdf``) names the URDF (the one
source of the joint limits), the end-effector link and the camera; this module adds what a URDF
cannot say: floor, light, the fixed camera, position servos on every joint and a green goal
marker. Commands are joint position targets, as for a ros2_control position interface.

Like an industrial drive, the servo does not jump to a new target: at every physics step a
setpoint generator moves the servo setpoint towards the target with bounded acceleration and at
most ``speed_scale`` times the URDF velocity limit, braking so that it stops on the target. The
servos are critically damped at the largest joint inertia (overdamped elsewhere), and the
headroom left by ``speed_scale`` absorbs the tracking transients from the coupling between
joints, so the joints stay within their URDF velocity limits.
"""
from __future__ import annotations

import dataclasses
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

# MuJoCo picks its GL back end when it is imported: default to headless EGL (no display here).
os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from ami_ros.robot_config import (RobotConfig, RobotError, default_robot,  # noqa: E402
                                  load_robot, read_joints)
from ami_ros.sim.base import CommandError, Scene, SceneConfig  # noqa: E402

CAMERA = 'workspace'
GOAL_BODY = 'goal'
GOAL_SHADOW_BODY = 'goal_shadow'
_INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION


@dataclass
class ArmReachConfig(SceneConfig):
    """Settings of the ``arm_reach`` scene (plus the common :class:`SceneConfig` ones)."""

    robot: str = ''
    """Robot config: a YAML path or a shipped name (config/robots/<name>.yaml); '' = arm_reach."""
    goal_tolerance: float = 0.05
    """success() when the end effector is within this distance of the goal, metres."""
    physics_dt: float = 0.004
    """Largest physics time step, seconds; the control period is split into equal substeps."""
    servo_bandwidth: float = 25.0
    """Natural frequency of the joint position servos at the largest joint inertia, rad/s."""
    speed_scale: float = 0.95
    """The setpoint moves at most this fraction of each URDF velocity limit (servo headroom)."""
    acceleration_limit: float = 10.0
    """Largest setpoint acceleration of every joint, rad/s^2 (smooth starts and stops)."""
    following_error_margin: float = 1.25
    """The setpoint stays within this multiple of the full-speed tracking lag of the joint."""
    armature: float = 0.2
    """Reflected rotor inertia added to every joint (gearbox motors), kg m^2."""
    init_range_fraction: float = 0.6
    """Initial joint angles are drawn from this central fraction of each joint's range."""
    min_goal_height: float = 0.05
    """Random goals lie at least this high above the floor, metres."""
    render_samples: int = 0
    """Multisample anti-aliasing samples per pixel: 0 = off (fastest), 2 = smoother edges for
    ~30% more render time, 4 = MuJoCo's default (~3x at 64x64 on a CPU)."""
    explore_min_steps: int = 5
    """Exploration: fewest control steps spent heading for one waypoint."""
    explore_max_steps: int = 25
    """Exploration: most control steps spent heading for one waypoint."""
    explore_hold_probability: float = 0.1
    """Exploration: chance that a segment holds still instead of moving."""

    def __post_init__(self):
        super().__post_init__()
        positive = ('goal_tolerance', 'physics_dt', 'servo_bandwidth', 'acceleration_limit')
        for name in positive:
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if not 0.0 < float(self.speed_scale) <= 1.0:
            raise ValueError(f'speed_scale must be in (0, 1], got {self.speed_scale}')
        if not float(self.following_error_margin) >= 1.0:
            raise ValueError(f'following_error_margin must be >= 1, got '
                             f'{self.following_error_margin}')
        if not float(self.armature) >= 0.0:
            raise ValueError(f'armature must be >= 0, got {self.armature}')
        if not 0.0 < float(self.init_range_fraction) <= 1.0:
            raise ValueError(f'init_range_fraction must be in (0, 1], got '
                             f'{self.init_range_fraction}')
        if not float(self.min_goal_height) >= 0.0:
            raise ValueError(f'min_goal_height must be >= 0, got {self.min_goal_height}')
        if not 0 <= int(self.render_samples) <= 16:
            raise ValueError(f'render_samples must be in [0, 16], got {self.render_samples}')
        if not 1 <= int(self.explore_min_steps) <= int(self.explore_max_steps):
            raise ValueError(f'need 1 <= explore_min_steps <= explore_max_steps, got '
                             f'{self.explore_min_steps} and {self.explore_max_steps}')
        if not 0.0 <= float(self.explore_hold_probability) <= 1.0:
            raise ValueError(f'explore_hold_probability must be in [0, 1], got '
                             f'{self.explore_hold_probability}')


def _as_arm_config(config: SceneConfig | None) -> ArmReachConfig:
    """Accept a plain SceneConfig (from make_scene) by keeping its common fields."""
    if config is None:
        return ArmReachConfig()
    if isinstance(config, ArmReachConfig):
        return config
    common = {f.name: getattr(config, f.name) for f in dataclasses.fields(SceneConfig)}
    return ArmReachConfig(**common)


def _urdf_spec(path: Path) -> mujoco.MjSpec:
    """The URDF as a MuJoCo spec that keeps visual geometry and fixed-joint links.

    MuJoCo's URDF importer drops every <visual> and merges links on fixed joints (the end
    effector) unless the URDF says <mujoco><compiler discardvisual="false"
    fusestatic="false"/></mujoco>; a URDF without that tag is read with it added (mesh files
    are then looked up next to the URDF).
    """
    text = path.read_text()
    try:
        if re.search(r'<compiler\b[^>]*discardvisual\s*=\s*"false"', text) and \
                re.search(r'<compiler\b[^>]*fusestatic\s*=\s*"false"', text):
            return mujoco.MjSpec.from_file(str(path))
        return mujoco.MjSpec.from_string(_with_mujoco_tag(text, path))
    except ValueError as e:
        raise RobotError(f'{path}: MuJoCo cannot read this URDF: {e} (mesh files are looked up '
                         f'by their file name next to the URDF, or in <mujoco><compiler '
                         f'meshdir=".."/></mujoco>)') from None


def _with_mujoco_tag(text: str, path: Path) -> str:
    """The URDF text with <mujoco><compiler discardvisual="false" fusestatic="false"/>."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(text)
    block = root.find('mujoco')
    if block is None:
        block = ET.SubElement(root, 'mujoco')
    compiler = block.find('compiler')
    if compiler is None:
        compiler = ET.SubElement(block, 'compiler')
    compiler.set('discardvisual', 'false')
    compiler.set('fusestatic', 'false')
    compiler.set('meshdir', compiler.get('meshdir', str(path.parent)))
    return ET.tostring(root, encoding='unicode')


def _look_at_quat(pos, target) -> np.ndarray:
    """Camera orientation (w, x, y, z) looking from ``pos`` at ``target`` with world z up."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    # MuJoCo cameras look along their -z axis with +y up.
    mat = np.stack([right, up, -forward], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.ravel())
    return quat


def _scene_robot(config: ArmReachConfig, robot) -> tuple[ArmReachConfig, RobotConfig]:
    """The robot in force (``robot``, else ``config.robot``, else arm_reach's) and its config.

    The config names the robot, so that ``make_scene(name, scene.config)`` builds the same arm
    (the oracle's private copy of the scene).
    """
    robot = robot or config.robot or default_robot('arm_reach')
    loaded = load_robot(robot)
    name = str(loaded.source) if loaded.source is not None else robot
    return dataclasses.replace(config, robot=name), loaded


class ArmReachScene(Scene):
    """A serial arm from its robot config, a green goal point and a fixed camera (module doc)."""

    name = 'arm_reach'

    def __init__(self, config: SceneConfig | None = None, robot=None):
        config, self.robot = _scene_robot(_as_arm_config(config), robot)
        super().__init__(config)
        self.robot_name = self.robot.name
        self.camera_fovy_deg = float(self.robot.camera.fovy)
        path = self.robot.urdf
        (self.joint_names, self.lower, self.upper, self.velocity_limit,
         self.effort_limit) = read_joints(self.robot)
        self._model = self._build_model(path)
        self._data = mujoco.MjData(self._model)
        self._scratch = mujoco.MjData(self._model)  # for FK / collision checks off the live sim
        m = self._model
        joint_ids = [m.joint(n).id for n in self.joint_names]
        self._qadr = np.array([m.jnt_qposadr[j] for j in joint_ids])
        self._vadr = np.array([m.jnt_dofadr[j] for j in joint_ids])
        self._ee_body = self._body_id(self.robot.end_effector)
        self._goal_mocap = m.body_mocapid[m.body(GOAL_BODY).id]
        self._shadow_mocap = m.body_mocapid[m.body(GOAL_SHADOW_BODY).id]
        self._camera = m.camera(CAMERA).id
        self._max_speed = self.velocity_limit * float(config.speed_scale)  # (J,)
        # Steady lag of a servo following the setpoint at full speed, (kv + damping) v / kp,
        # with margin: the largest setpoint-to-joint distance allowed.  (J,)
        kp = m.actuator_gainprm[:, 0]
        kv = -m.actuator_biasprm[:, 2] + m.dof_damping[self._vadr]
        self._max_lag = float(config.following_error_margin) * kv * self._max_speed / kp
        self._shoulder, self._reach = self._reach_sphere()
        self._setpoint = np.zeros(self.num_joints)
        self._setpoint_velocity = np.zeros(self.num_joints)
        self._target = np.zeros(self.num_joints)
        self._goal_joints: np.ndarray | None = None
        self._renderer: mujoco.Renderer | None = None
        self._close_renderer = None
        self._rng = np.random.default_rng(config.seed)
        self.reset(config.seed)

    def _body_id(self, name: str) -> int:
        try:
            return self._model.body(name).id
        except KeyError:
            raise RobotError(f'{self.robot.urdf}: MuJoCo dropped the end-effector link {name!r} '
                             f'(a link on a fixed joint is merged into its parent): add '
                             f'<mujoco><compiler fusestatic="false"/></mujoco>') from None

    # ----------------------------------------------------------------------------- model ---
    def _build_model(self, path: Path) -> mujoco.MjModel:
        cfg = self.config
        spec = _urdf_spec(path)
        # The URDF's <mujoco><compiler discardvisual="false" fusestatic="false"/> tag (added by
        # _urdf_spec where missing) kept the visual geoms and the end-effector body at parse
        # time; repeat it for the compile.
        spec.compiler.discardvisual = False
        spec.compiler.fusestatic = False
        self._n_sub = max(1, int(round(self.control_dt / cfg.physics_dt)))
        spec.option.timestep = self.control_dt / self._n_sub
        spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        size = int(cfg.image_size)
        spec.visual.global_.offwidth = size
        spec.visual.global_.offheight = size
        # Render cost on a CPU (llvmpipe) is dominated by shadows, multisampling and triangle
        # count: no shadows, no multisampling, coarse cylinders (64x64: ~130 -> ~550 renders/s).
        spec.visual.quality.shadowsize = 0
        spec.visual.quality.offsamples = int(cfg.render_samples)
        spec.visual.quality.numslices = 12
        spec.visual.quality.numstacks = 8
        spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
        spec.visual.headlight.diffuse = [0.45, 0.45, 0.45]
        spec.visual.headlight.specular = [0.0, 0.0, 0.0]

        # Hide the collision copies of the links (drawn in the visuals' colours otherwise).
        for geom in spec.geoms:
            if geom.contype or geom.conaffinity:
                geom.group = 3
        world = spec.worldbody
        for body in spec.bodies:
            if body.name not in ('world', 'base_link'):
                body.gravcomp = 1.0  # the drives compensate gravity, as arm controllers do
        for joint in spec.joints:
            joint.armature = float(cfg.armature)
            joint.actgravcomp = True  # ... within the joint effort limit

        floor = world.add_geom()
        floor.name = 'floor'
        floor.type = mujoco.mjtGeom.mjGEOM_PLANE
        floor.size = [0.0, 0.0, 0.05]  # infinite: no edge in view
        floor.rgba = [0.62, 0.64, 0.66, 1.0]
        light = world.add_light()
        light.name = 'sun'
        light.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL  # evenly lit floor
        light.pos = [0.6, -0.4, 2.5]
        light.dir = [-0.3, 0.2, -1.0]
        light.diffuse = [0.6, 0.6, 0.6]
        light.castshadow = False
        # The robot config's view (arm_reach: oblique, from the front-right and above, framing
        # the full reach circle).
        camera = self.robot.camera
        cam = world.add_camera()
        cam.name = CAMERA
        cam.pos = list(camera.pos)
        cam.quat = _look_at_quat(cam.pos, list(camera.look_at))
        cam.fovy = self.camera_fovy_deg
        self._add_goal_marker(world)
        try:
            model = spec.compile()
        except ValueError as e:  # e.g. a massless moving body: MuJoCo's words, and the file
            raise RobotError(f'{path}: MuJoCo cannot build the arm: {e}') from None
        self._check_model(model, path)
        # Servo gains from the largest joint-space inertia over the joint ranges (critically
        # damped there, overdamped elsewhere: no overshoot beyond the rate-limited setpoint).
        inertia = self._max_joint_inertia(model)
        omega = float(cfg.servo_bandwidth)
        for i, name in enumerate(self.joint_names):
            act = spec.add_actuator()
            act.name = f'{name}_servo'
            act.trntype = mujoco.mjtTrn.mjTRN_JOINT
            act.target = name
            act.set_to_position(kp=inertia[i] * omega ** 2, kv=2.0 * inertia[i] * omega)
            act.ctrllimited = True
            act.ctrlrange = [self.lower[i], self.upper[i]]
            act.forcelimited = True
            act.forcerange = [-self.effort_limit[i], self.effort_limit[i]]
        return spec.compile()

    def _add_goal_marker(self, world) -> None:
        """The green goal point and its shadow disc (mocap bodies; hidden without goal_marker)."""
        group = 0 if self.robot.goal_marker else 5  # groups >= 3 are not rendered
        goal = world.add_body()
        goal.name = GOAL_BODY
        goal.mocap = True
        marker = goal.add_geom()
        marker.name = 'goal_marker'
        marker.type = mujoco.mjtGeom.mjGEOM_SPHERE
        marker.size = [0.05, 0.0, 0.0]  # as big as the default success region
        marker.rgba = [0.1, 0.9, 0.2, 1.0]
        marker.contype = 0
        marker.conaffinity = 0
        marker.group = group
        # A dark disc on the floor under the goal: with no shadows, the depth cue that tells a
        # high goal from a far one in a single view.
        shadow = world.add_body()
        shadow.name = GOAL_SHADOW_BODY
        shadow.mocap = True
        disc = shadow.add_geom()
        disc.name = 'goal_shadow_disc'
        disc.type = mujoco.mjtGeom.mjGEOM_CYLINDER
        disc.size = [0.05, 0.001, 0.0]
        disc.rgba = [0.12, 0.42, 0.18, 1.0]
        disc.contype = 0
        disc.conaffinity = 0
        disc.group = group

    def _check_model(self, model: mujoco.MjModel, path: Path) -> None:
        """Check that the arm is visible and that MuJoCo and yourdfpy read the same limits.

        Visible: MuJoCo kept visual geoms on the moving bodies. Limits: one file, two parsers.
        """
        moving = np.zeros(model.nbody, dtype=bool)
        for b in range(1, model.nbody):  # parents come before their children
            moving[b] = model.body_jntnum[b] > 0 or moving[model.body_parentid[b]]
        if not any(moving[model.geom_bodyid[g]] and model.geom_group[g] < 3
                   for g in range(model.ngeom)):
            raise RobotError(f'{path}: the arm has no visual geometry in MuJoCo: the camera '
                             f'would see no arm; add <visual> elements to the moving links')
        for i, name in enumerate(self.joint_names):
            try:
                rng = model.joint(name).range
            except KeyError:
                raise ValueError(f'{path}: joint {name!r} missing from the MuJoCo model') from None
            if not np.allclose(rng, [self.lower[i], self.upper[i]]):
                raise ValueError(f'{path}: joint {name!r} range {rng} in MuJoCo differs from '
                                 f'URDF limits [{self.lower[i]}, {self.upper[i]}]')

    def _max_joint_inertia(self, model: mujoco.MjModel) -> np.ndarray:
        """(J,) largest diagonal of the joint-space inertia matrix over sampled configurations."""
        data = mujoco.MjData(model)
        rng = np.random.default_rng(0)  # fixed: the gains must not depend on the scene seed
        qadr = [model.joint(n).qposadr[0] for n in self.joint_names]
        vadr = [model.joint(n).dofadr[0] for n in self.joint_names]
        best = np.zeros(self.num_joints)
        full = np.zeros((model.nv, model.nv))
        samples = np.vstack([np.zeros(self.num_joints),
                             rng.uniform(self.lower, self.upper, (256, self.num_joints))])
        for q in samples:
            data.qpos[qadr] = q
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            mujoco.mj_crb(model, data)
            mujoco.mj_fullM(model, data, full)
            best = np.maximum(best, np.diag(full)[vadr])
        return best

    def _reach_sphere(self) -> tuple[np.ndarray, float]:
        """Centre (3,) and radius of a sphere that holds every end-effector position.

        Centre: the anchor of the last joint that the joints before it do not move (it lies on
        all their axes: arm_reach's shoulder on the base yaw axis). Radius: the chain's length
        from there, anchor to anchor to the end effector (at zero angles; revolute joints keep
        these distances, so by the triangle inequality no posture reaches further). For an arm
        stretched straight at zero angles (arm_reach) it is exactly the reach.
        """
        d = self._scratch
        d.qpos[:] = 0.0
        mujoco.mj_kinematics(self._model, d)
        ids = [self._model.joint(n).id for n in self.joint_names]
        anchors, axes = d.xanchor[ids].copy(), d.xaxis[ids].copy()  # (J, 3)
        first = 0
        for i in range(1, len(ids)):
            off_axis = [np.linalg.norm(np.cross(anchors[i] - anchors[j], axes[j]))
                        for j in range(i)]
            if max(off_axis) > 1e-9:
                break
            first = i
        points = np.vstack([anchors[first:], d.xpos[self._ee_body]])
        return anchors[first], float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())

    # ------------------------------------------------------------------------ sampling ---
    def _collision_free(self, q: np.ndarray) -> bool:
        """No contact (floor or self) at joint configuration q; uses the scratch data."""
        d = self._scratch
        d.qpos[self._qadr] = q
        mujoco.mj_kinematics(self._model, d)
        mujoco.mj_collision(self._model, d)
        return d.ncon == 0

    def random_configuration(self, rng: np.random.Generator, lo: np.ndarray | None = None,
                             hi: np.ndarray | None = None, min_ee_height: float = 0.0,
                             tries: int = 200) -> np.ndarray:
        """Draw a uniform joint configuration (J,) free of contact, by rejection.

        Within [lo, hi] (default: the URDF limits), with no contact of the arm with the floor or
        itself and the end effector at least ``min_ee_height`` above the floor.
        """
        lo = self.lower if lo is None else np.asarray(lo, dtype=np.float64)
        hi = self.upper if hi is None else np.asarray(hi, dtype=np.float64)
        for _ in range(tries):
            q = rng.uniform(lo, hi)
            if self._collision_free(q) and self._scratch.xpos[self._ee_body, 2] >= min_ee_height:
                return q
        raise RuntimeError(f'{self.name}: no collision-free configuration found in {tries} '
                           f'tries within [{lo}, {hi}]')

    def forward_kinematics(self, q) -> np.ndarray:
        """End-effector position (3,) at joint configuration q (does not touch the simulation)."""
        q = self.check_target(q)
        d = self._scratch
        d.qpos[self._qadr] = q
        mujoco.mj_kinematics(self._model, d)
        return d.xpos[self._ee_body].copy()

    def calibration_frame(self, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A goal photo of a random posture: (frame, joints (J,), end-effector position (3,)).

        The arm is put at a collision-free configuration with the end effector at least
        ``min_goal_height`` up (as goals are drawn) and the goal marker on it, as eval-plan's
        goal images show it. The calibration sweep of the posture reader; it moves the arm, so
        use a scene of its own.
        """
        q = self.random_configuration(rng, min_ee_height=float(self.config.min_goal_height))
        self._data.qpos[self._qadr] = q
        self._data.qvel[self._vadr] = 0.0
        mujoco.mj_kinematics(self._model, self._data)
        ee = self._data.xpos[self._ee_body].copy()
        self._place_goal(ee)
        mujoco.mj_kinematics(self._model, self._data)
        return self.render(), q, ee

    # ------------------------------------------------------------------------ episodes ---
    def reset(self, seed: int | None = None) -> None:
        """Random collision-free start in the central part of the ranges and a reachable goal."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        cfg = self.config
        mid = 0.5 * (self.lower + self.upper)
        half = 0.5 * (self.upper - self.lower) * float(cfg.init_range_fraction)
        q0 = self.random_configuration(self._rng, mid - half, mid + half)
        # Goal = the end effector at another random collision-free configuration: reachable by
        # construction.
        q_goal = self.random_configuration(self._rng, min_ee_height=float(cfg.min_goal_height))
        goal = self.forward_kinematics(q_goal)
        self._goal_joints = q_goal

        mujoco.mj_resetData(self._model, self._data)
        self._data.qpos[self._qadr] = q0
        self._data.ctrl[:] = q0
        self._place_goal(goal)
        self._setpoint = q0.copy()
        self._setpoint_velocity = np.zeros(self.num_joints)
        self._target = q0.copy()
        mujoco.mj_forward(self._model, self._data)

    def set_goal(self, position) -> None:
        """Move the goal point to ``position`` (3,) in the world frame, metres."""
        p = np.asarray(position, dtype=np.float64)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise CommandError(f'{self.name}: goal must be 3 finite numbers, got {p.tolist()}')
        dist = float(np.linalg.norm(p - self._shoulder))
        centre = np.round(self._shoulder, 3).tolist()
        if p[2] < 0.0 or dist > self._reach + float(self.config.goal_tolerance):
            raise CommandError(f'{self.name}: goal {p.tolist()} is out of reach (z must be >= 0 '
                               f'and within {self._reach:.3f} m of {centre}, is {dist:.3f} m)')
        self._place_goal(p)
        self._goal_joints = None
        mujoco.mj_kinematics(self._model, self._data)

    def _place_goal(self, position: np.ndarray) -> None:
        self._data.mocap_pos[self._goal_mocap] = position
        self._data.mocap_pos[self._shadow_mocap] = [position[0], position[1], 0.001]

    # ------------------------------------------------------------------------- control ---
    def set_target(self, target: np.ndarray) -> None:
        try:
            checked = self.check_target(target)
        except CommandError:
            raise
        except (TypeError, ValueError) as exc:  # not convertible to a float array at all
            raise CommandError(f'{self.name}: target {target!r} is not numeric: {exc}') from None
        self._target = checked.copy()

    def step(self) -> None:
        """One control period of physics steps, the setpoint generator running at each one."""
        m, d = self._model, self._data
        dt = m.opt.timestep
        accel = float(self.config.acceleration_limit)
        dv, two_a, vmax, inv_dt = accel * dt, 2.0 * accel, self._max_speed, 1.0 / dt
        target, sp, v = self._target, self._setpoint.copy(), self._setpoint_velocity.copy()
        qadr, max_lag = self._qadr, self._max_lag
        for _ in range(self._n_sub):
            err = target - sp                                                     # (J,)
            # Fastest speed from which the setpoint can still brake to rest on the target,
            # and no more than lands exactly on it within this step.
            dist = np.abs(err)
            speed = np.minimum(np.minimum(vmax, np.sqrt(two_a * dist)), dist * inv_dt)
            # (np.minimum/np.maximum: np.clip costs several times more on 4-element arrays)
            v += np.maximum(np.minimum(np.copysign(speed, err) - v, dv), -dv)
            sp += v * dt
            # Following-error bound (as in industrial drives): a blocked joint (contact) does
            # not wind up a large error that would whip it past its velocity limit on release.
            q = d.qpos[qadr]
            lagging = np.abs(sp - q) > max_lag
            if lagging.any():
                sp = np.minimum(np.maximum(sp, q - max_lag), q + max_lag)
                v[lagging] = 0.0
            d.ctrl[:] = sp
            mujoco.mj_step(m, d)
        self._setpoint, self._setpoint_velocity = sp, v
        # mj_step leaves poses one physics step behind qpos; refresh them for render/ground truth.
        mujoco.mj_kinematics(m, d)

    # ------------------------------------------------------------------------- observe ---
    def render(self) -> np.ndarray:
        if self._renderer is None:
            size = int(self.config.image_size)
            self._renderer = mujoco.Renderer(self._model, height=size, width=size)
            # Free the GL context when the scene goes, or at interpreter exit at the latest:
            # left to Renderer.__del__ during shutdown, EGL is already gone and it raises.
            self._close_renderer = weakref.finalize(self, self._renderer.close)
            # With multisampling the very first frame of a new GL context differs from all later
            # renders of the same state in a pixel or so; discard it, so frames are a pure
            # function of the state.
            self._renderer.update_scene(self._data, camera=self._camera)
            self._renderer.render()
        self._renderer.update_scene(self._data, camera=self._camera)
        return self._renderer.render()

    @property
    def joint_positions(self) -> np.ndarray:
        return self._data.qpos[self._qadr].astype(np.float64)

    @property
    def joint_velocities(self) -> np.ndarray:
        return self._data.qvel[self._vadr].astype(np.float64)

    @property
    def target(self) -> np.ndarray:
        return self._target.copy()

    @property
    def goal_position(self) -> np.ndarray:
        """(3,) the goal point in the world frame."""
        return self._data.mocap_pos[self._goal_mocap].copy()

    @property
    def goal_joints(self) -> np.ndarray | None:
        """(J,) a configuration that puts the end effector on the goal, or None after ``set_goal``.

        For goal images (render the arm there) and oracle controllers.
        """
        return None if self._goal_joints is None else self._goal_joints.copy()

    def ground_truth(self) -> dict[str, np.ndarray]:
        w, x, y, z = self._data.xquat[self._ee_body]
        return {
            'ee_position': self._data.xpos[self._ee_body].copy(),
            'ee_quaternion': np.array([x, y, z, w]),  # (x, y, z, w) as in ROS messages
            'goal_position': self.goal_position,
        }

    def success(self) -> bool:
        gap = np.linalg.norm(self._data.xpos[self._ee_body] - self.goal_position)
        return bool(gap <= float(self.config.goal_tolerance))

    def make_explorer(self, rng: np.random.Generator):
        return _WaypointExplorer(self, rng)

    # --------------------------------------------------------------------------- state ---
    def _state_size(self) -> int:
        return mujoco.mj_stateSize(self._model, _INTEGRATION) + 4 * self.num_joints

    def get_state(self) -> np.ndarray:
        """Copy the full state into a flat float64 vector.

        Layout: [MuJoCo integration state (time, qpos, qvel, act, warm start, ctrl, mocap = the
        goal point, ...), setpoint (J), setpoint velocity (J), target (J), goal joints (J, NaN
        when unknown)].
        """
        sim = np.empty(mujoco.mj_stateSize(self._model, _INTEGRATION))
        mujoco.mj_getState(self._model, self._data, sim, _INTEGRATION)
        goal_joints = np.full(self.num_joints, np.nan) if self._goal_joints is None \
            else self._goal_joints
        return np.concatenate(
            [sim, self._setpoint, self._setpoint_velocity, self._target, goal_joints])

    def set_state(self, state: np.ndarray) -> None:
        """Restore a ``get_state()`` vector exactly (same frames and motion from here on)."""
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (self._state_size(),):
            raise ValueError(f'{self.name}: state has shape {s.shape}, expected '
                             f'({self._state_size()},) from get_state()')
        j = self.num_joints
        sim, setpoint, velocity, target, goal_joints = np.split(
            s, [len(s) - 4 * j, len(s) - 3 * j, len(s) - 2 * j, len(s) - j])
        if not np.all(np.isfinite(s[:-j])):
            raise ValueError(f'{self.name}: state contains NaN/inf')
        target = self.check_target(target)
        mujoco.mj_setState(self._model, self._data, sim, _INTEGRATION)
        self._setpoint, self._setpoint_velocity = setpoint.copy(), velocity.copy()
        self._target = target.copy()
        self._goal_joints = None if np.isnan(goal_joints).any() else goal_joints.copy()
        mujoco.mj_kinematics(self._model, self._data)

    def close(self) -> None:
        """Free the offscreen GL context (also freed when the scene is garbage-collected)."""
        if self._close_renderer is not None:
            self._close_renderer()
        self._renderer = self._close_renderer = None


class _WaypointExplorer:
    """Smooth random joint targets for data collection.

    Every N control steps (N random in [explore_min_steps, explore_max_steps]) a new waypoint is
    drawn from collision-free configurations over the full joint ranges, or, with probability
    ``explore_hold_probability``, the arm holds still. The command moves towards the waypoint by
    at most a random fraction (0.2-1) of the velocity limit per step, so consecutive actions are
    correlated yet the whole range is covered. Each command starts from the target in force.
    """

    def __init__(self, scene: ArmReachScene, rng: np.random.Generator):
        self._scene = scene
        self._rng = rng
        self._cmd: np.ndarray | None = None
        self._waypoint: np.ndarray | None = None
        self._max_step = np.zeros(scene.num_joints)
        self._left = 0

    def __call__(self) -> np.ndarray:
        s, cfg, rng = self._scene, self._scene.config, self._rng
        if self._cmd is None or not np.array_equal(self._cmd, s.target):
            # First call, a reset, or a command that was not applied: go on from what is in
            # force, so that actions stay continuous with the arm's motion.
            self._cmd = s.target
            self._left = 0
        if self._left <= 0:
            self._left = int(rng.integers(cfg.explore_min_steps, cfg.explore_max_steps + 1))
            if rng.random() < float(cfg.explore_hold_probability):
                self._waypoint = self._cmd.copy()
            else:
                self._waypoint = s.random_configuration(rng)
            self._max_step = rng.uniform(0.2, 1.0) * s.velocity_limit * s.control_dt
        self._left -= 1
        step = np.clip(self._waypoint - self._cmd, -self._max_step, self._max_step)
        self._cmd = np.clip(self._cmd + step, s.lower, s.upper)
        return self._cmd.copy()
