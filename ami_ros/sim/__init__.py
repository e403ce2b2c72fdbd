"""Built-in simulated scenes (no ROS import). Pick one by name with :func:`make_scene`."""
from __future__ import annotations

import importlib

from ami_ros.sim.base import CommandError, Scene, SceneConfig

# scene name -> "module:Class"; modules import lazily (MuJoCo / pymunk load only when used)
SCENES = {
    'arm_reach': 'ami_ros.sim.arm_reach:ArmReachScene',
    'pusht': 'ami_ros.sim.pusht:PushTScene',
    'reacher': 'ami_ros.sim.reacher:ReacherScene',
}
EFFORT_SCENES = ('reacher',)
"""Scenes whose commands are joint efforts (the others take joint positions)."""


def make_scene(name: str, config: SceneConfig | None = None) -> Scene:
    """Create a scene by name.

    Example: ``make_scene('arm_reach', SceneConfig(image_size=128))``.
    """
    if name not in SCENES:
        raise ValueError(f'unknown scene {name!r}; choose one of {sorted(SCENES)}')
    module, cls = SCENES[name].split(':')
    return getattr(importlib.import_module(module), cls)(config or SceneConfig())


__all__ = ['CommandError', 'EFFORT_SCENES', 'Scene', 'SceneConfig', 'SCENES', 'make_scene']
