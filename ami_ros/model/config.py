"""Typed, validated configuration of the world model and of its training run.

Every component has one dataclass whose fields are documented and checked in ``__post_init__``;
a YAML file maps onto :class:`RunConfig` with :func:`load_run_config`, and any unknown key, wrong
type or bad value is reported as ``ConfigError`` naming the file and the dotted field
(``train.batch_size``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, of the wrong type or out of range."""


POSE = 4
"""Entries of a ``keypoints.pose`` latent: centroid x, y and heading (cos, sin)."""
MOMENTS = 9
"""Entries of a ``keypoints.moments`` latent: centroid (2), central moments of order 2 (3) and
3 (4)."""


def _check(cond: bool, name: str, value, what: str) -> None:
    if not cond:
        raise ConfigError(f'{name} {what}, got {value!r}')


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
@dataclass
class CNNConfig:
    """The default image encoder: strided convolutions, then a linear map to the latent."""

    channels: tuple[int, ...] = (32, 64, 128, 256)
    """Output channels of each 4x4 stride-2 convolution; each halves the image side."""

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        _check(1 <= len(self.channels) <= 6, 'cnn.channels', self.channels,
               'must list 1 to 6 layers')
        _check(all(1 <= c <= 1024 for c in self.channels), 'cnn.channels', self.channels,
               'must be in [1, 1024]')


@dataclass
class KeypointEncoderConfig:
    """The ``keypoints`` encoder: heat maps -> spatial softmax -> image positions as the latent.

    The latent has ``latent_dim`` = 2K entries (K keypoints, x then y), each in
    [-scale, scale] across the image.
    """

    channels: tuple[int, ...] = (32, 32, 32, 32)
    """Output channels of the CoordConv layers (the first 5x5, the second with stride 2)."""
    first_stride: int = 2
    """Stride of the first convolution (1 or 2)."""
    scale: float = 3.0
    """Image half-width in latent units: positions span [-scale, scale], so that the
    anti-collapse term's unit spread per dimension is reachable."""
    background: bool = False
    """Subtract the scene's static background (the per-pixel median of training frames, kept
    in the checkpoint) before the heat maps, so that keypoints find what moves (fixed cameras)
    rather than the static edges of the image."""
    self_mask: tuple[float, ...] = ()
    """The robot's own body masked out of the image (a self-filter), so that the keypoints go
    to the world rather than to what the joint states already say: an affine map from the
    joint positions to where the robot is in the image, 2 x (J + 1) numbers row by row
    (x = a_x . q + b_x, then y; image coordinates 0..1 from the top-left corner, x right, y
    down), e.g. a gantry seen from above; the disc shows the background instead. Needs
    ``background`` and ``proprio.enabled``. Training places the disc by the logged joint
    states; served, by the reader's reading of the frame (one encoder graph for camera frames
    and goal images; the measured joints then replace the reading in the state). Empty = off."""
    self_mask_radius: float = 0.0
    """Radius of the masked disc round that point, as a fraction of the image side."""
    foreground: bool = False
    """Keypoints only where the image differs from the background: each heat map is upsampled
    to the image and its spatial softmax taken over those pixels alone, so each keypoint is a
    weighted mean of pixels of what moves (with ``self_mask``: of the objects), at pixel
    precision, not a position the coordinate planes can put anywhere. Needs ``background``."""
    moments: bool = False
    """The latent is the foreground's image moments instead of learned keypoints: its centroid
    and central moments of order 2 and 3 (``MOMENTS`` = 9 numbers: ``latent_dim`` must be 9),
    standardised by the training frames' statistics; no learned weights. The pose of a rigid
    object, where it is and which way it points, in 9 smooth numbers at sub-pixel precision
    (not its mass, the foreground's pixel count: a rigid object's changes only by a few
    rasterised pixels, noise that standardising would blow up). Needs ``background``; with
    ``self_mask``, the moments of what the robot moves."""
    pose: bool = False
    """With ``moments``: the latent is the foreground's planar pose read from its moments
    instead (``POSE`` = 4 numbers: ``latent_dim`` must be 4): its centroid (x, y, times
    ``scale``) and the direction of its major axis as (cos, sin), pointed by the sign of the
    third-order moment along it: where a rigid object is and which way it faces, for
    ``predictor.object_frame``. For objects whose silhouette has a major axis and is not
    symmetric along it (a T, an L, a wedge); where either fails the heading's length fades to
    0 (:func:`~ami_ros.model.encoder.pose_of_moments`)."""

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.background = bool(self.background)
        self.self_mask = tuple(float(v) for v in self.self_mask)
        _check(len(self.self_mask) % 2 == 0 and len(self.self_mask) != 2,
               'keypoints.self_mask', self.self_mask, 'must be 2 x (joints + 1) numbers')
        _check(not self.self_mask or 0 < self.self_mask_radius <= 0.5,
               'keypoints.self_mask_radius', self.self_mask_radius, 'must be in (0, 0.5]')
        _check(not self.self_mask or self.background, 'keypoints.background', self.background,
               'must be true with self_mask (the robot is replaced by the background)')
        self.foreground = bool(self.foreground)
        _check(not self.foreground or self.background, 'keypoints.background', self.background,
               'must be true with foreground (foreground = what differs from it)')
        self.moments = bool(self.moments)
        _check(not self.moments or self.background, 'keypoints.background', self.background,
               'must be true with moments (the moments of what differs from it)')
        self.pose = bool(self.pose)
        _check(not self.pose or self.moments, 'keypoints.pose', self.pose,
               'needs moments (the pose is read from them)')
        _check(len(self.channels) >= 2 and all(1 <= c <= 1024 for c in self.channels),
               'keypoints.channels', self.channels, 'must be >= 2 counts in [1, 1024]')
        _check(self.first_stride in (1, 2), 'keypoints.first_stride', self.first_stride,
               'must be 1 or 2')
        _check(0 < self.scale <= 100, 'keypoints.scale', self.scale, 'must be in (0, 100]')


@dataclass
class ViTConfig:
    """A small vision transformer encoder (ViT-tiny style) producing patch tokens."""

    patch_size: int = 8
    """Side of a square patch in pixels; must divide the image size."""
    dim: int = 192
    """Token width (ViT-tiny: 192)."""
    depth: int = 4
    """Number of transformer blocks (ViT-tiny has 12; 4 keeps CPU training practical)."""
    heads: int = 3
    """Attention heads; must divide ``dim``."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP as a multiple of ``dim``."""

    def __post_init__(self):
        _check(2 <= self.patch_size <= 64, 'vit.patch_size', self.patch_size, 'must be in [2, 64]')
        _check(8 <= self.dim <= 2048, 'vit.dim', self.dim, 'must be in [8, 2048]')
        _check(1 <= self.depth <= 24, 'vit.depth', self.depth, 'must be in [1, 24]')
        _check(self.heads >= 1 and self.dim % self.heads == 0, 'vit.heads', self.heads,
               f'must be >= 1 and divide vit.dim={self.dim}')
        _check(0.5 <= self.mlp_ratio <= 8, 'vit.mlp_ratio', self.mlp_ratio, 'must be in [0.5, 8]')


@dataclass
class PredictorConfig:
    """Action-conditioned latent dynamics: k past latents + m actions -> next latent."""

    history: int = 3
    """k: number of past latents (the current one included) the prediction is conditioned on."""
    action_history: int = 1
    """m <= k: number of actions conditioned on (1 = only the command in force now)."""
    hidden: int = 512
    """Width of the MLP's hidden layers."""
    layers: int = 3
    """Number of hidden layers of the MLP."""
    norm: bool = True
    """LayerNorm after each hidden layer. Off makes the planner's rollouts cheaper (measured:
    a fifth of a CEM iteration served by ONNX Runtime went to LayerNorm at hidden 128)."""
    object_frame: bool = False
    """Predict the object's motion in its own frame (:class:`~ami_ros.model.predictor.
    ObjectFramePredictor`): the robot's positions and commands enter relative to the object's
    pose (``keypoints.pose``; the robot placed in the image by ``keypoints.self_mask``'s map of
    the joint positions, the commands being joint position targets), and the predicted move is
    turned back into the image: planar pushing looks the same wherever the object is and however
    it is turned, so what is learned at one pose holds at all. Needs ``keypoints.pose``,
    ``self_mask`` and ``proprio.enabled``."""

    def __post_init__(self):
        _check(1 <= self.history <= 16, 'predictor.history', self.history, 'must be in [1, 16]')
        _check(1 <= self.action_history <= self.history, 'predictor.action_history',
               self.action_history, f'must be in [1, predictor.history={self.history}]')
        _check(8 <= self.hidden <= 8192, 'predictor.hidden', self.hidden, 'must be in [8, 8192]')
        _check(1 <= self.layers <= 8, 'predictor.layers', self.layers, 'must be in [1, 8]')


@dataclass
class ProbeSpec:
    """One probe head: latent -> a named physical quantity (as in ``Episode.ground_truth``)."""

    name: str
    """Ground-truth key, or ``joint_positions``."""
    dim: int
    """Number of values of the quantity."""
    angle: bool = False
    """Angles are regressed as (cos, sin) and decoded with atan2 (e.g. ``block_yaw``)."""
    mean: tuple[float, ...] = ()
    """Per-value mean of the training targets (physical units; not used for angles)."""
    std: tuple[float, ...] = ()
    """Per-value standard deviation of the training targets (physical units)."""

    def __post_init__(self):
        _check(bool(self.name), 'probe.name', self.name, 'must be non-empty')
        _check(1 <= self.dim <= 64, f'probe {self.name!r} dim', self.dim, 'must be in [1, 64]')
        self.mean = tuple(float(v) for v in self.mean) or (0.0,) * self.dim
        self.std = tuple(float(v) for v in self.std) or (1.0,) * self.dim
        _check(len(self.mean) == self.dim and len(self.std) == self.dim,
               f'probe {self.name!r} mean/std', (len(self.mean), len(self.std)),
               f'must have dim={self.dim} values')
        _check(all(s > 0 for s in self.std), f'probe {self.name!r} std', self.std, 'must be > 0')


@dataclass
class ProprioConfig:
    """The robot's own joint states in the model's state (world model v2).

    With ``enabled`` the state the predictor rolls out, the belief filter tracks and the planner
    scores is ``[z (latent_dim), q (J), ee (E)]``: the visual latent, the joint positions and the
    end-effector position, both standardised with the training statistics below. A frame with
    its ``/joint_states`` gets q from them and ee from a learned forward-kinematics head; a frame
    without (a goal image) gets both from the *reader*, a spatial-softmax CNN trained on logged
    frames with their joint states as labels (and a calibration sweep of i.i.d. postures).
    """

    enabled: bool = False
    """Put joint positions and the end-effector position in the state (off: visual latent only,
    as models before v2)."""
    ee_dim: int = 3
    """E: size of the end-effector position (0 = joints only)."""
    reader_image_size: int = 0
    """Side of the frames the reader reads, pixels (0 = ``image_size``). The camera delivers at
    least this; the encoder still sees ``image_size``. Larger frames show the wrist and tool
    (at 64 px the wrist's link spans a few pixels): 128 px with ``reader_first_stride`` 2 costs
    the reader about what 64 px costs with 1 (docs/results.md)."""
    reader_first_stride: int = 1
    """Stride of the reader's first convolution (1 or 2)."""
    reader_channels: tuple[int, ...] = (32, 32, 32, 32)
    """Reader CNN: output channels of its convolutions (the second one has stride 2)."""
    reader_keypoints: int = 32
    """Reader: spatial-softmax keypoints (each gives an x, y and a presence value)."""
    reader_hidden: int = 256
    """Reader: hidden width of the MLP from keypoints to (q, ee)."""
    fk_hidden: int = 256
    """Forward-kinematics head: hidden width of the MLP q -> ee."""
    joint_hidden: int = 128
    """Joint predictor: hidden width of the MLP (joint history, commands) -> next joints."""
    joint_mean: tuple[float, ...] = ()
    """Per-joint mean of the training joint positions (rad); filled from the data."""
    joint_std: tuple[float, ...] = ()
    """Per-joint standard deviation of the training joint positions (rad)."""
    ee_mean: tuple[float, ...] = ()
    """Mean of the training end-effector positions (m); filled from the data."""
    ee_std: tuple[float, ...] = ()
    """Standard deviation of the training end-effector positions (m), one value per axis."""

    def __post_init__(self):
        self.reader_channels = tuple(int(c) for c in self.reader_channels)
        _check(len(self.reader_channels) >= 2 and all(c >= 1 for c in self.reader_channels),
               'model.proprio.reader_channels', self.reader_channels,
               'must be >= 2 positive channel counts')
        _check(0 <= self.ee_dim <= 7, 'model.proprio.ee_dim', self.ee_dim, 'must be in [0, 7]')
        _check(self.reader_image_size == 0 or 16 <= self.reader_image_size <= 512,
               'model.proprio.reader_image_size', self.reader_image_size,
               'must be 0 (= image_size) or in [16, 512]')
        _check(self.reader_first_stride in (1, 2), 'model.proprio.reader_first_stride',
               self.reader_first_stride, 'must be 1 or 2')
        for name in ('reader_keypoints', 'reader_hidden', 'fk_hidden', 'joint_hidden'):
            _check(1 <= int(getattr(self, name)) <= 4096, f'model.proprio.{name}',
                   getattr(self, name), 'must be in [1, 4096]')
        for name in ('joint_mean', 'joint_std', 'ee_mean', 'ee_std'):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ('joint_std', 'ee_std'):
            _check(all(v > 0 for v in getattr(self, name)), f'model.proprio.{name}',
                   getattr(self, name), 'must be > 0')


@dataclass
class ModelConfig:
    """Architecture of the world model (everything needed to rebuild it from its weights)."""

    image_size: int = 64
    """Side of the square input image; other sizes are resized inside ``encode``."""
    latent_dim: int = 48
    """D: size of the global latent state."""
    action_dim: int = 0
    """A: size of an action (joint position target); 0 = take it from the data."""
    encoder: str = 'cnn'
    """Image encoder: ``cnn`` (default, fast on CPU), ``vit`` (patch tokens + global latent) or
    ``keypoints`` (spatial-softmax image positions as the latent)."""
    cnn: CNNConfig = field(default_factory=CNNConfig)
    """Settings of the ``cnn`` encoder."""
    keypoints: KeypointEncoderConfig = field(default_factory=KeypointEncoderConfig)
    """Settings of the ``keypoints`` encoder."""
    vit: ViTConfig = field(default_factory=ViTConfig)
    """Settings of the ``vit`` encoder."""
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """Settings of the action-conditioned predictor."""
    proprio: ProprioConfig = field(default_factory=ProprioConfig)
    """Joint states and the end-effector position in the state (world model v2)."""
    probe_hidden: int = 128
    """Hidden width of each probe MLP (latent -> physical quantity)."""
    probes: tuple[ProbeSpec, ...] = ()
    """Probe heads (filled by the probe phase of training, from the data)."""
    action_mean: tuple[float, ...] = ()
    """Per-joint mean of the training actions (rad); actions are normalised inside the model."""
    action_std: tuple[float, ...] = ()
    """Per-joint standard deviation of the training actions (rad)."""
    innovation_scale: tuple[float, ...] = ()
    """Per-dimension RMS one-step prediction error of the state on held-out data, measured
    after training; the belief filter scores surprise in these units (empty = plain RMS)."""

    @property
    def proprio_dim(self) -> int:
        """P: joint positions (J = action_dim) + end-effector size in the state; 0 without."""
        return self.action_dim + self.proprio.ee_dim if self.proprio.enabled else 0

    @property
    def state_dim(self) -> int:
        """Size of the state vector the predictor, belief filter and planner work on."""
        return self.latent_dim + self.proprio_dim

    def __post_init__(self):
        if isinstance(self.proprio, dict):
            self.proprio = ProprioConfig(**self.proprio)
        if isinstance(self.keypoints, dict):
            self.keypoints = KeypointEncoderConfig(**self.keypoints)
        if isinstance(self.predictor, dict):
            self.predictor = PredictorConfig(**self.predictor)
        _check(self.encoder in ('cnn', 'vit', 'keypoints'), 'model.encoder', self.encoder,
               "must be 'cnn', 'vit' or 'keypoints'")
        _check(self.encoder != 'keypoints' or self.keypoints.moments or self.latent_dim % 2 == 0,
               'model.latent_dim',
               self.latent_dim, 'must be even with the keypoints encoder (x, y per keypoint)')
        n_fixed = POSE if self.keypoints.pose else MOMENTS
        _check(not self.keypoints.moments or (self.encoder == 'keypoints' and
                                              self.latent_dim == n_fixed), 'model.latent_dim',
               self.latent_dim, f'must be {n_fixed} with keypoints.moments'
               f'{" and pose" if self.keypoints.pose else ""} (encoder: keypoints)')
        if self.predictor.object_frame:
            _check(self.keypoints.pose and self.keypoints.self_mask, 'predictor.object_frame',
                   True, 'needs keypoints.pose (the object\'s pose) and keypoints.self_mask '
                   '(where the joints put the robot in the image)')
        if self.keypoints.self_mask:
            _check(self.encoder == 'keypoints' and self.proprio.enabled,
                   'model.keypoints.self_mask', self.keypoints.self_mask,
                   'needs encoder: keypoints and proprio.enabled (it reads the joint positions)')
            _check(not self.action_dim or len(self.keypoints.self_mask) == 2 * (
                self.action_dim + 1), 'model.keypoints.self_mask', self.keypoints.self_mask,
                f'must have 2 x (joints + 1) = {2 * (self.action_dim + 1)} numbers')
        _check(16 <= self.image_size <= 512, 'model.image_size', self.image_size,
               'must be in [16, 512]')
        _check(2 <= self.latent_dim <= 4096, 'model.latent_dim', self.latent_dim,
               'must be in [2, 4096]')
        _check(0 <= self.action_dim <= 64, 'model.action_dim', self.action_dim,
               'must be in [0, 64]')
        _check(4 <= self.probe_hidden <= 4096, 'model.probe_hidden', self.probe_hidden,
               'must be in [4, 4096]')
        if self.encoder == 'cnn':
            div = 2 ** len(self.cnn.channels)
            _check(self.image_size % div == 0, 'model.image_size', self.image_size,
                   f'must be divisible by 2**len(cnn.channels)={div}')
        else:
            _check(self.image_size % self.vit.patch_size == 0, 'model.image_size',
                   self.image_size, f'must be divisible by vit.patch_size={self.vit.patch_size}')
        self.probes = tuple(p if isinstance(p, ProbeSpec) else ProbeSpec(**p) for p in self.probes)
        names = [p.name for p in self.probes]
        _check(len(set(names)) == len(names), 'model.probes', names, 'must have unique names')
        self.innovation_scale = tuple(float(v) for v in self.innovation_scale)
        _check(all(v > 0 for v in self.innovation_scale), 'model.innovation_scale',
               self.innovation_scale, 'must be > 0')
        self.action_mean = tuple(float(v) for v in self.action_mean)
        self.action_std = tuple(float(v) for v in self.action_std)
        if self.action_dim:
            self.action_mean = self.action_mean or (0.0,) * self.action_dim
            self.action_std = self.action_std or (1.0,) * self.action_dim
            _check(len(self.action_mean) == self.action_dim == len(self.action_std),
                   'model.action_mean/action_std', (self.action_mean, self.action_std),
                   f'must have action_dim={self.action_dim} values')
            _check(all(s > 0 for s in self.action_std), 'model.action_std', self.action_std,
                   'must be > 0')


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class LossConfig:
    """The self-supervised objective: latent prediction + an anti-collapse regulariser."""

    regularizer: str = 'vicreg'
    """Anti-collapse term: ``vicreg`` (variance + covariance; default, see
    ``ami_ros/model/world_model.py`` for the measurements) or ``sigreg`` (LeJEPA)."""
    reg_weight: float = 1.0
    """Weight of the regulariser relative to the prediction losses (1.0 for vicreg; about 0.1
    for sigreg, whose statistic is scaled by the batch size)."""
    reg_per_step: bool = True
    """Apply the regulariser to each time step of the windows across the batch and average
    (as LeWM does), instead of to all frames at once: frames of one window are near-duplicates,
    and pooling them asks consecutive frames to be as far apart as unrelated ones."""
    sigreg_projections: int = 256
    """SIGReg: number of random 1-D projections per step."""
    sigreg_knots: int = 17
    """SIGReg: quadrature points of the Epps-Pulley integral over t in [0, sigreg_t_max]."""
    sigreg_t_max: float = 3.0
    """SIGReg: upper end of the characteristic-function integral."""
    vicreg_variance_weight: float = 1.0
    """VICReg: weight of the hinge on each dimension's standard deviation (target 1)."""
    vicreg_covariance_weight: float = 0.04
    """VICReg: weight of the squared off-diagonal covariances."""
    horizon: int = 5
    """H: open-loop rollout length trained on (windows hold history + H frames)."""
    teacher_forcing_weight: float = 1.0
    """Weight of the 1-step prediction loss from true (encoded) histories."""
    rollout_weight: float = 1.0
    """Weight of the H-step open-loop rollout loss."""
    target: str = 'ema'
    """Prediction targets: ``ema`` (an exponential-moving-average target encoder; default: on
    arm_reach the others learn static scene features first), ``online`` (gradient through the
    target encoding, as in LeJEPA; best on the tiny dot world) or ``detach`` (stop-gradient)."""
    ema_decay: float = 0.98
    """Decay of the EMA target encoder (used when ``target`` is ``ema``)."""
    idm_weight: float = 0.0
    """Weight of an inverse-dynamics term (as in PLDM, Sobal et al. 2025): a small head must
    recover the normalised action a_t from (z_t, z_{t+1}). It makes the latent keep what the
    robot controls, which pure prediction + anti-collapse can drop in favour of static scene
    features (0 = off). The head is used only in training."""
    idm_hidden: int = 256
    """Hidden width of the inverse-dynamics head."""
    proprio_weight: float = 0.0
    """Weight of a proprioceptive term: a small head must recover the robot's own joint
    positions (``/joint_states``, logged by every robot; standardised) from z_t. It anchors the
    latent to the robot's configuration, which the JEPA terms alone learn slowly (0 = off).
    The head is used only in training."""
    state_proprio_weight: float = 1.0
    """World model v2 (``model.proprio.enabled``): weight of the predicted joint positions and
    end effector against the measured ones (standardised), next to the visual latent's terms."""
    contrastive_weight: float = 0.0
    """Weight of a contrastive prediction term (InfoNCE, as in CPC): each open-loop prediction
    must be nearer its own target state than every other target of the batch (all windows, all
    steps). With the joint states in the state, the contrast is on the whole state, so the
    visual latent gains only by telling apart what the joints do not: the objects the robot
    moves (0 = off)."""
    contrastive_on: str = 'rollout'
    """What the contrastive term compares with the targets: ``rollout`` (the open-loop
    predictions: CPC) or ``encoding`` (each window frame's own state, online encoder, against
    the next frame's target: the encoder alone learns from it, the predictor from the
    prediction errors only)."""
    contrastive_temperature: float = 1.0
    """InfoNCE temperature: logits are minus squared state distances over it."""
    contrastive_visual: bool = False
    """The contrastive term on the visual latent alone, against other windows' frames only:
    the joint states no longer tell frames apart, so the visual latent must (with the robot
    masked out, ``keypoints.self_mask``: the pose of what it moves); a window's own frames are
    left out of the negatives, as they often show the same scene."""

    def __post_init__(self):
        _check(self.regularizer in ('sigreg', 'vicreg'), 'loss.regularizer', self.regularizer,
               "must be 'sigreg' or 'vicreg'")
        _check(self.target in ('online', 'detach', 'ema'), 'loss.target', self.target,
               "must be 'online', 'detach' or 'ema'")
        for name in ('reg_weight', 'vicreg_variance_weight', 'vicreg_covariance_weight',
                     'teacher_forcing_weight', 'rollout_weight', 'idm_weight', 'proprio_weight',
                     'state_proprio_weight', 'contrastive_weight'):
            v = getattr(self, name)
            _check(0 <= v < 1e6, f'loss.{name}', v, 'must be >= 0')
        _check(self.teacher_forcing_weight + self.rollout_weight > 0, 'loss.rollout_weight',
               self.rollout_weight, 'and loss.teacher_forcing_weight must not both be 0')
        _check(1 <= self.sigreg_projections <= 8192, 'loss.sigreg_projections',
               self.sigreg_projections, 'must be in [1, 8192]')
        _check(3 <= self.sigreg_knots <= 257, 'loss.sigreg_knots', self.sigreg_knots,
               'must be in [3, 257]')
        _check(0.5 <= self.sigreg_t_max <= 10, 'loss.sigreg_t_max', self.sigreg_t_max,
               'must be in [0.5, 10]')
        _check(self.contrastive_on in ('rollout', 'encoding'), 'loss.contrastive_on',
               self.contrastive_on, "must be 'rollout' or 'encoding'")
        _check(not (self.contrastive_weight > 0 and self.contrastive_on == 'rollout'
                    and self.rollout_weight == 0), 'loss.contrastive_on', self.contrastive_on,
               "needs loss.rollout_weight > 0 (or contrastive_on: 'encoding')")
        _check(1e-3 <= self.contrastive_temperature <= 1e3, 'loss.contrastive_temperature',
               self.contrastive_temperature, 'must be in [0.001, 1000]')
        _check(1 <= self.horizon <= 64, 'loss.horizon', self.horizon, 'must be in [1, 64]')
        _check(0 < self.ema_decay < 1, 'loss.ema_decay', self.ema_decay, 'must be in (0, 1)')
        _check(4 <= self.idm_hidden <= 8192, 'loss.idm_hidden', self.idm_hidden,
               'must be in [4, 8192]')


@dataclass
class TrainConfig:
    """Optimisation, validation, logging and checkpointing of the main training phase."""

    max_steps: int = 4000
    """Optimiser steps of the main phase."""
    batch_size: int = 32
    """Windows per step per process (each window holds history + horizon frames)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.05
    """The cosine schedule ends at lr * min_lr_ratio."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up steps."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    augment_shift: int = 0
    """Random image shift of up to this many pixels (edge padding), the same for every frame of
    a training window (DrQ-style); fights the encoder memorising episodes (0 = off)."""
    seed: int = 0
    """Seed of initialisation, window sampling, the train/val split and SIGReg projections."""
    device: str = 'auto'
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; with torchrun the
    CUDA device of each process is its LOCAL_RANK."""
    num_threads: int = 0
    """torch CPU threads per process (0 = leave torch's default)."""
    deterministic: bool = True
    """Bit-identical reruns: on CUDA, deterministic kernels (slower); CPU runs are always so."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for validation (at least one episode)."""
    val_every: int = 250
    """Validate every this many steps (and at the end)."""
    val_windows: int = 256
    """Held-out windows used by each validation."""
    log_every: int = 25
    """Append training losses to the logs every this many steps."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many steps (and at the end / on Ctrl-C)."""

    def __post_init__(self):
        _check(self.max_steps >= 0, 'train.max_steps', self.max_steps, 'must be >= 0')
        _check(1 <= self.batch_size <= 65536, 'train.batch_size', self.batch_size,
               'must be in [1, 65536]')
        _check(0 < self.lr < 1, 'train.lr', self.lr, 'must be in (0, 1)')
        _check(0 <= self.min_lr_ratio <= 1, 'train.min_lr_ratio', self.min_lr_ratio,
               'must be in [0, 1]')
        _check(self.warmup_steps >= 0, 'train.warmup_steps', self.warmup_steps, 'must be >= 0')
        _check(0 <= self.weight_decay < 1, 'train.weight_decay', self.weight_decay,
               'must be in [0, 1)')
        _check(self.grad_clip >= 0, 'train.grad_clip', self.grad_clip, 'must be >= 0')
        _check(self.device == 'auto' or self.device == 'cpu' or self.device.startswith('cuda'),
               'train.device', self.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check(0 <= self.num_threads <= 256, 'train.num_threads', self.num_threads,
               'must be in [0, 256]')
        _check(0 <= self.val_fraction < 1, 'train.val_fraction', self.val_fraction,
               'must be in [0, 1)')
        for name in ('val_every', 'val_windows', 'log_every', 'checkpoint_every'):
            v = getattr(self, name)
            _check(v >= 1, f'train.{name}', v, 'must be >= 1')


@dataclass
class ProbeTrainConfig:
    """The second phase: probe heads trained on frozen latents."""

    targets: tuple[str, ...] = ('ee_position', 'joint_positions')
    """Quantities to probe: ground-truth keys or ``joint_positions``; names ending in ``_yaw``
    are angles. Targets absent from the data are skipped with a warning."""
    steps: int = 1500
    """Optimiser steps of the probe phase (0 = no probes)."""
    batch_size: int = 256
    """Latents per probe step."""
    lr: float = 2e-3
    """AdamW learning rate of the probes."""

    def __post_init__(self):
        self.targets = tuple(str(t) for t in self.targets)
        _check(self.steps >= 0, 'probe.steps', self.steps, 'must be >= 0')
        _check(1 <= self.batch_size <= 65536, 'probe.batch_size', self.batch_size,
               'must be in [1, 65536]')
        _check(0 < self.lr < 1, 'probe.lr', self.lr, 'must be in (0, 1)')


@dataclass
class ReaderTrainConfig:
    """The posture-reader phase (world model v2): image -> joint positions and end effector.

    Trained on the training frames with their logged joint states as labels, plus an optional
    *calibration sweep*: i.i.d. postures of the arm rendered by a built-in scene with the goal
    marker on the tool, as a goal photo shows it (a real arm records the same by moving through
    random poses). Frames are not shifted: where things are in the image is the signal.
    """

    steps: int = 3000
    """Optimiser steps of the reader phase."""
    batch_size: int = 64
    """Frames per step."""
    sweep_fraction: float = 0.5
    """Share of each batch drawn from the calibration sweep (when there is one); the rest are
    logged frames. Goal photos look like the sweep; logged frames are what the robot sees."""
    lr: float = 2e-3
    """Peak AdamW learning rate (one-cycle schedule)."""
    sweep_scene: str = ''
    """Built-in scene rendering the calibration sweep ('' = no sweep)."""
    sweep_robot: str = ''
    """Robot config of the arm the sweep renders (a YAML path, or a name in config/robots such
    as boom5; sweep_scene arm_reach); '' = the scene's own arm. ``ami-ros train --robot``."""
    sweep_frames: int = 30000
    """Number of calibration-sweep frames."""
    sweep_seed: int = 1
    """Seed of the sweep's postures."""

    def __post_init__(self):
        _check(self.steps >= 0, 'reader.steps', self.steps, 'must be >= 0')
        _check(2 <= self.batch_size <= 65536, 'reader.batch_size', self.batch_size,
               'must be in [2, 65536]')
        _check(0 < self.lr < 1, 'reader.lr', self.lr, 'must be in (0, 1)')
        _check(0 <= self.sweep_frames <= 10**6, 'reader.sweep_frames', self.sweep_frames,
               'must be in [0, 1e6]')
        _check(0.0 <= self.sweep_fraction <= 1.0, 'reader.sweep_fraction', self.sweep_fraction,
               'must be in [0, 1]')


@dataclass
class GenerateConfig:
    """Episodes generated on the fly by a built-in scene instead of read from bags."""

    scene: str = 'arm_reach'
    """A scene of ``ami_ros.sim.make_scene``, or ``dot`` (a tiny analytic test world)."""
    robot: str = ''
    """Robot config of the arm (scene arm_reach; a YAML path or a shipped name); '' = the
    scene's own arm."""
    episodes: int = 40
    """Number of episodes."""
    length: int = 100
    """Frames per episode."""
    image_size: int = 64
    """Rendered image side in pixels."""
    seed: int = 0
    """Seed of the scene and of its exploration policy."""

    def __post_init__(self):
        _check(1 <= self.episodes <= 100000, 'data.generate.episodes', self.episodes,
               'must be in [1, 100000]')
        _check(2 <= self.length <= 100000, 'data.generate.length', self.length,
               'must be in [2, 100000]')
        _check(16 <= self.image_size <= 512, 'data.generate.image_size', self.image_size,
               'must be in [16, 512]')


@dataclass
class DataConfig:
    """Where training episodes come from."""

    paths: tuple[str, ...] = ()
    """rosbag2 bags, or directories holding them (``ami-ros collect --out DIR``)."""
    weights: tuple[float, ...] = ()
    """One per path: how much likelier a window of that path's episodes is drawn for a
    training batch than one of weight 1 (e.g. ``[1, 1, 4]`` to weigh up the planner's own
    episodes, ``eval-plan --record``, against a larger exploration set); () = all alike."""
    val_paths: tuple[str, ...] = ()
    """Optional separate held-out bags; when empty, ``train.val_fraction`` of episodes is held
    out."""
    generate: GenerateConfig | None = None
    """Generate episodes from a scene instead (used when ``paths`` is empty)."""
    image_topic: str = '/camera/image_raw'
    """Camera topic in the bags (``sensor_msgs/Image``, any common encoding)."""
    joint_states_topic: str = '/joint_states'
    """Joint state topic in the bags (``sensor_msgs/JointState``)."""
    command_topics: tuple[str, ...] = ('/forward_position_controller/commands',
                                       '/joint_trajectory_controller/joint_trajectory',
                                       '/forward_effort_controller/commands')
    """Command topics, first present wins (``Float64MultiArray`` or ``JointTrajectory``)."""
    frame_skip: int = 1
    """Use every n-th camera frame (e.g. 3 for a 30 Hz camera and a 10 Hz model)."""

    def __post_init__(self):
        self.paths = tuple(str(p) for p in self.paths)
        self.val_paths = tuple(str(p) for p in self.val_paths)
        self.weights = tuple(float(w) for w in self.weights)
        _check(not self.weights or len(self.weights) == len(self.paths), 'data.weights',
               self.weights, f'needs one weight per path ({len(self.paths)})')
        _check(all(0.0 < w < math.inf for w in self.weights), 'data.weights', self.weights,
               'must be finite and > 0')
        self.command_topics = tuple(str(t) for t in self.command_topics)
        _check(int(self.frame_skip) >= 1, 'data.frame_skip', self.frame_skip, 'must be >= 1')
        for name in ('image_topic', 'joint_states_topic'):
            _check(str(getattr(self, name)).startswith('/'), f'data.{name}', getattr(self, name),
                   'must be an absolute topic name like /camera/image_raw')

    def read_options(self) -> dict:
        """Keyword arguments of :func:`ami_ros.train.dataset.load_episodes` for these bags."""
        from ami_ros.data.bag import BagTopics
        topics = BagTopics(image=self.image_topic, joint_states=self.joint_states_topic,
                           commands=self.command_topics)
        return {'topics': topics, 'frame_skip': int(self.frame_skip)}


@dataclass
class RunConfig:
    """Everything ``ami-ros train`` needs: one YAML file with these blocks."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture (``model:`` block)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Objective (``loss:`` block)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and bookkeeping (``train:`` block)."""
    probe: ProbeTrainConfig = field(default_factory=ProbeTrainConfig)
    """Probe phase (``probe:`` block)."""
    reader: ReaderTrainConfig = field(default_factory=ReaderTrainConfig)
    """Posture-reader phase of models with ``model.proprio.enabled`` (``reader:`` block)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data sources (``data:`` block)."""

    def __post_init__(self):
        _check(not (self.model.keypoints.self_mask and self.train.augment_shift),
               'train.augment_shift', self.train.augment_shift,
               'must be 0 with model.keypoints.self_mask (a shifted image moves the robot off '
               'where its joint positions put it)')


# --------------------------------------------------------------------------------------------
# dict / YAML <-> dataclasses
# --------------------------------------------------------------------------------------------
def _convert(tp, value, name: str):
    """Convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``name``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, name)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f'{name} must be a mapping, got {value!r}')
        return from_dict(tp, value, name)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f'{name} must be a list, got {value!r}')
        return tuple(_convert(args[0], v, f'{name}[{i}]') for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{name} must be true or false, got {value!r}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{name} must be an integer, got {value!r}')
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{name} must be a number, got {value!r}')
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f'{name} must be a string, got {value!r}')
        return value
    raise ConfigError(f'{name}: unsupported field type {tp!r}')


def from_dict(cls, data: dict[str, Any], prefix: str = ''):
    """Build dataclass ``cls`` from a (YAML-loaded) dict, strictly: unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    dotted = f'{prefix}.' if prefix else ''
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f' (did you mean {dotted}{close[0]}?)' if close else ''
            raise ConfigError(f'{dotted}{key}: unknown field{hint}; fields of {cls.__name__}: '
                              f'{", ".join(names)}')
    kwargs = {k: _convert(hints[k], v, f'{dotted}{k}') for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # the dataclass names its own fields; make the path absolute
        msg = str(exc)
        if prefix and not msg.startswith(prefix):
            msg = f'{prefix}: {msg}'
        raise ConfigError(msg) from None
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f'{prefix or cls.__name__}: {exc}') from None


def to_dict(obj) -> dict[str, Any]:
    """A dataclass as plain JSON/YAML-ready values (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(obj)


def load_run_config(path: str | Path) -> RunConfig:
    """Read a training YAML file into a validated :class:`RunConfig`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{path}: config file not found')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML: {exc}') from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: top level must be a mapping with blocks model/loss/train/'
                          f'probe/data, got {type(data).__name__}')
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f'{path}: {exc}') from None
