"""Latent-space model-predictive planning: CEM and MPPI over action sequences (no ROS import).

Planners take the dynamics and the cost as callables, so the same planner drives a learned world
model's batched rollout or an analytic system::

    planner = make_planner('cem', PlannerConfig(action_dim=2, lower=-1.0, upper=1.0))
    result = planner.plan(z, dynamics=model.rollout, cost=latent_goal_cost(z_goal))
    send(result.actions[0])
"""
from __future__ import annotations

from ami_ros.planning.base import Cost, Dynamics, PlanResult, SamplingPlanner
from ami_ros.planning.cem import CEMPlanner
from ami_ros.planning.config import PlannerConfig
from ami_ros.planning.cost import latent_goal_cost, probe_goal_cost, sum_costs
from ami_ros.planning.mppi import MPPIPlanner

PLANNERS = {'cem': CEMPlanner, 'mppi': MPPIPlanner}
"""Planners by the name used in configuration files."""


def make_planner(name: str, config: PlannerConfig) -> SamplingPlanner:
    """The planner called ``name`` ('cem' or 'mppi') with ``config``."""
    key = str(name).strip().lower()
    if key not in PLANNERS:
        raise ValueError(f'unknown planner {name!r}; choose one of {sorted(PLANNERS)}')
    if not isinstance(config, PlannerConfig):
        raise TypeError(f'planner config must be a PlannerConfig, got {type(config).__name__}')
    return PLANNERS[key](config)


__all__ = ['PLANNERS', 'CEMPlanner', 'Cost', 'Dynamics', 'MPPIPlanner', 'PlanResult',
           'PlannerConfig', 'SamplingPlanner', 'latent_goal_cost', 'make_planner',
           'probe_goal_cost', 'sum_costs']
