"""World-model checkpoints: a directory of safetensors + JSON + sha256; nothing is unpickled.

Layout of a checkpoint directory::

    model.safetensors          learnable weights (encoder, predictor, probes)
    model.safetensors.sha256   "<hex>  model.safetensors" (sha256sum format)
    config.json                architecture, normalisation stats, probe targets, training info,
                               and the sha256 of the weights it was saved with

A resumable training state adds ``optimizer.safetensors`` (+ ``.sha256``) and
``train_state.json`` to the same kind of directory. :func:`load_checkpoint` checks the hash and
that the config fits the weights (every key and shape), and its errors name the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ami_ros.model.config import ConfigError, ModelConfig, ProbeSpec, from_dict, to_dict
from ami_ros.model.world_model import WorldModel
from ami_ros.paths import share_dir

FORMAT = 'ami_ros.world_model'
FORMAT_VERSION = 1
WEIGHTS = 'model.safetensors'
CONFIG = 'config.json'
HASH = WEIGHTS + '.sha256'
OPTIMIZER = 'optimizer.safetensors'
TRAIN_STATE = 'train_state.json'


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or whose config does not fit its weights."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file and its ``.sha256`` side file; returns the hex digest."""
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o644)  # safetensors creates 0600; shipped models must be readable by all
    digest = sha256_file(path)
    Path(f'{path}.sha256').write_text(f'{digest}  {path.name}\n')
    return digest


def load_tensors(path: Path, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking it against its ``.sha256`` side file."""
    hash_file = Path(f'{path}.sha256')
    for p in (path, hash_file):
        if not p.is_file():
            raise CheckpointNotFoundError(f'{p}: missing checkpoint file')
    try:
        expected = hash_file.read_text().split()[0].lower()
    except (IndexError, OSError, UnicodeDecodeError):
        raise CheckpointError(f'{hash_file}: unreadable sha256 file') from None
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f'{path}: sha256 mismatch: file has {actual}, {hash_file.name} '
                              f'says {expected} (corrupt or replaced weights)')
    try:
        return load_file(str(path), device=str(device or 'cpu'))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f'{path}: not a readable safetensors file: {exc}') from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointNotFoundError(f'{path}: missing checkpoint file')
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f'{path}: not valid JSON: {exc}') from None
    if not isinstance(data, dict):
        raise CheckpointError(f'{path}: expected a JSON object, got {type(data).__name__}')
    return data


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + '\n')


class _AtomicDir:
    """Write into a temporary sibling directory, then swap it into place."""

    def __init__(self, directory: Path):
        self.final = Path(directory)
        self.tmp = self.final.parent / f'.{self.final.name}.tmp-{os.getpid()}'

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.final.parent / f'.{self.final.name}.old-{os.getpid()}'
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# model checkpoints
# --------------------------------------------------------------------------------------------
def _config_json(model: WorldModel, digest: str, training: dict | None) -> dict:
    arch = to_dict(model.config)
    probes = arch.pop('probes')
    norm = {'action_mean': arch.pop('action_mean'), 'action_std': arch.pop('action_std'),
            'image': {'scale': '1/255', 'mean': 0.5, 'std': 0.25}}
    return {'format': FORMAT, 'format_version': FORMAT_VERSION, 'weights_sha256': digest,
            'model': arch, 'normalization': norm, 'probes': probes,
            'training': training or {}}


def _model_config_from_json(data: dict, path: Path) -> ModelConfig:
    if data.get('format') != FORMAT:
        raise CheckpointError(f'{path}: not an ami_ros world-model config '
                              f'(format={data.get("format")!r}, expected {FORMAT!r})')
    if data.get('format_version') != FORMAT_VERSION:
        raise CheckpointError(f'{path}: format_version {data.get("format_version")!r} is not '
                              f'supported (this ami_ros reads {FORMAT_VERSION})')
    for key in ('model', 'normalization', 'probes'):
        if key not in data:
            raise CheckpointError(f'{path}: missing key {key!r}')
    arch = dict(data['model'])
    norm = data['normalization']
    try:
        arch['action_mean'] = norm['action_mean']
        arch['action_std'] = norm['action_std']
        arch['probes'] = [from_dict(ProbeSpec, p, f'probes[{i}]')
                          for i, p in enumerate(data['probes'])]
        return from_dict(ModelConfig, arch, 'model')
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f'{path}: invalid model config: {exc}') from None


def save_checkpoint(model: WorldModel, directory: str | Path,
                    training: dict | None = None) -> Path:
    """Save ``model`` as a checkpoint directory (atomically replacing an existing one)."""
    directory = Path(directory)
    with _AtomicDir(directory) as tmp:
        _save_model_files(model, tmp, training)
    return directory


def _save_model_files(model: WorldModel, directory: Path, training: dict | None) -> None:
    digest = save_tensors(directory / WEIGHTS, dict(model.state_dict()),
                          metadata={'format': FORMAT})
    _write_json(directory / CONFIG, _config_json(model, digest, training))


def resolve_checkpoint(dir_or_name: str | Path) -> Path:
    """Find a checkpoint directory.

    Accepts a checkpoint directory, a training output directory (its ``model/``), or a bare
    name such as ``arm_reach`` (``share_dir()/models/<name>``).
    """
    p = Path(dir_or_name).expanduser()
    if not p.exists():
        text = str(dir_or_name)
        if os.sep in text or '/' in text or text.startswith('.'):
            raise CheckpointNotFoundError(f'{p}: no such checkpoint directory')
        shipped = share_dir() / 'models' / text
        if not shipped.exists():
            raise CheckpointNotFoundError(
                f'{text!r}: neither a directory nor a shipped model ({shipped} does not exist)')
        p = shipped
    if p.is_dir() and not (p / WEIGHTS).exists() and (p / 'model' / WEIGHTS).exists():
        p = p / 'model'
    if not p.is_dir():
        raise CheckpointError(f'{p}: a checkpoint is a directory with {WEIGHTS}, {CONFIG} and '
                              f'{HASH}')
    return p


def read_checkpoint_config(directory: Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, raw config.json) of a checkpoint directory, validated."""
    data = _read_json(directory / CONFIG)
    return _model_config_from_json(data, directory / CONFIG), data


def load_checkpoint(dir_or_name: str | Path,
                    device: torch.device | str | None = None) -> WorldModel:
    """Load a checkpoint (see :func:`resolve_checkpoint`) into an eval-mode WorldModel.

    Checks: all files present, the weights' sha256 against ``model.safetensors.sha256`` and
    against the one recorded in ``config.json``, and every weight name and shape against the
    architecture the config describes. Errors are :class:`CheckpointError` naming the file.
    """
    directory = resolve_checkpoint(dir_or_name)
    config, data = read_checkpoint_config(directory)
    weights = directory / WEIGHTS
    state = load_tensors(weights)
    recorded = data.get('weights_sha256')
    actual = sha256_file(weights)
    if recorded is not None and recorded != actual:
        raise CheckpointError(f'{directory / CONFIG}: was saved with weights {recorded}, but '
                              f'{weights} is {actual} (config and weights do not belong together)')
    try:
        model = WorldModel(config)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f'{directory / CONFIG}: cannot build the model: {exc}') from None
    _check_state_fits(model, state, directory)
    model.load_state_dict(state, strict=True)
    model.checkpoint_path = directory
    model.training_info = data.get('training', {})
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _check_state_fits(model: WorldModel, state: dict[str, torch.Tensor], directory: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        problems.append(f'missing weights {missing[:6]}{" ..." if len(missing) > 6 else ""}')
    if unexpected:
        problems.append(f'unexpected weights {unexpected[:6]}'
                        f'{" ..." if len(unexpected) > 6 else ""}')
    shapes = [f'{k}: config wants {expected[k]}, file has {got[k]}'
              for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
    if shapes:
        problems.append('shape mismatch ' + '; '.join(shapes[:6]))
    if problems:
        raise CheckpointError(f'{directory / CONFIG} does not fit {directory / WEIGHTS}: '
                              + ', '.join(problems))


# --------------------------------------------------------------------------------------------
# resumable training state
# --------------------------------------------------------------------------------------------
def save_train_state(directory: str | Path, model: WorldModel,
                     optimizer: torch.optim.Optimizer, state: dict,
                     extra_tensors: dict[str, torch.Tensor] | None = None,
                     training: dict | None = None) -> Path:
    """Model checkpoint + optimizer state + JSON ``state`` (step, ...), atomically.

    ``extra_tensors`` (e.g. an EMA encoder) go into the optimizer file under ``extra/``.
    """
    directory = Path(directory)
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, object] = {}
    for pid, pstate in opt['state'].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f'state/{pid}/{key}'] = value
            else:
                scalars[f'{pid}/{key}'] = value
    for key, value in (extra_tensors or {}).items():
        tensors[f'extra/{key}'] = value
    with _AtomicDir(directory) as tmp:
        _save_model_files(model, tmp, training)
        digest = save_tensors(tmp / OPTIMIZER, tensors, metadata={'format': FORMAT})
        _write_json(tmp / TRAIN_STATE, {
            'format': FORMAT + '.train_state', 'optimizer_sha256': digest,
            'param_groups': opt['param_groups'], 'scalars': scalars, 'state': state})
    return directory


def load_train_state(directory: str | Path, optimizer: torch.optim.Optimizer,
                     device: torch.device | str | None = None
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore ``optimizer`` from a train-state directory; returns (state JSON, extra tensors).

    The model weights are loaded separately with :func:`load_checkpoint` on the same directory.
    """
    directory = Path(directory)
    meta = _read_json(directory / TRAIN_STATE)
    tensors = load_tensors(directory / OPTIMIZER, device=device)
    if meta.get('optimizer_sha256') != sha256_file(directory / OPTIMIZER):
        raise CheckpointError(f'{directory / TRAIN_STATE}: does not belong to '
                              f'{directory / OPTIMIZER} (sha256 differs)')
    opt_state: dict[int, dict] = {}
    extra = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition('/')
        if kind == 'extra':
            extra[rest] = value
            continue
        pid, _, name = rest.partition('/')
        opt_state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get('scalars', {}).items():
        pid, _, name = key.partition('/')
        opt_state.setdefault(int(pid), {})[name] = value
    groups = meta['param_groups']
    for g in groups:
        if isinstance(g.get('betas'), list):
            g['betas'] = tuple(g['betas'])
    try:
        optimizer.load_state_dict({'state': opt_state, 'param_groups': groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f'{directory / OPTIMIZER}: does not fit this optimizer: {exc}'
                              ) from None
    return meta.get('state', {}), extra
