"""A built-in scene recorded into rosbag2, one bag per episode.

For ``ami-ros collect`` and ``eval-plan --record``. Each control step k at sim time t_k: the
frame, the joint state and the scene's ground truth are logged at t_k, then the command sent
at that step (in force from frame k to frame k+1), so whatever drives the scene (an explorer,
an expert, the planner itself) leaves the bags that ``ami-ros train`` reads, with the topics a
real robot logs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ami_ros.data.bag import BagWriter, BagWriterConfig


def open_episode_bag(path: Path, scene, *, seed: int, control_hz: float, storage: str = 'mcap',
                     extra: dict[str, str] | None = None) -> BagWriter:
    """A :class:`BagWriter` for one episode of ``scene`` (reset with ``seed``) at ``path``.

    Effort scenes log their commands on ros2_control's JointGroupEffortController topic; the
    camera info carries the scene's field of view. ``extra``: more custom metadata.
    """
    fovy = scene.camera_fovy_deg or BagWriterConfig.camera_fovy_deg
    cfg = BagWriterConfig(storage=storage, camera_fovy_deg=fovy)
    if scene.control_mode == 'effort':
        cfg = dataclasses.replace(cfg, command_topic='/forward_effort_controller/commands')
    meta = {'ami_ros.scene': scene.name, 'ami_ros.seed': str(seed),
            'ami_ros.control_hz': str(control_hz),
            'ami_ros.joint_names': ','.join(scene.joint_names), **(extra or {})}
    return BagWriter(path, scene.joint_names, cfg, metadata=meta)


def write_step(writer: BagWriter, stamp_ns: int, frame: np.ndarray, scene) -> None:
    """Log one control step at ``stamp_ns``.

    ``frame`` (rendered before the command), the scene's joint state and ground truth, then
    the command in force (``scene.target``). Call after the step's command is set and before
    the scene steps.
    """
    writer.write_image(stamp_ns, frame)
    writer.write_joint_state(stamp_ns, scene.joint_positions, scene.joint_velocities)
    writer.write_ground_truth(stamp_ns, scene.ground_truth())
    writer.write_command(stamp_ns, scene.target)
