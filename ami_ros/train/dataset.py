"""Training data: episodes from bags (or a scene), train/val split, and fixed-length windows.

A *window* is ``history + horizon`` consecutive frames of one episode with their actions: the
predictor sees the first ``history`` latents and must predict the remaining ``horizon``.
All frames live in one contiguous uint8 tensor so a batch is a single index gather.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ami_ros.data.episode import Episode
from ami_ros.model.config import GenerateConfig

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Training/evaluation data that is missing or unusable (names the path)."""


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def load_episodes(paths, image_size: int | None = None, progress: bool = False,
                  topics=None, frame_skip: int = 1) -> list[Episode]:
    """Read every bag under ``paths`` (bags or directories of bags) into Episodes.

    Raises DataError naming the path when a path does not exist or holds no bags.
    """
    from ami_ros.data.bag import BagError, find_bags, read_bags

    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError('no data paths given (use --data DIR or data.paths in the config)')
    bags = []
    for p in paths:
        if not p.exists():
            raise DataError(f'{p}: no such file or directory')
        try:
            found = find_bags(p)
        except BagError as exc:
            raise DataError(str(exc)) from None
        if not found:
            raise DataError(f'{p}: no rosbag2 bags found (expected bag directories with '
                            f'metadata.yaml, or .mcap/.db3 files; record some with '
                            f'`ami-ros collect --out {p}`)')
        bags += found
    try:
        episodes = read_bags(bags, topics, frame_skip, image_size=image_size, progress=progress)
    except BagError as exc:
        raise DataError(str(exc)) from None
    return episodes


def episodes_from_scene(config: GenerateConfig, progress: bool = False) -> list[Episode]:
    """Run a built-in scene's exploration policy and return its episodes (no bags written).

    Frame t is rendered before the target in force from t to t+1 is set, as ``ami-ros collect``
    logs them. ``scene='dot'`` uses the analytic world of :mod:`ami_ros.train.synthetic`.
    """
    if config.scene == 'dot':
        from ami_ros.train.synthetic import make_dot_episodes
        return make_dot_episodes(config.episodes, config.length, config.image_size, config.seed)
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene(config.scene, SceneConfig(image_size=config.image_size, seed=config.seed),
                       robot=config.robot or None)
    episodes = []
    it = range(config.episodes)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f'generating {config.scene}', unit='ep')
    try:
        for i in it:
            scene.reset(seed=config.seed * 100003 + i)
            explorer = scene.make_explorer(np.random.default_rng([config.seed, i]))
            images, joints, actions, stamps = [], [], [], []
            truth: dict[str, list] = {}
            for t in range(config.length):
                images.append(scene.render())
                joints.append(scene.joint_positions.astype(np.float32))
                for key, value in _as_recorded(scene.ground_truth()).items():
                    truth.setdefault(key, []).append(np.atleast_1d(np.asarray(value, float)))
                target = explorer()
                scene.set_target(target)
                actions.append(np.asarray(target, dtype=np.float32))
                stamps.append(t * scene.control_dt)
                scene.step()
            episodes.append(Episode(
                images=np.stack(images), joint_positions=np.stack(joints),
                actions=np.stack(actions), stamps=np.asarray(stamps),
                joint_names=tuple(scene.joint_names),
                ground_truth={k: np.stack(v) for k, v in truth.items()},
                source=f'{config.scene}:{config.seed}:{i}'))
    finally:
        close = getattr(scene, 'close', None)
        if close is not None:
            close()
    return episodes


def _as_recorded(truth: dict) -> dict[str, np.ndarray]:
    """Rename a scene's ground truth as a bag reads it back.

    Every pose becomes ``<name>_position``, ``_quaternion`` and ``_yaw``; signals are unchanged.
    So probes trained on generated episodes and on bags agree.
    """
    from ami_ros.sim.truth import split_truth, truth_from_pose

    poses, signals = split_truth(truth)
    out = dict(signals)
    for name, (position, quaternion) in poses.items():
        out.update(truth_from_pose(name, position, quaternion))
    return out


def split_episodes(episodes: list[Episode], val_fraction: float,
                   seed: int) -> tuple[list[Episode], list[Episode]]:
    """Hold out whole episodes (at least one when val_fraction > 0 and there are >= 2)."""
    n = len(episodes)
    if val_fraction <= 0 or n < 2:
        return list(episodes), []
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [episodes[i] for i in train], [episodes[i] for i in val]


def check_episodes(episodes: list[Episode], window: int, what: str) -> None:
    """Fail clearly when episodes are unusable for training (none, mixed shapes, too short)."""
    if not episodes:
        raise DataError(f'no {what} episodes')
    a_dims = {ep.actions.shape[1] for ep in episodes}
    if len(a_dims) != 1:
        raise DataError(f'{what} episodes have different action sizes {sorted(a_dims)}: '
                        + ', '.join(f'{ep.source}: {ep.actions.shape[1]}' for ep in episodes[:5]))
    shapes = {ep.images.shape[1:] for ep in episodes}
    if len(shapes) != 1:
        raise DataError(f'{what} episodes have different image shapes {sorted(shapes)}')
    if max(len(ep) for ep in episodes) < window:
        raise DataError(f'every {what} episode is shorter than a training window of {window} '
                        f'frames (history + horizon); longest has '
                        f'{max(len(ep) for ep in episodes)}')
    for ep in episodes:
        for name, arr in (('actions', ep.actions), ('joint_positions', ep.joint_positions)):
            if not np.all(np.isfinite(arr)):
                raise DataError(f'{ep.source or what}: {name} contain NaN/inf')


def action_stats(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of all actions (std floored so constant joints are safe)."""
    a = np.concatenate([ep.actions for ep in episodes]).astype(np.float64)
    return a.mean(axis=0), np.maximum(a.std(axis=0), 1e-3)


# --------------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------------
def episode_ee(episodes: list[Episode]) -> np.ndarray:
    """(N, 3) float32 end-effector positions of every frame; DataError naming what is missing."""
    missing = [ep.source or f'episode {i}' for i, ep in enumerate(episodes)
               if 'ee_position' not in ep.ground_truth]
    if missing:
        raise DataError(f'model.proprio needs the end-effector position in the data '
                        f'(ee_position, e.g. a PoseStamped of tool0 logged with the bag); '
                        f'missing in {missing[:3]}')
    ee = probe_targets(episodes, 'ee_position')
    if not np.isfinite(ee).all():
        raise DataError('ee_position has NaN/inf values')
    return ee


def proprio_stats(episodes: list[Episode], with_ee: bool = True):
    """(joint mean, joint std, ee mean, ee std) of the training frames (std floored)."""
    q = np.concatenate([ep.joint_positions for ep in episodes]).astype(np.float64)
    if not with_ee:
        return q.mean(axis=0), np.maximum(q.std(axis=0), 1e-3), (), ()
    ee = episode_ee(episodes).astype(np.float64)
    return q.mean(axis=0), np.maximum(q.std(axis=0), 1e-3), ee.mean(axis=0), \
        np.maximum(ee.std(axis=0), 1e-3)


def resize_frames(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 (area-like antialiased bilinear)."""
    if images.shape[1:3] == (size, size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    out = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False,
                        antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class WindowDataset:
    """All windows of ``window`` consecutive frames from a list of episodes."""

    def __init__(self, episodes: list[Episode], window: int, image_size: int | None = None,
                 with_ee: bool = False):
        if not episodes:
            raise DataError('no episodes for the window dataset')
        self.window = window
        frames = [ep.images if image_size is None else resize_frames(ep.images, image_size)
                  for ep in episodes]
        self.images = torch.from_numpy(np.ascontiguousarray(np.concatenate(frames)))
        self.actions = torch.from_numpy(
            np.concatenate([ep.actions for ep in episodes]).astype(np.float32))
        joints = np.concatenate([ep.joint_positions for ep in episodes]).astype(np.float32)
        if with_ee:  # world model v2: the end-effector position rides along with the joints
            joints = np.concatenate([joints, episode_ee(episodes)], axis=1)
        self.joints = torch.from_numpy(joints)
        starts, weights, offset = [], [], 0
        self.episode_offsets = []
        for ep in episodes:
            self.episode_offsets.append(offset)
            if len(ep) >= window:
                starts.append(np.arange(offset, offset + len(ep) - window + 1))
                weights.append(np.full(len(starts[-1]), float(ep.weight)))
            offset += len(ep)
        if not starts:
            raise DataError(f'no episode has the {window} frames a window needs')
        self.starts = torch.from_numpy(np.concatenate(starts).astype(np.int64))
        weights = np.concatenate(weights)
        # None: every window alike (uniform draws, as without weights)
        self.window_weights = None if np.all(weights == 1.0) else torch.from_numpy(weights)
        self._steps = torch.arange(window)

    def __len__(self) -> int:
        return len(self.starts)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` window indices, each window as likely as its episode's weight."""
        if self.window_weights is None:
            return torch.randint(len(self.starts), (n,), generator=generator)
        return torch.multinomial(self.window_weights, n, replacement=True, generator=generator)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather windows (B,) as images, actions and joint positions.

        Returns images (B, L, H, W, 3) uint8, actions (B, L, A) and joints (B, L, J) float32
        (with ``with_ee``: (B, L, J + 3), the end-effector position after the joints).
        """
        frames = self.frames(idx)                                       # (B, L)
        return self.images[frames], self.actions[frames], self.joints[frames]

    def frames(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, L) indices into the concatenated frames of windows ``idx`` (B,)."""
        return self.starts[idx][:, None] + self._steps

    @torch.no_grad()
    def encode_all(self, encode, batch_size: int = 1024) -> torch.Tensor:
        """(N, D) ``encode(images, joints)`` of every frame, in batches (N: all frames).

        For an encoder with nothing to learn (image moments): its latents are the same at every
        step, so they are computed once and windows are gathered from them.
        """
        return torch.cat([encode(self.images[i:i + batch_size], self.joints[i:i + batch_size])
                          for i in range(0, len(self.images), batch_size)])


def probe_targets(episodes: list[Episode], name: str) -> np.ndarray | None:
    """(N, dim) float32 of a quantity over all frames, or None if any episode lacks it."""
    rows = []
    for ep in episodes:
        if name == 'joint_positions':
            arr = ep.joint_positions
        elif name in ep.ground_truth:
            arr = ep.ground_truth[name]
        else:
            return None
        arr = np.asarray(arr, dtype=np.float32).reshape(len(ep), -1)
        rows.append(arr)
    dims = {r.shape[1] for r in rows}
    if len(dims) != 1:
        raise DataError(f'ground truth {name!r} has different sizes {sorted(dims)} '
                        f'across episodes')
    return np.concatenate(rows)
