"""Reading the robot's posture from one image, and its forward kinematics (world model v2).

* :class:`PostureReader`: normalised image (B, 3, S, S) -> standardised (joint positions,
  end-effector position) (B, J + E). A few convolutions (one or two with stride 2), a 1x1
  convolution makes K heat maps and a spatial softmax turns each into an expected image position
  (x, y) and a presence value; an MLP maps the K keypoints to the posture. Keypoints locate small
  things (the tool, the goal marker and its floor shadow) to a fraction of a pixel, where a
  flatten-and-linear head only blurs them (the reason: Levine et al. 2016, "End-to-end training
  of deep visuomotor policies"). The planner uses it for goals given as images only.
* :class:`ForwardKinematics`: joint positions (..., J) in radians -> standardised end-effector
  position (..., E), an MLP on (sin, cos) of the angles, learned from the logged joint states
  and end-effector positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _coords(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, n, device=like.device, dtype=like.dtype)


class SpatialKeypoints(nn.Module):
    """Image -> K keypoints (expected image positions of K heat maps, and their peaks).

    A CoordConv CNN makes K heat maps; a spatial softmax gives each one's expected image
    position (x, y in [-1, 1]), and its squashed peak value is a presence.

    Serves the posture reader (keypoints -> MLP -> posture) and the ``keypoints`` encoder
    (the keypoints are the visual latent).
    """

    def __init__(self, channels: tuple[int, ...], keypoints: int, first_stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 5  # RGB + the x, y coordinate planes (CoordConv: positions are the point)
        for i, c in enumerate(channels):
            kernel, stride = (5, first_stride) if i == 0 else (3, 2 if i == 1 else 1)
            layers += [nn.Conv2d(c_in, c, kernel, stride, kernel // 2), nn.GELU()]
            c_in = c
        layers.append(nn.Conv2d(c_in, keypoints, 1))
        self.conv = nn.Sequential(*layers)

    def heat_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, h', w') heat-map logits."""
        b, _, h, w = x.shape
        yy, xx = torch.meshgrid(_coords(h, x), _coords(w, x), indexing='ij')
        return self.conv(torch.cat([x, xx.expand(b, 1, h, w), yy.expand(b, 1, h, w)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3K): expected x of each heat map, then y, then its peak."""
        f = self.heat_maps(x)                                                # (B, K, h', w')
        hh, ww = f.shape[-2:]
        f = f.flatten(2)                                                     # (B, K, h'*w')
        gy, gx = torch.meshgrid(_coords(hh, f), _coords(ww, f), indexing='ij')
        p = F.softmax(f, dim=-1)
        kx = (p * gx.reshape(-1)).sum(-1)                                    # (B, K)
        ky = (p * gy.reshape(-1)).sum(-1)                                    # (B, K)
        peak = torch.tanh(f.amax(dim=-1) / 10.0)                             # (B, K)
        return torch.cat([kx, ky, peak], dim=-1)


class PostureReader(SpatialKeypoints):
    """Image -> (J + E) standardised posture: an MLP on the spatial-softmax keypoints."""

    def __init__(self, channels: tuple[int, ...], keypoints: int, hidden: int, out_dim: int,
                 first_stride: int = 1):
        super().__init__(channels, keypoints, first_stride)
        self.head = nn.Sequential(nn.Linear(3 * keypoints, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3K): expected x, y of each heat map and its peak (squashed)."""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.keypoints(x))


class ForwardKinematics(nn.Module):
    """Joint positions (..., J) in radians -> standardised end-effector position (..., E)."""

    def __init__(self, joints: int, ee_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * joints, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, ee_dim))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        # revolute joints: a link's position is a sum of products of sines and cosines
        return self.mlp(torch.cat([torch.sin(q), torch.cos(q)], dim=-1))
