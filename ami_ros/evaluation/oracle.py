"""The simulator as the planner's model: the upper bound of what the planner can do.

:class:`TrueDynamics` rolls every candidate action sequence out in a private copy of the scene
(``set_state`` from the live state, then ``set_target`` + ``step`` per action), and returns the
ground-truth features of every step; the cost is the distance of those features to the goal
state's. Each candidate costs H real simulator steps, so the oracle gets a smaller planning
budget than the world model (see ``eval.oracle`` in ``config/plan_<scene>.yaml``).

With ``observe`` (an encoder, images (M, S, S, 3) uint8 -> latents (M, D)), every step's frame is
rendered and encoded instead: the simulator's dynamics under the *learned* cost. Set against the
oracle (true dynamics, true cost) and the world model (learned dynamics, learned cost), it tells
which of the two learned parts limits planning.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ami_ros.sim import Scene, SceneConfig, make_scene


def state_features(scene: Scene) -> np.ndarray:
    """Ground-truth features whose Euclidean distance the oracle minimises.

    arm_reach: end-effector position (3,), metres. pusht: pusher and block positions in env
    units and the block angle as (cos, sin) x ``pusht.ANGLE_UNITS_PER_RAD`` (6,). reacher:
    (cos, sin) of each joint angle (4,): ~radians for small errors, the shoulder's turn
    wrapped.
    """
    if scene.name == 'arm_reach':
        return scene.ground_truth()['ee_position'].astype(np.float64)
    if scene.name == 'reacher':
        q = scene.joint_positions
        return np.concatenate([np.cos(q), np.sin(q)])
    if scene.name == 'pusht':
        from ami_ros.sim.pusht import ANGLE_UNITS_PER_RAD  # the scene module loads pymunk

        state = scene.get_state()
        angle = ANGLE_UNITS_PER_RAD * np.array([np.cos(state[6]), np.sin(state[6])])
        return np.concatenate([state[[0, 1, 4, 5]], angle])
    raise ValueError(f'oracle: no ground-truth features for scene {scene.name!r}')


class TrueDynamics:
    """``dynamics(state, actions)`` for the planners, backed by a private copy of the scene."""

    def __init__(self, name: str, config: SceneConfig,
                 observe: Optional[Callable[[np.ndarray], torch.Tensor]] = None):
        self.scene = make_scene(name, config)
        self.observe = observe
        self.steps = 0  # simulator steps taken, for the report

    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state: (S,) a ``get_state()`` vector; actions (N, H, A) -> features (N, H, F).

        F = the :func:`state_features`, or the latent size D with ``observe``.
        """
        s = self.scene
        start = state.detach().cpu().double().numpy()
        acts = actions.detach().cpu().double().numpy()  # (N, H, A)
        out = []
        for seq in acts:  # (H, A)
            s.set_state(start)
            feats = []
            for a in seq:
                s.set_target(np.clip(a, s.lower, s.upper))  # float rounding at the bounds
                s.step()
                feats.append(s.render() if self.observe is not None else state_features(s))
            out.append(feats)
        self.steps += acts.shape[0] * acts.shape[1]
        n, h = acts.shape[:2]
        if self.observe is not None:  # (N, H, S, S, 3) frames -> (N, H, D) latents, one batch
            with torch.no_grad():
                z = self.observe(np.asarray(out).reshape(n * h, *out[0][0].shape))
            return torch.as_tensor(z).reshape(n, h, -1).to(actions.dtype)
        return torch.as_tensor(np.asarray(out), dtype=actions.dtype)  # (N, H, F)

    def close(self) -> None:
        self.scene.close()
