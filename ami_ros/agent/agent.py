"""The agent: perceive -> estimate -> control in one process, the closed loop written once.

``observe`` perceives a camera frame (prepared as in training, encoded, joints put in the
state) and estimates (advance the belief to the frame's stamp with the commands in force, fuse);
``act`` controls (plan from the last k beliefs towards the goal, through the safety limits).
eval-plan, eval-surprise, ``ami-ros bench`` and the demo's core timing run this class; the ROS
nodes run the same three stages, one per node (a parity test holds them to it).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ami_ros.agent.control import Controller
from ami_ros.agent.estimate import Estimator
from ami_ros.agent.perceive import Perceiver, check_image
from ami_ros.control.config import MPCConfig
from ami_ros.estimation import FilterStep
from ami_ros.safety import Limits


class Agent:
    """Perceiver + Estimator + Controller around one model (world-model duck type)."""

    def __init__(self, model, config: MPCConfig, device: Optional[torch.device] = None,
                 limits: Optional[Limits] = None, position: bool = True):
        self.model, self.config = model, config
        self.controller = Controller(model, config, limits, device=device, position=position)
        self.device = self.controller.device
        self.perceiver = Perceiver(model, self.device)
        self.estimator = Estimator(model, config.belief, config.surprise, self.device)

    @property
    def monitor(self):
        return self.estimator.monitor

    @property
    def belief(self) -> Optional[torch.Tensor]:
        return self.estimator.belief

    @property
    def has_goal(self) -> bool:
        return self.controller.has_goal

    def reset(self) -> None:
        """Forget belief, plan and last command (new episode); the goal stays."""
        self.controller.reset()
        self.estimator.reset()

    def set_goal_image(self, image, joints=None) -> None:
        """Goal image (H, W, 3), prepared and encoded like camera frames; ValueError if bad.

        ``joints`` (J,): the goal's joint positions, for a model with proprioception (None:
        its reader reads them from the image).
        """
        a = check_image(image, 'goal image')
        if not np.isfinite(a).all():
            raise ValueError('goal image contains NaN/inf pixels')
        self.controller.set_goal_state(self.perceiver.encode(a, joints))

    def set_goal_pose(self, name: str, value) -> None:
        self.controller.set_goal_pose(name, value)

    def clear_goal(self) -> None:
        self.controller.clear_goal()

    def observe(self, image, stamp: float, executed_action=None, joints=None) -> FilterStep:
        """Fuse a camera frame taken at ``stamp`` (seconds) into the belief.

        ``executed_action`` (A,): the command in force since the previous frame, as executed.
        ``joints`` (J,): the joint positions measured with the frame. ``image=None`` (a dropped
        frame) only predicts; a frame with NaN is not fused; a malformed one raises ValueError.
        """
        read = None if image is None else self.perceiver.encode(check_image(image))
        z = read if read is None or joints is None else self.perceiver.with_joints(read, joints)
        if executed_action is not None:
            try:
                self.controller.set_command(executed_action)
            except ValueError as exc:
                raise ValueError(f'executed_action: {exc}') from None
            since = self.estimator.stamp
            self.estimator.command(executed_action, float(stamp) if since is None else since)
        step = self.estimator.observe(z, stamp, read)
        if joints is not None:  # after the step: it predicted with what was known before
            self.estimator.measured(joints)
        if z is None and image is not None and step.reason == 'uninitialized':
            return FilterStep(step.z, step.stamp, 'rejected_nan')
        return step

    def act(self, joint_positions, stamp: Optional[float] = None) -> tuple[np.ndarray, dict]:
        """Plan from the belief: (command (A,), info) as :meth:`Controller.act`.

        The command is in force from ``stamp`` (default: the belief's) on.
        """
        est = self.estimator
        age = None if stamp is None or est.stamp is None else float(stamp) - est.stamp
        seq, info = self.controller.act(est.history(), joint_positions, age)
        when = stamp if stamp is not None else est.stamp
        if when is not None:
            est.command(seq[0], when)
        return seq[0], info
