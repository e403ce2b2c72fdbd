"""Settings of the agent's closed loop (no ROS import), validated where they are made.

Made from the scene's one config file by :meth:`ami_ros.config.SceneConfig.mpc` (the planner
and world_model blocks); action bounds and the rate limit come from the robot (URDF limits,
velocity limits x control period) through :meth:`MPCConfig.with_limits`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from ami_ros.estimation import BeliefConfig, SurpriseConfig
from ami_ros.planning import PLANNERS, PlannerConfig
from ami_ros.planning.cost import METRICS


@dataclass
class MPCConfig:
    """Settings of :class:`ami_ros.agent.Agent`."""

    planning: PlannerConfig
    """Sampling planner settings; ``action_dim`` must equal the model's."""
    planner: str = 'cem'
    """Planner by name: 'cem' or 'mppi'."""
    metric: str = 'l2'
    """Distance of predicted latents to the goal latent: l1, l2, euclidean or cosine."""
    terminal_weight: float = 1.0
    """Weight of the last predicted step's distance to the goal."""
    running_weight: float = 0.1
    """Weight of every earlier step's distance (> 0 prefers getting there sooner)."""
    smoothness_weight: float = 0.0
    """Weight of the summed squared change between consecutive actions (the first from the
    command in force), in action units squared: damps chatter near the goal (0 = off)."""
    probe_weight: float = 1.0
    """Weight of the pose-goal cost (euclidean distance of the probed quantity, its units)
    added to the image-goal cost when both goals are set."""
    visual_weight: float = 1.0
    """Models with proprioception: weight of the visual latent's distance (``metric``) in the
    image-goal cost."""
    ee_weight: float = 0.0
    """Models with proprioception: weight of the end effector's euclidean distance (metres) to
    the goal's, read from the goal image, in the image-goal cost."""
    command_weight: float = 0.0
    """Models with proprioception and position commands: weight of the distance (metres) of
    the end effector at the *last planned command* to the goal's. Position servos bring the arm
    to rest at the command in force, so this scores where the plan leaves the arm, not only
    where the learned dynamics say it passes (their errors grow with the step size)."""
    joint_weight: float = 0.0
    """Models with proprioception: weight of the joints' euclidean distance (radians) to the
    goal posture read from the goal image (look-alike postures make it a coarse guide)."""
    goal_guide: bool = False
    """Models with proprioception, image goals: the goal posture (inverse kinematics of the
    end effector read from the goal image, started from its joint reading, on the model's
    learned forward kinematics) and the path to it at the rate limits are one of the planner's
    fixed candidates at every tick (``ami_ros.planning.ik``)."""
    belief: BeliefConfig = field(default_factory=BeliefConfig)
    """Belief filter: gain, control period dt, latency handling, reset threshold."""
    surprise: SurpriseConfig = field(default_factory=SurpriseConfig)
    """Surprise monitor of the belief filter's innovations."""
    max_belief_age: Optional[float] = 0.5
    """act() holds position when the belief is older than this (seconds; perception
    stalled); None = no check."""
    speed_fraction: float = 1.0
    """Rate limit derived by ``with_limits``: max_delta = speed_fraction x velocity limit x dt
    (1.0 = the fastest steps the training data's explorer made)."""

    def __post_init__(self):
        if not isinstance(self.planning, PlannerConfig):
            raise ValueError(f'planning must be a PlannerConfig, got '
                             f'{type(self.planning).__name__}')
        if str(self.planner).strip().lower() not in PLANNERS:
            raise ValueError(f'planner must be one of {sorted(PLANNERS)}, got {self.planner!r}')
        if self.metric not in METRICS:
            raise ValueError(f'metric must be one of {list(METRICS)}, got {self.metric!r}')
        for name in ('terminal_weight', 'running_weight', 'probe_weight', 'smoothness_weight',
                     'visual_weight', 'ee_weight', 'joint_weight', 'command_weight'):
            if not 0.0 <= float(getattr(self, name)) < math.inf:
                raise ValueError(f'{name} must be a finite number >= 0, got {getattr(self, name)}')
        if float(self.terminal_weight) + float(self.running_weight) <= 0.0:
            raise ValueError('terminal_weight and running_weight are both 0: no cost')
        if not isinstance(self.belief, BeliefConfig):
            raise ValueError(f'belief must be a BeliefConfig, got {type(self.belief).__name__}')
        if not isinstance(self.surprise, SurpriseConfig):
            raise ValueError(f'surprise must be a SurpriseConfig, got '
                             f'{type(self.surprise).__name__}')
        if not 0.0 < float(self.speed_fraction) <= 10.0:
            raise ValueError(f'speed_fraction must be in (0, 10], got {self.speed_fraction}')
        if self.max_belief_age is not None and not float(self.max_belief_age) > 0.0:
            raise ValueError(f'max_belief_age must be > 0 seconds or None, '
                             f'got {self.max_belief_age}')

    def with_limits(self, lower, upper, velocity_limit=None,
                    dt: Optional[float] = None) -> 'MPCConfig':
        """A copy with the robot's action bounds and rate limit.

        Bounds are [lower, upper] (A,); given the joint velocity limits and the control period
        dt, the rate limit is ``max_delta = speed_fraction * velocity * dt`` (belief.dt is set to
        dt too).
        """
        lower = [float(v) for v in lower]
        upper = [float(v) for v in upper]
        planning = dict(lower=tuple(lower), upper=tuple(upper))
        belief = self.belief
        if velocity_limit is not None:
            if dt is None or not float(dt) > 0.0:
                raise ValueError(f'a rate limit from velocity limits needs dt > 0, got {dt}')
            planning['max_delta'] = tuple(float(self.speed_fraction) * float(v) * float(dt)
                                          for v in velocity_limit)
        if dt is not None:
            belief = dataclasses.replace(belief, dt=float(dt))
        return dataclasses.replace(self, planning=dataclasses.replace(self.planning, **planning),
                                   belief=belief)
