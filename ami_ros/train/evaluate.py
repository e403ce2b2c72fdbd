"""Evaluation of a world model on held-out episodes (what ``ami-ros eval-model`` reports).

Metrics (all computed on the episodes given, never on training data by this module):

* ``rollout_error[h]``: open-loop latent prediction error at horizon h, normalised:
  ``mean ||z_hat_{t+h} - z_{t+h}||^2 / V`` where V is the total latent variance of the
  evaluated frames (mean squared distance of a latent to the mean latent). 1.0 = as far off as
  a random frame; 0 = perfect.
* ``copy_last_error[h]``: the same for the baseline that predicts "nothing changes"
  (``z_hat_{t+h} = z_t``), with the same V, so the ratio is the model's gain over copying.
* ``effective_rank``: exp(entropy) of the normalised singular values of the centred latent
  matrix (Roy & Vetterli 2007), between 1 (collapsed onto a line) and ``latent_dim``.
* ``probe_error``: per probe, mean Euclidean error in physical units (m, rad; wrapped for
  angles), with a ``baseline`` that always predicts the training mean.
* ``retrieval``: top-1 state retrieval accuracy. For each query frame, the gallery is every
  frame of the *other* episodes; the query's latent nearest neighbour (L2) counts as correct
  when it is also the frame whose true state is nearest. The state is the joint positions plus
  every probed ground-truth quantity, each standardised over the evaluated frames.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ami_ros.data.episode import Episode
from ami_ros.model.losses import effective_rank, latent_variance
from ami_ros.model.probes import probe_error
from ami_ros.model.world_model import WorldModel
from ami_ros.train.dataset import probe_targets, resize_frames

DEFAULT_HORIZONS = (1, 2, 5, 10)


def units_of(name: str) -> str:
    """Physical unit of a probed quantity, by the naming convention of ``ami_ros.sim.truth``."""
    if name.endswith('_position'):
        return 'm'
    if name.endswith('_yaw') or name == 'joint_positions':
        return 'rad'
    return ''


@torch.no_grad()
def encode_frames(model: WorldModel, images: np.ndarray, batch_size: int = 256,
                  joints: np.ndarray | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 (and (N, J) joint positions) -> states (N, D) float32 on the CPU.

    A model with proprioception takes the joint positions from ``joints`` when given (as the
    running stack does), otherwise it reads them from the images.
    """
    images = resize_frames(np.asarray(images), model.config.image_size)
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))
        q = None if joints is None or not getattr(model, 'has_proprio', False) else \
            torch.as_tensor(np.asarray(joints[i:i + batch_size], dtype=np.float32))
        out.append(model.encode(batch, q).float().cpu() if q is not None else
                   model.encode(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.latent_dim)


def encode_episodes(model: WorldModel, episodes: list[Episode],
                    batch_size: int = 256) -> list[torch.Tensor]:
    """Latents (T, D) of every frame of each episode."""
    was_training = model.training
    model.eval()
    try:
        return [encode_frames(model, ep.images, batch_size, ep.joint_positions)
                for ep in episodes]
    finally:
        model.train(was_training)


@torch.no_grad()
def rollout_errors(model: WorldModel, episodes: list[Episode], latents: list[torch.Tensor],
                   horizons, max_windows: int = 2000, seed: int = 0,
                   batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, int]:
    """Un-normalised mean squared rollout and copy-last errors per horizon, and the window count.

    Windows start at every frame t with k-1 history frames before it and max(horizons) after
    (a random subset of ``max_windows`` when there are more).
    """
    k = model.history
    m = model.config.predictor.action_history
    h_max = max(horizons)
    pairs = [(e, t) for e, ep in enumerate(episodes) for t in range(k - 1, len(ep) - h_max)]
    if not pairs:
        return np.full(len(horizons), np.nan), np.full(len(horizons), np.nan), 0
    if len(pairs) > max_windows:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_windows, replace=False))
        pairs = [pairs[i] for i in keep]
    device = model.device
    hidx = torch.as_tensor([h - 1 for h in horizons])
    roll_sum = torch.zeros(len(horizons), dtype=torch.float64)
    copy_sum = torch.zeros(len(horizons), dtype=torch.float64)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        z_hist = torch.stack([latents[e][t - k + 1:t + 1] for e, t in chunk])      # (B, k, D)
        z_true = torch.stack([latents[e][t + 1:t + 1 + h_max] for e, t in chunk])  # (B, H, D)
        acts = torch.stack([torch.from_numpy(np.asarray(
            episodes[e].actions[t - m + 1:t + h_max], dtype=np.float32)) for e, t in chunk])
        pred = model.rollout_normalized(z_hist.to(device),
                                        model.normalize_actions(acts.to(device))).cpu()
        err = (pred - z_true).square().sum(-1)                                     # (B, H)
        copy = (z_hist[:, -1:] - z_true).square().sum(-1)                          # (B, H)
        roll_sum += err[:, hidx].double().sum(0)
        copy_sum += copy[:, hidx].double().sum(0)
    n = len(pairs)
    return (roll_sum / n).numpy(), (copy_sum / n).numpy(), n


@torch.no_grad()
def one_step_error_scale(model: WorldModel, episodes: list[Episode], max_windows: int = 4000,
                         seed: int = 0) -> np.ndarray:
    """Per-dimension RMS of the one-step prediction error (D,) on these episodes.

    The belief filter divides innovations by it, so a dimension the model predicts precisely
    (a joint position) weighs in the surprise as much as a noisy one (a visual feature).
    """
    k, m = model.history, model.config.predictor.action_history
    latents = encode_episodes(model, episodes)
    pairs = [(e, t) for e, ep in enumerate(episodes) for t in range(k - 1, len(ep) - 1)]
    if not pairs:
        raise ValueError('one_step_error_scale: episodes are too short')
    if len(pairs) > max_windows:
        keep = np.random.default_rng(seed).choice(len(pairs), max_windows, replace=False)
        pairs = [pairs[i] for i in np.sort(keep)]
    sq = torch.zeros(model.latent_dim, dtype=torch.float64)
    for i in range(0, len(pairs), 512):
        chunk = pairs[i:i + 512]
        z_hist = torch.stack([latents[e][t - k + 1:t + 1] for e, t in chunk])
        z_next = torch.stack([latents[e][t + 1] for e, t in chunk])
        acts = torch.stack([torch.from_numpy(np.asarray(
            episodes[e].actions[t - m + 1:t + 1], dtype=np.float32)) for e, t in chunk])
        pred = model.rollout_normalized(z_hist.to(model.device),
                                        model.normalize_actions(acts.to(model.device)))[:, 0]
        sq += (pred.cpu() - z_next).double().square().sum(0)
    return np.maximum(np.sqrt(sq.numpy() / len(pairs)), 1e-6)


@torch.no_grad()
def probe_metrics(model: WorldModel, latents: torch.Tensor,
                  episodes: list[Episode]) -> dict[str, dict[str, float]]:
    """{name: {'error', 'baseline', 'units'}} for every probe whose target the episodes have."""
    out = {}
    if not len(model.probes):
        return out
    preds = model.probe(latents.to(model.device))
    for spec in model.config.probes:
        y = probe_targets(episodes, spec.name)
        if y is None:
            continue
        y = torch.from_numpy(y)
        pred = preds[spec.name].cpu().reshape(y.shape)
        base = torch.tensor(spec.mean, dtype=torch.float32).expand_as(y)
        out[spec.name] = {'error': float(probe_error(pred, y, spec.angle).mean()),
                          'baseline': float(probe_error(base, y, spec.angle).mean()),
                          'units': units_of(spec.name)}
    return out


def retrieval_accuracy(latents: list[torch.Tensor], episodes: list[Episode],
                       state_keys: tuple[str, ...], queries: int = 500, gallery: int = 5000,
                       seed: int = 0) -> dict:
    """Top-1 state retrieval by latent nearest neighbour across episodes (see module doc)."""
    if len(episodes) < 2:
        return {'top1': float('nan'), 'reason': 'needs at least 2 episodes'}
    keys = ['joint_positions'] + [k for k in state_keys if k != 'joint_positions']
    parts = []
    used = []
    for key in keys:
        y = probe_targets(episodes, key)
        if y is None:
            continue
        y = y.astype(np.float64)
        if key.endswith('_yaw'):
            y = np.concatenate([np.cos(y), np.sin(y)], axis=1)
        std = y.std(axis=0)
        keep = std > 1e-9                   # constant components carry no information
        parts.append((y[:, keep] - y[:, keep].mean(axis=0)) / std[keep])
        used.append(key)
    state = torch.from_numpy(np.concatenate(parts, axis=1))
    z = torch.cat(latents).double()
    ep_id = torch.cat([torch.full((len(ep),), i) for i, ep in enumerate(episodes)])
    rng = np.random.default_rng(seed)
    n = len(z)
    q_idx = torch.from_numpy(np.sort(rng.choice(n, min(queries, n), replace=False)))
    g_idx = torch.from_numpy(np.sort(rng.choice(n, min(gallery, n), replace=False)))
    hits, d_latent, d_true, d_rand = 0, [], [], []
    for q in q_idx.tolist():
        g = g_idx[ep_id[g_idx] != ep_id[q]]
        if len(g) == 0:
            continue
        ds = (state[g] - state[q]).norm(dim=1)
        dz = (z[g] - z[q]).norm(dim=1)
        i_true, i_lat = int(ds.argmin()), int(dz.argmin())
        hits += int(i_true == i_lat)
        d_latent.append(float(ds[i_lat]))
        d_true.append(float(ds[i_true]))
        d_rand.append(float(ds.mean()))
    count = len(d_latent)
    return {'top1': hits / count if count else float('nan'), 'queries': count,
            'gallery': int(len(g_idx)), 'state_keys': used,
            'state_distance_latent_nn': float(np.mean(d_latent)) if count else float('nan'),
            'state_distance_true_nn': float(np.mean(d_true)) if count else float('nan'),
            'state_distance_random': float(np.mean(d_rand)) if count else float('nan')}


def evaluate(model: WorldModel, episodes: list[Episode], horizons=DEFAULT_HORIZONS,
             max_windows: int = 2000, retrieval_queries: int = 500, seed: int = 0) -> dict:
    """All metrics of the module docstring as one JSON-ready dict."""
    if not episodes:
        raise ValueError('evaluate: no episodes')
    for ep in episodes:
        if ep.actions.ndim != 2 or ep.actions.shape[1] != model.action_dim:
            raise ValueError(f'{ep.source or "episode"}: actions have {ep.actions.shape[-1]} '
                             f'values per step but the model was trained on {model.action_dim} '
                             f'(a different robot or scene?)')
    model.eval()
    longest = max(len(ep) for ep in episodes)
    horizons = sorted({int(h) for h in horizons if 1 <= int(h) <= longest - model.history})
    if not horizons:
        raise ValueError(f'evaluate: episodes (longest {longest} frames) are too short for any '
                         f'horizon with history {model.history}')
    latents = encode_episodes(model, episodes)
    z_all = torch.cat(latents)
    var = latent_variance(z_all)
    roll, copy, n_windows = rollout_errors(model, episodes, latents, horizons, max_windows, seed)
    norm = var if var > 1e-12 else 1.0
    probes = probe_metrics(model, z_all, episodes)
    probe_error_out: dict = {name: v['error'] for name, v in probes.items()}
    probe_error_out['baseline'] = {name: v['baseline'] for name, v in probes.items()}
    retrieval = retrieval_accuracy(latents, episodes, model.probe_names,
                                   queries=retrieval_queries, seed=seed)
    rollout_error = [float(v / norm) for v in roll]
    copy_last_error = [float(v / norm) for v in copy]
    return {
        'horizons': horizons,
        'rollout_error': rollout_error,
        'copy_last_error': copy_last_error,
        'rollout_ratio': [r / c if c > 0 else float('nan')
                          for r, c in zip(rollout_error, copy_last_error)],
        'latent_variance': var,
        'windows': n_windows,
        'probe_error': probe_error_out,
        'probe_units': {name: v['units'] for name, v in probes.items()},
        'effective_rank': effective_rank(z_all),
        'latent_dim': model.latent_dim,
        'retrieval': retrieval['top1'],
        'retrieval_detail': retrieval,
        'num_episodes': len(episodes),
        'num_frames': int(len(z_all)),
    }


# --------------------------------------------------------------------------------------------
# presentation
# --------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return 'nan' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.4g}'


def print_table(result: dict, file=None, title: str = 'world model evaluation') -> None:
    """Human-readable tables (rich) of an :func:`evaluate` result."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=100)
    t = Table(title=title)
    for col in ('horizon', 'rollout error', 'copy-last error', 'ratio'):
        t.add_column(col, justify='right')
    for h, r, c, q in zip(result['horizons'], result['rollout_error'],
                          result['copy_last_error'], result['rollout_ratio']):
        t.add_row(str(h), _fmt(r), _fmt(c), _fmt(q))
    console.print(t)
    if result['probe_units']:
        p = Table(title='probes (mean error, physical units)')
        for col in ('quantity', 'error', 'baseline (mean)', 'units'):
            p.add_column(col, justify='right')
        for name, units in result['probe_units'].items():
            p.add_row(name, _fmt(result['probe_error'][name]),
                      _fmt(result['probe_error']['baseline'][name]), units)
        console.print(p)
    console.print(f"effective rank {result['effective_rank']:.2f} of latent_dim "
                  f"{result['latent_dim']}; retrieval top-1 {_fmt(result['retrieval'])}; "
                  f"{result['num_episodes']} episodes, {result['num_frames']} frames, "
                  f"{result['windows']} windows")


def plot_horizons(result: dict, path: str | Path, title: str = '') -> Path:
    """PNG of rollout vs copy-last error by horizon."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(result['horizons'], result['rollout_error'], 'o-', label='world model rollout')
    ax.plot(result['horizons'], result['copy_last_error'], 's--', label='copy last latent')
    ax.set_xlabel('horizon (steps)')
    ax.set_ylabel('latent MSE / latent variance')
    ax.set_title(title or f"eff. rank {result['effective_rank']:.1f}/{result['latent_dim']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
