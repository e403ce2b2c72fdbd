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
        self._plans_in_block = 0  # plans made since the last plan's first block began

    def reset(self) -> None:
        """Forget the previous plan and restart the random stream from the seed."""
        self._generator = None
        self._last_plan = None
        self._plans_in_block = 0

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(int(self.config.seed))
        return self._generator

    def _refit(self, mean, std, samples, costs):
        """New (mean, std), each (H, A), from samples (N, H, A) and costs (N,) (inf = invalid)."""
        raise NotImplementedError

    def iteration(self, state: torch.Tensor, dynamics: Dynamics, cost: Cost,
                  mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor,
                  hold: Optional[torch.Tensor], limits: torch.Tensor, best_cost: torch.Tensor,
                  best_actions: torch.Tensor, best_pred: Optional[torch.Tensor]):
        """One sampling iteration as tensor operations only (traceable into one ONNX graph).

        mean, std (H, A); noise (N, H, A) standard normal; hold (H, A) or None: a candidate
        always evaluated; limits (5, A) from ``_Constraints.limits``; best_cost (1,),
        best_actions (H, A), best_pred (H, ...) or None: the best candidate so far. Returns the
        refitted (mean, std) and the updated best (cost, actions, predicted).
        """
        samples = mean + std * noise  # (N, H, A)
        fixed = [mean[None]] if hold is None else [mean[None], hold[None]]
        samples = torch.cat(fixed + [samples[len(fixed):]], dim=0)  # mean (and hold) first
        samples = project(samples, limits)  # (N, H, A)
        predicted, costs = _evaluate(self.name, state, samples, dynamics, cost,
                                     int(self.config.action_block))
        i = torch.argmin(costs)  # () lowest cost; ties go to the first (the mean)
        lowest = costs.min().reshape(1)  # (1,)
        best_cost, best_actions, best_pred = _keep_best(
            lowest < best_cost, lowest, samples[i], predicted[i],  # strictly better wins
            best_cost, best_actions, best_pred)
        mean, std = self._refit(mean, std, samples, costs)  # (H, A), (H, A)
        return mean, std, best_cost, best_actions, best_pred

    def search(self, state: torch.Tensor, dynamics: Dynamics, cost: Cost, mean: torch.Tensor,
               std: torch.Tensor, noise: torch.Tensor, hold: Optional[torch.Tensor],
               limits: torch.Tensor):
        """All iterations, then the final mean, as tensor operations only (one ONNX graph).

        noise (I, N, H, A): one standard-normal draw per iteration; the rest as
        :meth:`iteration`. Returns the best (cost (1,), actions (H, A), predicted (H, ...)).
        """
        best_cost = torch.full((1,), float('inf'), device=mean.device, dtype=mean.dtype)  # (1,)
        best_actions, best_pred = mean, None  # (H, A), (H, ...)
        for i in range(noise.shape[0]):
            mean, std, best_cost, best_actions, best_pred = self.iteration(
                state, dynamics, cost, mean, std, noise[i], hold, limits, best_cost,
                best_actions, best_pred)
        # the final mean, evaluated once; it wins a tie (smoother)
        final = project(mean[None], limits)  # (1, H, A)
        predicted, costs = _evaluate(self.name, state, final, dynamics, cost,
                                     int(self.config.action_block))
        return _keep_best(costs[:1] <= best_cost, costs[:1], final[0], predicted[0],
                          best_cost, best_actions, best_pred)

    def plan(self, state: torch.Tensor, dynamics: Dynamics, cost: Cost,
             prev_plan: Optional[torch.Tensor] = None,
             current_action: Optional[torch.Tensor] = None,
             hold_action: Optional[torch.Tensor] = None,
             search: Optional[Callable] = None,
             guide_action: Optional[torch.Tensor] = None,
             starts: Optional[torch.Tensor] = None) -> PlanResult:
        """Plan from ``state``.

        prev_plan: (H, A) previous plan; defaults to the one this planner returned last. Used
        (shifted by one step) as the starting mean when ``warm_start`` and as the fallback.
        current_action: (A,) the command in force now; the first step is rate-limited from it.
        hold_action: (A,) a safe action (stop / stay), always among the candidates and the
        fallback when there is no previous plan.
        guide_action: (A,) a configuration to head for (the goal posture): the path to it at
        the rate limits takes the hold action's place among the fixed candidates (the hold
        action stays the fallback).
        search: runs :meth:`search` elsewhere (an inference backend's graph of it, see
        ``ami_ros.planning.graph``), called as ``search(state, mean, std, noise, hold,
        limits)`` with hold (H, A) (the mean when there is none).
        starts: (K, H, A) other sequences to search from (scripted motions, say): they and the
        usual starting mean are rolled out once, and the search starts from the cheapest
        (multi-start; the torch search only).
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
        # with action blocks, the previous plan advances by a block once per block of plans
        k = int(cfg.action_block)
        shift = 1 if prev_plan is not None or (self._plans_in_block + 1) % k == 0 else 0
        self._plans_in_block = 0 if shift else self._plans_in_block + 1
        prev = _shifted(self._last_plan if prev_plan is None else prev_plan, h, a, dev, dtype,
                        shift)
        warm = bool(cfg.warm_start) and prev is not None
        start = prev if warm else next(v for v in (hold, current, box.centre) if v is not None)
        mean = box.project(start.expand(h, a)[None])[0]  # (H, A)
        std = torch.tensor(cfg.vector('init_std'), device=dev, dtype=dtype).expand(h, a)  # (H, A)
        if starts is not None and len(starts):
            if search is not None:
                raise ValueError(f'{self.name}: starts need the torch search, not a backend graph')
            options = box.project(torch.cat([mean[None], torch.as_tensor(starts).to(
                device=dev, dtype=dtype).reshape(-1, h, a)], dim=0))  # (1 + K, H, A)
            with torch.no_grad():
                costs = _evaluate(self.name, state, options, dynamics, cost, k)[1]  # (1 + K,)
            mean = options[int(torch.argmin(costs))]  # ties: the usual mean
        gen = self._rng(dev)
        noise = torch.randn((iters, n, h, a), generator=gen, device=dev, dtype=dtype)  # (I,N,H,A)
        guide = _vector('guide_action', guide_action, a, dev, dtype)  # (A,) or None
        fixed = guide if guide is not None else hold
        hold_seq = None if fixed is None else fixed.expand(h, a)  # (H, A)
        with torch.no_grad():
            if search is not None:  # the same search, run by an inference backend
                best_cost, best_actions, best_pred = search(
                    state, mean, std, noise, mean if hold_seq is None else hold_seq,
                    box.limits())
            else:
                best_cost, best_actions, best_pred = self.search(
                    state, dynamics, cost, mean, std, noise, hold_seq, box.limits())
        best_cost = best_cost[0]  # ()
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

    def limits(self) -> torch.Tensor:
        """Return the constraints as one (5, A) tensor, what :func:`project` and graphs take.

        Rows: lower, upper, current (0 when none), first-step and later rate limits (inf: none).
        """
        inf = torch.full_like(self.lower, float('inf'))  # (A,)
        delta = inf if self.delta is None else self.delta  # (A,)
        current = torch.zeros_like(self.lower) if self.current is None else self.current
        first = inf if self.current is None else delta  # (A,)
        return torch.stack([self.lower, self.upper, current, first, delta])  # (5, A)

    def project(self, actions: torch.Tensor) -> torch.Tensor:
        """Clamp (N, H, A) sequences into bounds and rate limits (see :func:`project`)."""
        return project(actions, self.limits())


def _keep_best(better, cost, actions, predicted, best_cost, best_actions, best_pred):
    """Return the candidate where ``better`` (1,) holds, else the best so far.

    cost (1,), actions (H, A), predicted (H, ...); best_pred None: no best yet. Tensor
    operations only (graph-traceable).
    """
    best_pred = predicted if best_pred is None else torch.where(better, predicted, best_pred)
    return (torch.where(better, cost, best_cost), torch.where(better, actions, best_actions),
            best_pred)


def project(actions: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Clamp (N, H, A) sequences into bounds and rate limits, step by step in time order.

    limits (5, A): lower, upper, current action, rate limit of the first step (from the current
    action) and of later steps (from the step before); inf disables a limit. Bounds win where
    both cannot hold (a current action outside the bounds).
    """
    lower, upper, current, first, delta = limits.unbind(0)  # (A,) each
    steps, prev, limit = [], current, first  # prev: (A,) then (N, A)
    for t in range(actions.shape[1]):
        step = torch.minimum(torch.maximum(actions[:, t], prev - limit), prev + limit)  # (N, A)
        step = torch.minimum(torch.maximum(step, lower), upper)  # (N, A)
        steps.append(step)
        prev, limit = step, delta
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


def _shifted(prev, h, a, dev, dtype, shift: int = 1) -> Optional[torch.Tensor]:
    """The previous plan advanced ``shift`` (0 or 1) steps, fitted to H; None if unusable.

    The last action is repeated to fill the end.
    """
    if prev is None:
        return None
    p = torch.as_tensor(prev).to(device=dev, dtype=dtype)
    if p.dim() != 2 or p.shape[1] != a or p.shape[0] < 1:
        raise ValueError(f'prev_plan must have shape (H, {a}), got {tuple(p.shape)}')
    if not bool(torch.isfinite(p).all()):
        return None  # a NaN plan is no plan: start afresh
    if shift:
        p = torch.cat([p[1:], p[-1:]], dim=0)  # (H', A) shifted, last repeated
    if p.shape[0] < h:
        p = torch.cat([p, p[-1:].expand(h - p.shape[0], a)], dim=0)  # (H, A)
    return p[:h]  # (H, A)


def _evaluate(name, state, samples, dynamics, cost, block: int = 1):
    """Roll out and score samples (N, H, A); non-finite rollouts or costs score +inf.

    block > 1: each action is held ``block`` steps; the dynamics roll out (N, H * block, A),
    and the states at the end of each block (N, H, ...) are scored and returned.
    """
    n, h = samples.shape[:2]
    steps = samples if block == 1 else samples.repeat_interleave(block, dim=1)  # (N, H*k, A)
    predicted = dynamics(state, steps)  # (N, H*k, ...)
    if not isinstance(predicted, torch.Tensor) or tuple(predicted.shape[:2]) != (n, h * block):
        raise ValueError(f'{name}: dynamics must return (N={n}, H={h * block}, ...) states, got '
                         f'{getattr(predicted, "shape", type(predicted).__name__)}')
    if block > 1:
        predicted = predicted[:, block - 1::block]  # (N, H, ...) the end of each block
    costs = cost(predicted, samples)  # (N,)
    if not isinstance(costs, torch.Tensor) or tuple(costs.shape) != (n,):
        raise ValueError(f'{name}: cost must return shape (N={n},), got '
                         f'{getattr(costs, "shape", type(costs).__name__)}')
    ok = torch.isfinite(costs) & torch.isfinite(predicted.reshape(n, -1)).all(dim=1)  # (N,)
    inf = torch.full_like(samples[:, 0, 0], float('inf'))  # (N,)
    costs = torch.where(ok, costs.to(samples.dtype), inf)  # (N,)
    return predicted, costs  # (N, H, ...), (N,)
