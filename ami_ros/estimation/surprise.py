"""Surprise: how far the world diverged from the model's prediction, in units of the usual error.

``score = error / scale``, where ``scale`` is the typical one-step prediction error: calibrated
on normal logs (``calibrate``) or, until then, the running median (or mean) of recent errors. A
score above ``threshold`` (a high quantile of scores on normal data, times a margin) flags an
anomaly: a collision, someone moving the object, a camera knocked.

An error may come in **channels** (a dict: the visual part of the innovation, the joints, the
end effector, the camera's reading of the joints against the encoders'): each channel has its
own typical error and the score is the largest of the channel scores, so an anomaly that shows
in one part of the state is not averaged away by the others. ``SurpriseConfig.channels`` picks
the channels scored; a plain number is the channel ``all``.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import torch

_TINY = 1e-12  # floor of the scale so a run of zero errors cannot divide by zero


@dataclass
class SurpriseConfig:
    """Settings of a ``SurpriseMonitor``."""

    window: int = 100
    """Recent errors kept for the running scale (used while no calibrated scale is set)."""
    min_count: int = 10
    """Errors needed before the running scale is trusted; the score is 0 until then."""
    statistic: str = 'median'
    """Typical error: 'median' (robust to the anomalies themselves) or 'mean'."""
    quantile: float = 0.99
    """Calibration: the threshold is this quantile of the scores on normal data..."""
    margin: float = 1.5
    """...times this margin (> 1 leaves room for data a little off the calibration logs)."""
    threshold: float = 4.0
    """Score above which an error is surprising, until ``calibrate`` sets a new one."""
    scale: Optional[float] = None
    """Fixed typical error of the ``all`` channel (e.g. from an earlier calibration); None =
    running statistic."""
    channels: tuple = ()
    """Channels scored, each against its own typical error (the score is the largest): names
    of the errors the belief filter reports (``all``, ``visual``, ``joints``, ``ee``,
    ``reading``). Empty: ``all`` only (the RMS innovation over the whole state)."""

    def __post_init__(self):
        if int(self.window) < 1:
            raise ValueError(f'window must be >= 1, got {self.window}')
        if not 1 <= int(self.min_count) <= int(self.window):
            raise ValueError(f'min_count must be in [1, window={self.window}], '
                             f'got {self.min_count}')
        if self.statistic not in ('median', 'mean'):
            raise ValueError(f"statistic must be 'median' or 'mean', got {self.statistic!r}")
        if not 0.0 < float(self.quantile) <= 1.0:
            raise ValueError(f'quantile must be in (0, 1], got {self.quantile}')
        if not float(self.margin) >= 1.0:
            raise ValueError(f'margin must be >= 1, got {self.margin}')
        if not float(self.threshold) > 0.0 or math.isinf(float(self.threshold)):
            raise ValueError(f'threshold must be a finite number > 0, got {self.threshold}')
        if self.scale is not None and not 0.0 < float(self.scale) < math.inf:
            raise ValueError(f'scale must be a finite number > 0 or None, got {self.scale}')
        self.channels = tuple(str(c) for c in self.channels)
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad:
            raise ValueError(f'surprise channels {bad} unknown; choose from {list(CHANNELS)}')

    @property
    def scored(self) -> tuple:
        """The names of the channels that are scored; ``all`` alone when none are named."""
        return self.channels or ('all',)


CHANNELS = ('all', 'visual', 'joints', 'ee', 'reading')
"""Errors the belief filter can report: the RMS innovation over the whole state and over each
part of it, and ``reading``: the camera's reading of the joints and end effector (the model's
posture reader) against the measured joint states, RMS over those dimensions."""

Errors = Union[float, Mapping[str, float]]


class SurpriseMonitor:
    """Turns a stream of prediction errors into normalised surprise scores."""

    def __init__(self, config: Optional[SurpriseConfig] = None):
        self.config = config if config is not None else SurpriseConfig()
        self.scales: dict[str, float] = {}
        if self.config.scale is not None:
            self.scales['all'] = float(self.config.scale)
        self.threshold = float(self.config.threshold)
        self.score = 0.0
        self.channel_scores: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {
            c: deque(maxlen=int(self.config.window)) for c in self.config.scored}

    @property
    def scale(self) -> Optional[float]:
        """The calibrated typical error of the first channel scored (None: not calibrated)."""
        return self.scales.get(self.config.scored[0])

    @property
    def flagged(self) -> bool:
        """Whether the last score was above the threshold."""
        return self.score > self.threshold

    def typical_error(self, channel: Optional[str] = None) -> Optional[float]:
        """The scale in use: calibrated, else the running statistic; None while too few errors."""
        channel = channel or self.config.scored[0]
        if channel in self.scales:
            return self.scales[channel]
        recent = self._recent[channel]
        if len(recent) < int(self.config.min_count):
            return None
        return _statistic(torch.tensor(list(recent), dtype=torch.float64),
                          self.config.statistic)

    def _errors(self, error: Errors) -> dict[str, float]:
        """The scored channels' errors, each a finite number >= 0 (ValueError otherwise)."""
        errors = error if isinstance(error, Mapping) else {'all': error}
        out = {c: float(errors[c]) for c in self.config.scored if c in errors}
        if not out:  # a channel missing now and then (no reading without a reader) is skipped
            raise ValueError(f'surprise: no error for any of the channels '
                             f'{list(self.config.scored)} (have {sorted(errors)})')
        for c, e in out.items():
            if not (e >= 0.0 and math.isfinite(e)):
                raise ValueError(f'surprise: prediction error ({c}) must be a finite number '
                                 f'>= 0, got {e}')
        return out

    def update(self, error: Errors) -> float:
        """Score one prediction error (a number, or one per channel) and return the score.

        The score is 0 while warming up. The error joins the running window after it is scored,
        so a jump is measured against the errors before it.
        """
        errors = self._errors(error)
        scores = {}
        for c, e in errors.items():
            scale = self.typical_error(c)
            scores[c] = 0.0 if scale is None else e / max(scale, _TINY)
            self._recent[c].append(e)
        self.channel_scores = scores
        self.score = max(scores.values())
        return self.score

    def calibrate(self, errors) -> tuple[float, float]:
        """Set the scales and threshold from one-step errors on normal data.

        ``errors``: a sequence of numbers (the ``all`` channel), or of per-channel dicts.
        Returns (typical error of the first channel scored, threshold).
        """
        rows = [self._errors(r) for r in (errors.reshape(-1) if isinstance(
            errors, torch.Tensor) else errors)]
        if len(rows) < int(self.config.min_count):
            raise ValueError(f'surprise calibration needs at least min_count='
                             f'{self.config.min_count} errors, got {len(rows)}')
        scales = {}
        for c in self.config.scored:
            values = torch.tensor([r[c] for r in rows if c in r], dtype=torch.float64)
            if values.numel():
                scales[c] = _statistic(values, self.config.statistic)
                if not scales[c] > 0.0:
                    raise ValueError(f'surprise calibration: typical error ({c}) is '
                                     f'{scales[c]}; errors all zero?')
        scores = torch.tensor([max(e / scales[c] for c, e in r.items()) for r in rows],
                              dtype=torch.float64)
        self.scales = scales
        self.threshold = float(torch.quantile(scores, float(self.config.quantile))) * \
            float(self.config.margin)
        return self.scale, self.threshold

    def reset(self) -> None:
        """Forget recent errors (not the calibration)."""
        for recent in self._recent.values():
            recent.clear()
        self.score = 0.0
        self.channel_scores = {}


def _statistic(values: torch.Tensor, statistic: str) -> float:
    return float(values.median() if statistic == 'median' else values.mean())
