"""One recorded episode as aligned arrays: what bags are read into and what training consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """T time-aligned samples of one episode (all arrays share the leading T axis).

    ``actions[t]`` is the command in force when ``images[t]`` was taken and until ``images[t+1]``
    (a joint position target). ``ground_truth`` holds named physical state, e.g. ``ee_position``
    (T, 3), when the source logged it.
    """

    images: np.ndarray             # (T, H, W, 3) uint8 RGB
    joint_positions: np.ndarray    # (T, J) float32
    actions: np.ndarray            # (T, A) float32
    stamps: np.ndarray             # (T,) float64 seconds
    joint_names: tuple[str, ...] = ()
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ''
    weight: float = 1.0
    """Relative chance of each of its training windows being drawn (``data.weights``)."""

    def __post_init__(self):
        t = len(self.images)
        for name in ('joint_positions', 'actions', 'stamps'):
            n = len(getattr(self, name))
            if n != t:
                raise ValueError(f'{self.source or "episode"}: {name} has {n} rows, images {t}')
        for name, arr in self.ground_truth.items():
            if len(arr) != t:
                raise ValueError(f'{self.source or "episode"}: ground truth {name!r} has '
                                 f'{len(arr)} rows, images have {t}')

    def __len__(self) -> int:
        return len(self.images)
