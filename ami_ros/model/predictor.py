"""Action-conditioned latent dynamics: (k latents, m normalised actions) -> next latent.

The MLP predicts a *change* of the latest latent (residual), so an untrained predictor starts
as the copy-last baseline and learning only has to explain motion.
"""
from __future__ import annotations

import torch
from torch import nn


class Predictor(nn.Module):
    """z_{t+1} = z_t + MLP([z_{t-k+1..t}, a_{t-m+1..t}])."""

    def __init__(self, latent_dim: int, action_dim: int, history: int, action_history: int,
                 hidden: int, layers: int, norm: bool = True):
        super().__init__()
        self.history = history
        self.action_history = action_history
        dims = [history * latent_dim + action_history * action_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out)] + ([nn.LayerNorm(d_out)] if norm else []) \
                + [nn.SiLU()]
        self.mlp = nn.Sequential(*blocks)
        self.out = nn.Linear(dims[-1], latent_dim)
        # small initial residual: start near "nothing changes"
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        """z_hist (..., k, D), a_hist (..., m, A) normalised -> next latent (..., D)."""
        x = torch.cat([z_hist.flatten(-2), a_hist.flatten(-2)], dim=-1)
        return z_hist[..., -1, :] + self.out(self.mlp(x))


def _turn(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(..., 2) vectors seen from a frame turned by the angle of (cos, sin) (rotated by -it)."""
    return torch.stack([cos * v[..., 0] + sin * v[..., 1], cos * v[..., 1] - sin * v[..., 0]], -1)


class ObjectFramePredictor(nn.Module):
    """An object's next planar pose from what the robot does, learned in the object's frame.

    Poses (..., k, 4) are the ``keypoints.pose`` latent: centroid x, y (image -1..1, times
    ``scale``) and heading (cos, sin) times its length (the frame is the heading's direction;
    the predicted heading keeps the latest one's length). The robot's positions (..., k, 2)
    and commands (..., m, 2) come in the same image coordinates. Every one of them, and each
    earlier centroid, enters relative to the latest pose and turned into its frame (times
    ``gain``), with the earlier headings relative to the latest; the MLP gives the move (dx,
    dy, dtheta) in that frame, which is turned back into the image. So the function learned is
    the same wherever the object is and however it is turned (planar pushing is
    SE(2)-equivariant): one push learned at one pose is learned at all, where an MLP on image
    coordinates must see each pose anew.
    """

    def __init__(self, history: int, action_history: int, hidden: int, layers: int,
                 norm: bool = True, scale: float = 1.0, gain: float = 4.0):
        super().__init__()
        self.history, self.action_history = history, action_history
        self.scale, self.gain = float(scale), float(gain)
        dims = [2 * history + 2 * action_history + 4 * (history - 1)] + [hidden] * layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(d_in, d_out)] + ([nn.LayerNorm(d_out)] if norm else []) \
                + [nn.SiLU()]
        self.mlp = nn.Sequential(*blocks)
        self.out = nn.Linear(dims[-1], 3)
        nn.init.normal_(self.out.weight, std=1e-3)  # start near "the object stays"
        nn.init.zeros_(self.out.bias)

    def forward(self, poses: torch.Tensor, robot: torch.Tensor,
                commands: torch.Tensor) -> torch.Tensor:
        """Poses (..., k, 4), robot (..., k, 2), commands (..., m, 2) -> next pose (..., 4)."""
        centre = poses[..., -1, :2] / self.scale                            # (..., 2)
        heading = poses[..., -1, 2:]
        length = heading.norm(dim=-1).clamp(min=1e-6)                       # (...,)
        cos, sin = heading[..., 0] / length, heading[..., 1] / length

        def seen(points):  # (..., n, 2) image -> the object's frame, flattened (..., 2n)
            rel = points - centre.unsqueeze(-2)
            return (self.gain * _turn(rel, cos.unsqueeze(-1), sin.unsqueeze(-1))).flatten(-2)

        past = poses[..., :-1, :]
        pc, ps = past[..., 2], past[..., 3]
        x = torch.cat([seen(robot), seen(commands), seen(past[..., :2] / self.scale),
                       pc * cos.unsqueeze(-1) + ps * sin.unsqueeze(-1) - 1.0,    # cos(dtheta) - 1
                       ps * cos.unsqueeze(-1) - pc * sin.unsqueeze(-1)], dim=-1)  # sin(dtheta)
        move = self.out(self.mlp(x))                                         # (..., 3)
        xy = centre + _turn(move[..., :2], cos, -sin) / self.gain
        dc, ds = torch.cos(move[..., 2]), torch.sin(move[..., 2])
        turned = torch.stack([cos * dc - sin * ds, sin * dc + cos * ds], dim=-1)
        return torch.cat([self.scale * xy, length.unsqueeze(-1) * turned], dim=-1)
