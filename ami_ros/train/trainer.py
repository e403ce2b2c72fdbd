"""End-to-end training of the world model (phase 1) and its probes (phase 2).

Phase 1 minimises, on windows of ``history + horizon`` frames,

    teacher_forcing_weight * 1-step latent prediction error (from encoded histories)
  + rollout_weight         * H-step open-loop latent prediction error
  + reg_weight             * SIGReg or VICReg of all the window's latents (anti-collapse)
  + contrastive_weight     * InfoNCE of the rollout's predictions against the batch's targets

with AdamW, warm-up + cosine learning rate and gradient clipping. Batches are drawn by a
generator seeded with (seed, step), so a run is a pure function of its config and a resumed run
continues exactly where the interrupted one would have gone. Under ``torchrun`` every process
runs this same code on its slice of each global batch inside DistributedDataParallel (gloo on
CPU, NCCL on CUDA); only rank 0 validates, logs and writes files.

Output directory::

    config.yaml                the resolved run config
    log.csv, log.json          training losses and validation metrics by step
    curves.png                 the same as plots
    resume/                    resumable state (model + optimizer), every checkpoint_every steps
    model/                     the final checkpoint with probes (load_checkpoint(OUT) finds it)
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import ami_ros
from ami_ros.data.episode import Episode
from ami_ros.model.checkpoint import (CheckpointError, load_checkpoint, load_train_state,
                                      save_checkpoint, save_train_state)
from ami_ros.model.config import ConfigError, LossConfig, RunConfig, to_dict
from ami_ros.model.losses import effective_rank, info_nce, latent_variance, sigreg, vicreg
from ami_ros.model.world_model import WorldModel
from ami_ros.train.dataset import (DataError, WindowDataset, action_stats, check_episodes,
                                   proprio_stats, resize_frames)
from ami_ros.train.evaluate import encode_episodes, one_step_error_scale, rollout_errors
from ami_ros.train.probing import train_probes
from ami_ros.train.reader import train_reader

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C after saving a resumable checkpoint."""

    def __init__(self, step: int, resume_dir: Path | None):
        super().__init__(f'interrupted at step {step}')
        self.step = step
        self.resume_dir = resume_dir


# --------------------------------------------------------------------------------------------
# devices and processes
# --------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """The config's device choice; under torchrun CUDA processes use GPU ``LOCAL_RANK``."""
    if preference == 'auto':
        preference = 'cuda' if torch.cuda.is_available() else 'cpu'
    if preference.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ConfigError(f'train.device is {preference!r} but CUDA is not available')
        if preference == 'cuda':
            return torch.device('cuda', local_rank % torch.cuda.device_count())
    return torch.device(preference)


def setup_distributed(preference: str) -> DistInfo:
    """Read torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) and join the process group."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(preference, local)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                                rank=rank, world_size=world)
    return DistInfo(rank, world, local, device)


# --------------------------------------------------------------------------------------------
# the objective
# --------------------------------------------------------------------------------------------
class Objective(nn.Module):
    """Loss of one batch of windows (what DistributedDataParallel wraps)."""

    def __init__(self, model: WorldModel, loss: LossConfig, joint_mean=None, joint_std=None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.idm = None
        self.proprio = None
        if loss.proprio_weight > 0:
            j = len(joint_mean)
            self.proprio = nn.Sequential(nn.Linear(model.visual_dim, loss.idm_hidden), nn.SiLU(),
                                         nn.Linear(loss.idm_hidden, j))
            self.register_buffer('joint_mean', torch.as_tensor(joint_mean, dtype=torch.float32))
            self.register_buffer('joint_std', torch.as_tensor(joint_std, dtype=torch.float32))
        if loss.idm_weight > 0:
            d, a = model.visual_dim, model.action_dim
            self.idm = nn.Sequential(nn.Linear(2 * d, loss.idm_hidden), nn.SiLU(),
                                     nn.Linear(loss.idm_hidden, loss.idm_hidden), nn.SiLU(),
                                     nn.Linear(loss.idm_hidden, a))

    def forward(self, images: torch.Tensor | None, actions: torch.Tensor, joints: torch.Tensor,
                reg_seed: int, target_latents: torch.Tensor | None = None,
                latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Map images (B, L, H, W, 3) uint8 and actions (B, L, A) to the loss terms.

        ``latents`` (B, L, Dv): the frames' visual latents, computed beforehand (a fixed
        encoder, see :meth:`Trainer._cache_latents`), in place of encoding ``images`` (then None).
        """
        model, cfg = self.model, self.loss
        b, length = actions.shape[:2]
        k = model.history
        m = model.config.predictor.action_history
        horizon = length - k
        j = model.action_dim
        z = latents if latents is not None else model.visual(
            model.preprocess(images.flatten(0, 1)),
            joints[..., :j].flatten(0, 1)).view(b, length, -1)                     # (B,L,Dv)
        if target_latents is not None:
            target = target_latents[:, k:]                                         # EMA
        elif cfg.target == 'detach':
            target = z[:, k:].detach()
        else:
            target = z[:, k:]                                                      # (B, H, Dv)
        a = model.normalize_actions(actions)                                       # (B, L, A)
        out = {}
        total = z.new_zeros(())
        state, dv = z, z.shape[-1]
        if model.has_proprio:
            # v2: the state carries the measured joint positions and end effector (B, L, P)
            q, ee = joints[..., :j], joints[..., j:]
            p = (q - model.joint_mean) / model.joint_std
            if model.fk is not None:
                ee_n = (ee - model.ee_mean) / model.ee_std
                p = torch.cat([p, ee_n], dim=-1)
                out['fk'] = F.mse_loss(model.fk(q), ee_n)
                total = total + out['fk']
            state = torch.cat([z, p], dim=-1)                                      # (B, L, D)
            target = torch.cat([target, p[:, k:]], dim=-1)                         # (B, H, D)

        def pred_loss(name: str, pred: torch.Tensor, weight: float) -> torch.Tensor:
            out[name] = F.mse_loss(pred[..., :dv], target[..., :dv])
            loss = out[name]
            if model.has_proprio:
                out[f'{name}_proprio'] = F.mse_loss(pred[..., dv:], target[..., dv:])
                loss = loss + cfg.state_proprio_weight * out[f'{name}_proprio']
            return weight * loss

        if cfg.teacher_forcing_weight > 0:
            # every target frame j = k..L-1 predicted from the true states j-k..j-1
            s_win = state.unfold(1, k, 1)[:, :horizon].transpose(-1, -2)           # (B, H, k, D)
            a_win = a.unfold(1, m, 1)[:, k - m:length - m].transpose(-1, -2)       # (B, H, m, A)
            pred1 = model.step(s_win, a_win)                                       # (B, H, D)
            total = total + pred_loss('pred_1step', pred1, cfg.teacher_forcing_weight)
        if cfg.rollout_weight > 0:
            roll = model.rollout_normalized(state[:, :k], a[:, k - m:length - 1])  # (B, H, D)
            total = total + pred_loss('pred_rollout', roll, cfg.rollout_weight)
        if cfg.contrastive_weight > 0:
            # CPC on the rollout, or each frame's state against the next frame's target
            anchor = roll if cfg.contrastive_on == 'rollout' else state[:, k - 1:length - 1]
            goal, groups = target, None
            if cfg.contrastive_visual:  # the visual latent, against other windows only
                anchor, goal = anchor[..., :dv], goal[..., :dv]
                groups = torch.arange(b, device=z.device).repeat_interleave(horizon)
            out['contrastive'] = info_nce(anchor.flatten(0, 1), goal.flatten(0, 1),
                                          cfg.contrastive_temperature, groups)
            total = total + cfg.contrastive_weight * out['contrastive']
        if self.proprio is not None:
            joints_n = (joints[..., :j] - self.joint_mean) / self.joint_std        # (B, L, J)
            out['proprio'] = F.mse_loss(self.proprio(z), joints_n)
            total = total + cfg.proprio_weight * out['proprio']
        if self.idm is not None:
            # a_t from (z_t, z_{t+1}): the latent must keep what the action changed
            pairs = torch.cat([z[:, :-1], z[:, 1:]], dim=-1)                      # (B, L-1, 2D)
            out['idm'] = F.mse_loss(self.idm(pairs), a[:, :-1])
            total = total + cfg.idm_weight * out['idm']
        groups = z.transpose(0, 1) if cfg.reg_per_step else z.reshape(1, b * length, -1)
        if cfg.regularizer == 'sigreg':
            gen = torch.Generator().manual_seed(reg_seed)
            out['reg'] = torch.stack([
                sigreg(g, cfg.sigreg_projections, cfg.sigreg_knots, cfg.sigreg_t_max,
                       generator=gen) for g in groups]).mean()
        else:
            out['reg'] = torch.stack([
                vicreg(g, cfg.vicreg_variance_weight, cfg.vicreg_covariance_weight)
                for g in groups]).mean()
        out['loss'] = total + cfg.reg_weight * out['reg']
        return out


def background_frames(episodes: list[Episode], size: int, count: int = 1024
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` frames spread evenly over all episodes, resized, with their joints.

    Returns (N, S, S, 3) uint8 frames and their joint positions (N, J) float32.
    """
    index = [(i, t) for i, ep in enumerate(episodes) for t in range(len(ep))]
    pick = np.linspace(0, len(index) - 1, min(count, len(index))).astype(int)
    frames = np.stack([episodes[i].images[t] for i, t in (index[j] for j in pick)])
    joints = np.stack([episodes[i].joint_positions[t] for i, t in (index[j] for j in pick)])
    return resize_frames(frames, size), joints.astype(np.float32)


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each window of images (B, L, H, W, C) uint8 by up to ``pad`` pixels, edge-padded.

    All frames of a window move alike, so motion between them is left as it was.
    """
    b, length, h, w, c = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(b, length * c, h, w).float()
    x = F.pad(x, (pad, pad, pad, pad), mode='replicate')                 # (B, L*C, H+2p, W+2p)
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    out = torch.stack([x[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(off.tolist())])
    return out.reshape(b, length, c, h, w).permute(0, 1, 3, 4, 2).to(images.dtype)


def _step_seed(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7919 + salt) % (2 ** 63 - 1)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Runs both phases for one :class:`RunConfig` and writes everything under ``out_dir``."""

    def __init__(self, config: RunConfig, train_episodes: list[Episode],
                 val_episodes: list[Episode], out_dir: str | Path, *, resume: bool = False,
                 progress: bool = True, data_info: dict | None = None):
        self.cfg = config
        self.out = Path(out_dir)
        self.progress = progress
        self.data_info = data_info or {}
        self.dist = setup_distributed(config.train.device)
        tc = config.train
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if tc.deterministic and self.dist.device.type == 'cuda':
            # CPU kernels used here are deterministic already (and the switch costs seconds of
            # imports); CUDA needs cuBLAS's fixed workspace and no cuDNN autotuning
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        k = config.model.predictor.history
        self.window = k + config.loss.horizon
        check_episodes(train_episodes, self.window, 'training')
        self.train_episodes = train_episodes
        self.val_episodes = [ep for ep in val_episodes if len(ep) >= self.window]
        a_dim = train_episodes[0].actions.shape[1]
        for ep in self.val_episodes:
            if ep.actions.shape[1] != a_dim or ep.images.shape[1:] != \
                    train_episodes[0].images.shape[1:]:
                raise DataError(f'{ep.source or "validation episode"}: actions {ep.actions.shape}'
                                f' / images {ep.images.shape[1:]} do not match the training data'
                                f' ({a_dim} actions, images {train_episodes[0].images.shape[1:]})')
        if config.model.action_dim not in (0, a_dim):
            raise ConfigError(f'model.action_dim is {config.model.action_dim} but the data has '
                              f'{a_dim}-dimensional actions')
        mcfg = copy.deepcopy(config.model)
        mcfg.action_dim = a_dim
        mcfg.action_mean, mcfg.action_std, mcfg.probes = (), (), ()
        mcfg.__post_init__()
        torch.manual_seed(tc.seed)
        self.model = WorldModel(mcfg)
        self.model.set_action_stats(*action_stats(train_episodes))
        with_ee = mcfg.proprio.enabled and mcfg.proprio.ee_dim > 0
        if mcfg.proprio.enabled:
            self.model.set_proprio_stats(*proprio_stats(train_episodes, with_ee))
        encoder = self.model.encoder
        if getattr(encoder, 'background', None) is not None:
            frames, q = background_frames(train_episodes, mcfg.image_size)
            x = self.model.preprocess(frames)
            encoder.set_background(x)
            if getattr(encoder, 'moment_mean', None) is not None:
                encoder.set_moment_stats(x, torch.from_numpy(q) if encoder.needs_joints else None)
        self.model.to(self.dist.device)
        self.train_data = WindowDataset(train_episodes, self.window, mcfg.image_size, with_ee)
        self.val_data = (WindowDataset(self.val_episodes, self.window, mcfg.image_size, with_ee)
                         if self.val_episodes else None)
        self.latents = self._cache_latents()
        self.ema = None
        if config.loss.target == 'ema':
            self.ema = copy.deepcopy(self.model.encoder).requires_grad_(False)
        joints = np.concatenate([ep.joint_positions for ep in train_episodes]).astype(np.float64)
        self.objective = Objective(self.model, config.loss, joints.mean(axis=0),
                                   np.maximum(joints.std(axis=0), 1e-3)).to(self.dist.device)
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.rows: dict[int, dict] = {}
        if resume:
            self._resume()
        self.ddp = (DistributedDataParallel(
            self.objective, device_ids=[self.dist.device.index] if self.dist.device.type == 'cuda'
            else None) if self.dist.distributed else None)

    # ---------------------------------------------------------------- set-up
    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if name.startswith(('probes.', 'reader.')):  # trained in their own phases
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        for head in (self.objective.idm, self.objective.proprio):
            for p in head.parameters() if head is not None else ():
                (decay if p.dim() >= 2 else no_decay).append(p)
        tc = self.cfg.train
        return torch.optim.AdamW([{'params': decay, 'weight_decay': tc.weight_decay},
                                  {'params': no_decay, 'weight_decay': 0.0}], lr=tc.lr)

    @property
    def resume_dir(self) -> Path:
        return self.out / 'resume'

    def _resume(self) -> None:
        if not (self.resume_dir / 'train_state.json').is_file():
            if self.dist.is_main:
                log.warning('--resume: no resumable state in %s; starting from step 0',
                            self.resume_dir)
            return
        saved = load_checkpoint(self.resume_dir, device=self.dist.device)
        mine, theirs = to_dict(self.model.config), to_dict(saved.config)
        for key in ('probes', 'action_mean', 'action_std'):
            mine.pop(key)
            theirs.pop(key)
        # the reader's input size and stride change no weight's shape, and the reader phase
        # runs after the main one: a finished run can be resumed to read at another size
        for d in (mine, theirs):
            for key in ('reader_image_size', 'reader_first_stride'):
                d.get('proprio', {}).pop(key, None)
        if mine != theirs:
            diff = [k for k in mine if mine[k] != theirs.get(k)]
            raise CheckpointError(f'{self.resume_dir}: saved with a different model config '
                                  f'(fields {diff}); resume with the same model block')
        self.model.load_state_dict(saved.state_dict(), strict=True)
        self.model.set_action_stats(saved.config.action_mean, saved.config.action_std)
        state, extra = load_train_state(self.resume_dir, self.optimizer, self.dist.device)
        self.step = int(state['step'])
        for name in ('idm', 'proprio'):
            head = getattr(self.objective, name)
            if head is None:
                continue
            state = {k[len(name) + 1:]: v for k, v in extra.items() if k.startswith(f'{name}/')}
            if not state:
                raise CheckpointError(f'{self.resume_dir}: saved without loss.{name}_weight > 0;'
                                      f' resume with the same loss block')
            head.load_state_dict(state)
        if self.ema is not None:
            ema_state = {k[len('ema/'):]: v for k, v in extra.items() if k.startswith('ema/')}
            if ema_state:
                self.ema.load_state_dict(ema_state)
            else:
                self.ema.load_state_dict(self.model.encoder.state_dict())
        log_file = self.out / 'log.json'
        if log_file.is_file():
            rows = json.loads(log_file.read_text()).get('records', [])
            self.rows = {int(r['step']): r for r in rows if int(r['step']) <= self.step}
        if self.dist.is_main:
            log.info('resumed from %s at step %d', self.resume_dir, self.step)

    # ---------------------------------------------------------------- main loop
    def run(self) -> dict:
        """Phase 1 (until ``train.max_steps``) then phase 2 (probes); returns a summary."""
        tc = self.cfg.train
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / 'config.yaml').write_text(
                yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        bar = None
        if self.dist.is_main and self.progress and self.step < tc.max_steps:
            from tqdm import tqdm
            bar = tqdm(total=tc.max_steps, initial=self.step, desc='train', unit='step',
                       file=sys.stderr, dynamic_ncols=True)
        try:
            self._loop(bar)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            saved = None
            if self.dist.is_main:
                saved = self.save_resume()
                self.write_logs()
            raise TrainingInterrupted(self.step, saved) from None
        if bar is not None:
            bar.close()
        summary: dict = {'steps': self.step}
        if self.dist.is_main:
            self.save_resume()
            last_val = self._last('val_rollout_ratio_h1')
            summary['val'] = {k: v for k, v in self.rows.get(self.step, {}).items()
                              if k.startswith('val_')} if last_val is not None else {}
            if self.model.has_proprio:
                summary['reader'] = train_reader(self.model, self.train_episodes,
                                                 self.val_episodes, self.cfg.reader, seed=tc.seed)
            summary['probes'] = train_probes(self.model, self.train_episodes, self.val_episodes,
                                             self.cfg.probe, seed=tc.seed)
            if self.model.has_proprio:
                scale = one_step_error_scale(self.model, self.val_episodes or
                                             self.train_episodes, seed=tc.seed)
                self.model.config.innovation_scale = tuple(float(v) for v in scale)
            summary['checkpoint'] = str(save_checkpoint(self.model, self.out / 'model',
                                                        self.training_info(summary)))
            self.write_logs(summary)
        if self.dist.distributed:
            dist.barrier()
        return summary

    def _loop(self, bar) -> None:
        tc = self.cfg.train
        info = self.dist
        module = self.ddp if self.ddp is not None else self.objective
        params = [p for g in self.optimizer.param_groups for p in g['params']]
        self.model.train()
        t_last, step_last = time.perf_counter(), self.step
        while self.step < tc.max_steps:
            step = self.step
            lr = lr_at(step, tc.lr, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
            for g in self.optimizer.param_groups:
                g['lr'] = lr
            gen = torch.Generator().manual_seed(_step_seed(tc.seed, step, 1))
            idx = self.train_data.draw(tc.batch_size * info.world_size, gen)
            idx = idx[info.rank * tc.batch_size:(info.rank + 1) * tc.batch_size]
            images, actions, joints, latents = self._batch('train', idx)
            if tc.augment_shift > 0:
                images = random_shift(images, tc.augment_shift, gen)
            target = self._ema_targets(images, joints)
            losses = module(images, actions, joints, _step_seed(tc.seed, step, 2), target,
                            latents)
            self.optimizer.zero_grad(set_to_none=True)
            losses['loss'].backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                         if tc.grad_clip > 0 else torch.zeros(()))
            self.optimizer.step()
            if self.ema is not None:
                self._update_ema()
            self.step = step + 1
            if bar is not None:
                bar.update(1)
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                now = time.perf_counter()
                rate = (self.step - step_last) * tc.batch_size * info.world_size / max(
                    now - t_last, 1e-9)
                t_last, step_last = now, self.step
                if not all(torch.isfinite(v).item() for v in losses.values()):
                    raise FloatingPointError(
                        f'non-finite loss at step {self.step}: '
                        f'{ {k: float(v) for k, v in losses.items()} }; lower train.lr')
                row = {k: float(v.detach()) for k, v in losses.items()}
                row.update(lr=lr, grad_norm=float(grad_norm), samples_per_s=rate)
                self._record(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f'{rate:.0f}')
            if info.is_main and self.val_data is not None and (
                    self.step % tc.val_every == 0 or self.step == tc.max_steps):
                self._record(self.validate())
                self.write_logs(plot=False)
            if info.is_main and self.step % tc.checkpoint_every == 0 \
                    and self.step < tc.max_steps:
                self.save_resume()
                self.write_logs()

    def _cache_latents(self) -> dict[str, torch.Tensor] | None:
        """Every frame's visual latent, once, when the encoder has nothing to learn.

        An encoder without parameters (``keypoints.moments``) maps a frame to the same latent
        at every step, so a step need not gather and encode its windows' images again (at
        horizon 25 that was 1.3 s of a 1.4 s step); windows are gathered from these latents
        instead. Not with image-shift augmentation (each step shifts the images anew).
        """
        if any(True for _ in self.model.encoder.parameters()) or self.cfg.train.augment_shift:
            return None
        model, t0 = self.model, time.perf_counter()

        def encode(images, joints):
            x = model.preprocess(images.to(model.device))
            return model.visual(x, joints[:, :model.action_dim].to(model.device))

        out = {name: data.encode_all(encode) for name, data in
               (('train', self.train_data), ('val', self.val_data)) if data is not None}
        if self.dist.is_main:
            log.info('fixed encoder: the latents of %d frames computed once, in %.1f s',
                     sum(len(v) for v in out.values()), time.perf_counter() - t0)
        return out

    def _batch(self, split: str, idx: torch.Tensor):
        """Windows ``idx`` of a split, on the training device.

        Returns images (None when latents are cached), actions, joints and the cached latents
        (or None).
        """
        data, dev = (self.train_data if split == 'train' else self.val_data), self.dist.device
        if self.latents is None:
            images, actions, joints = (x.to(dev) for x in data.batch(idx))
            return images, actions, joints, None
        frames = data.frames(idx)
        return (None, data.actions[frames].to(dev), data.joints[frames].to(dev),
                self.latents[split][frames].to(dev))

    @torch.no_grad()
    def _ema_targets(self, images: torch.Tensor | None, joints: torch.Tensor
                     ) -> torch.Tensor | None:
        """The EMA encoder's latents (B, L, Dv) of a batch of windows; None without EMA."""
        if self.ema is None or images is None:
            return None
        model, (b, length) = self.model, images.shape[:2]
        return model.visual(model.preprocess(images.flatten(0, 1)),
                            joints[..., :model.action_dim].flatten(0, 1),
                            self.ema).view(b, length, -1)

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.loss.ema_decay
        for p_ema, p in zip(self.ema.parameters(), self.model.encoder.parameters()):
            p_ema.mul_(d).add_(p.detach(), alpha=1 - d)

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Held-out losses, rollout vs copy-last ratios and effective rank (rank 0 only)."""
        tc, loss = self.cfg.train, self.cfg.loss
        model = self.model
        model.eval()
        try:
            n = min(tc.val_windows, len(self.val_data))
            idx = torch.from_numpy(np.random.default_rng(tc.seed).permutation(
                len(self.val_data))[:n].copy())
            sums: dict[str, float] = {}
            for i in range(0, n, tc.batch_size):
                images, actions, joints, latents = self._batch('val', idx[i:i + tc.batch_size])
                target = self._ema_targets(images, joints)
                out = self.objective(images, actions, joints, _step_seed(tc.seed, 0, 3), target,
                                     latents)
                for key, v in out.items():
                    sums[key] = sums.get(key, 0.0) + float(v) * len(actions)
            row = {f'val_{k}': v / n for k, v in sums.items()}
            latents = encode_episodes(model, self.val_episodes)
            horizons = sorted({1, loss.horizon})
            roll, copy_last, _ = rollout_errors(model, self.val_episodes, latents, horizons,
                                                max_windows=tc.val_windows, seed=tc.seed)
            z = torch.cat(latents)
            var = max(latent_variance(z), 1e-12)
            for h, r, c in zip(horizons, roll, copy_last):
                row[f'val_rollout_error_h{h}'] = float(r / var)
                row[f'val_copy_last_error_h{h}'] = float(c / var)
                row[f'val_rollout_ratio_h{h}'] = float(r / c) if c > 0 else float('nan')
            row['val_effective_rank'] = effective_rank(z)
            return row
        finally:
            model.train()

    # ---------------------------------------------------------------- bookkeeping
    def _record(self, values: dict) -> None:
        row = self.rows.setdefault(self.step, {'step': self.step})
        row.update(values)

    def _last(self, key: str):
        for step in sorted(self.rows, reverse=True):
            if key in self.rows[step]:
                return self.rows[step][key]
        return None

    def training_info(self, summary: dict | None = None) -> dict:
        info = {
            'steps': self.step, 'seed': self.cfg.train.seed, 'world_size': self.dist.world_size,
            'loss': to_dict(self.cfg.loss), 'train': to_dict(self.cfg.train),
            'probe': to_dict(self.cfg.probe), 'data': self.data_info,
            'train_episodes': len(self.train_episodes), 'val_episodes': len(self.val_episodes),
            'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'torch': torch.__version__,
            'ami_ros': ami_ros.__version__,
        }
        if summary:
            info['final'] = {k: v for k, v in summary.items() if k in ('val', 'probes')}
        return info

    def save_resume(self) -> Path:
        extra = {}
        if self.ema is not None:
            extra.update({f'ema/{k}': v for k, v in self.ema.state_dict().items()})
        for name in ('idm', 'proprio'):
            head = getattr(self.objective, name)
            if head is not None:
                extra.update({f'{name}/{k}': v for k, v in head.state_dict().items()})
        return save_train_state(self.resume_dir, self.model, self.optimizer,
                                {'step': self.step}, extra, self.training_info())

    def write_logs(self, summary: dict | None = None, plot: bool = True) -> None:
        rows = [self.rows[s] for s in sorted(self.rows)]
        self.out.mkdir(parents=True, exist_ok=True)
        columns = ['step']
        for r in rows:
            columns += [k for k in r if k not in columns]
        with open(self.out / 'log.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        doc = {'config': to_dict(self.cfg), 'records': rows}
        if summary is not None:
            doc['summary'] = summary
        (self.out / 'log.json').write_text(json.dumps(doc, indent=1) + '\n')
        if plot:
            plot_curves(rows, self.out / 'curves.png')


def plot_curves(rows: list[dict], path: Path) -> None:
    """PNG of training losses, validation rollout/copy-last ratios and the learning rate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)

    def series(key):
        pts = [(r['step'], r[key]) for r in rows if key in r and r[key] is not None]
        return ([p[0] for p in pts], [p[1] for p in pts])

    for key in ('pred_1step', 'pred_rollout', 'reg', 'idm', 'proprio', 'contrastive',
                'val_pred_rollout'):
        x, y = series(key)
        if x:
            axes[0].plot(x, y, label=key)
    axes[0].set_yscale('log')
    axes[0].set_title('losses')
    ratio_keys = sorted({k for r in rows for k in r if k.startswith('val_rollout_ratio_h')})
    for key in ratio_keys:
        x, y = series(key)
        axes[1].plot(x, y, 'o-', label=key.replace('val_rollout_ratio_', 'rollout/copy '))
    axes[1].axhline(0.5, color='grey', lw=0.8, ls='--')
    axes[1].set_title('validation rollout error / copy-last')
    x, y = series('lr')
    axes[2].plot(x, y)
    axes[2].set_title('learning rate')
    for ax in axes:
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
