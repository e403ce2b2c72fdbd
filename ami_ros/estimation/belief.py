"""Belief over the latent state: fuse what the model predicts with what the camera sees.

Each control step the belief is rolled forward by the action-conditioned predictor with the
command actually sent (``predict``); each observed latent is fused with the prediction at the
observation's stamp by a constant gain K, ``z = z_pred + K * (z_obs - z_pred)`` (``update``):

- a missing frame is just a predict-only step;
- a late frame (stamped in the past) is fused at its stamp and the belief is rolled forward
  again through the commands sent since (a short history of steps is kept);
- a frame stamped ahead of the belief first advances the belief with the command in force;
- a NaN frame is rejected, the belief keeps predicting;
- an observation whose surprise exceeds ``gate_threshold`` is not fused (innovation gating, as
  Kalman filters reject outliers): an occluded or corrupt frame does not drag the belief, and
  the next frames are still compared with the model's prediction; after ``gate_max_frames``
  gated observations in a row the world really changed, and the belief resets to the
  observation (reset on divergence);
- when the surprise of an observation exceeds ``reset_threshold`` the belief resets to it.

K is tuned on logs by ``fit_gain``: per-dimension process noise Q and observation noise R are
estimated from the autocovariance of one-step residuals, giving the steady-state Kalman gain
K = P / (P + R), then refined by a line search on the one-step prediction error of the filter.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from ami_ros.estimation.surprise import SurpriseMonitor

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(z, action) -> z_next``: one control step of the model for one latent."""


@dataclass
class BeliefConfig:
    """Settings of a ``BeliefFilter``."""

    gain: Union[float, tuple[float, ...]] = 0.5
    """K in [0, 1]: weight of the observation (0 = trust the model, 1 = trust the camera);
    a scalar or one value per latent dimension (last axis), e.g. from ``fit_gain``."""
    dt: float = 0.1
    """Control period in seconds: one predict step advances the belief stamp by dt."""
    stamp_tolerance: Optional[float] = None
    """Largest |observation stamp - step stamp| to fuse an observation at that step, seconds;
    None = dt / 2."""
    history: int = 20
    """Steps kept for latency compensation: observations older than that are rejected."""
    max_advance: int = 10
    """Steps an observation stamped ahead of the belief may advance it with the command in
    force; further ahead, the belief resets to the observation."""
    reset_threshold: Optional[float] = None
    """Surprise score above which the belief resets to the observation (needs a monitor);
    None = never reset."""
    gate_threshold: Optional[float] = None
    """Surprise score above which an observation is not fused, the belief keeps the model's
    prediction (needs a monitor); None = fuse every observation."""
    gate_max_frames: int = 5
    """Observations gated in a row after which the next gated one resets the belief to it."""

    def __post_init__(self):
        gains = (self.gain,) if isinstance(self.gain, (int, float)) else tuple(self.gain)
        if not gains:
            raise ValueError('gain must be a number or a non-empty list of numbers')
        for i, g in enumerate(gains):
            if not 0.0 <= float(g) <= 1.0:
                raise ValueError(f'gain[{i}] must be in [0, 1], got {g}')
        if not 0.0 < float(self.dt) < math.inf:
            raise ValueError(f'dt must be > 0 seconds, got {self.dt}')
        if self.stamp_tolerance is not None and not 0.0 < float(self.stamp_tolerance) < math.inf:
            raise ValueError(f'stamp_tolerance must be > 0 seconds or None, '
                             f'got {self.stamp_tolerance}')
        if int(self.history) < 1:
            raise ValueError(f'history must be >= 1, got {self.history}')
        if int(self.max_advance) < 0:
            raise ValueError(f'max_advance must be >= 0, got {self.max_advance}')
        if self.reset_threshold is not None and not float(self.reset_threshold) > 0.0:
            raise ValueError(f'reset_threshold must be > 0 or None, got {self.reset_threshold}')
        if self.gate_threshold is not None and not float(self.gate_threshold) > 0.0:
            raise ValueError(f'gate_threshold must be > 0 or None, got {self.gate_threshold}')
        if int(self.gate_max_frames) < 0:
            raise ValueError(f'gate_max_frames must be >= 0, got {self.gate_max_frames}')

    @property
    def tolerance(self) -> float:
        return float(self.dt) / 2 if self.stamp_tolerance is None else float(self.stamp_tolerance)


@dataclass
class FilterStep:
    """What one ``predict`` or ``update`` did."""

    z: Optional[torch.Tensor]
    """The belief now (latest stamp); None before the first observation."""
    stamp: Optional[float]
    """Stamp of the belief, seconds."""
    reason: str
    """'init', 'fused', 'late', 'gated', 'reset', 'reset_stale', 'predicted', 'nan_prediction',
    'rejected_nan', 'rejected_old', 'uninitialized'."""
    error: Optional[float] = None
    """RMS of the innovation z_obs - z_pred at the observation's stamp (fused observations), per
    dimension in units of the model's typical one-step error when it has measured them."""
    surprise: Optional[float] = None
    """Surprise score of that error, when the filter has a monitor."""
    lag_steps: int = 0
    """Steps rolled forward again after fusing a late observation."""
    innovation: Optional[torch.Tensor] = None
    """(D,) the innovation itself, in the units of ``error`` (fused observations)."""
    channels: Optional[dict] = None
    """The errors by channel (``all``, each part of the state, ``reading``) the score came from."""


@dataclass
class _Step:
    stamp: float
    prior: torch.Tensor            # predicted latent at this stamp
    post: torch.Tensor             # belief at this stamp (prior fused with obs)
    obs: Optional[torch.Tensor] = None
    reset: bool = False            # post was reset to obs
    action: Optional[torch.Tensor] = None  # command from this step to the next


class BeliefFilter:
    """Constant-gain latent filter with predict-only steps and latency compensation."""

    def __init__(self, config: BeliefConfig, predict: Predict,
                 surprise: Optional[SurpriseMonitor] = None,
                 innovation_scale: Optional[torch.Tensor] = None, context: int = 1,
                 parts: Optional[Mapping[str, slice]] = None):
        """Make a filter; ``context`` k is the predictor's history.

        With k > 1 ``predict`` receives the last k' <= k beliefs stacked (k', ...), newest last
        (:meth:`history`), not one latent. ``parts``: where each part of the state lies (e.g.
        ``visual``, ``joints``, ``ee``); each gets its own error channel for the monitor.
        """
        self.parts = dict(parts or {})
        self.predict_fn = predict
        self.context = int(context)
        if self.context < 1:
            raise ValueError(f'context must be >= 1, got {context}')
        self.surprise = surprise
        # (D,) typical one-step error per dimension: innovations are measured in these units
        self.innovation_scale = None if innovation_scale is None else \
            torch.as_tensor(innovation_scale, dtype=torch.float64).detach().cpu()
        self.config = config
        self._steps: deque[_Step] = deque(maxlen=int(config.history))
        self._gated = 0  # observations gated in a row

    @property
    def config(self) -> BeliefConfig:
        return self._config

    @config.setter
    def config(self, config: BeliefConfig) -> None:
        """Take new settings (the gain with them); ``history`` only applies to a new filter."""
        for name in ('reset_threshold', 'gate_threshold'):
            if getattr(config, name) is not None and self.surprise is None:
                raise ValueError(f'{name} is set but no SurpriseMonitor was given')
        self._config = config
        self._gain = torch.as_tensor(config.gain, dtype=torch.float64)  # () or (D,)

    @property
    def z(self) -> Optional[torch.Tensor]:
        return self._steps[-1].post if self._steps else None

    @property
    def stamp(self) -> Optional[float]:
        return self._steps[-1].stamp if self._steps else None

    def history(self, k: int) -> list[torch.Tensor]:
        """Return the last ``k`` beliefs (one per control step, oldest first) since the reset.

        What a predictor with a k-step history predicts from; empty before the first
        observation.
        """
        out: list[torch.Tensor] = []
        for step in reversed(self._steps):
            if len(out) == int(k):
                break
            out.append(step.post)
            if step.reset:
                break
        return out[::-1]

    def reset(self, z: torch.Tensor, stamp: float) -> FilterStep:
        """Start again from an observed latent."""
        z = self._checked(z, 'reset latent')
        if z is None:
            raise ValueError('cannot reset the belief to a latent with NaN/inf')
        self._steps.clear()
        self._gated = 0
        self._steps.append(_Step(float(stamp), z, z, obs=z, reset=True))
        return FilterStep(z, float(stamp), 'init')

    def predict(self, action: torch.Tensor, stamp: Optional[float] = None) -> FilterStep:
        """Advance the belief one control step with the command sent (in force from now)."""
        if not self._steps:
            return FilterStep(None, None, 'uninitialized')
        last = self._steps[-1]
        new_stamp = last.stamp + float(self.config.dt) if stamp is None else float(stamp)
        if not new_stamp > last.stamp:
            raise ValueError(f'predict stamp {new_stamp} is not after the belief stamp '
                             f'{last.stamp}')
        a = torch.as_tensor(action).to(device=last.post.device, dtype=last.post.dtype)
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f'belief predict: action contains NaN/inf: {a.tolist()}')
        last.action = a
        prior, ok = self._step_model(len(self._steps) - 1, a)
        self._steps.append(_Step(new_stamp, prior, prior))
        return FilterStep(prior, new_stamp, 'predicted' if ok else 'nan_prediction')

    def update(self, z_obs: torch.Tensor, stamp: float,
               reading: Optional[torch.Tensor] = None) -> FilterStep:
        """Fuse an observed latent taken at ``stamp`` (seconds).

        ``reading``: what the camera read of the measured part of the state, minus what was
        measured (the ``reading`` error channel), if known.
        """
        stamp = float(stamp)
        obs = self._checked(z_obs, 'observed latent')
        if obs is None:
            return FilterStep(self.z, self.stamp, 'rejected_nan')
        if not self._steps:
            return self.reset(obs, stamp)
        tol, dt = self.config.tolerance, float(self.config.dt)
        if stamp > self.stamp + tol:  # ahead of the belief: advance with the command in force
            n = int(round((stamp - self.stamp) / dt))
            action = self._steps[-2].action if len(self._steps) > 1 else None
            if n > int(self.config.max_advance) or action is None:
                step = self.reset(obs, stamp)
                return FilterStep(step.z, stamp, 'reset_stale')
            for _ in range(max(n, 1)):
                self.predict(action, stamp=self.stamp + dt)
        k = min(range(len(self._steps)), key=lambda i: abs(self._steps[i].stamp - stamp))
        if abs(self._steps[k].stamp - stamp) > tol:
            return FilterStep(self.z, self.stamp, 'rejected_old')
        step = self._steps[k]
        innovation = (obs - step.prior).double()
        if self.innovation_scale is not None and \
                innovation.shape[-1:] == self.innovation_scale.shape:
            innovation = innovation / self.innovation_scale.to(innovation.device)
        error = float(innovation.pow(2).mean().sqrt())
        errors = {'all': error, **{name: float(innovation[..., part].pow(2).mean().sqrt())
                                   for name, part in self.parts.items()}}
        if reading is not None:
            errors['reading'] = float(torch.as_tensor(reading).double().pow(2).mean().sqrt())
        score = self.surprise.update(errors) if self.surprise is not None else None
        threshold, gate = self.config.reset_threshold, self.config.gate_threshold
        reset = threshold is not None and score > float(threshold)
        gated = not reset and gate is not None and score > float(gate)
        if gated and self._gated >= int(self.config.gate_max_frames):
            gated, reset = False, True  # diverged: the world is not what the model predicts
        self._gated = self._gated + 1 if gated else 0
        step.obs, step.reset = (None if gated else obs), reset
        step.post = step.prior if gated else self._fuse(step.prior, obs, reset)
        lag = len(self._steps) - 1 - k
        for i in range(k + 1, len(self._steps)):  # roll forward through the commands since
            prev, cur = self._steps[i - 1], self._steps[i]
            cur.prior, _ = self._step_model(i - 1, prev.action)
            cur.post = cur.prior if cur.obs is None else self._fuse(cur.prior, cur.obs, cur.reset)
        reason = 'reset' if reset else 'gated' if gated else ('late' if lag else 'fused')
        return FilterStep(self.z, self.stamp, reason, error, score, lag, innovation, errors)

    def _fuse(self, prior: torch.Tensor, obs: torch.Tensor, reset: bool) -> torch.Tensor:
        if reset:
            return obs
        k = self._gain.to(device=prior.device, dtype=prior.dtype)  # () or (D,)
        return prior + k * (obs - prior)

    def _step_model(self, index: int, action: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """One model step from the belief at step ``index`` and the k - 1 before it.

        Only beliefs since the last reset count; a non-finite prediction holds the belief.
        """
        z = self._steps[index].post
        if self.context > 1:
            steps = list(self._steps)[:index + 1]
            start = max(len(steps) - self.context, 0)
            resets = [i for i in range(start, len(steps)) if steps[i].reset]
            start = resets[-1] if resets else start
            z_in = torch.stack([s.post for s in steps[start:]])  # (k', ...)
        else:
            z_in = z
        with torch.no_grad():
            nxt = self.predict_fn(z_in, action)
        if tuple(nxt.shape) != tuple(z.shape):
            raise ValueError(f'predict returned shape {tuple(nxt.shape)} for a latent of shape '
                             f'{tuple(z.shape)}')
        if not bool(torch.isfinite(nxt).all()):
            return z, False
        return nxt.to(z.dtype), True

    def _checked(self, z, what: str) -> Optional[torch.Tensor]:
        """The latent as a tensor of the belief's shape, or None if it has NaN/inf."""
        z = torch.as_tensor(z)
        if not z.is_floating_point():
            z = z.float()
        if self._steps and tuple(z.shape) != tuple(self._steps[-1].post.shape):
            raise ValueError(f'{what} has shape {tuple(z.shape)}, the belief '
                             f'{tuple(self._steps[-1].post.shape)}')
        if self._gain.dim() == 1 and (z.dim() == 0 or z.shape[-1] != self._gain.numel()):
            raise ValueError(f'{what} has last dimension {tuple(z.shape)[-1:]}, the per-dim '
                             f'gain {self._gain.numel()}')
        return z.detach().clone() if bool(torch.isfinite(z).all()) else None


@dataclass
class GainFit:
    """Result of ``fit_gain`` (all per latent dimension, the last axis)."""

    gain: tuple[float, ...]
    """Steady-state gain K per dimension, in [0, 1]."""
    process_var: tuple[float, ...]
    """Q: variance of what the model cannot predict from one step to the next."""
    observation_var: tuple[float, ...]
    """R: variance of the observation noise."""
    one_step_rmse: float
    """RMS one-step prediction error of the filter with ``gain`` on the logs."""
    observation_only_rmse: float
    """The same error predicting from the raw observations (K = 1), for comparison."""


def fit_gain(observed_seq, actions_seq, predict: Predict, refine: bool = True) -> GainFit:
    """Tune the per-dimension gain on logs.

    observed_seq: (T, ..., D) observed latents, or a list of such episodes.
    actions_seq: (T, A) with actions[t] in force from observation t to t+1, or a list.
    Residuals e_t = z_{t+1} - predict(z_t, a_t) of the model on noisy observations have, per
    dimension and for a model whose Jacobian is near identity, variance Q + 2R and lag-1
    autocovariance -R. That gives R and Q, and the steady-state prior variance
    P = Q/2 + sqrt(Q^2/4 + Q R), K = P / (P + R). ``refine`` then scales K by the factor in
    a small grid that minimises the filter's one-step prediction error on the same logs.
    """
    episodes = _episodes(observed_seq, actions_seq)
    with torch.no_grad():
        return _fit(episodes, predict, refine)


def _fit(episodes, predict: Predict, refine: bool) -> GainFit:
    c0 = c1 = 0.0
    n0 = n1 = 0
    for z, a in episodes:
        e = torch.stack([z[t + 1] - predict(z[t], a[t]) for t in range(len(z) - 1)]).double()
        e = e.reshape(e.shape[0], -1, e.shape[-1])  # (T-1, tokens, D)
        e = e - e.mean(dim=(0, 1))  # model bias is not noise
        c0 = c0 + e.pow(2).sum(dim=(0, 1))  # (D,)
        c1 = c1 + (e[1:] * e[:-1]).sum(dim=(0, 1))  # (D,)
        n0 += e.shape[0] * e.shape[1]
        n1 += (e.shape[0] - 1) * e.shape[1]
    var, cov1 = c0 / n0, c1 / n1  # (D,), (D,)
    r = (-cov1).clamp_min(0.0)  # (D,)
    q = (var - 2 * r).clamp_min(1e-6 * float(var.mean()) + 1e-20)  # (D,)
    p = q / 2 + (q.pow(2) / 4 + q * r).sqrt()  # (D,)
    gain = (p / (p + r)).clamp(0.0, 1.0)  # (D,)
    factors = (1.0, 0.5, 0.7, 1.4, 2.0) if refine else (1.0,)
    scored = []
    for factor in factors:  # the Kalman gain first: it wins ties
        cand = (gain * factor).clamp(0.0, 1.0)  # (D,)
        scored.append((_one_step_rmse(episodes, predict, cand), len(scored), cand))
    best, _, gain = min(scored, key=lambda s: s[:2])
    return GainFit(tuple(gain.tolist()), tuple(q.tolist()), tuple(r.tolist()), best,
                   _one_step_rmse(episodes, predict, torch.ones_like(gain)))


def _episodes(observed_seq, actions_seq) -> list[tuple[torch.Tensor, torch.Tensor]]:
    obs = [observed_seq] if isinstance(observed_seq, torch.Tensor) else list(observed_seq)
    act = [actions_seq] if isinstance(actions_seq, torch.Tensor) else list(actions_seq)
    if len(obs) != len(act):
        raise ValueError(f'fit_gain: {len(obs)} observation episodes but {len(act)} action ones')
    out = []
    for i, (z, a) in enumerate(zip(obs, act)):
        z, a = torch.as_tensor(z), torch.as_tensor(a)
        if z.dim() < 2 or len(z) < 3 or len(a) != len(z):
            raise ValueError(f'fit_gain episode {i}: observations {tuple(z.shape)} must be '
                             f'(T >= 3, ..., D) with one action per step; actions are '
                             f'{tuple(a.shape)}')
        if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(a).all())):
            raise ValueError(f'fit_gain episode {i} contains NaN/inf')
        out.append((z, a))
    return out


def _one_step_rmse(episodes: Sequence, predict: Predict, gain: torch.Tensor) -> float:
    """RMS of z_{t+1} - predict(belief_t, a_t) running the filter with ``gain`` over the logs."""
    total, count = 0.0, 0
    with torch.no_grad():
        for z, a in episodes:
            k = gain.to(z.dtype)
            belief = z[0]
            for t in range(len(z) - 1):
                prior = predict(belief, a[t])
                total += float((z[t + 1] - prior).double().pow(2).sum())
                count += z[t + 1].numel()
                belief = prior + k * (z[t + 1] - prior)
    return math.sqrt(total / max(count, 1))
