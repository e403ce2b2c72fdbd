"""One inference interface over PyTorch, ONNX Runtime and TensorRT (no ROS import).

A backend is duck-compatible with :class:`~ami_ros.model.world_model.WorldModel` where the
perception, world_model and planner code use it::

    backend = make_backend('onnxruntime', 'arm_reach', BackendConfig(fallback=('torch',)))
    z = backend.encode(frame_uint8_hwc[None])                  # (1, D)
    result = planner.plan(z[None], dynamics=backend.rollout, cost=cost)

* ``encode(images)``: uint8 (B, H, W, 3) RGB (numpy or torch) or float (B, 3, H, W) in [0, 1]
  -> (B, D); other image sizes are resized as the model does.
* ``rollout(z_hist, actions, past_actions=None)``: (B|1, k', D), (B, H, A) -> (B, H, D); the
  whole H-step batched rollout is one call into the backend (one ONNX/TensorRT graph).
* ``probe(z)``: (..., D) -> {name: (..., dim)} in physical units.

Inputs are checked in this module, the same way for every backend: a wrong shape or dtype is a
``ValueError`` naming what was expected and what came, never a silently wrong answer. Outputs
are float32 torch tensors on ``backend.device``.

``make_backend(name, checkpoint, config)`` loads the named backend and, when
``config.fallback`` lists others, tries them in order if it cannot be loaded (missing or corrupt
file, engine built for another GPU or TensorRT, no GPU), logging one line for each that failed.
"""
from __future__ import annotations

import abc
import copy
import hashlib
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

BACKENDS = {
    'torch': ('ami_ros.inference.torch_backend', 'TorchBackend'),
    'onnxruntime': ('ami_ros.inference.onnx_backend', 'OnnxRuntimeBackend'),
    'tensorrt': ('ami_ros.inference.tensorrt_backend', 'TensorRTBackend'),
}
"""Backend name (as used in configuration) -> (module, class); modules load on first use."""

PRECISIONS = ('fp32', 'fp16')
CACHE_ENV = 'AMI_ROS_CACHE'
"""Environment variable naming the cache root (exported ONNX files, TensorRT engines)."""


class BackendUnavailable(RuntimeError):
    """A backend that cannot be loaded here (missing/corrupt file, no GPU, package missing)."""


def cache_root(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Root of ami_ros's caches: ``cache_dir``, else ``$AMI_ROS_CACHE``, else ~/.cache/ami_ros.

    ``$XDG_CACHE_HOME`` replaces ~/.cache when set. Never a fixed path shared between users.
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    return (Path(xdg).expanduser() if xdg else Path.home() / '.cache') / 'ami_ros'


@dataclass
class BackendConfig:
    """How a world model is served: which device, threads, exported graphs and engines."""

    device: str = 'auto'
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    fallback: tuple[str, ...] = ()
    """Backends tried in this order when the requested one cannot be loaded, e.g.
    ``('onnxruntime', 'torch')`` after ``tensorrt``; empty = fail instead."""
    num_threads: int = 0
    """CPU threads: ONNX Runtime's intra-op pool, and torch's (process-wide) for the torch
    backend; 0 = leave each library's default."""
    spin_threads: bool = False
    """ONNX Runtime: let idle pool threads busy-wait for the next call. Slightly lower latency
    on a CPU the process has to itself; on a shared one (other nodes, a simulator) spinning
    threads steal the cores the rest of the stack needs (measured: a 300x5 rollout took 2x
    longer with spinning on a loaded 2-core machine)."""
    horizon: int = 5
    """H the rollout graph is exported/built for (the planner's horizon). Other horizons
    still work (padded or chained calls of the same graph) but cost more."""
    planning_batch: int = 300
    """Largest rollout batch (the planner's sample count): TensorRT's optimisation profile and
    CUDA graph are made for it."""
    onnx_dir: Optional[str] = None
    """Directory written by ``ami-ros export`` to load ONNX graphs from; None = export the
    checkpoint into the cache (``<cache>/onnx/<model sha256>-h<H>``) when first needed."""
    cache_dir: Optional[str] = None
    """Cache root; None = ``$AMI_ROS_CACHE`` or ``~/.cache/ami_ros`` (engines in ``engines/``)."""
    precision: str = 'fp16'
    """TensorRT engine precision, ``fp16`` or ``fp32`` (torch and ONNX Runtime run fp32)."""
    cuda_graphs: bool = True
    """TensorRT: replay the planning-batch rollout as a captured CUDA graph."""

    def __post_init__(self):
        dev = str(self.device)
        indexed = dev.startswith('cuda:') and dev[5:].isdigit()
        if not (dev in ('auto', 'cpu', 'cuda') or indexed):
            raise ValueError(f"BackendConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                             f'got {self.device!r}')
        if isinstance(self.fallback, str):
            self.fallback = (self.fallback,)
        self.fallback = tuple(str(f).strip().lower() for f in self.fallback)
        for f in self.fallback:
            if f not in BACKENDS:
                raise ValueError(f'BackendConfig.fallback: unknown backend {f!r}; choose from '
                                 f'{sorted(BACKENDS)}')
        if not 0 <= int(self.num_threads) <= 256:
            raise ValueError(f'BackendConfig.num_threads must be in [0, 256], '
                             f'got {self.num_threads}')
        if not 1 <= int(self.horizon) <= 256:
            raise ValueError(f'BackendConfig.horizon must be in [1, 256], got {self.horizon}')
        if not 1 <= int(self.planning_batch) <= 1 << 20:
            raise ValueError(f'BackendConfig.planning_batch must be in [1, 2**20], '
                             f'got {self.planning_batch}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'BackendConfig.precision must be one of {PRECISIONS}, '
                             f'got {self.precision!r}')
        if not isinstance(self.spin_threads, bool):
            raise ValueError(f'BackendConfig.spin_threads must be a bool, '
                             f'got {self.spin_threads!r}')
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f'BackendConfig.cuda_graphs must be a bool, got {self.cuda_graphs!r}')


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about the model's tensors (from the model or an export)."""

    latent_dim: int
    action_dim: int
    history: int
    action_history: int
    image_size: int
    probes: tuple[tuple[str, int], ...] = field(default=())
    """(name, dim) of each probe head, in the model's order."""

    @classmethod
    def of(cls, model) -> 'ModelSpec':
        """The spec of a :class:`WorldModel`."""
        cfg = model.config
        # the state's size: the visual latent, plus joints and end effector with proprioception
        return cls(int(model.latent_dim), int(cfg.action_dim), int(cfg.predictor.history),
                   int(cfg.predictor.action_history), int(model.input_size),
                   tuple((p.name, int(p.dim)) for p in cfg.probes))

    def to_dict(self) -> dict:
        return {'latent_dim': self.latent_dim, 'action_dim': self.action_dim,
                'history': self.history, 'action_history': self.action_history,
                'image_size': self.image_size, 'probes': [list(p) for p in self.probes]}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> 'ModelSpec':
        try:
            return cls(int(data['latent_dim']), int(data['action_dim']), int(data['history']),
                       int(data['action_history']), int(data['image_size']),
                       tuple((str(n), int(d)) for n, d in data.get('probes', [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f'{where}: invalid model description ({exc!r})') from None


def model_sha256(model) -> str:
    """sha256 of the model's weights as a safetensors file, as ``save_checkpoint`` writes it.

    For a model loaded from a checkpoint this is the ``model.safetensors.sha256`` of that
    checkpoint; computed from the live weights, so every backend of one model reports the same.
    """
    from safetensors.torch import save as st_save

    from ami_ros.model.checkpoint import FORMAT

    tensors = {k: v.detach().to('cpu').contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(st_save(tensors, metadata={'format': FORMAT})).hexdigest()


def resolve_device(preference: str) -> torch.device:
    """The device named by a BackendConfig.device value (``auto``: CUDA if torch has one)."""
    if preference == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(preference)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise BackendUnavailable(f'device {preference!r} was asked for but torch sees no '
                                     f'CUDA GPU')
        if dev.index is None:
            dev = torch.device('cuda', torch.cuda.current_device())
    return dev


class ModelSource:
    """The model a backend serves: a checkpoint (directory or shipped name), loaded once."""

    def __init__(self, checkpoint):
        self._model = None
        self._sha256: Optional[str] = None
        self.checkpoint = checkpoint
        if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
            if not hasattr(checkpoint, 'rollout_normalized'):
                raise TypeError(f'checkpoint must be a path, a shipped model name or a '
                                f'WorldModel, got {type(checkpoint).__name__}')
            self._model = checkpoint  # backends copy it: the caller's model is not changed

    @property
    def available(self) -> bool:
        return self.checkpoint is not None

    def model(self):
        """The WorldModel (loaded on the CPU, or the one given); backends use copies of it."""
        if self._model is None:
            if self.checkpoint is None:
                raise BackendUnavailable('no checkpoint was given (and no exported graphs)')
            from ami_ros.model.checkpoint import load_checkpoint
            self._model = load_checkpoint(self.checkpoint)
        return self._model

    def sha256(self) -> str:
        """sha256 of the weights: of the live model, or the checkpoint's recorded one."""
        if self._sha256 is None:
            if self._model is not None:
                self._sha256 = model_sha256(self._model)
            else:
                from ami_ros.model.checkpoint import (HASH, CheckpointError,
                                                      resolve_checkpoint)
                path = resolve_checkpoint(self.checkpoint) / HASH
                try:
                    self._sha256 = path.read_text().split()[0].lower()
                except (OSError, IndexError, UnicodeDecodeError):
                    raise CheckpointError(f'{path}: missing or unreadable sha256 file') from None
        return self._sha256

    def describe(self) -> str:
        if isinstance(self.checkpoint, (str, Path)):
            return str(self.checkpoint)
        path = getattr(self._model, 'checkpoint_path', None)
        return str(path) if path is not None else 'in-memory model'


# --------------------------------------------------------------------------------------------
# input checks shared by every backend
# --------------------------------------------------------------------------------------------
def _shape(x) -> tuple:
    return tuple(getattr(x, 'shape', ()))


def _dtype(x) -> str:
    return str(getattr(x, 'dtype', type(x).__name__)).replace('torch.', '')


def preprocess_images(images, image_size: int, device: torch.device,
                      who: str = 'encode') -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> float32 (B, 3, S, S) in [0, 1].

    The same conversion and resize (``resize_square``) as ``WorldModel.preprocess``; the
    normalisation itself is part of the encoder graph.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f'{who}: images must be uint8 (B, H, W, 3) RGB or float '
                             f'(B, 3, H, W) in [0, 1], got numpy {images.dtype} '
                             f'{images.shape}')
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f'{who}: images must be a torch tensor or numpy array, '
                         f'got {type(images).__name__}')
    x = images
    expected = 'uint8 (B, H, W, 3) RGB or float (B, 3, H, W) in [0, 1]'
    if x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f'{who}: images must be {expected}, got {_dtype(x)} {_shape(x)}')
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f'{who}: uint8 images must be (B, H, W, 3) RGB, got {_shape(x)}')
        x = x.to(device).permute(0, 3, 1, 2).float() / 255.0
    elif x.is_floating_point():
        if x.shape[1] != 3:
            raise ValueError(f'{who}: float images must be (B, 3, H, W), got {_shape(x)}')
        x = x.to(device=device, dtype=torch.float32)
    else:
        raise ValueError(f'{who}: images must be {expected}, got {_dtype(x)} {_shape(x)}')
    from ami_ros.model.world_model import resize_square

    return resize_square(x, image_size).contiguous()


def _float_tensor(name: str, x, expected: str, device: torch.device, ndim: int,
                  last: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'{name} must be a float tensor {expected}, got {type(x).__name__}')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a float tensor {expected}, got {_dtype(x)} '
                         f'{_shape(x)}')
    if x.dim() != ndim or x.shape[-1] != last or any(s < 1 for s in x.shape):
        raise ValueError(f'{name} must be {expected}, got shape {_shape(x)}')
    return x.to(device=device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------
class InferenceBackend(abc.ABC):
    """Encoder, batched rollout and probes of one world model on one runtime and device."""

    name = 'base'

    def __init__(self, spec: ModelSpec, device: torch.device, sha256: str,
                 config: BackendConfig):
        self.spec = spec
        self.config = config
        self._device = torch.device(device)
        self._sha256 = sha256

    # ---------------------------------------------------------------- description
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def sha256(self) -> str:
        """sha256 of the served model's weights (as in its checkpoint's .sha256 file)."""
        return self._sha256

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    @property
    def history(self) -> int:
        """k: number of latents the predictor conditions on."""
        return self.spec.history

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def probe_names(self) -> tuple[str, ...]:
        names = tuple(n for n, _ in self.spec.probes)
        if self._proprio is not None:
            names += tuple(n for n in self._proprio.probe_names if n not in names)
        return names

    # ---------------------------------------------------------------- proprioception (v2)
    # A model with joint states in its state: the small, exact parts of it (standardisation,
    # forward kinematics) run in torch on the CPU next to any runtime.
    _proprio = None

    def attach_proprio(self, model) -> None:
        """Serve ``model``'s proprioceptive parts (a WorldModel with ``proprio.enabled``)."""
        self._proprio = copy.deepcopy(model).cpu().eval() \
            if getattr(model, 'has_proprio', False) else None

    @property
    def has_proprio(self) -> bool:
        return self._proprio is not None

    @property
    def visual_dim(self) -> int:
        return self._proprio.visual_dim if self._proprio is not None else self.latent_dim

    @property
    def innovation_scale(self) -> Optional[torch.Tensor]:
        return self._proprio.innovation_scale if self._proprio is not None else None

    def state_slices(self) -> dict:
        return self._proprio.state_slices() if self._proprio is not None else \
            {'visual': slice(0, self.latent_dim)}

    @torch.no_grad()
    def with_joints(self, state: torch.Tensor, joints) -> torch.Tensor:
        """``state`` (..., D) with its proprio part from measured ``joints`` (..., J)."""
        if self._proprio is None:
            raise ValueError('this model has no joint states in its state')
        out = self._proprio.with_joints(state.detach().float().cpu(),
                                        torch.as_tensor(joints, dtype=torch.float32).cpu())
        return out.to(device=state.device, dtype=state.dtype)

    @torch.no_grad()
    def ee_of_joints(self, joints: torch.Tensor) -> torch.Tensor:
        """End-effector position (..., E) in metres at joint positions (..., J) in radians."""
        if self._proprio is None:
            raise ValueError('this model has no joint states in its state')
        return self._proprio.ee_of_joints(joints.float().cpu()).to(joints)

    def decode_proprio(self, z: torch.Tensor, part: str) -> torch.Tensor:
        """The state's ``joints`` (rad) or ``ee`` (m) part in physical units."""
        if self._proprio is None:
            raise ValueError('this model has no joint states in its state')
        m = self._proprio
        stats = {'joints': (m.joint_mean, m.joint_std), 'ee': (m.ee_mean, m.ee_std)}
        sl = m.state_slices().get(part)
        if sl is None:
            raise ValueError(f'the state has no {part!r} part')
        mean, std = (t.to(device=z.device, dtype=z.dtype) for t in stats[part])
        return z[..., sl] * std + mean

    @property
    def horizon(self) -> int:
        """H the rollout graph was made for (other horizons cost padded/chained calls)."""
        return int(self.config.horizon)

    def info(self) -> dict:
        """Diagnostics: backend, device, model hash, shapes, and the runtime's own details."""
        return {'backend': self.name, 'device': str(self.device), 'sha256': self.sha256,
                **self.spec.to_dict(), 'horizon': self.horizon, **self._info()}

    def _info(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(device={self.device}, sha256={self.sha256[:12]}, '
                f'latent_dim={self.latent_dim}, action_dim={self.action_dim})')

    # ---------------------------------------------------------------- public API
    def encode(self, images) -> torch.Tensor:
        """Images -> latents (B, D): uint8 (B, H, W, 3) RGB or float (B, 3, H, W) in [0, 1]."""
        x = preprocess_images(images, self.image_size, self.device, f'{self.name}.encode')
        return self._encode(x)

    def rollout(self, z_hist, actions, past_actions=None) -> torch.Tensor:
        """Open-loop rollout -> (B, H, D), as ``WorldModel.rollout``.

        z_hist (B, k', D) or (1, k', D) broadcast over the actions' batch; k' < k repeats the
        oldest latent, k' > k keeps the last k. actions (B, H, A) physical units. past_actions
        (B|1, >= m-1, A): commands in force before ``z_hist[:, -1]`` (used when the model
        conditions on m > 1 actions; default: ``actions[:, :1]`` repeated).
        """
        d, a_dim, k, m = self.latent_dim, self.action_dim, self.history, self.spec.action_history
        who = f'{self.name}.rollout'
        a = _float_tensor(f'{who}: actions', actions, f'(B, H, A={a_dim})', self.device, 3,
                          a_dim)
        z = _float_tensor(f'{who}: z_hist', z_hist, f"(B, k', D={d})", self.device, 3, d)
        b = a.shape[0]
        if z.shape[0] not in (1, b):
            raise ValueError(f'{who}: z_hist batch must be 1 or the actions batch {b}, '
                             f'got z_hist {_shape(z)} and actions {_shape(a)}')
        if z.shape[1] < k:
            z = torch.cat([z[:, :1].expand(-1, k - z.shape[1], -1), z], dim=1)
        z = z[:, -k:].expand(b, -1, -1).contiguous()  # (B, k, D)
        past = None
        if m > 1:
            if past_actions is None:
                past = a[:, :1].expand(-1, m - 1, -1)
            else:
                past = _float_tensor(f'{who}: past_actions', past_actions,
                                     f'(B, >= {m - 1}, A={a_dim})', self.device, 3, a_dim)
                if past.shape[0] not in (1, b) or past.shape[1] < m - 1:
                    raise ValueError(f'{who}: past_actions must be (1 or B={b}, >= {m - 1}, '
                                     f'{a_dim}), got {_shape(past)}')
                past = past[:, -(m - 1):].expand(b, -1, -1)
            past = past.contiguous()  # (B, m-1, A)
        return self._rollout(z, a.contiguous(), past)

    def probe(self, z) -> dict[str, torch.Tensor]:
        """Latents (..., D) -> {name: (..., dim)} in physical units (empty without probes)."""
        d = self.latent_dim
        if isinstance(z, np.ndarray):
            z = torch.from_numpy(np.ascontiguousarray(z))
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise ValueError(f'{self.name}.probe: z must be a float tensor (..., D={d}), got '
                             f'{_dtype(z)} {_shape(z)}')
        if z.dim() < 1 or z.shape[-1] != d or z.numel() == 0:
            raise ValueError(f'{self.name}.probe: z must be (..., D={d}), got {_shape(z)}')
        out = {}
        if self.spec.probes:
            lead = z.shape[:-1]
            flat = z.to(device=self.device, dtype=torch.float32).reshape(-1, d).contiguous()
            heads = self._probe(flat)
            out = {name: heads[name].reshape(*lead, dim) for name, dim in self.spec.probes}
        if self._proprio is not None:
            out['joint_positions'] = self.decode_proprio(z, 'joints')
            if 'ee' in self.state_slices():
                out['ee_position'] = self.decode_proprio(z, 'ee')
        return out

    def plan_search(self, planner, cost):
        """Return a ``search`` for ``planner.plan`` running whole plans here, or None.

        The search runs every planner iteration inside this backend in one call
        (``ami_ros.planning.graph``); None: it runs eagerly in torch around :meth:`rollout`.
        ``cost`` must be a ``latent_goal_cost``; other costs get None.
        """
        return None

    # ---------------------------------------------------------------- for subclasses
    @abc.abstractmethod
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """float32 (B, 3, S, S) in [0, 1] on the device -> (B, D)."""

    @abc.abstractmethod
    def _rollout(self, z_hist: torch.Tensor, actions: torch.Tensor,
                 past: Optional[torch.Tensor]) -> torch.Tensor:
        """Contiguous float32 (B, k, D), (B, H, A), (B, m-1, A) or None -> (B, H, D)."""

    @abc.abstractmethod
    def _probe(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Contiguous float32 (N, D) -> {name: (N, dim)}."""


def make_backend(name: str, checkpoint=None,
                 config: Optional[BackendConfig] = None) -> InferenceBackend:
    """The backend ``name`` ('torch', 'onnxruntime', 'tensorrt') serving ``checkpoint``.

    ``checkpoint``: a checkpoint directory, a shipped model name (``arm_reach``) or a
    WorldModel; may be None for onnxruntime/tensorrt with ``config.onnx_dir``. When the backend
    cannot be loaded (:class:`BackendUnavailable`) the ones in ``config.fallback`` are tried in
    order, with one log line each; a checkpoint that is itself missing or corrupt is an error
    for every backend and is raised at once.
    """
    config = config or BackendConfig()
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f'unknown inference backend {name!r}; choose one of {sorted(BACKENDS)}')
    order = [key] + [f for f in config.fallback if f != key]
    source = ModelSource(checkpoint)
    failures = []
    for i, candidate in enumerate(order):
        module, cls = BACKENDS[candidate]
        try:
            backend_cls = getattr(importlib.import_module(module), cls)
            backend = backend_cls(source, config)
            if source.available:
                backend.attach_proprio(source.model())
        except BackendUnavailable as exc:
            failures.append(f'{candidate}: {exc}')
            if i + 1 < len(order):
                log.warning(f'inference backend {candidate!r} unavailable: {exc}; falling back '
                            f'to {order[i + 1]!r}')
            continue
        if i > 0:
            log.info(f'inference backend {candidate!r} loaded (fallback from {key!r})')
        return backend
    hint = '' if config.fallback else ' (BackendConfig.fallback is empty: no fallback allowed)'
    raise BackendUnavailable(f'no inference backend could be loaded{hint}: '
                             + '; '.join(failures))
