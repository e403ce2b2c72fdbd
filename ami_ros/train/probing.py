"""Second training phase: probe heads on frozen latents (latent -> physical quantity).

The encoder is frozen, so every frame is encoded once and the heads train on cached latents
(seconds on a CPU). Targets are standardised with training statistics kept in the checkpoint;
quantities whose name ends in ``_yaw`` are angles (trained as cos/sin, decoded with atan2).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ami_ros.data.episode import Episode
from ami_ros.model.config import ProbeSpec, ProbeTrainConfig
from ami_ros.model.world_model import WorldModel
from ami_ros.train.dataset import probe_targets
from ami_ros.train.evaluate import encode_episodes, probe_metrics

log = logging.getLogger(__name__)


def _spec(name: str, y: np.ndarray) -> ProbeSpec:
    if name.endswith('_yaw'):
        mean = np.arctan2(np.sin(y).mean(axis=0), np.cos(y).mean(axis=0))   # circular mean
        return ProbeSpec(name=name, dim=y.shape[1], angle=True, mean=tuple(mean.tolist()),
                         std=(1.0,) * y.shape[1])
    std = np.maximum(y.std(axis=0), 1e-6)
    return ProbeSpec(name=name, dim=y.shape[1], mean=tuple(y.mean(axis=0).tolist()),
                     std=tuple(std.tolist()))


def train_probes(model: WorldModel, train_episodes: list[Episode], val_episodes: list[Episode],
                 config: ProbeTrainConfig, seed: int = 0) -> dict[str, dict[str, float]]:
    """Fit probe heads for ``config.targets`` on the frozen ``model`` (in place).

    Returns probe metrics on the validation episodes (or the training ones when there are no
    validation episodes: then they are optimistic, and marked with ``'split': 'train'``).
    """
    targets = {}
    for name in config.targets:
        y = probe_targets(train_episodes, name)
        if y is None:
            log.warning('probe target %r is not in the training data; skipped', name)
            continue
        if not np.all(np.isfinite(y)):
            log.warning('probe target %r has NaN/inf values; skipped', name)
            continue
        targets[name] = y.astype(np.float32)
    if not targets or config.steps == 0:
        model.set_probes([])
        return {}
    z = torch.cat(encode_episodes(model, train_episodes))              # (N, D), cpu
    specs = [_spec(name, y) for name, y in targets.items()]
    model.set_probes(specs)
    device = model.device
    z = z.to(device)
    ys = {name: model.probes[name].encode_target(torch.from_numpy(y).to(device))
          for name, y in targets.items()}
    params = list(model.probes.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed + 7)
    model.probes.train()
    for step in range(config.steps):
        lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for g in opt.param_groups:
            g['lr'] = lr
        idx = torch.randint(len(z), (min(config.batch_size, len(z)),), generator=gen).to(device)
        loss = sum(torch.nn.functional.mse_loss(model.probes[n].raw(z[idx]), ys[n][idx])
                   for n in targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    for p in params:
        p.requires_grad_(False)
    eval_eps = val_episodes or train_episodes
    metrics = probe_metrics(model, torch.cat(encode_episodes(model, eval_eps)), eval_eps)
    for p in params:
        p.requires_grad_(True)
    for v in metrics.values():
        v['split'] = 'val' if val_episodes else 'train'
    return metrics
