"""Closed-loop control in latent space (no ROS import): the MPC agent and its configuration."""
from __future__ import annotations

from ami_ros.control.config import MPCConfig, load_mpc_config
from ami_ros.control.mpc import LatentMPC, check_image

__all__ = ['LatentMPC', 'MPCConfig', 'check_image', 'load_mpc_config']
