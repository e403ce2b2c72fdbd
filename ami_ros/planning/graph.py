"""A planner's whole search with the world model and a latent goal cost, as one module.

``SamplingPlanner.search`` (every iteration: sample, project into bounds and rate limits, roll
out every candidate, score, keep the best, refit the distribution; then the final mean) is
written with tensor operations only. :class:`PlanGraph` wraps it with the model's rollout and the
latent goal cost, so that an inference backend can compile one whole plan into one graph (ONNX
Runtime: no Python and no per-operation dispatch anywhere in the plan). ``planner.plan(...,
search=backend.plan_search(planner, cost))`` then runs in the backend; without ``search`` the
same code runs eagerly in torch (the reference, and what the parity tests compare).
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from ami_ros.planning.base import SamplingPlanner
from ami_ros.planning.cost import goal_distance

PLAN_INPUTS = ('z_hist', 'goal', 'mean', 'std', 'noise', 'hold', 'limits')
"""Inputs of a plan graph: z_hist (1, k, D), goal (D,), mean/std/hold (H, A), noise
(I, N, H, A), limits (5, A) (``base.project``)."""
PLAN_OUTPUTS = ('cost', 'actions', 'predicted')
"""Outputs: the best plan's cost (1,), actions (H, A) and predicted latents (H, D)."""


class PlanGraph(nn.Module):
    """``planner.search`` on ``model.rollout`` with a latent goal cost: one traceable call."""

    def __init__(self, model: nn.Module, planner: SamplingPlanner, metric: str,
                 terminal_weight: float, running_weight: float):
        super().__init__()
        self.model = model
        self.planner = planner
        self.metric = metric
        self.terminal_weight = float(terminal_weight)
        self.running_weight = float(running_weight)

    def forward(self, z_hist, goal, mean, std, noise, hold, limits):
        def cost(predicted, actions):  # (N, H, D) -> (N,)
            return goal_distance(predicted, goal, self.metric, self.terminal_weight,
                                 self.running_weight)
        return self.planner.search(z_hist, self.model.rollout, cost, mean, std, noise, hold,
                                   limits)


def plan_key(planner: SamplingPlanner, cost, horizon: int) -> str:
    """What a compiled plan depends on besides the weights: planner kind and settings, cost."""
    cfg = planner.config
    spec = {'planner': planner.name, 'horizon': int(horizon), 'samples': int(cfg.n_samples),
            'iterations': int(cfg.iterations),
            'n_elites': int(cfg.n_elites),
            'momentum': float(cfg.momentum), 'min_std': float(cfg.min_std),
            'temperature': float(cfg.temperature), 'metric': cost.metric,
            'terminal_weight': cost.terminal_weight, 'running_weight': cost.running_weight}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def plan_examples(latent_dim: int, action_dim: int, history: int, horizon: int,
                  samples: int, iterations: int) -> tuple[torch.Tensor, ...]:
    """Example inputs (in PLAN_INPUTS order) for tracing a plan graph.

    Shapes are static (the planner's own sample count and horizon): the graph then has no
    shape arithmetic left, and CEM's elite count min(n_elites, N) is fixed anyway.
    """
    gen = torch.Generator().manual_seed(0)
    d, a, h = latent_dim, action_dim, horizon
    inf = torch.full((a,), float('inf'))
    limits = torch.stack([-inf, inf, torch.zeros(a), inf, inf])  # (5, A)
    return (torch.randn(1, history, d, generator=gen), torch.randn(d, generator=gen),
            torch.zeros(h, a), torch.ones(h, a),
            torch.randn(iterations, samples, h, a, generator=gen), torch.zeros(h, a), limits)
