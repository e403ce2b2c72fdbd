"""Image encoders: normalised image (B, 3, S, S) -> global latent (B, D), and patch tokens.

Two choices, picked by ``ModelConfig.encoder``:

* ``cnn`` (default): 4x4 stride-2 convolutions with GroupNorm + SiLU, then one linear layer from
  the final feature map to the latent. ~1 ms per 64x64 frame on one CPU core.
* ``vit``: a ViT-tiny style transformer over non-overlapping patches; the global latent is a
  linear map of the mean token, and ``tokens()`` exposes the patch tokens themselves.
* ``keypoints``: a CoordConv CNN whose K heat maps become K image positions through a spatial
  softmax (:class:`~ami_ros.model.reader.SpatialKeypoints`); the latent is those positions
  (x of every keypoint, then y, scaled by ``keypoints.scale``), so distances between latents
  are distances in the image. For scenes whose state is where rigid things are (Push-T).
  With ``keypoints.moments`` the latent is instead the image moments of the foreground (what
  differs from the static background): no learned weights.

GroupNorm rather than BatchNorm: the encoding of one frame must not depend on the rest of the
batch (the perception node encodes one frame at a time, training sees batches).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ami_ros.model.config import MOMENTS, ModelConfig
from ami_ros.model.reader import SpatialKeypoints


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class CNNEncoder(nn.Module):
    """Strided convolutions -> flatten -> linear latent."""

    def __init__(self, image_size: int, channels: tuple[int, ...], latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=4, stride=2, padding=1),
                       nn.GroupNorm(_groups(c), c), nn.SiLU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.side = image_size // 2 ** len(channels)
        self.token_dim = c_in
        self.head = nn.Linear(c_in * self.side * self.side, latent_dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map as tokens: (B, side*side, C)."""
        return self.conv(x).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))                      # (B, D)


class ViTEncoder(nn.Module):
    """Patch embedding + pre-norm transformer blocks; global latent from the mean token."""

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, latent_dim: int):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        n = (image_size // patch_size) ** 2
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0,
                                           activation='gelu', batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.token_dim = dim
        self.head = nn.Linear(dim, latent_dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos       # (B, N, dim)
        return self.norm(self.blocks(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x).mean(dim=1))                   # (B, D)


class KeypointEncoder(nn.Module):
    """Spatial-softmax keypoints as the latent: (B, 3, S, S) -> (B, 2K) = scale * (x..., y...).

    Optionally the static background is subtracted first, and the robot's own body (a disc
    round where an affine map of the joint positions puts it) is masked out, replaced by the
    background: then :meth:`forward` needs the joint positions.
    """

    def __init__(self, channels: tuple[int, ...], keypoints: int, first_stride: int,
                 scale: float, background_size: int = 0, self_mask: tuple[float, ...] = (),
                 self_mask_radius: float = 0.0, foreground: bool = False,
                 moments: bool = False, pose: bool = False):
        super().__init__()
        self.pose = bool(pose)
        # moments: a fixed map, standardised by statistics set by set_moment_stats
        self.points = None if moments else SpatialKeypoints(channels, keypoints, first_stride)
        self.register_buffer('moment_mean', torch.zeros(MOMENTS) if moments else None)
        self.register_buffer('moment_std', torch.ones(MOMENTS) if moments else None)
        self.foreground = bool(foreground)
        self.k = keypoints
        self.scale = float(scale)
        self.token_dim = keypoints
        # the static background (normalised image) subtracted first; set by set_background
        s = int(background_size)
        self.register_buffer('background', torch.zeros(1, 3, s, s) if s else None)
        # (2, J + 1): joint positions -> where the robot is in the image (0..1, x right, y down)
        m = torch.tensor(self_mask, dtype=torch.float32).view(2, -1) if self_mask else None
        self.register_buffer('self_map', m, persistent=False)
        self.self_radius = float(self_mask_radius)

    foreground_threshold = 0.5
    """Sum over RGB of |input - background| (normalised units: 0.125 of full scale per 1)
    above which a pixel is foreground."""

    @property
    def needs_joints(self) -> bool:
        """Whether :meth:`forward` needs the joint positions (the self mask is on)."""
        return self.self_map is not None

    @torch.no_grad()
    def set_background(self, images: torch.Tensor) -> None:
        """Set the background to the per-pixel median of normalised images (N, 3, S, S)."""
        self.background.copy_(images.median(dim=0, keepdim=True).values)

    def self_mask(self, joints: torch.Tensor, size: int) -> torch.Tensor:
        """(B, 1, size, size): 0 on the robot's disc, 1 elsewhere, for joint positions (B, J)."""
        m = self.self_map.to(joints.dtype)
        c = joints @ m[:, :-1].T + m[:, -1]                                   # (B, 2) in 0..1
        g = (torch.arange(size, device=joints.device, dtype=joints.dtype) + 0.5) / size
        dx = g.view(1, 1, -1) - c[:, 0].view(-1, 1, 1)
        dy = g.view(1, -1, 1) - c[:, 1].view(-1, 1, 1)
        return (dx * dx + dy * dy >= self.self_radius ** 2).to(joints.dtype)[:, None]

    def _input(self, x: torch.Tensor, joints: torch.Tensor | None) -> torch.Tensor:
        if self.background is not None:
            x = x - self.background
        if self.self_map is None:
            return x
        if joints is None:
            raise ValueError('this keypoint encoder masks the robot out of the image '
                             '(keypoints.self_mask): pass the joint positions')
        return x * self.self_mask(joints.to(x.dtype), x.shape[-1])

    def tokens(self, x: torch.Tensor, joints: torch.Tensor | None = None) -> torch.Tensor:
        """The heat maps as tokens: (B, h'*w', K)."""
        if self.points is None:
            raise ValueError('an image-moments encoder (keypoints.moments) has no heat maps')
        return self.points.heat_maps(self._input(x, joints)).flatten(2).transpose(1, 2)

    def foreground_of(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) bool: the pixels of background-subtracted images that differ from it."""
        return x.abs().sum(dim=1, keepdim=True) > self.foreground_threshold

    def raw_moments(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 9) moments of the foreground of background-subtracted images (B, 3, S, S).

        Centroid (x right, y down, -1..1) and central moments of order 2 (xx, yy, xy) and 3
        (xxx, yyy, xxy, xyy) of the foreground pixels.
        """
        s = x.shape[-1]
        w = self.foreground_of(x)[:, 0].to(x.dtype)                          # (B, S, S)
        w = w / w.sum((-2, -1)).clamp(min=1.0)[:, None, None]
        g = torch.linspace(-1.0, 1.0, s, device=x.device, dtype=x.dtype)
        mx, my = (w * g).sum((-2, -1)), (w * g[:, None]).sum((-2, -1))
        dx, dy = g[None, None, :] - mx[:, None, None], g[None, :, None] - my[:, None, None]
        central = [(w * dx ** a * dy ** b).sum((-2, -1))
                   for a, b in ((2, 0), (0, 2), (1, 1), (3, 0), (0, 3), (2, 1), (1, 2))]
        return torch.stack([mx, my, *central], dim=-1)

    @torch.no_grad()
    def set_moment_stats(self, x: torch.Tensor, joints: torch.Tensor | None = None) -> None:
        """Standardise the moments by their mean and spread over normalised images.

        ``x`` (N, 3, S, S); ``joints`` (N, J), their joint positions, with the self mask.
        """
        m = self.raw_moments(self._input(x, joints))
        self.moment_mean.copy_(m.mean(0))
        self.moment_std.copy_(m.std(0).clamp(min=1e-6))

    def forward(self, x: torch.Tensor, joints: torch.Tensor | None = None) -> torch.Tensor:
        x = self._input(x, joints)
        if self.points is None and self.pose:
            return pose_of_moments(self.raw_moments(x), self.scale)             # (B, 4)
        if self.points is None:
            return (self.raw_moments(x) - self.moment_mean) / self.moment_std    # (B, 9)
        if not self.foreground:
            return self.scale * self.points(x)[:, :2 * self.k]              # (B, 2K)
        # each heat map, upsampled to the image, softmaxed over the foreground pixels alone
        s = x.shape[-1]
        f = F.interpolate(self.points.heat_maps(x), size=(s, s), mode='bilinear',
                          align_corners=False)                              # (B, K, S, S)
        fg = self.foreground_of(x)                                          # (B, 1, S, S)
        p = F.softmax(f.masked_fill(~fg, -1e4).flatten(2), dim=-1)          # (B, K, S*S)
        g = torch.linspace(-1.0, 1.0, s, device=x.device, dtype=x.dtype)
        kx = (p.view(*p.shape[:2], s, s) * g).sum((-2, -1))
        ky = (p.view(*p.shape[:2], s, s) * g[:, None]).sum((-2, -1))
        return self.scale * torch.cat([kx, ky], dim=-1)                     # (B, 2K)


HEADING_SOFTNESS = 0.05
"""Normalised skew and elongation below which a silhouette's heading fades (see
:func:`pose_of_moments`); a T's are above 0.16 and 0.5."""


def pose_of_moments(m: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, 9) raw moments (:meth:`KeypointEncoder.raw_moments`) -> (B, 4) planar pose.

    The centroid times ``scale``, then the heading (cos, sin): the major axis of the
    second-order moments, pointed where the third-order moment along it (the skew) is
    positive, so a silhouette that is not symmetric along its major axis has one heading. The
    heading's length is tanh(skew / s) x tanh(elongation / s) (both normalised by the spread,
    s = ``HEADING_SOFTNESS``): 1 to 3 digits for an object like a T, fading to 0 for one
    whose skew or major axis vanishes (a disc, a bar), so the latent stays continuous where the
    heading is undefined rather than flipping on float rounding.
    """
    mx, my, m20, m02, m11, m30, m03, m21, m12 = m.unbind(-1)
    spread = (m20 + m02).clamp(min=1e-12)
    axis = 0.5 * torch.atan2(2.0 * m11, m20 - m02)
    c, s = torch.cos(axis), torch.sin(axis)
    skew = c ** 3 * m30 + 3.0 * c * c * s * m21 + 3.0 * c * s * s * m12 + s ** 3 * m03
    elongation = torch.sqrt((m20 - m02) ** 2 + 4.0 * m11 ** 2) / spread
    length = torch.tanh(skew / spread ** 1.5 / HEADING_SOFTNESS) * \
        torch.tanh(elongation / HEADING_SOFTNESS)
    return torch.stack([scale * mx, scale * my, length * c, length * s], dim=-1)


def build_encoder(config: ModelConfig) -> nn.Module:
    """The encoder named by ``config.encoder``."""
    if config.encoder == 'keypoints':
        k = config.keypoints
        return KeypointEncoder(k.channels, config.latent_dim // 2, k.first_stride, k.scale,
                               config.image_size if k.background else 0, k.self_mask,
                               k.self_mask_radius, k.foreground, k.moments, k.pose)
    if config.encoder == 'cnn':
        return CNNEncoder(config.image_size, config.cnn.channels, config.latent_dim)
    v = config.vit
    return ViTEncoder(config.image_size, v.patch_size, v.dim, v.depth, v.heads, v.mlp_ratio,
                      config.latent_dim)
