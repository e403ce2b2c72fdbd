"""The JEPA-style world model: encoder + action-conditioned predictor + probe heads.

Public API (what perception, the world_model node and the planner use):

* ``encode(images)`` -> (B, D): images uint8 (B, H, W, 3) RGB or float (B, 3, H, W) in [0, 1];
  normalisation (and resizing to ``config.image_size``) happens inside the model.
* ``rollout(z_hist, actions, past_actions=None)`` -> (B, H, D): open-loop prediction from the
  latest k latents (B, k, D) under joint position targets (B, H, A) in physical units (rad);
  ``actions[:, 0]`` is the command in force from the frame of ``z_hist[:, -1]`` to the next.
* ``probe(z)`` -> {name: (..., dim)} physical quantities (``ee_position`` in m, joints in rad).

World model v2 (``config.proprio.enabled``): the state is ``[z, q, ee]`` (visual latent, joint
positions and end-effector position, standardised; ``latent_dim`` is then the size of that whole
state). ``encode(images, joints)`` takes q from the robot's joint states and ee from a learned
forward kinematics; ``encode(images)`` without joint states (a goal image) reads both from the
image (:class:`~ami_ros.model.reader.PostureReader`). The predictor rolls the whole state out, so
it predicts the next joint state as well as the next visual latent; ``probe`` decodes
``joint_positions`` and ``ee_position`` straight from the state.

Choice of the default anti-collapse regulariser: **VICReg** (variance hinge + covariance,
applied per time step across the batch), chosen by measurement; SIGReg stays one config switch
away (``loss.regularizer: sigreg``, ``reg_weight ~0.1``). Same recipe otherwise (EMA targets,
800 steps of batch 32, 108 training episodes), evaluated on 20 fresh held-out arm_reach bags,
rollout / copy-last error at horizons 1, 2, 5, 10:

* VICReg: 0.75, 0.75, 0.86, 0.90; effective rank 23.3 of 32; ee_position probe 0.25 m
* SIGReg: 0.82, 0.82, 0.91, 0.86; effective rank 23.1 of 32; ee_position probe 0.26 m

On the analytic dot world (600 steps) they tied with online targets (ratio 0.009 at h5
for both) and VICReg was ahead with EMA targets (0.14 vs 0.33 at h5). Neither collapses; with
equal effective rank, the lower rollout error decided. SIGReg's appeal (one weight, a test of
the whole distribution) did not show up as better latents at this scale, and its statistic is
noisier at our per-step batch of 32 samples.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ami_ros.model.config import ModelConfig, ProbeSpec
from ami_ros.model.encoder import build_encoder
from ami_ros.model.predictor import ObjectFramePredictor, Predictor
from ami_ros.model.probes import ProbeHead
from ami_ros.model.reader import ForwardKinematics, PostureReader

# fixed image normalisation: uint8 [0, 255] -> roughly zero-mean, unit-range
_PIXEL_MEAN = 0.5
_PIXEL_STD = 0.25


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (B, C, H, W) -> (B, C, size, size), the one resize of frames fed to a model.

    A shrink by a whole factor averages pixel blocks (area: what a camera of that resolution
    records; ONNX exports it as AveragePool); any other change is an antialiased bilinear
    resize.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h == w and h > size and h % size == 0:
        return F.avg_pool2d(x, h // size)
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False,
                         antialias=True)


class WorldModel(nn.Module):
    """Encoder, predictor and probes, with action statistics; built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.action_dim < 1:
            raise ValueError('ModelConfig.action_dim must be set (>= 1) to build a WorldModel; '
                             'it is taken from the data by training')
        self.config = config
        self.encoder = build_encoder(config)
        p = config.predictor
        if p.object_frame:
            self.predictor = ObjectFramePredictor(p.history, p.action_history, p.hidden,
                                                  p.layers, p.norm, config.keypoints.scale)
        else:
            self.predictor = Predictor(config.state_dim, config.action_dim, p.history,
                                       p.action_history, p.hidden, p.layers, p.norm)
        self.reader = self.fk = self.joint_predictor = None
        if config.proprio.enabled:
            pc, j = config.proprio, config.action_dim
            self.reader = PostureReader(pc.reader_channels, pc.reader_keypoints,
                                        pc.reader_hidden, config.proprio_dim,
                                        pc.reader_first_stride)
            self.fk = ForwardKinematics(j, pc.ee_dim, pc.fk_hidden) if pc.ee_dim else None
            self.joint_predictor = Predictor(j, config.action_dim, p.history, p.action_history,
                                             pc.joint_hidden, 2, norm=False)
            stats = {'joint_mean': (pc.joint_mean, j, 0.0), 'joint_std': (pc.joint_std, j, 1.0),
                     'ee_mean': (pc.ee_mean, pc.ee_dim, 0.0), 'ee_std': (pc.ee_std, pc.ee_dim, 1.0)}
            for name, (values, n, default) in stats.items():
                self.register_buffer(name, torch.tensor(values or (default,) * n,
                                                        dtype=torch.float32), persistent=False)
        # statistics live in config.json, not in the weights file (persistent=False)
        self.register_buffer('action_mean', torch.tensor(config.action_mean, dtype=torch.float32),
                             persistent=False)
        self.register_buffer('action_std', torch.tensor(config.action_std, dtype=torch.float32),
                             persistent=False)
        self.probes = nn.ModuleDict()
        for spec in config.probes:
            self.probes[spec.name] = ProbeHead(spec, config.state_dim, config.probe_hidden)

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.action_mean.device

    @property
    def latent_dim(self) -> int:
        """Size of the state vector (visual latent, plus joints and end effector in v2)."""
        return self.config.state_dim

    @property
    def visual_dim(self) -> int:
        """Size of the visual latent (the first entries of the state)."""
        return self.config.latent_dim

    @property
    def has_proprio(self) -> bool:
        return self.reader is not None

    @property
    def innovation_scale(self) -> torch.Tensor | None:
        """(D,) typical one-step prediction error per state dimension, if measured."""
        s = self.config.innovation_scale
        if len(s) != self.latent_dim:
            return None
        return torch.tensor(s, dtype=torch.float32, device=self.device)

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def history(self) -> int:
        """k: number of latents the predictor conditions on."""
        return self.config.predictor.history

    @property
    def probe_names(self) -> tuple[str, ...]:
        """Quantities ``probe`` returns (with proprioception: joints and end effector too)."""
        names = tuple(self.probes.keys())
        if self.reader is not None:
            extra = ('joint_positions',) + (('ee_position',) if self.fk is not None else ())
            names += tuple(n for n in extra if n not in names)
        return names

    # ---------------------------------------------------------------- configuration changes
    def set_action_stats(self, mean, std) -> None:
        """Set the action normalisation (physical units) in the model and its config."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).to(self.device)
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).to(self.device)
        if mean.shape != (self.action_dim,) or std.shape != (self.action_dim,):
            raise ValueError(f'action stats must have shape ({self.action_dim},), got '
                             f'{tuple(mean.shape)} and {tuple(std.shape)}')
        if not bool((std > 0).all()):
            raise ValueError(f'action std must be > 0, got {std.tolist()}')
        self.action_mean.copy_(mean)
        self.action_std.copy_(std)
        self.config.action_mean = tuple(float(v) for v in mean.cpu())
        self.config.action_std = tuple(float(v) for v in std.cpu())

    def set_probes(self, specs: list[ProbeSpec]) -> None:
        """Replace the probe heads by fresh ones for ``specs`` (with their target statistics)."""
        self.probes = nn.ModuleDict({
            s.name: ProbeHead(s, self.latent_dim, self.config.probe_hidden) for s in specs
        }).to(self.device)
        self.config.probes = tuple(specs)

    def set_proprio_stats(self, joint_mean, joint_std, ee_mean, ee_std) -> None:
        """Set the standardisation of joints (rad) and end effector (m), in model and config."""
        pc = self.config.proprio
        for name, values in (('joint_mean', joint_mean), ('joint_std', joint_std),
                             ('ee_mean', ee_mean), ('ee_std', ee_std)):
            v = np.asarray(values, dtype=np.float32).reshape(-1)
            if v.shape != tuple(getattr(self, name).shape) or not np.isfinite(v).all():
                raise ValueError(f'{name} must be {tuple(getattr(self, name).shape)} finite '
                                 f'values, got {v.tolist()}')
            getattr(self, name).copy_(torch.as_tensor(v))
            setattr(pc, name, tuple(float(x) for x in v))
        pc.__post_init__()

    # ---------------------------------------------------------------- encoding
    @property
    def reader_size(self) -> int:
        """Side of the frames the reader reads (``proprio.reader_image_size``, else S)."""
        return int(self.config.proprio.reader_image_size or self.config.image_size)

    @property
    def input_size(self) -> int:
        """Side of the frames to feed :meth:`encode`: the larger of the encoder's and reader's."""
        return max(int(self.config.image_size), self.reader_size if self.reader is not None
                   else 0)

    def preprocess(self, images, size: int | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> normalised (B, 3, S, S).

        S = ``size`` or the encoder's ``image_size``; other sizes are resized
        (:func:`resize_square`).
        """
        x = torch.as_tensor(images).to(self.device)
        if x.dim() != 4:
            raise ValueError(f'images must be 4-D (B, H, W, 3) uint8 or (B, 3, H, W) float, '
                             f'got shape {tuple(x.shape)}')
        if x.dtype == torch.uint8:
            if x.shape[-1] != 3:
                raise ValueError(f'uint8 images must be (B, H, W, 3) RGB, got {tuple(x.shape)}')
            x = x.permute(0, 3, 1, 2).float() / 255.0
        elif x.is_floating_point():
            if x.shape[1] != 3:
                raise ValueError(f'float images must be (B, 3, H, W), got {tuple(x.shape)}')
            x = x.float()
        else:
            raise ValueError(f'images must be uint8 or float, got {x.dtype}')
        return (resize_square(x, int(size or self.config.image_size)) - _PIXEL_MEAN) / _PIXEL_STD

    def encode(self, images, joints=None) -> torch.Tensor:
        """Images (and their joint positions (B, J), rad, if known) -> states (B, D).

        Without proprioception the state is the visual latent. With it, the joint positions
        and end effector come from ``joints`` when given, otherwise from the image (reader).
        """
        x = self.preprocess(images)
        if self.reader is None:
            return self.encoder(x)
        if joints is not None:
            p = self.proprio_state(joints)
        else:
            p = self.reader(x if self.reader_size == self.config.image_size
                            else self.preprocess(images, self.reader_size))
        return self.state_of(x, p)

    def state_of(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) and their proprio part (B, P) -> states (B, D)."""
        z = self.visual(x, p[..., :self.action_dim] * self.joint_std + self.joint_mean)
        return torch.cat([z, p.to(z.dtype)], dim=-1)

    def visual(self, x: torch.Tensor, joints: torch.Tensor | None = None,
               encoder: nn.Module | None = None) -> torch.Tensor:
        """The visual latent (B, Dv) of normalised images (B, 3, S, S).

        By ``encoder`` (default: the model's; training passes its EMA copy), given the frames'
        joint positions (B, J) when the encoder masks the robot out (``keypoints.self_mask``).
        """
        encoder = encoder if encoder is not None else self.encoder
        if getattr(encoder, 'needs_joints', False):
            return encoder(x, joints)
        return encoder(x)

    def proprio_state(self, joints) -> torch.Tensor:
        """Joint positions (..., J) in rad -> the state's proprio part (..., J + E)."""
        q = torch.as_tensor(joints, dtype=torch.float32, device=self.device)
        if q.shape[-1] != self.action_dim:
            raise ValueError(f'joints must have {self.action_dim} values per row, got '
                             f'{tuple(q.shape)}')
        qn = (q - self.joint_mean) / self.joint_std
        if self.fk is None:
            return qn
        return torch.cat([qn, self.fk(q)], dim=-1)

    def with_joints(self, state: torch.Tensor, joints) -> torch.Tensor:
        """``state`` (..., D) with its proprio part replaced by measured ``joints`` (..., J)."""
        p = self.proprio_state(joints).to(state)
        return torch.cat([state[..., :self.visual_dim], p.expand(*state.shape[:-1], -1)], -1)

    def encode_tokens(self, images) -> torch.Tensor:
        """Images -> patch tokens (B, N, C) (ViT tokens, or the CNN's last feature map)."""
        return self.encoder.tokens(self.preprocess(images))

    # ---------------------------------------------------------------- dynamics
    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def predict(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        """One step: z_hist (B, k, D), physical actions a_hist (B, m, A) -> (B, D)."""
        return self.step(z_hist, self.normalize_actions(a_hist))

    def step(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        """One step on normalised actions: (..., k, D), (..., m, A) -> next state (..., D).

        Without proprioception: the predictor. With it, the visual latent comes from the
        predictor (which sees the whole state history), the joints from the joint predictor
        (which sees the joint history and the commands only: a servo's motion does not depend
        on what the camera sees) and the end effector from the forward kinematics of those
        joints, so the state's parts stay consistent.
        """
        if self.reader is None:
            return self.predictor(z_hist, a_hist)
        d, j = self.visual_dim, self.action_dim
        q_hist = z_hist[..., d:d + j]                                     # (..., k, J)
        if self.config.predictor.object_frame:
            z_next = self.predictor(z_hist[..., :d], self._in_image(q_hist),
                                    self._in_image(a_hist * self.action_std + self.action_mean,
                                                   standardised=False))
        else:
            z_next = self.predictor(z_hist, a_hist)[..., :d]
        q_next = self.joint_predictor(q_hist, a_hist)                     # (..., J)
        parts = [z_next, q_next]
        if self.fk is not None:
            parts.append(self.fk(q_next * self.joint_std + self.joint_mean))
        return torch.cat(parts, dim=-1)

    def _in_image(self, q: torch.Tensor, standardised: bool = True) -> torch.Tensor:
        """Joint positions (..., J) -> the robot's place in the image, -1..1 as the centroid.

        ``q``: the state's standardised joints, or physical ones; the self mask's map.
        """
        if standardised:
            q = q * self.joint_std + self.joint_mean
        m = self.encoder.self_map.to(q.dtype)
        return 2.0 * (q @ m[:, :-1].T + m[:, -1]) - 1.0

    def rollout(self, z_hist: torch.Tensor, actions: torch.Tensor,
                past_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Open-loop rollout -> predicted latents (B, H, D) of the H frames after ``z_hist``.

        ``z_hist`` (B, k', D): the latest latents, oldest first; with k' < k the oldest is
        repeated (as if the robot had been still), with k' > k only the last k are used. A batch
        of 1 is broadcast over the actions' batch (one belief, many candidate plans).
        ``actions`` (B, H, A): targets in force after each latent, physical units.
        ``past_actions`` (B, m-1, A): the targets that were in force before ``z_hist[:, -1]``
        (only when ``predictor.action_history`` m > 1; default: ``actions[:, :1]`` repeated).
        """
        k, m = self.history, self.config.predictor.action_history
        if z_hist.dim() != 3 or z_hist.shape[-1] != self.latent_dim:
            raise ValueError(f'z_hist must be (B, k, {self.latent_dim}), '
                             f'got {tuple(z_hist.shape)}')
        if actions.dim() != 3 or actions.shape[-1] != self.action_dim:
            raise ValueError(f'actions must be (B, H, {self.action_dim}), '
                             f'got {tuple(actions.shape)}')
        if z_hist.shape[0] == 1 and actions.shape[0] > 1:
            z_hist = z_hist.expand(actions.shape[0], -1, -1)
        if z_hist.shape[1] < k:
            pad = z_hist[:, :1].expand(-1, k - z_hist.shape[1], -1)
            z_hist = torch.cat([pad, z_hist], dim=1)
        z_hist = z_hist[:, -k:]
        a = self.normalize_actions(actions)
        if m > 1:
            if past_actions is None:
                past = a[:, :1].expand(-1, m - 1, -1)
            else:
                past = self.normalize_actions(past_actions)[:, -(m - 1):]
                if past.shape[0] == 1 and a.shape[0] > 1:
                    past = past.expand(a.shape[0], -1, -1)
            a = torch.cat([past, a], dim=1)                           # (B, m-1+H, A)
        return self.rollout_normalized(z_hist, a)

    def rollout_normalized(self, z_hist: torch.Tensor, a_seq: torch.Tensor) -> torch.Tensor:
        """z_hist (B, k, D), normalised actions a_seq (B, m-1+H, A) -> (B, H, D).

        ``a_seq[:, m-1+h]`` is the action applied at rollout step h; the m-1 before it are the
        ones already in force (what training and :meth:`rollout` both call).
        """
        m = self.config.predictor.action_history
        preds = []
        for h in range(a_seq.shape[1] - m + 1):
            z_next = self.step(z_hist, a_seq[:, h:h + m])             # (B, D)
            preds.append(z_next)
            z_hist = torch.cat([z_hist[:, 1:], z_next.unsqueeze(1)], dim=1)
        return torch.stack(preds, dim=1)                              # (B, H, D)

    # ---------------------------------------------------------------- probes
    def probe(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latents (..., D) -> {name: (..., dim)} in physical units (empty without probes).

        With proprioception, ``joint_positions`` and ``ee_position`` are read from the state
        itself (exact for measured joints), not from a probe head.
        """
        out = {name: head(z) for name, head in self.probes.items()}
        if self.reader is not None:
            out['joint_positions'] = self.decode_proprio(z, 'joints')
            if self.fk is not None:
                out['ee_position'] = self.decode_proprio(z, 'ee')
        return out

    def ee_of_joints(self, joints: torch.Tensor) -> torch.Tensor:
        """End-effector position (..., E) in metres at joint positions (..., J) in radians."""
        if self.fk is None:
            raise ValueError('the model has no forward kinematics (proprio.ee_dim 0 or off)')
        return self.fk(joints) * self.ee_std + self.ee_mean

    def decode_proprio(self, z: torch.Tensor, part: str) -> torch.Tensor:
        """The state's ``joints`` (rad) or ``ee`` (m) part, (..., D) -> (..., J or E)."""
        d, j = self.visual_dim, self.action_dim
        if part == 'joints':
            return z[..., d:d + j] * self.joint_std + self.joint_mean
        if part == 'ee' and self.fk is not None:
            return z[..., d + j:] * self.ee_std + self.ee_mean
        raise ValueError(f'the state has no {part!r} part (proprio: {self.has_proprio})')

    def state_slices(self) -> dict[str, slice]:
        """Where each part lies in the state: ``visual``, and ``joints`` / ``ee`` with proprio."""
        d, j = self.visual_dim, self.action_dim
        out = {'visual': slice(0, d)}
        if self.reader is not None:
            out['joints'] = slice(d, d + j)
            if self.fk is not None:
                out['ee'] = slice(d + j, self.latent_dim)
        return out
