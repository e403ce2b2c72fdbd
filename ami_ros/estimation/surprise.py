"""Surprise: how far the world diverged from the model's prediction, in units of the usual error.

``score = error / scale``, where ``scale`` is the typical one-step prediction error: calibrated
on normal logs (``calibrate``) or, until then, the running median (or mean) of recent errors. A
score above ``threshold`` (a high quantile of scores on normal data, times a margin) flags an
anomaly: a collision, someone moving the object, a camera knocked.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

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
    """Fixed typical error (e.g. from an earlier calibration); None = running statistic."""

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


class SurpriseMonitor:
    """Turns a stream of prediction errors into normalised surprise scores."""

    def __init__(self, config: Optional[SurpriseConfig] = None):
        self.config = config if config is not None else SurpriseConfig()
        self.scale: Optional[float] = (None if self.config.scale is None
                                       else float(self.config.scale))
        self.threshold = float(self.config.threshold)
        self.score = 0.0
        self._recent: deque[float] = deque(maxlen=int(self.config.window))

    @property
    def flagged(self) -> bool:
        """Whether the last score was above the threshold."""
        return self.score > self.threshold

    def typical_error(self) -> Optional[float]:
        """The scale in use: calibrated, else the running statistic; None while too few errors."""
        if self.scale is not None:
            return self.scale
        if len(self._recent) < int(self.config.min_count):
            return None
        return _statistic(torch.tensor(list(self._recent), dtype=torch.float64),
                          self.config.statistic)

    def update(self, error) -> float:
        """Score one prediction error (a finite number >= 0) and return the score.

        The score is 0 while warming up. The error joins the running window after it is scored,
        so a jump is measured against the errors before it.
        """
        e = float(error)
        if not (e >= 0.0 and math.isfinite(e)):
            raise ValueError(f'surprise: prediction error must be a finite number >= 0, got {e}')
        scale = self.typical_error()
        self.score = 0.0 if scale is None else e / max(scale, _TINY)
        self._recent.append(e)
        return self.score

    def calibrate(self, errors) -> tuple[float, float]:
        """Set the scale and threshold from one-step errors on normal data; returns both."""
        e = torch.as_tensor(errors, dtype=torch.float64).reshape(-1)
        if e.numel() < int(self.config.min_count):
            raise ValueError(f'surprise calibration needs at least min_count='
                             f'{self.config.min_count} errors, got {e.numel()}')
        if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
            raise ValueError('surprise calibration errors must be finite and >= 0')
        scale = _statistic(e, self.config.statistic)
        if not scale > 0.0:
            raise ValueError(f'surprise calibration: typical error is {scale}; errors all zero?')
        scores = e / scale
        threshold = float(torch.quantile(scores, float(self.config.quantile)))
        self.scale, self.threshold = scale, threshold * float(self.config.margin)
        return self.scale, self.threshold

    def reset(self) -> None:
        """Forget recent errors (not the calibration)."""
        self._recent.clear()
        self.score = 0.0


def _statistic(values: torch.Tensor, statistic: str) -> float:
    return float(values.median() if statistic == 'median' else values.mean())
