"""Cross-entropy method over action sequences (as in TD-MPC's planner, without the policy prior).

Each iteration samples N sequences around a Gaussian (mean, std) per step and action dimension,
keeps the ``n_elites`` lowest-cost ones and refits the Gaussian to them. The shared loop in
``base.SamplingPlanner.plan`` handles warm start, bounds, rate limits and NaN safety.
"""
from __future__ import annotations

import torch

from ami_ros.planning.base import SamplingPlanner


class CEMPlanner(SamplingPlanner):
    """CEM: refit mean and std to the elite samples, with momentum on the mean."""

    name = 'cem'

    def _refit(self, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor,
               costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        k = min(int(cfg.n_elites), samples.shape[0])
        elite_costs, idx = torch.topk(costs, k, largest=False)  # (k,), (k,)
        elites = samples[idx]  # (k, H, A)
        # Invalid (inf-cost) samples can only be elites when fewer than k were valid: weigh them 0.
        w = torch.isfinite(elite_costs).to(samples.dtype)  # (k,)
        n_ok = w.sum()  # ()
        w = (w / n_ok.clamp_min(1.0))[:, None, None]  # (k, 1, 1)
        elite_mean = (w * elites).sum(dim=0)  # (H, A)
        elite_var = (w * (elites - elite_mean) ** 2).sum(dim=0)  # (H, A)
        elite_std = elite_var.sqrt().clamp_min(float(cfg.min_std))  # (H, A)
        m = float(cfg.momentum)
        new_mean = m * mean + (1.0 - m) * elite_mean  # (H, A)
        # With no valid sample at all, keep the distribution as it was.
        any_ok = n_ok > 0  # ()
        return torch.where(any_ok, new_mean, mean), torch.where(any_ok, elite_std, std)
