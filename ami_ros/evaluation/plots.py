"""PNG figures of the planning and surprise evaluations (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')  # files only; never opens a window
    import matplotlib.pyplot as plt

    return plt


def plot_success(methods: dict, budgets: list, path: Path, title: str,
                 oracle_rollouts: Optional[int] = None, success_at: str = 'end') -> Path:
    """Success rate vs control step per method (left), and vs planning budget (right).

    The budget is in rollouts per plan (samples x iterations) of the world-model planner; the
    oracle's (simulator rollouts, ``oracle_rollouts``) is marked beside it when it ran.
    """
    plt = _pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in methods.items():
        curve = m.get('success_vs_step') or []
        if curve:
            ax0.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax0.set_xlabel('control step')
    ax0.set_ylabel('success rate (criterion holds)')
    ax0.set_ylim(-0.02, 1.02)
    ax0.grid(alpha=0.3)
    ax0.legend()
    if budgets:
        rollouts = [b['rollouts_per_plan'] for b in budgets]
        ax1.plot(rollouts, [b['success_rate'] for b in budgets], 'o-', label='world_model')
        for b in budgets:
            ax1.annotate(f"{b['plan_ms_p50']:.0f} ms", (b['rollouts_per_plan'], b['success_rate']),
                         textcoords='offset points', xytext=(4, -12), fontsize=8)
        ax1.set_xscale('log')
    if oracle_rollouts and 'oracle' in methods:
        m = methods['oracle']
        ax1.plot([oracle_rollouts], [m['success_rate']], '*', markersize=11,
                 label='oracle (simulator)')
        ax1.annotate(f"{m['plan_ms_p50']:.0f} ms", (oracle_rollouts, m['success_rate']),
                     textcoords='offset points', xytext=(4, -12), fontsize=8)
    if budgets or (oracle_rollouts and 'oracle' in methods):
        ax1.legend(loc='lower right')
    ax1.set_xlabel('planning budget (rollouts per plan)')
    ax1.set_ylabel('success rate (at any step)' if success_at == 'any'
                   else 'success rate at the end')
    ax1.set_ylim(-0.02, 1.02)
    ax1.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_filmstrip(goal_image: np.ndarray, frames: list, path: Path, title: str,
                   columns: int = 8, errors: Optional[list] = None) -> Path:
    """The goal image, then ``columns - 1`` frames evenly spread over the episode."""
    plt = _pyplot()
    idx = np.unique(np.linspace(0, len(frames) - 1, columns - 1).round().astype(int))
    fig, axes = plt.subplots(1, len(idx) + 1, figsize=(1.6 * (len(idx) + 1), 2.0))
    axes[0].imshow(goal_image)
    axes[0].set_title('goal', fontsize=9, color='green')
    for ax, i in zip(axes[1:], idx):
        ax.imshow(frames[i])
        label = f't={i}' + (f'\n{errors[i]:.3f}' if errors is not None and i < len(errors) else '')
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_surprise(per_type: dict, path: Path, title: str) -> Path:
    """Histograms of surprise scores: normal steps vs each anomaly type's steps."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(per_type), figsize=(3.6 * len(per_type), 3.0), squeeze=False)
    for ax, (name, d) in zip(axes[0], per_type.items()):
        normal, anomal = np.asarray(d['normal']), np.asarray(d['anomalous'])
        hi = max(np.percentile(np.concatenate([normal, anomal]), 99.5), 1e-6) \
            if len(normal) + len(anomal) else 1.0
        bins = np.linspace(0.0, hi, 40)
        ax.hist(np.clip(normal, 0, hi), bins=bins, alpha=0.6, density=True, label='normal')
        ax.hist(np.clip(anomal, 0, hi), bins=bins, alpha=0.6, density=True, label=name)
        ax.set_title(f"{name}: AUROC {d['auroc']:.3f}", fontsize=9)
        ax.set_xlabel('surprise score')
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
