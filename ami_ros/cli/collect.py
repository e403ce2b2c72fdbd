"""``ami-ros collect``: drive a built-in scene with its exploration policy and record rosbag2.

One bag per episode, ``<out>/<scene or robot>_<seed>_<episode:04d>/``, with the topics a real
robot logs (camera, camera info, joint states, the forward-controller command) plus the scene's
ground truth on ``/sim/...``. Each control step k at sim time t_k: render the frame, log it with
the joint state and ground truth, ask the explorer for a target, send it (logged at t_k: it is in
force from frame k to frame k+1), then advance the simulation one control period. ``--robot``
puts an arm of one's own (a robot config) into the arm scene.

The frames are checked: an episode whose images stay the same while the joints move (a camera
that does not see the robot, an arm without visuals) is refused and its bag removed.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ami_ros.cli import add_robot_argument
from ami_ros.data.bag import SIM_EPOCH_NS, STORAGES, BagError, BagWriter
from ami_ros.robot_config import RobotError, load_robot
from ami_ros.sim import (ARM_SCENES, EXPERT_SCENES, SCENES, CommandError, SceneConfig,
                         make_scene)
from ami_ros.sim.record import open_episode_bag, write_step


class UselessDataError(RuntimeError):
    """Recorded frames that cannot teach a model anything (the camera does not see the robot)."""


POLICIES = ('explorer', 'expert')
"""What can drive a scene while it is recorded."""


@dataclass
class CollectConfig:
    """What ``ami-ros collect`` records."""

    scene: str = 'arm_reach'
    """Scene name, one of :data:`ami_ros.sim.SCENES`."""
    episodes: int = 10
    """Number of episodes, one bag each."""
    out: Path = Path('data')
    """Directory that receives the bag directories (created if missing)."""
    seed: int = 0
    """Episode i is reset with seed + i; its explorer draws from its own stream of (seed, i)."""
    steps: int = 100
    """Control steps (= frames) per episode."""
    image_size: int | None = None
    """Side of the square camera frame in pixels; None = the robot config's, else 64."""
    control_hz: float | None = None
    """Control and frame rate in sim time; None = the robot config's, else 10."""
    storage: str = 'mcap'
    """rosbag2 storage plugin: mcap or sqlite3."""
    robot: str = ''
    """Robot config of the arm scene (a YAML path or a shipped name); '' = the scene's own."""
    policy: str = 'explorer'
    """What drives the scene: ``explorer`` (its exploration policy) or ``expert`` (its
    expert-like pusher towards the goal, where it has one: pusht; the world-model benchmarks
    train on expert demonstrations and take their goals from held-out ones)."""
    min_motion: float = 0.05
    """Frame check: joints that moved this far (rad or m) from the episode's start must show."""
    min_changed_pixels: float = 0.002
    """Frame check: least fraction of pixels of some frame that differ from the first one once
    the joints moved min_motion; fewer = the camera does not see the robot, the episode is
    refused."""

    def __post_init__(self):
        self.out = Path(self.out)
        if self.scene not in SCENES:
            raise ValueError(f'scene must be one of {sorted(SCENES)}, got {self.scene!r}')
        robot = None
        if self.robot:
            if self.scene not in ARM_SCENES:
                raise ValueError(f'a robot config drives the arm scene {list(ARM_SCENES)}, not '
                                 f'{self.scene!r}')
            robot = load_robot(self.robot)
            self.robot = str(robot.source)
        self.label = robot.name if robot is not None else self.scene
        if self.image_size is None:
            self.image_size = robot.image_size if robot is not None else 64
        if self.control_hz is None:
            self.control_hz = robot.control_hz if robot is not None else 10.0
        if not 1 <= int(self.episodes) <= 1_000_000:
            raise ValueError(f'episodes must be in [1, 1000000], got {self.episodes}')
        if not 1 <= int(self.steps) <= 10_000_000:
            raise ValueError(f'steps must be in [1, 10000000], got {self.steps}')
        if not 0 <= int(self.seed) < 2**31:
            raise ValueError(f'seed must be in [0, 2**31), got {self.seed}')
        if self.policy not in POLICIES:
            raise ValueError(f'policy must be one of {list(POLICIES)}, got {self.policy!r}')
        if self.policy == 'expert' and self.scene not in EXPERT_SCENES:
            raise ValueError(f'policy expert: scene {self.scene!r} has no expert (scenes with '
                             f'one: {list(EXPERT_SCENES)})')
        if self.storage not in STORAGES:
            raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {self.storage!r}')
        self.scene_config()  # checks image_size and control_hz

    def scene_config(self) -> SceneConfig:
        return SceneConfig(image_size=self.image_size, control_hz=self.control_hz, seed=self.seed)

    def bag_dir(self, episode: int) -> Path:
        return self.out / f'{self.label}_{self.seed}_{episode:04d}'

    def episode_start_ns(self, episode: int) -> int:
        """Sim time of an episode's first frame.

        Episodes start on whole hours after the epoch, far enough apart that their time ranges
        never overlap.
        """
        hours = math.ceil((self.steps / self.control_hz + 1.0) / 3600.0)
        return SIM_EPOCH_NS + episode * hours * 3600 * 10**9


def add_parser(parser) -> None:
    parser.add_argument('--scene', choices=sorted(SCENES), default='arm_reach',
                        help='built-in scene to drive')
    add_robot_argument(parser)
    parser.add_argument('--episodes', type=int, default=10, help='episodes to record, one bag each')
    parser.add_argument('--out', type=Path, required=True,
                        help='directory for the bags (<scene or robot name>_<seed>_<episode>/)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of episode 0; episode i uses seed+i')
    parser.add_argument('--steps', type=int, default=100, help='control steps (frames) per episode')
    parser.add_argument('--image-size', type=int, default=None,
                        help='camera frame side in pixels (default: the robot config\'s, or 64)')
    parser.add_argument('--control-hz', type=float, default=None,
                        help='control and frame rate (default: the robot config\'s, or 10)')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='mcap',
                        help='rosbag2 storage plugin')
    parser.add_argument('--policy', choices=POLICIES, default='explorer',
                        help="what drives the scene: its exploration policy, or (pusht) its "
                             "expert-like pusher towards the goal T, as the world-model "
                             "benchmarks' demonstrations")
    parser.add_argument('--json', action='store_true', help='print the summary as JSON')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


class FrameCheck:
    """Whether an episode's frames show the robot moving (see CollectConfig.min_motion)."""

    def __init__(self, min_motion: float, min_changed: float):
        self.min_motion, self.min_changed = float(min_motion), float(min_changed)
        self.first: np.ndarray | None = None
        self.start: np.ndarray | None = None
        self.motion = self.changed = 0.0

    def add(self, frame: np.ndarray, joints: np.ndarray) -> None:
        if self.first is None:
            self.first, self.start = frame.astype(np.int16), np.asarray(joints, np.float64)
            return
        self.motion = max(self.motion, float(np.max(np.abs(joints - self.start))))
        differs = np.abs(frame.astype(np.int16) - self.first).max(axis=-1) > 12  # (H, W)
        self.changed = max(self.changed, float(differs.mean()))

    def check(self, where: str) -> None:
        """Raise UselessDataError if the joints moved but the image did not change."""
        if self.motion >= self.min_motion and self.changed < self.min_changed:
            raise UselessDataError(
                f'{where}: the camera frames did not change while the joints moved '
                f'{self.motion:.2f} (at most {self.changed:.2%} of the pixels changed, need '
                f'{self.min_changed:.1%}): the camera does not see the robot, and these frames '
                f'would teach a model nothing. Check the robot config\'s camera (pos, look_at, '
                f'fovy) and that the URDF\'s links have <visual> geometry. No bag was kept.')


def record_episode(scene, writer: BagWriter, steps: int, start_ns: int,
                   rng: np.random.Generator, check: FrameCheck | None = None,
                   policy: str = 'explorer') -> Iterator[int]:
    """Run the scene's explorer (or expert) for ``steps`` control steps from a reset scene.

    Logs into ``writer``; a generator that yields the step index after each step (for progress).
    ``check`` sees every frame with the joint positions.
    """
    explorer = scene.make_expert(rng) if policy == 'expert' else scene.make_explorer(rng)
    dt_ns = round(scene.control_dt * 1e9)
    for k in range(steps):
        frame = scene.render()
        if check is not None:
            check.add(frame, scene.joint_positions)
        scene.set_target(explorer())
        write_step(writer, start_ns + k * dt_ns, frame, scene)
        scene.step()
        yield k


def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    """Record ``cfg.episodes`` bags; returns the summary.

    Raises FileExistsError before writing anything if one of the bag directories exists.
    """
    existing = [str(cfg.bag_dir(i)) for i in range(cfg.episodes) if cfg.bag_dir(i).exists()]
    if existing:
        more = f' and {len(existing) - 3} more' if len(existing) > 3 else ''
        raise FileExistsError(f'refusing to overwrite existing bag directories: '
                              f'{", ".join(existing[:3])}{more}; choose another --out or --seed '
                              f'or delete them')
    scene = make_scene(cfg.scene, cfg.scene_config(), robot=cfg.robot or None)
    cfg.out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm
    bar = tqdm(total=cfg.episodes * cfg.steps, unit='frame', desc=f'collect {cfg.label}',
               disable=not progress, file=sys.stderr)
    frames = nbytes = 0
    t0 = time.perf_counter()
    try:
        for i in range(cfg.episodes):
            path = cfg.bag_dir(i)
            scene.reset(cfg.seed + i)
            # created outside the clean-up below: a directory that appeared meanwhile is not ours
            writer = open_episode_bag(path, scene, seed=cfg.seed + i, control_hz=cfg.control_hz,
                                      storage=cfg.storage,
                                      extra={'ami_ros.robot': cfg.label} if cfg.robot else None)
            try:
                with writer:
                    rng = np.random.default_rng([cfg.seed, i, 1])
                    check = FrameCheck(cfg.min_motion, cfg.min_changed_pixels)
                    for _ in record_episode(scene, writer, cfg.steps, cfg.episode_start_ns(i),
                                            rng, check, cfg.policy):
                        bar.update(1)
                    check.check(f'{cfg.label} episode {i} ({path})')
            except BaseException:
                # an episode cut short would pass for a complete one later: remove it
                shutil.rmtree(path, ignore_errors=True)
                raise
            frames += writer.frames
            nbytes += writer.nbytes
    finally:
        bar.close()
        scene.close()  # scenes holding renderers free them here
    seconds = time.perf_counter() - t0
    return {'scene': cfg.scene, 'robot': cfg.label, 'episodes': cfg.episodes, 'frames': frames,
            'seconds': round(seconds, 3), 'frames_per_s': round(frames / max(seconds, 1e-9), 1),
            'bytes': nbytes, 'out': str(cfg.out.resolve()), 'storage': cfg.storage,
            'image_size': cfg.image_size}


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f'ami-ros collect: {summary["robot"]}')
    for col in ('episodes', 'frames', 'seconds', 'frames/s', 'MB', 'out dir'):
        table.add_column(col, justify='left' if col == 'out dir' else 'right')
    table.add_row(str(summary['episodes']), str(summary['frames']), f'{summary["seconds"]:.2f}',
                  f'{summary["frames_per_s"]:.0f}', f'{summary["bytes"] / 1e6:.2f}',
                  summary['out'])
    Console().print(table)


def run(args) -> int:
    try:
        cfg = CollectConfig(scene=args.scene, episodes=args.episodes, out=args.out,
                            seed=args.seed, steps=args.steps, image_size=args.image_size,
                            control_hz=args.control_hz, storage=args.storage,
                            robot=args.robot or '', policy=args.policy)
    except ValueError as err:  # RobotError too
        print(f'ami-ros collect: error: {err}', file=sys.stderr)
        return 2
    try:
        summary = collect(cfg, progress=not args.no_progress)
    except FileExistsError as err:
        print(f'ami-ros collect: error: {err}', file=sys.stderr)
        return 2
    except (BagError, CommandError, OSError, ImportError, UselessDataError) as err:
        print(f'ami-ros collect: failed: {err}', file=sys.stderr)
        return 1
    except RobotError as err:
        print(f'ami-ros collect: error: {err}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        _print_table(summary)
    return 0
