"""The posture-reader phase of world model v2: image -> (joint positions, end effector).

Goals given as images only carry no joint states; the reader reads them from the image. It
trains on the training frames with their logged joint states (and end-effector positions) as
labels and, when ``reader.sweep_scene`` names a built-in scene, on a calibration sweep: i.i.d.
postures rendered with the goal marker on the tool, as goal photos show the arm. Frames are not
shifted (the positions of things in the image are the signal). Runs after the main phase; the
rest of the model is not touched.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ami_ros.data.episode import Episode
from ami_ros.model.config import ReaderTrainConfig
from ami_ros.model.world_model import WorldModel
from ami_ros.train.dataset import episode_ee

log = logging.getLogger(__name__)


def calibration_sweep(scene_name: str, frames: int, image_size: int, seed: int, robot: str = ''
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, S, S, 3) uint8, joints (N, J), ee (N, 3)) of i.i.d. goal-like postures.

    ``robot``: the robot config of the arm scene's arm ('' = the scene's own).
    """
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene(scene_name, SceneConfig(image_size=image_size, seed=seed),
                       robot=robot or None)
    if not hasattr(scene, 'calibration_frame'):
        raise ValueError(f'reader.sweep_scene: scene {scene_name!r} has no calibration sweep')
    rng = np.random.default_rng(seed)
    images = np.empty((frames, image_size, image_size, 3), np.uint8)
    joints = np.empty((frames, scene.num_joints), np.float32)
    ee = np.empty((frames, 3), np.float32)
    try:
        for i in range(frames):
            images[i], joints[i], ee[i] = scene.calibration_frame(rng)
    finally:
        scene.close()
    return images, joints, ee


def _labels(model: WorldModel, joints: np.ndarray, ee: np.ndarray) -> torch.Tensor:
    q = torch.as_tensor(joints, dtype=torch.float32, device=model.device)
    p = (q - model.joint_mean) / model.joint_std
    if model.fk is not None:
        e = torch.as_tensor(ee, dtype=torch.float32, device=model.device)
        p = torch.cat([p, (e - model.ee_mean) / model.ee_std], dim=-1)
    return p


@torch.no_grad()
def reader_metrics(model: WorldModel, images: np.ndarray, joints: np.ndarray, ee: np.ndarray,
                   batch_size: int = 500) -> dict[str, float]:
    """Errors of the reader and of the forward-kinematics head on labelled frames.

    Reader: end-effector error (m: mean, median, p95, share within 5 cm) and joint error (rad,
    median); forward kinematics: end-effector error (m, mean).
    """
    was = model.training
    model.eval()
    try:
        p = torch.cat([model.reader(model.preprocess(torch.from_numpy(images[i:i + batch_size]),
                                                     model.reader_size))
                       for i in range(0, len(images), batch_size)]).cpu()
    finally:
        model.train(was)
    j = model.action_dim
    q = p[:, :j] * model.joint_std.cpu() + model.joint_mean.cpu()
    out = {'joint_error_median': float((q - torch.as_tensor(joints)).abs().median())}
    if model.fk is not None and len(ee):
        with torch.no_grad():
            fk = model.fk(torch.as_tensor(joints, device=model.device)).cpu()
        fk = fk * model.ee_std.cpu() + model.ee_mean.cpu()
        out['fk_error_mean'] = float((fk - torch.as_tensor(ee)).norm(dim=-1).mean())
    if model.fk is not None:
        e = p[:, j:] * model.ee_std.cpu() + model.ee_mean.cpu()
        err = (e - torch.as_tensor(ee)).norm(dim=-1).numpy()
        out.update(ee_error_mean=float(err.mean()), ee_error_median=float(np.median(err)),
                   ee_error_p95=float(np.percentile(err, 95)),
                   ee_within_5cm=float(np.mean(err <= 0.05)))
    return out


def train_reader(model: WorldModel, train_episodes: list[Episode], val_episodes: list[Episode],
                 config: ReaderTrainConfig, seed: int = 0) -> dict[str, dict[str, float]]:
    """Fit ``model.reader`` and refine ``model.fk`` (in place).

    Returns their metrics on held-out frames and on a held-out sweep.
    """
    if model.reader is None or config.steps == 0:
        return {}
    size = model.reader_size  # logged frames of another size are resized to it
    with_ee = model.fk is not None
    images = np.concatenate([ep.images for ep in train_episodes])
    joints = np.concatenate([ep.joint_positions for ep in train_episodes]).astype(np.float32)
    ee = episode_ee(train_episodes) if with_ee else np.zeros((len(joints), 3), np.float32)
    sweep = test_sweep = None
    if config.sweep_scene:
        log.info('reader: rendering a %d-frame calibration sweep of %s', config.sweep_frames,
                 config.sweep_scene)
        sweep = calibration_sweep(config.sweep_scene, config.sweep_frames, size,
                                  config.sweep_seed, config.sweep_robot)
        test_sweep = calibration_sweep(config.sweep_scene, 1000, size, config.sweep_seed + 10**6,
                                       config.sweep_robot)
    labels = _labels(model, joints, ee)
    sweep_labels = _labels(model, sweep[1], sweep[2]) if sweep is not None else None
    params = list(model.reader.parameters())
    fk_params = list(model.fk.parameters()) if model.fk is not None else []
    opt = torch.optim.AdamW([{'params': params, 'weight_decay': 1e-4},
                             {'params': fk_params, 'weight_decay': 0.0}], lr=config.lr)
    q_all = torch.as_tensor(joints) if sweep is None else torch.cat(
        [torch.as_tensor(joints), torch.as_tensor(sweep[1])])
    ee_all = None if model.fk is None else (
        torch.cat([labels[:, model.action_dim:], sweep_labels[:, model.action_dim:]])
        if sweep is not None else labels[:, model.action_dim:])
    gen = torch.Generator().manual_seed(seed + 11)
    half = config.batch_size - int(round(config.batch_size * config.sweep_fraction)) \
        if sweep is not None else config.batch_size
    warm = max(1, config.steps // 10)
    model.reader.train()
    for step in range(config.steps):
        frac = step / warm if step < warm else 0.5 * (1 + math.cos(
            math.pi * (step - warm) / max(1, config.steps - warm)))
        for g in opt.param_groups:
            g['lr'] = config.lr * max(frac, 0.01)
        idx = torch.randint(len(images), (half,), generator=gen)
        x = [model.preprocess(torch.from_numpy(images[idx.numpy()]), size)] if half else []
        y = labels[idx]
        if sweep is not None:
            sidx = torch.randint(len(sweep[0]), (config.batch_size - half,), generator=gen)
            x.append(model.preprocess(torch.from_numpy(sweep[0][sidx.numpy()]), size))
            y = torch.cat([y, sweep_labels[sidx]])
        loss = F.smooth_l1_loss(model.reader(torch.cat(x)), y, beta=0.1)
        if model.fk is not None:
            # the forward kinematics keeps learning here, on every posture seen (cheap)
            kidx = torch.randint(len(q_all), (256,), generator=gen)
            loss = loss + F.mse_loss(model.fk(q_all[kidx].to(model.device)), ee_all[kidx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            log.info("reader step %d/%d: loss %.4f", step + 1, config.steps, loss.item())
    model.eval()
    out = {}
    if val_episodes:
        out['frames'] = reader_metrics(
            model, np.concatenate([ep.images for ep in val_episodes]),
            np.concatenate([ep.joint_positions for ep in val_episodes]),
            episode_ee(val_episodes) if with_ee else np.zeros((0, 3), np.float32))
    if test_sweep is not None:
        out['goal_like'] = reader_metrics(model, *test_sweep)
    for name, m in out.items():
        log.info('reader on held-out %s: %s', name, {k: round(v, 4) for k, v in m.items()})
    return out
