"""Action-conditioned latent dynamics: (k latents, m normalised actions) -> next latent.

The MLP predicts a *change* of the latest latent (residual), so an untrained predictor starts
as the copy-last baseline and learning only has to explain motion.
"""
from __future__ import annotations

import torch
from torch import nn


class Predictor(nn.Module):
    """z_{t+1} = z_t + MLP([z_{t-k+1..t}, a_{t-m+1..t}])."""

    def __init__(self, latent_dim: int, action_dim: int, history: int, action_history: int,
                 hidden: int, layers: int, norm: bool = True):
        super().__init__()
        self.history = history
        self.action_history = action_history
        dims = [history * latent_dim + action_history * action_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out)] + ([nn.LayerNorm(d_out)] if norm else []) \
                + [nn.SiLU()]
        self.mlp = nn.Sequential(*blocks)
        self.out = nn.Linear(dims[-1], latent_dim)
        # small initial residual: start near "nothing changes"
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        """z_hist (..., k, D), a_hist (..., m, A) normalised -> next latent (..., D)."""
        x = torch.cat([z_hist.flatten(-2), a_hist.flatten(-2)], dim=-1)
        return z_hist[..., -1, :] + self.out(self.mlp(x))
