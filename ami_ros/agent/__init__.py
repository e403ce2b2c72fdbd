"""The closed loop, written once (no ROS import): perceive -> estimate -> control.

* :mod:`ami_ros.agent.perceive` - :class:`Perceiver`: decode, prepare as in training, encode.
* :mod:`ami_ros.agent.estimate` - :class:`Estimator`: the belief filter with the model's k-step
  history, the commands in force, advance-to-stamp.
* :mod:`ami_ros.agent.control` - :class:`Controller`: goal, cost, planner, hold, safety limits.
* :mod:`ami_ros.agent.agent` - :class:`Agent`: the three in one process (eval-plan,
  eval-surprise, bench, the demo's core timing); the ROS nodes run one stage each.
"""
from __future__ import annotations

from ami_ros.agent.agent import Agent
from ami_ros.agent.control import Controller, limits_of
from ami_ros.agent.estimate import Estimator
from ami_ros.agent.perceive import Perceiver, check_image

__all__ = ['Agent', 'Controller', 'Estimator', 'Perceiver', 'check_image', 'limits_of']
