"""What CEM and MPPI share: the result type, warm start, action constraints and NaN safety.

A planner searches action sequences (H, A). ``dynamics(state, actions (N, H, A))`` rolls all N
candidates out in one batch and returns predicted states (N, H, ...); ``cost(predicted, actions)``
returns (N,). Subclasses only say how the sampling distribution is refitted (``_refit``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ami_ros.planning.config import PlannerConfig

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Cost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PlanResult:
    """The outcome of one plan."""

    actions: torch.Tensor
    """(H, A) the plan; actions[0] is the command to send now. Always finite and feasible."""
    predicted: Optional[torch.Tensor]
    """(H, ...) predicted states along the plan; None when the plan is a fallback."""
    cost: float
    """Cost of the plan; inf when no candidate had a finite cost (fallback)."""
    info: dict = field(default_factory=dict)
    """'reason' ('ok' or why a fallback was returned), 'warm_start', 'planner'."""


class SamplingPlanner:
    """Base of the sampling planners; owns its random generator and the previous plan."""

    name = 'sampling'

    def __init__(self, config: PlannerConfig):
        self.config = config
        self._generator: Optional[torch.Generator] = None
        self._last_plan: Optional[torch.Tensor] = None  # (H, A)

    def reset(self) -> None:
        """Forget the previous plan and restart the random stream from the seed."""
        self._generator = None
        self._last_plan = None

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(int(self.config.seed))
        return self._generator

    def _refit(self, mean, std, samples, costs):
        """New (mean, std), each (H, A), from samples (N, H, A) and costs (N,) (inf = invalid)."""
        raise NotImplementedError

    def plan(self, state: torch.Tensor, dynamics: Dynamics, cost: Cost,
             prev_plan: Optional[torch.Tensor] = None,
             current_action: Optional[torch.Tensor] = None,
             hold_action: Optional[torch.Tensor] = None) -> PlanResult:
        """Plan from ``state``.

        prev_plan: (H, A) previous plan; defaults to the one this planner returned last. Used
        (shifted by one step) as the starting mean when ``warm_start`` and as the fallback.
        current_action: (A,) the command in force now; the first step is rate-limited from it.
        hold_action: (A,) a safe action (stop / stay), always among the candidates and the
        fallback when there is no previous plan.
        """
        if not isinstance(state, torch.Tensor):
            raise TypeError(f'{self.name}: state must be a tensor, got {type(state).__name__}')
        cfg = self.config
        h, a, n = int(cfg.horizon), int(cfg.action_dim), int(cfg.n_samples)
        iters = int(cfg.iterations)
        dev = state.device
        dtype = state.dtype if state.dtype in (torch.float32, torch.float64) else torch.float32
        current = _vector('current_action', current_action, a, dev, dtype)  # (A,) or None
        box = _Constraints(cfg, dev, dtype, current)
        hold = _vector('hold_action', hold_action, a, dev, dtype)  # (A,) or None
        prev = _shifted(self._last_plan if prev_plan is None else prev_plan, h, a, dev, dtype)
        warm = bool(cfg.warm_start) and prev is not None
        start = prev if warm else next(v for v in (hold, current, box.centre) if v is not None)
        mean = box.project(start.expand(h, a)[None])[0]  # (H, A)
        std = torch.tensor(cfg.vector('init_std'), device=dev, dtype=dtype).expand(h, a)  # (H, A)
        gen = self._rng(dev)
        best_cost = torch.full((), float('inf'), device=dev, dtype=dtype)  # ()
        best_actions, best_pred = mean, None  # (H, A), (H, ...)
        with torch.no_grad():
            for it in range(iters + 1):
                if it < iters:
                    noise = torch.randn((n, h, a), generator=gen, device=dev, dtype=dtype)
                    samples = mean + std * noise  # (N, H, A)
                    samples[0] = mean  # the current mean (the warm start at first) is a candidate
                    if hold is not None:
                        samples[1] = hold  # (H, A) broadcast
                else:
                    samples = mean[None]  # (1, H, A) the final mean, evaluated once
                samples = box.project(samples)  # (N, H, A)
                predicted, costs = _evaluate(self.name, state, samples, dynamics, cost)
                i = torch.argmin(costs)  # () lowest cost; ties go to the first (the mean)
                # Strictly better replaces the best; the final mean also wins a tie (smoother).
                better = costs[i] <= best_cost if it == iters else costs[i] < best_cost  # ()
                best_cost = torch.where(better, costs[i], best_cost)  # ()
                best_actions = torch.where(better, samples[i], best_actions)  # (H, A)
                best_pred = predicted[i] if best_pred is None else torch.where(
                    better, predicted[i], best_pred)  # (H, ...)
                if it < iters:
                    mean, std = self._refit(mean, std, samples, costs)  # (H, A), (H, A)
        info = {'planner': self.name, 'warm_start': warm, 'reason': 'ok'}
        if bool(torch.isfinite(best_cost)):
            result = PlanResult(best_actions.clone(), best_pred, float(best_cost), info)
        else:  # every rollout or cost was NaN/inf: fall back, never return NaN
            options = ((prev, 'the previous plan'), (hold, 'the hold action'),
                       (mean, 'the initial mean'))
            fallback, what = next((v, w) for v, w in options if v is not None)
            info['reason'] = f'no candidate had a finite cost; returned {what}'
            actions = box.project(fallback.expand(h, a)[None])[0]  # (H, A)
            result = PlanResult(actions.clone(), None, float('inf'), info)
        self._last_plan = result.actions
        return result


class _Constraints:
    """Action bounds and rate limits as tensors on the planning device."""

    def __init__(self, cfg: PlannerConfig, dev, dtype, current: Optional[torch.Tensor]):
        a = int(cfg.action_dim)
        inf = float('inf')
        lo = cfg.vector('lower') or (-inf,) * a
        hi = cfg.vector('upper') or (inf,) * a
        self.lower = torch.tensor(lo, device=dev, dtype=dtype)  # (A,)
        self.upper = torch.tensor(hi, device=dev, dtype=dtype)  # (A,)
        delta = cfg.vector('max_delta')
        self.delta = (None if delta is None
                      else torch.tensor(delta, device=dev, dtype=dtype))  # (A,)
        self.current = current  # (A,) or None
        # Centre of the box where both bounds are finite, 0 elsewhere: the default starting mean.
        both = torch.isfinite(self.lower) & torch.isfinite(self.upper)  # (A,)
        mid = torch.where(both, (self.lower + self.upper) / 2, torch.zeros_like(self.lower))
        self.centre = mid.clamp(self.lower, self.upper)  # (A,)

    def project(self, actions: torch.Tensor) -> torch.Tensor:
        """Clamp (N, H, A) sequences into bounds and rate limits, step by step in time order.

        Bounds win where both cannot hold (a current action outside the bounds).
        """
        if self.delta is None:
            return actions.clamp(self.lower, self.upper)  # (N, H, A)
        steps, prev = [], self.current  # prev: (A,) or (N, A)
        for t in range(actions.shape[1]):
            step = actions[:, t]  # (N, A)
            if prev is not None:
                step = torch.minimum(torch.maximum(step, prev - self.delta), prev + self.delta)
            step = step.clamp(self.lower, self.upper)  # (N, A)
            steps.append(step)
            prev = step
        return torch.stack(steps, dim=1)  # (N, H, A)


def _vector(name, value, a, dev, dtype) -> Optional[torch.Tensor]:
    """A caller-supplied (A,) action as a finite tensor on the planning device, or None."""
    if value is None:
        return None
    v = torch.as_tensor(value).to(device=dev, dtype=dtype).reshape(-1)  # (A,)
    if v.numel() != a:
        raise ValueError(f'{name} must have {a} entries, got {v.numel()}')
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f'{name} must be finite, got {v.tolist()}')
    return v


def _shifted(prev, h, a, dev, dtype) -> Optional[torch.Tensor]:
    """The previous plan advanced one step, last action repeated, fitted to H; None if unusable."""
    if prev is None:
        return None
    p = torch.as_tensor(prev).to(device=dev, dtype=dtype)
    if p.dim() != 2 or p.shape[1] != a or p.shape[0] < 1:
        raise ValueError(f'prev_plan must have shape (H, {a}), got {tuple(p.shape)}')
    if not bool(torch.isfinite(p).all()):
        return None  # a NaN plan is no plan: start afresh
    p = torch.cat([p[1:], p[-1:]], dim=0)  # (H', A) shifted, last repeated
    if p.shape[0] < h:
        p = torch.cat([p, p[-1:].expand(h - p.shape[0], a)], dim=0)  # (H, A)
    return p[:h]  # (H, A)


def _evaluate(name, state, samples, dynamics, cost):
    """Roll out and score samples (N, H, A); non-finite rollouts or costs score +inf."""
    n, h = samples.shape[:2]
    predicted = dynamics(state, samples)  # (N, H, ...)
    if not isinstance(predicted, torch.Tensor) or tuple(predicted.shape[:2]) != (n, h):
        raise ValueError(f'{name}: dynamics must return (N={n}, H={h}, ...) states, got '
                         f'{getattr(predicted, "shape", type(predicted).__name__)}')
    costs = cost(predicted, samples)  # (N,)
    if not isinstance(costs, torch.Tensor) or tuple(costs.shape) != (n,):
        raise ValueError(f'{name}: cost must return shape (N={n},), got '
                         f'{getattr(costs, "shape", type(costs).__name__)}')
    ok = torch.isfinite(costs) & torch.isfinite(predicted.reshape(n, -1)).all(dim=1)  # (N,)
    inf = torch.full_like(samples[:, 0, 0], float('inf'))  # (N,)
    costs = torch.where(ok, costs.to(samples.dtype), inf)  # (N,)
    return predicted, costs  # (N, H, ...), (N,)
