"""Configuration of the closed loop (no ROS import); the loop itself is :mod:`ami_ros.agent`."""
from __future__ import annotations

from ami_ros.control.config import MPCConfig

__all__ = ['MPCConfig']
