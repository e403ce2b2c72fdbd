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
ARM_SCENES = ('arm_reach',)
"""Scenes built from a robot config (any serial arm's URDF, ``ami_ros.robot_config``)."""
EXPERT_SCENES = ('pusht',)
"""Scenes with an expert-like policy (``make_expert``) besides their explorer."""


def make_scene(name: str, config: SceneConfig | None = None, robot=None) -> Scene:
    """Create a scene by name; ``robot``: a robot config (path or shipped name) for an arm scene.

    Example: ``make_scene('arm_reach', SceneConfig(image_size=128), robot='my_arm.yaml')``.
    """
    if name not in SCENES:
        raise ValueError(f'unknown scene {name!r}; choose one of {sorted(SCENES)}')
    module, cls = SCENES[name].split(':')
    scene_cls = getattr(importlib.import_module(module), cls)
    if robot:
        if name not in ARM_SCENES:
            raise ValueError(f'a robot config drives the arm scene {list(ARM_SCENES)}, not '
                             f'scene {name!r}')
        return scene_cls(config, robot=robot)
    return scene_cls(config or SceneConfig())


__all__ = ['ARM_SCENES', 'CommandError', 'EFFORT_SCENES', 'Scene', 'SceneConfig', 'SCENES',
           'make_scene']
