"""Estimate: the belief over the model's state, from the states seen and the commands sent.

A :class:`~ami_ros.estimation.BeliefFilter` whose predictions come from the model's predictor
with its whole history (the last k beliefs, as the model was trained), the commands in force
over time (each step predicts with the command in force at its start), and "advance to a
stamp": predict-only steps up to a frame's stamp before it is fused, or up to the clock's "now"
when frames are missing. No ROS import: the ``world_model`` node and the
:class:`~ami_ros.agent.Agent` both run it.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np
import torch

from ami_ros.estimation import BeliefConfig, BeliefFilter, FilterStep, SurpriseConfig, \
    SurpriseMonitor

COMMANDS_KEPT = 64
"""Commands remembered (for the steps a late frame rolls the belief forward through)."""


class Estimator:
    """The estimate stage around a model with the world model's duck type."""

    def __init__(self, model, config: BeliefConfig,
                 surprise: Optional[SurpriseConfig] = None,
                 device: Optional[torch.device] = None):
        self.model = model
        self.device = torch.device(device) if device is not None else getattr(
            model, 'device', torch.device('cpu'))
        self.k = int(getattr(model, 'history', 1))
        self.monitor = SurpriseMonitor(surprise or SurpriseConfig())
        self._config = config
        self.reset()

    @property
    def config(self) -> BeliefConfig:
        return self._config

    @config.setter
    def config(self, config: BeliefConfig) -> None:
        """New settings (gain, thresholds) for the running filter; ``history`` only on reset."""
        self._config = config
        self.filter.config = config

    def reset(self) -> None:
        """Forget the belief, the commands and the joint states (a new episode)."""
        self.monitor.reset()
        self.filter = self._new_filter(getattr(self.model, 'innovation_scale', None))
        self._commands: deque[tuple[float, np.ndarray]] = deque(maxlen=COMMANDS_KEPT)
        self._measured: Optional[np.ndarray] = None
        self.predicted = 0  # predict-only steps made so far

    def _new_filter(self, innovation_scale) -> BeliefFilter:
        slices = getattr(self.model, 'state_slices', None)
        parts = slices() if callable(slices) else None
        return BeliefFilter(self._config, self._predict, self.monitor, innovation_scale,
                            context=self.k, parts=parts)

    @property
    def dt(self) -> float:
        return float(self._config.dt)

    @property
    def belief(self) -> Optional[torch.Tensor]:
        """(D,) the belief now, None before the first frame."""
        return self.filter.z

    @property
    def stamp(self) -> Optional[float]:
        return self.filter.stamp

    def history(self) -> Optional[torch.Tensor]:
        """(k', D) the last k' <= k beliefs, oldest first (what the planner rolls out from)."""
        zs = self.filter.history(self.k)
        return torch.stack(zs) if zs else None

    # ------------------------------------------------------------------ inputs
    def command(self, action, stamp: float) -> None:
        """The command sent at ``stamp``, in force from then on; ValueError if malformed."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (int(self.model.action_dim),) or not np.isfinite(a).all():
            raise ValueError(f'a command must be {self.model.action_dim} finite numbers, got '
                             f'{a.tolist()}')
        self._commands.append((float(stamp), a))

    def measured(self, joints) -> None:
        """The newest measured joint positions: the command in force before any was sent."""
        q = np.asarray(joints, dtype=np.float64).reshape(-1)
        if np.isfinite(q).all():
            self._measured = q

    @property
    def joints(self) -> Optional[np.ndarray]:
        """The newest measured joint positions, or None."""
        return self._measured

    def action_at(self, t: float) -> Optional[np.ndarray]:
        """Return the command in force at belief time t.

        The last one sent by t + dt/2, else the measured joint positions (a robot that was sent
        nothing holds still), else None.
        """
        for when, action in reversed(self._commands):
            if when <= t + self.dt / 2:
                return action
        if self._measured is not None and self._measured.shape == (int(self.model.action_dim),):
            return self._measured
        return None

    # ------------------------------------------------------------------ steps
    def observe(self, z: Optional[torch.Tensor], stamp: float,
                read: Optional[torch.Tensor] = None) -> FilterStep:
        """Fuse a state observed at ``stamp`` (None: a dropped frame, predict only).

        ``read``: the same state as the camera alone read it (the model's posture reader in
        place of the measured joints), for the ``reading`` surprise channel.

        The belief is first advanced with the commands in force up to the frame's stamp, so
        that the frame is fused with a prediction for its own time; a frame further ahead than
        ``max_advance`` steps restarts the belief, a late one is fused at its stamp and the
        belief rolled forward again.
        """
        f, stamp, done = self.filter, float(stamp), 0
        if f.stamp is not None:
            steps = int(round((stamp - f.stamp) / self.dt))
            if 0 < steps <= int(self._config.max_advance):
                done = self._advance(steps, last=stamp)
        if z is None:
            reason = 'predicted' if done else 'rejected_nan' if f.z is not None else \
                'uninitialized'
            return FilterStep(f.z, f.stamp, reason)
        return f.update(z, stamp, self._reading(z, read))

    def _reading(self, z: torch.Tensor, read: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The camera's reading of the measured part of the state minus the measured values."""
        if read is None or read.shape != z.shape:
            return None
        measured = slice(int(getattr(self.model, 'visual_dim', z.shape[-1])), None)
        diff = (read - z)[..., measured]
        if not diff.numel() or not bool(diff.abs().max() > 0):
            return None  # nothing measured, or the state was not given measured joints
        return diff.detach().cpu()

    def advance_to(self, now: float, max_steps: int) -> int:
        """Predict-only steps up to ``now`` (no frame came); how many were made.

        -1 when ``now`` lies more than ``max_steps`` before the belief (the clock went back,
        e.g. a restarted simulator): the belief is forgotten. Beyond ``max_steps`` ahead
        nothing is extrapolated (frames on another clock): 0.
        """
        if self.filter.stamp is None:
            return 0
        steps = int(math.floor((now - self.filter.stamp) / self.dt + 1e-6))
        if steps < -int(max_steps):
            self.filter = self._new_filter(self.filter.innovation_scale)
            return -1
        if steps > int(max_steps):
            return 0
        return self._advance(steps)

    def _advance(self, steps: int, last: Optional[float] = None) -> int:
        """Predict-only steps with the commands in force; how many were made.

        The last one is stamped ``last``, if given; stops early when no command is known.
        """
        done = 0
        for i in range(max(steps, 0)):
            action = self.action_at(self.filter.stamp)
            if action is None:
                break
            stamp = last if last is not None and i == steps - 1 else None
            self.filter.predict(torch.from_numpy(action), stamp=stamp)
            done += 1
        self.predicted += done
        return done

    def _predict(self, z_hist: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The model's step: (k', D) beliefs (or one (D,)) and action (A,) -> (D,)."""
        z = z_hist.to(device=self.device, dtype=torch.float32)
        z = z[None] if z.dim() == 1 else z  # (k', D)
        a = action.to(device=self.device, dtype=torch.float32).reshape(1, 1, -1)
        return self.model.rollout(z[None], a)[0, 0].to(z_hist.device)
