"""Model predictive path integral control over action sequences.

Each iteration samples N sequences around a Gaussian (mean, std), weighs every sample by
``softmax(-cost / temperature)`` and moves the mean to the weighted average and the std to the
weighted spread (floored at ``min_std``), as TD-MPC's MPPI does: with few iterations per control
step an adaptive std converges much faster than a fixed one.
The shared loop in ``base.SamplingPlanner.plan`` handles warm start, bounds, rate limits and NaN
safety.
"""
from __future__ import annotations

import torch

from ami_ros.planning.base import SamplingPlanner


class MPPIPlanner(SamplingPlanner):
    """MPPI: exponentially cost-weighted mean and std of every sample."""

    name = 'mppi'

    def _refit(self, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor,
               costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        ok = torch.isfinite(costs)  # (N,)
        any_ok = ok.any()  # ()
        # Subtract the best cost so exp() never underflows to all zeros; inf costs get weight 0.
        best = torch.where(ok, costs, torch.full_like(costs, float('inf'))).min()  # ()
        shifted = torch.where(ok, costs - best, torch.full_like(costs, float('inf')))  # (N,)
        w = torch.softmax(-shifted / float(cfg.temperature), dim=0)  # (N,)
        w = torch.where(any_ok, w, torch.zeros_like(w))[:, None, None]  # (N, 1, 1) no NaN
        weighted_mean = (w * samples).sum(dim=0)  # (H, A)
        weighted_var = (w * (samples - weighted_mean) ** 2).sum(dim=0)  # (H, A)
        new_std = weighted_var.sqrt().clamp_min(float(cfg.min_std))  # (H, A)
        m = float(cfg.momentum)
        new_mean = m * mean + (1.0 - m) * weighted_mean  # (H, A)
        return torch.where(any_ok, new_mean, mean), torch.where(any_ok, new_std, std)
