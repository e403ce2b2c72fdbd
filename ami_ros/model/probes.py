"""Probe heads: small MLPs from a (frozen) latent to physical quantities in their own units.

Targets are standardised with the training mean/std stored in each head's ``ProbeSpec`` (and so
in the checkpoint's ``config.json``); angles are regressed as (cos, sin) and decoded by atan2,
so a yaw near +-pi is not an outlier.
"""
from __future__ import annotations

import torch
from torch import nn

from ami_ros.model.config import ProbeSpec


class ProbeHead(nn.Module):
    """latent (..., D) -> quantity (..., dim) in physical units."""

    def __init__(self, spec: ProbeSpec, latent_dim: int, hidden: int):
        super().__init__()
        self.angle = spec.angle
        out = 2 * spec.dim if spec.angle else spec.dim
        self.mlp = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out))
        self.register_buffer('mean', torch.tensor(spec.mean, dtype=torch.float32),
                             persistent=False)
        self.register_buffer('std', torch.tensor(spec.std, dtype=torch.float32),
                             persistent=False)

    def raw(self, z: torch.Tensor) -> torch.Tensor:
        """The network output in its training space (standardised, or (cos, sin) for angles)."""
        return self.mlp(z)

    def encode_target(self, y: torch.Tensor) -> torch.Tensor:
        """Physical target (..., dim) -> the training space of ``raw``."""
        if self.angle:
            return torch.cat([torch.cos(y), torch.sin(y)], dim=-1)
        return (y - self.mean) / self.std

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.raw(z)
        if self.angle:
            c, s = r.chunk(2, dim=-1)
            return torch.atan2(s, c)
        return r * self.std + self.mean


def angle_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Absolute angular difference wrapped to [0, pi]."""
    d = torch.remainder(pred - true + torch.pi, 2 * torch.pi) - torch.pi
    return d.abs()


def probe_error(pred: torch.Tensor, true: torch.Tensor, angle: bool) -> torch.Tensor:
    """Per-sample error (N,): Euclidean norm over the quantity's values (wrapped for angles)."""
    diff = angle_error(pred, true) if angle else (pred - true)
    return diff.norm(dim=-1)
