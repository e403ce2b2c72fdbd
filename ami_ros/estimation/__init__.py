"""State estimation in latent space: a belief filter and a surprise monitor (no ROS import)."""
from __future__ import annotations

from ami_ros.estimation.belief import (BeliefConfig, BeliefFilter, FilterStep, GainFit,
                                       fit_gain)
from ami_ros.estimation.surprise import SurpriseConfig, SurpriseMonitor

__all__ = ['BeliefConfig', 'BeliefFilter', 'FilterStep', 'GainFit', 'SurpriseConfig',
           'SurpriseMonitor', 'fit_gain']
