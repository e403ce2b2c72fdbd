"""Training losses and latent-space metrics.

Anti-collapse regularisers (both implemented, one chosen by ``LossConfig.regularizer``):

* **SIGReg** (LeJEPA, Balestriero & LeCun 2025): push the batch of latents towards an isotropic
  standard Gaussian. Sketched: project the (N, D) latents on M random unit directions and, for
  each 1-D projection, compute the Epps-Pulley statistic
  ``N * integral |phi_N(t) - exp(-t^2/2)|^2 w(t) dt`` between its empirical characteristic
  function and that of N(0, 1), with weight ``w(t) = exp(-t^2/2)``, by the trapezoid rule on
  [0, t_max] (the integrand is even). The loss is the mean over directions.
* **VICReg** (Bardes et al. 2022) without its invariance term (our prediction loss plays that
  role): a hinge keeping each dimension's standard deviation >= 1 plus the squared off-diagonal
  covariances.

Which is the default and why is written in ``ami_ros/model/world_model.py``'s module docstring.
"""
from __future__ import annotations

import math

import torch


def sigreg(z: torch.Tensor, num_projections: int = 256, knots: int = 17, t_max: float = 3.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Compute the SIGReg loss of latents ``z`` (N, D): mean Epps-Pulley statistic.

    ``generator`` (on CPU) draws the directions; pass one seeded per step for reproducible runs.
    """
    n, d = z.shape
    dirs = torch.randn(d, num_projections, generator=generator, dtype=torch.float32)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(device=z.device, dtype=z.dtype)
    t = torch.linspace(0.0, t_max, knots, device=z.device, dtype=z.dtype)       # (K,)
    target = torch.exp(-0.5 * t * t)                                           # CF of N(0,1)
    # trapezoid weights on [0, t_max], doubled for the symmetric half, times w(t)
    dt = t_max / (knots - 1)
    trap = torch.full((knots,), 2.0 * dt, device=z.device, dtype=z.dtype)
    trap[0] = trap[-1] = dt
    weights = trap * target                                                    # (K,)
    xt = (z @ dirs).unsqueeze(-1) * t                                          # (N, M, K)
    cos_mean = torch.cos(xt).mean(dim=0)                                       # (M, K)
    sin_mean = torch.sin(xt).mean(dim=0)                                       # (M, K)
    err = (cos_mean - target).square() + sin_mean.square()                     # (M, K)
    return (err @ weights).mean() * n


def vicreg(z: torch.Tensor, variance_weight: float = 1.0, covariance_weight: float = 0.04,
           eps: float = 1e-4) -> torch.Tensor:
    """Compute the VICReg variance + covariance loss of latents ``z`` (N, D)."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    std = torch.sqrt(zc.var(dim=0) + eps)
    var_loss = torch.relu(1.0 - std).mean()
    cov = (zc.T @ zc) / max(n - 1, 1)                                          # (D, D)
    off = cov - torch.diag(torch.diagonal(cov))
    cov_loss = off.square().sum() / d
    return variance_weight * var_loss + covariance_weight * cov_loss


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """Compute the InfoNCE loss of predictions (N, D) against targets (N, D): i's is target i.

    Logits are minus squared Euclidean distances over ``temperature``; the loss is the
    cross-entropy of picking each prediction's own target among all N (CPC, van den Oord et al.
    2018). log(N) at chance, 0 when every prediction is far nearer its own target. With
    ``groups`` (N,) ids, the other targets of a prediction's own group are not negatives.
    """
    logits = -torch.cdist(pred, target).square() / temperature  # (N, N)
    if groups is not None:
        same = (groups[:, None] == groups[None, :]) & ~torch.eye(
            len(groups), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same, float('-inf'))
    labels = torch.arange(pred.shape[0], device=pred.device)
    return torch.nn.functional.cross_entropy(logits, labels)


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred latent matrix (N, D).

    Roy & Vetterli (2007): D for perfectly spread (isotropic) latents, 1 for collapse onto a
    line; a value near 0 (all-equal latents) is reported as 0.
    """
    z = z.detach().double()
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    total = s.sum()
    if total <= 1e-12:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def latent_variance(z: torch.Tensor) -> float:
    """Total variance of latents (N, D): mean squared distance to the mean (sum over dims)."""
    z = z.detach().double()
    return float((z - z.mean(dim=0)).square().sum(dim=1).mean())
