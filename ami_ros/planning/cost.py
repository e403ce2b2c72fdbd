"""Planning costs: callables ``cost(predicted (N, H, ...), actions (N, H, A)) -> (N,)``.

- ``latent_goal_cost``: distance of predicted latents to a goal latent (image goal).
- ``probe_goal_cost``: distance of probed physical state (e.g. end-effector position) to a goal.
- ``sum_costs``: a weighted sum of costs.

Each step's distance is weighted ``running_weight`` before the last step and ``terminal_weight``
on the last one, then summed over the horizon.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ami_ros.planning.base import Cost

METRICS = ('l1', 'l2', 'euclidean', 'cosine')
"""l1: mean |x - g|; l2: mean (x - g)^2; euclidean: ||x - g||; cosine: 1 - cos(x, g).
Each reduces the last axis, then averages any other trailing axes (tokens)."""


def distance(x: torch.Tensor, goal: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-step distance of states x (N, H, ...) to goal (...) -> (N, H)."""
    n, h = x.shape[:2]
    if metric == 'cosine':
        g = goal.expand_as(x)  # (N, H, ...)
        d = 1.0 - torch.nn.functional.cosine_similarity(x, g, dim=-1, eps=1e-8)  # (N, H, ...)
    else:
        diff = x - goal  # (N, H, ...)
        if metric == 'l1':
            d = diff.abs().mean(dim=-1)  # (N, H, ...)
        elif metric == 'l2':
            d = diff.pow(2).mean(dim=-1)  # (N, H, ...)
        else:
            d = diff.norm(dim=-1)  # (N, H, ...)
    return d.reshape(n, h, -1).mean(dim=-1)  # (N, H)


def _check(metric: str, terminal_weight: float, running_weight: float) -> None:
    if metric not in METRICS:
        raise ValueError(f'unknown cost metric {metric!r}; choose one of {list(METRICS)}')
    for name, w in (('terminal_weight', terminal_weight), ('running_weight', running_weight)):
        if not float(w) >= 0.0:
            raise ValueError(f'{name} must be >= 0, got {w}')
    if float(terminal_weight) + float(running_weight) <= 0.0:
        raise ValueError('terminal_weight and running_weight are both 0: the cost would be 0')


def _step_weights(h: int, terminal_weight: float, running_weight: float, like: torch.Tensor):
    w = torch.full((h,), float(running_weight), device=like.device, dtype=like.dtype)  # (H,)
    w[-1] = float(terminal_weight)
    return w  # (H,)


def _goal_tensor(name: str, goal) -> torch.Tensor:
    g = torch.as_tensor(goal).detach().clone()
    if not g.is_floating_point():
        g = g.float()
    if g.numel() == 0 or not bool(torch.isfinite(g).all()):
        raise ValueError(f'{name} must be a non-empty finite tensor, got {g.tolist()}')
    return g


def goal_distance(predicted: torch.Tensor, goal: torch.Tensor, metric: str,
                  terminal_weight: float, running_weight: float) -> torch.Tensor:
    """Weighted sum over the horizon of the distance of predicted (N, H, ...) to goal -> (N,)."""
    d = distance(predicted, goal.to(device=predicted.device, dtype=predicted.dtype),
                 metric)  # (N, H)
    w = _step_weights(d.shape[1], terminal_weight, running_weight, d)  # (H,)
    return (d * w).sum(dim=1)  # (N,)


def latent_goal_cost(goal, metric: str = 'l1', terminal_weight: float = 1.0,
                     running_weight: float = 0.1) -> Cost:
    """Cost of predicted latents (N, H, *goal.shape) against the goal latent.

    The returned callable carries ``goal``, ``metric``, ``terminal_weight`` and
    ``running_weight`` as attributes, so that a backend can build the same cost into a graph.
    """
    _check(metric, terminal_weight, running_weight)
    g0 = _goal_tensor('latent goal', goal)

    def cost(predicted: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if tuple(predicted.shape[2:]) != tuple(g0.shape):
            raise ValueError(f'predicted latents are {tuple(predicted.shape[2:])} per step, '
                             f'the goal latent {tuple(g0.shape)}')
        return goal_distance(predicted, g0, metric, terminal_weight, running_weight)  # (N,)

    cost.goal, cost.metric = g0, metric
    cost.terminal_weight, cost.running_weight = float(terminal_weight), float(running_weight)
    return cost


def probe_goal_cost(probe_fn: Callable[[torch.Tensor], torch.Tensor], goal,
                    metric: str = 'euclidean', terminal_weight: float = 1.0,
                    running_weight: float = 0.1,
                    dim_weights: Optional[Sequence[float]] = None) -> Cost:
    """Cost of probed state ``probe_fn(predicted) -> (N, H, P)`` against a goal (P,).

    dim_weights: (P,) scales applied to the error per probed dimension before the metric
    (e.g. to trade metres against radians); None = all 1.
    """
    _check(metric, terminal_weight, running_weight)
    g0 = _goal_tensor('probe goal', goal).reshape(-1)  # (P,)
    scale0 = None
    if dim_weights is not None:
        scale0 = _goal_tensor('dim_weights', dim_weights).reshape(-1)  # (P,)
        if scale0.numel() != g0.numel() or bool((scale0 < 0).any()):
            raise ValueError(f'dim_weights must be {g0.numel()} values >= 0, '
                             f'got {scale0.tolist()}')

    def cost(predicted: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        probed = probe_fn(predicted)  # (N, H, P)
        n, h = predicted.shape[:2]
        if tuple(probed.shape) != (n, h, g0.numel()):
            raise ValueError(f'probe_fn must return (N={n}, H={h}, P={g0.numel()}), '
                             f'got {tuple(probed.shape)}')
        g = g0.to(device=probed.device, dtype=probed.dtype)  # (P,)
        if scale0 is not None:
            s = scale0.to(device=probed.device, dtype=probed.dtype)  # (P,)
            probed, g = probed * s, g * s  # (N, H, P), (P,)
        d = distance(probed, g, metric)  # (N, H)
        w = _step_weights(h, terminal_weight, running_weight, d)  # (H,)
        return (d * w).sum(dim=1)  # (N,)

    return cost


def sum_costs(*costs: Cost, weights: Optional[Sequence[float]] = None) -> Cost:
    """A cost that is ``sum_i weights[i] * costs[i](predicted, actions)``."""
    if not costs:
        raise ValueError('sum_costs needs at least one cost')
    ws = [1.0] * len(costs) if weights is None else [float(w) for w in weights]
    if len(ws) != len(costs) or any(not w >= 0.0 for w in ws):
        raise ValueError(f'weights must be {len(costs)} values >= 0, got {weights}')
    if len(costs) == 1 and ws[0] == 1.0:
        return costs[0]  # itself: keeps what a backend needs to build it into a graph

    def cost(predicted: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        total = ws[0] * costs[0](predicted, actions)  # (N,)
        for w, c in zip(ws[1:], costs[1:]):
            total = total + w * c(predicted, actions)  # (N,)
        return total

    return cost
