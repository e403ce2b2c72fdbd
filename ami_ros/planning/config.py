"""Configuration shared by the sampling planners (CEM, MPPI); validated where it is made."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

Vector = Union[float, tuple[float, ...]]
"""A scalar applied to every action dimension, or one value per dimension (length A)."""


def _per_dim(name: str, value, action_dim: int, positive: bool) -> tuple[float, ...]:
    """Expand a scalar or a length-A sequence to a tuple of A finite floats, naming bad values."""
    if isinstance(value, (int, float)):
        values = (float(value),) * action_dim
    else:
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError) as err:
            raise ValueError(f'{name} must be a number or a list of {action_dim} numbers, '
                             f'got {value!r}') from err
        if len(values) != action_dim:
            raise ValueError(f'{name} must have action_dim={action_dim} entries, '
                             f'got {len(values)}: {list(values)}')
    for i, v in enumerate(values):
        if math.isnan(v) or (positive and not v > 0.0):
            raise ValueError(f'{name}[{i}] must be {"> 0" if positive else "a number"}, got {v}')
    return values


@dataclass
class PlannerConfig:
    """Settings of a sampling planner over action sequences of shape (horizon, action_dim)."""

    action_dim: int
    """A: number of action dimensions (joints, or linear/angular velocity components)."""
    horizon: int = 5
    """H: number of future control steps the plan covers; actions[0] is sent now."""
    n_samples: int = 300
    """Candidate action sequences rolled out per iteration (one batched dynamics call)."""
    iterations: int = 6
    """Refinements of the sampling distribution per plan."""
    n_elites: int = 30
    """CEM only: lowest-cost samples the next mean and std are fitted to."""
    temperature: float = 0.5
    """MPPI only: softmax temperature in cost units; lower = greedier towards the best sample."""
    init_std: Vector = 0.5
    """Sampling std at the start of each plan (scalar or per action dimension, action units)."""
    min_std: float = 0.05
    """Floor of the refitted std, so the search never collapses to a point."""
    momentum: float = 0.1
    """Weight of the old mean in each update: mean = momentum * old + (1 - momentum) * new."""
    lower: Optional[Vector] = None
    """Lower action bound (scalar or length A); None = unbounded. Samples are clamped to it."""
    upper: Optional[Vector] = None
    """Upper action bound (scalar or length A); None = unbounded."""
    max_delta: Optional[Vector] = None
    """Rate limit: the largest change of an action between consecutive steps, and from the
    caller's ``current_action`` to the first step (scalar or length A); None = no limit."""
    seed: int = 0
    """Seed of the planner's own random generator: equal seeds give equal plans."""
    warm_start: bool = True
    """Start each plan from the previous one shifted by one step (last action repeated)."""
    action_block: int = 1
    """Control steps each planned action is held (the world-model benchmarks' frameskip): the
    H planned actions cover H x action_block steps; the dynamics roll every step out, the cost
    sees the state at the end of each block. A horizon of 5 blocks of 5 looks 25 steps ahead
    for the search cost of 5 actions. Warm starts shift by one block once a block of plans
    (one per control step) has passed."""

    def __post_init__(self):
        if int(self.action_dim) < 1:
            raise ValueError(f'action_dim must be >= 1, got {self.action_dim}')
        if int(self.horizon) < 1:
            raise ValueError(f'horizon must be >= 1, got {self.horizon}')
        if int(self.n_samples) < 2:
            raise ValueError(f'n_samples must be >= 2, got {self.n_samples}')
        if int(self.iterations) < 1:
            raise ValueError(f'iterations must be >= 1, got {self.iterations}')
        if int(self.action_block) < 1:
            raise ValueError(f'action_block must be >= 1, got {self.action_block}')
        if not 1 <= int(self.n_elites) <= int(self.n_samples):
            raise ValueError(f'n_elites must be in [1, n_samples={self.n_samples}], '
                             f'got {self.n_elites}')
        if not float(self.temperature) > 0.0:
            raise ValueError(f'temperature must be > 0, got {self.temperature}')
        if not float(self.min_std) >= 0.0:
            raise ValueError(f'min_std must be >= 0, got {self.min_std}')
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f'momentum must be in [0, 1), got {self.momentum}')
        if isinstance(self.warm_start, str) or not isinstance(self.warm_start, (bool, int)):
            raise ValueError(f'warm_start must be a bool, got {self.warm_start!r}')
        a = int(self.action_dim)
        _per_dim('init_std', self.init_std, a, positive=True)
        lower = _per_dim('lower', self.lower, a, False) if self.lower is not None else None
        upper = _per_dim('upper', self.upper, a, False) if self.upper is not None else None
        if lower is not None and upper is not None:
            for i, (lo, hi) in enumerate(zip(lower, upper)):
                if lo > hi:
                    raise ValueError(f'lower[{i}]={lo} is above upper[{i}]={hi}')
        if self.max_delta is not None:
            _per_dim('max_delta', self.max_delta, a, positive=True)

    def vector(self, name: str) -> Optional[tuple[float, ...]]:
        """The named per-dimension field (init_std, lower, upper, max_delta) as A floats."""
        value = getattr(self, name)
        if value is None:
            return None
        return _per_dim(name, value, int(self.action_dim), positive=False)
