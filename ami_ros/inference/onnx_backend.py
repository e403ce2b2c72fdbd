"""ONNX export of a world model, and the ONNX Runtime backend that serves it.

``export_onnx(model, out_dir, horizon)`` writes three graphs, each with a dynamic batch axis
named ``batch`` and the model's description in its metadata (``ami_ros.*`` properties):

* ``encoder.onnx``: ``images`` float32 (batch, 3, S, S) RGB in [0, 1] -> ``latent`` (batch, D)
  (the model's pixel normalisation is inside the graph; uint8 conversion and resizing happen in
  :func:`~ami_ros.inference.base.preprocess_images`);
* ``rollout.onnx``: ``z_hist`` (batch, k, D), ``actions`` (batch, H, A) in physical units
  [, ``past_actions`` (batch, m-1, A) when the model conditions on m > 1 actions] ->
  ``latents`` (batch, H, D). The model's per-step Python loop is unrolled for the fixed horizon
  H (recorded in the metadata), so the planner's whole rollout is one graph call;
* ``probes.onnx`` (when the model has probes): ``latent`` (batch, D) -> one output per probe,
  named as the probe, in physical units.

``export.json`` beside them records the source weights' sha256, the horizon, the opset, every
input/output name, shape and dtype (read back from the graphs, never typed by a user) and each
file's sha256, which the backend checks before loading: a missing, truncated or replaced file
is reported by name and the backend is unavailable (so ``make_backend`` can fall back).
"""
from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ami_ros.inference.base import (PRECISIONS, BackendConfig, BackendUnavailable,
                                    InferenceBackend, ModelSource, ModelSpec, cache_root,
                                    model_sha256, resolve_device)
from ami_ros.model.checkpoint import sha256_file

log = logging.getLogger(__name__)

EXPORT_FORMAT = 'ami_ros.onnx_export'
EXPORT_VERSION = 1
SIDECAR = 'export.json'
OPSET = 17
"""ONNX opset: 17 has LayerNormalization and is read by TensorRT 8.6+ (JetPack 6) and 10."""
EXPORTERS = ('torchscript', 'dynamo')
GRAPH_FILES = {'encoder': 'encoder.onnx', 'rollout': 'rollout.onnx', 'probes': 'probes.onnx'}
META_PREFIX = 'ami_ros.'


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
class _Graph(nn.Module):
    """Base of the exported wrappers: fp32 inputs and outputs, fp32 or fp16 inside.

    fp16 graphs (for TensorRT's strongly typed builds, where the precision is the graph's)
    hold the model in half precision and cast at the inputs and outputs, so callers always
    exchange float32 tensors.
    """

    def __init__(self, model, half: bool):
        super().__init__()
        self.model = model.half() if half else model
        self.dtype = torch.float16 if half else torch.float32


class _EncoderGraph(_Graph):
    """images float (B, 3, S, S) in [0, 1] -> latent (B, D): the model's own preprocessing."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.preprocess(images).to(self.dtype)  # normalised, at the encoder's size
        if getattr(m, 'reader', None) is None:
            return m.encoder(x).float()
        # v2: the state read from the image alone (joints and end effector by the reader),
        # which may read larger frames than the encoder sees
        xr = x if m.reader_size == m.config.image_size else m.preprocess(
            images, m.reader_size).to(self.dtype)
        return m.state_of(x, m.reader(xr)).float()


class _RolloutGraph(_Graph):
    """(z_hist (B, k, D), actions (B, H, A)[, past (B, m-1, A)]) -> (B, H, D), loop unrolled."""

    def forward(self, z_hist: torch.Tensor, actions: torch.Tensor,
                past_actions: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = self.model
        a = m.normalize_actions(actions.to(self.dtype))  # (B, H, A)
        if past_actions is not None:
            a = torch.cat([m.normalize_actions(past_actions.to(self.dtype)), a], dim=1)
        return m.rollout_normalized(z_hist.to(self.dtype), a).float()  # (B, H, D)


class _ProbeGraph(_Graph):
    """latent (B, D) -> one (B, dim) output per probe, in the model's order."""

    def forward(self, z: torch.Tensor):
        out = self.model.probe(z.to(self.dtype))
        return tuple(out[n].float() for n in self.model.probes.keys())


def _graphs(model, spec: ModelSpec, horizon: int, probes: bool, half: bool):
    """(graph name, module, example inputs, input names, output names) of each graph.

    Examples have batch 2 so that no exporter mistakes the batch axis for a constant 1.
    """
    b, d, a, k, m = 2, spec.latent_dim, spec.action_dim, spec.history, spec.action_history
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, spec.image_size, spec.image_size, generator=gen)
    out = [('encoder', _EncoderGraph(model, half).eval(), (images,), ['images'], ['latent'])]
    z = torch.randn(b, k, d, generator=gen)
    acts = torch.randn(b, horizon, a, generator=gen)
    if m > 1:
        past = torch.randn(b, m - 1, a, generator=gen)
        out.append(('rollout', _RolloutGraph(model, half).eval(), (z, acts, past),
                    ['z_hist', 'actions', 'past_actions'], ['latents']))
    else:
        out.append(('rollout', _RolloutGraph(model, half).eval(), (z, acts), ['z_hist', 'actions'],
                    ['latents']))
    if probes and spec.probes:
        out.append(('probes', _ProbeGraph(model, half).eval(), (torch.randn(b, d, generator=gen),),
                    ['latent'], [n for n, _ in spec.probes]))
    return out


def _export_graph(module, args, path: Path, inputs, outputs, opset: int, exporter: str,
                  dynamic: Optional[dict] = None):
    if dynamic is None:
        dynamic = {n: {0: 'batch'} for n in [*inputs, *outputs]}
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation; tracing warns about the shape
        # checks of encode(), which are constants for a fixed image size
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        if exporter == 'dynamo':
            # it reports progress on stdout (kept clean for --json) and warns about internals
            warnings.simplefilter('ignore', FutureWarning)
            warnings.simplefilter('ignore', UserWarning)
            batch = torch.export.Dim('batch', min=1, max=1 << 20)
            shapes = {n: {0: batch} for n in inputs}
            names = list(module.forward.__code__.co_varnames[1:1 + len(inputs)])
            with contextlib.redirect_stdout(sys.stderr):
                torch.onnx.export(module, args, str(path), input_names=inputs,
                                  output_names=outputs, opset_version=opset, dynamo=True,
                                  dynamic_shapes={nm: shapes[i] for nm, i in zip(names, inputs)},
                                  external_data=False, verbose=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False,
                              do_constant_folding=True)


def _tensor_desc(value_info) -> dict:
    import onnx

    t = value_info.type.tensor_type
    shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    return {'name': value_info.name, 'shape': shape,
            'dtype': onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}


def _finish_graph(path: Path, graph: str, common: dict) -> dict:
    """Add ami_ros metadata to an exported file, check it; its inputs/outputs and sha256."""
    import onnx

    proto = onnx.load(str(path))
    ios = {'inputs': [_tensor_desc(v) for v in proto.graph.input],
           'outputs': [_tensor_desc(v) for v in proto.graph.output]}
    for desc in [*ios['inputs'], *ios['outputs']]:
        if desc['shape'][:1] != ['batch']:
            raise RuntimeError(f'{path}: {desc["name"]} has no dynamic batch axis '
                               f'(shape {desc["shape"]}): the exporter specialised it')
    meta = {**common, 'graph': graph, 'inputs': json.dumps(ios['inputs']),
            'outputs': json.dumps(ios['outputs'])}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)
    proto.producer_name = 'ami_ros'
    proto.doc_string = f'ami_ros world model {graph} graph (weights {common["weights_sha256"]})'
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return ios


def export_onnx(model, out_dir, horizon: int = 5, probes: bool = True, opset: int = OPSET,
                exporter: str = 'torchscript', checkpoint: Optional[str] = None,
                precision: str = 'fp32') -> dict:
    """Export ``model``'s encoder, H-step rollout and probes to ``out_dir``; returns export.json.

    ``precision`` 'fp16' computes in half precision inside the graphs (inputs and outputs stay
    float32): what TensorRT 11's strongly typed builds need for FP16 engines. Files are written
    under temporary names and moved into place, export.json last, so a reader never sees a
    half-written export.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    if not 1 <= int(horizon) <= 256:
        raise ValueError(f'horizon must be in [1, 256], got {horizon}')
    if int(opset) < 17:
        raise ValueError(f'opset must be >= 17 (LayerNormalization), got {opset}')
    if exporter == 'dynamo' and int(opset) < 18:
        # torch's dynamo exporter writes opset 18 and its down-conversion to 17 produces
        # invalid Split nodes (measured with torch 2.13 / onnxscript 0.7)
        log.info(f'the dynamo exporter needs opset >= 18; using 18 instead of {opset}')
        opset = 18
    import onnx

    model = copy.deepcopy(model).to('cpu').eval()
    spec = ModelSpec.of(model)
    sha = model_sha256(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {'format': EXPORT_FORMAT, 'format_version': EXPORT_VERSION, 'weights_sha256': sha,
              'horizon': int(horizon), 'precision': precision,
              'model': json.dumps(spec.to_dict())}
    t0 = time.perf_counter()
    graphs, written = {}, []
    try:
        half = precision == 'fp16'
        for name, module, args, inputs, outputs in _graphs(model, spec, int(horizon), probes,
                                                           half):
            final = out_dir / GRAPH_FILES[name]
            tmp = out_dir / f'.{final.name}.tmp-{os.getpid()}'
            written.append(tmp)
            _export_graph(module, args, tmp, inputs, outputs, int(opset), exporter)
            ios = _finish_graph(tmp, name, common)
            graphs[name] = {'file': final.name, 'sha256': sha256_file(tmp), **ios}
        for name, info in graphs.items():
            os.replace(out_dir / f'.{info["file"]}.tmp-{os.getpid()}', out_dir / info['file'])
    finally:
        for tmp in written:
            tmp.unlink(missing_ok=True)
    sidecar = {'format': EXPORT_FORMAT, 'format_version': EXPORT_VERSION,
               'weights_sha256': sha, 'checkpoint': checkpoint, 'horizon': int(horizon),
               'precision': precision, 'opset': int(opset), 'exporter': exporter,
               'torch': torch.__version__, 'onnx': onnx.__version__, 'model': spec.to_dict(),
               'graphs': graphs,
               'export_seconds': round(time.perf_counter() - t0, 3)}
    tmp = out_dir / f'.{SIDECAR}.tmp-{os.getpid()}'
    tmp.write_text(json.dumps(sidecar, indent=2) + '\n')
    os.replace(tmp, out_dir / SIDECAR)
    return sidecar


def read_export(onnx_dir, check_hashes: bool = True) -> dict:
    """export.json of an export directory, with every graph file present and unaltered."""
    onnx_dir = Path(onnx_dir).expanduser()
    path = onnx_dir / SIDECAR
    if not path.is_file():
        raise BackendUnavailable(f'{path}: missing (not an `ami-ros export` directory)')
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise BackendUnavailable(f'{path}: not valid JSON ({exc})') from None
    fmt = data.get('format') if isinstance(data, dict) else None
    if fmt != EXPORT_FORMAT:
        raise BackendUnavailable(f'{path}: not an ami_ros ONNX export (format {fmt!r})')
    if data.get('format_version') != EXPORT_VERSION:
        raise BackendUnavailable(f'{path}: format_version {data.get("format_version")!r} is not '
                                 f'supported (this ami_ros reads {EXPORT_VERSION}); export again')
    graphs = data.get('graphs')
    if not isinstance(graphs, dict) or not {'encoder', 'rollout'} <= set(graphs):
        raise BackendUnavailable(f'{path}: lists no encoder/rollout graphs')
    data['spec'] = ModelSpec.from_dict(data.get('model', {}), str(path))
    data.setdefault('precision', 'fp32')
    for name, info in graphs.items():
        f = onnx_dir / str(info.get('file', ''))
        if not f.is_file():
            raise BackendUnavailable(f'{f}: missing ONNX file ({name} graph listed in {path})')
        if check_hashes and sha256_file(f) != info.get('sha256'):
            raise BackendUnavailable(f'{f}: sha256 differs from {path} (corrupt or replaced '
                                     f'file); export again with `ami-ros export`')
        info['path'] = str(f)
    if data['spec'].probes and 'probes' not in graphs:
        data['spec'] = dataclasses.replace(data['spec'], probes=())
    return data


def ensure_export(source: ModelSource, config: BackendConfig, precision: str = 'fp32') -> dict:
    """The export to serve: ``config.onnx_dir``, or the checkpoint's export in the cache.

    A cached export is reused when its weights hash, horizon and precision match; otherwise the
    model is exported again (one log line says why). ``precision`` only applies to the cache:
    an ``onnx_dir`` is served as it was exported.
    """
    if config.onnx_dir:
        data = read_export(config.onnx_dir)
        if source.available and data['weights_sha256'] != source.sha256():
            raise BackendUnavailable(
                f'{config.onnx_dir} was exported from weights {data["weights_sha256"][:12]}, '
                f'the checkpoint {source.describe()} has {source.sha256()[:12]}: export again')
        data['dir'] = str(Path(config.onnx_dir).expanduser())
        return data
    if not source.available:
        raise BackendUnavailable('needs a checkpoint or BackendConfig.onnx_dir, got neither')
    sha = source.sha256()
    tag = '' if precision == 'fp32' else f'-{precision}'
    directory = cache_root(config.cache_dir) / 'onnx' / f'{sha[:16]}-h{int(config.horizon)}{tag}'
    reason = 'not exported yet'
    if (directory / SIDECAR).is_file():
        try:
            data = read_export(directory)
            if (data['weights_sha256'] == sha and data['horizon'] == int(config.horizon)
                    and data['precision'] == precision):
                data['dir'] = str(directory)
                return data
            reason = 'cached export is for other weights or horizon'
        except BackendUnavailable as exc:
            reason = f'cached export unusable: {exc}'
    log.info(f'exporting {source.describe()} to ONNX in {directory} ({reason})')
    checkpoint = None if not isinstance(source.checkpoint, (str, Path)) else str(source.checkpoint)
    export_onnx(source.model(), directory, horizon=int(config.horizon), checkpoint=checkpoint,
                precision=precision)
    data = read_export(directory)
    data['dir'] = str(directory)
    return data


def export_plan(model, planner, cost, horizon: int, cache_dir=None,
                weights_sha256: Optional[str] = None) -> Path:
    """Export one whole planner search (``ami_ros.planning.graph``) to the cache; its path.

    Reused when present (the name holds the weights hash and the planner/budget/cost/horizon
    key); written under a temporary name and moved into place.
    """
    from ami_ros.planning.graph import PLAN_INPUTS, PLAN_OUTPUTS, PlanGraph, plan_examples, \
        plan_key

    sha = weights_sha256 or model_sha256(model)
    path = (cache_root(cache_dir) / 'onnx'
            / f'plan-{sha[:16]}-{plan_key(planner, cost, horizon)}.onnx')
    if path.is_file():
        return path
    cfg = planner.config
    log.info(f'exporting the {planner.name} plan ({cfg.n_samples} samples x horizon {horizon} x '
             f'{cfg.iterations} iterations) to {path}')
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).to('cpu').eval()
    module = PlanGraph(model, planner, cost.metric, cost.terminal_weight,
                       cost.running_weight).eval()
    args = plan_examples(model.latent_dim, model.action_dim, model.history, horizon,
                         int(cfg.n_samples), int(cfg.iterations))
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with torch.no_grad():
            _export_graph(module, args, tmp, list(PLAN_INPUTS), list(PLAN_OUTPUTS), OPSET,
                          'torchscript', dynamic={})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# ONNX Runtime backend
# --------------------------------------------------------------------------------------------
def _ort_errors() -> tuple:
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    names = ('Fail', 'InvalidArgument', 'NoSuchFile', 'NoModel', 'EngineError',
             'RuntimeException', 'InvalidProtobuf', 'ModelLoaded', 'NotImplemented',
             'InvalidGraph', 'EPFail')
    return tuple(getattr(st, n) for n in names if hasattr(st, n)) + (RuntimeError, OSError)


class GraphBackend(InferenceBackend):
    """A backend that runs the exported graphs: the rollout graph has a fixed horizon."""

    def __init__(self, spec: ModelSpec, device: torch.device, export: dict,
                 config: BackendConfig):
        super().__init__(spec, device, export['weights_sha256'], config)
        self._horizon = int(export['horizon'])
        self._rollout_inputs = [i['name'] for i in export['graphs']['rollout']['inputs']]

    @property
    def horizon(self) -> int:
        return self._horizon

    def _rollout(self, z_hist: torch.Tensor, actions: torch.Tensor,
                 past: Optional[torch.Tensor]) -> torch.Tensor:
        h = actions.shape[1]
        g, k, m = self.horizon, self.history, self.spec.action_history
        if h == g:
            return self._rollout_graph(z_hist, actions, past)
        # The graph is causal: a shorter horizon pads with the last action and drops the
        # extra steps; a longer one chains calls, each starting from the latest k latents.
        chunks = []
        a_all = actions if past is None else torch.cat([past, actions], dim=1)
        offset = 0 if past is None else m - 1
        z = z_hist
        for start in range(0, h, g):
            step = actions[:, start:start + g]
            n = step.shape[1]
            if n < g:
                step = torch.cat([step, step[:, -1:].expand(-1, g - n, -1)], dim=1)
            p = None
            if m > 1:
                p = a_all[:, offset + start - (m - 1):offset + start].contiguous()
            pred = self._rollout_graph(z, step.contiguous(), p)[:, :n]  # (B, n, D)
            chunks.append(pred)
            z = torch.cat([z, pred], dim=1)[:, -k:].contiguous()
        return torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0].contiguous()

    def _rollout_inputs_for(self, z_hist, actions, past) -> dict[str, torch.Tensor]:
        inputs = {'z_hist': z_hist, 'actions': actions}
        if 'past_actions' in self._rollout_inputs:
            inputs['past_actions'] = past
        return inputs

    @abc.abstractmethod
    def _rollout_graph(self, z_hist: torch.Tensor, actions: torch.Tensor,
                       past: Optional[torch.Tensor]) -> torch.Tensor:
        """One call of the rollout graph: (B, k, D), (B, H_graph, A), (B, m-1, A) -> (B, H, D)."""


def _session_options(ort, config: BackendConfig, spin_within_calls: bool = False):
    """ONNX Runtime session options for ``config`` (threads, spinning, quiet logs).

    spin_within_calls (plan graphs): the pool spins while a call runs and stops when it
    returns. A plan is hundreds of small matrix products in sequence, and without spinning each
    hand-off wakes a sleeping thread (per 300 x 5 CEM iteration on 2 cores: 1.15 ms on one
    thread, 1.16 ms on two without spinning, 0.77 ms spinning, 0.82 ms spinning only within the
    call); spinning between calls would steal the cores the rest of the stack needs.
    ``config.spin_threads`` keeps the pool spinning between calls as well.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if int(config.num_threads) > 0:
        opts.intra_op_num_threads = int(config.num_threads)
    spin = bool(config.spin_threads) or spin_within_calls
    opts.add_session_config_entry('session.intra_op.allow_spinning', '1' if spin else '0')
    if spin_within_calls and not config.spin_threads:
        opts.add_session_config_entry('session.force_spinning_stop', '1')
    opts.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
    return opts


class OnnxRuntimeBackend(GraphBackend):
    """Serves the exported graphs with ONNX Runtime (CPU, or CUDA when its provider exists).

    Inputs and outputs are bound to torch tensors' memory (IOBinding): no copies between torch
    and ONNX Runtime, outputs are written straight into torch tensors on the backend's device.
    """

    name = 'onnxruntime'

    def __init__(self, source: ModelSource, config: BackendConfig):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f'onnxruntime is not installed ({exc})') from None
        self._ort = ort
        device = self._pick_device(ort, config)
        export = ensure_export(source, config)
        spec = export['spec']
        opts = _session_options(ort, config)
        if device.type == 'cuda':
            providers = [('CUDAExecutionProvider', {'device_id': int(device.index or 0)}),
                         'CPUExecutionProvider']
        else:
            providers = ['CPUExecutionProvider']
        self._sessions = {}
        self._providers = providers
        self._source, self._cache_dir = source, config.cache_dir
        errors = _ort_errors()
        for name, info in export['graphs'].items():
            try:
                sess = ort.InferenceSession(info['path'], opts, providers=providers)
            except errors as exc:
                raise BackendUnavailable(f'{info["path"]}: ONNX Runtime cannot load it: '
                                         f'{exc}') from None
            want = [i['name'] for i in info['inputs']]
            got = [i.name for i in sess.get_inputs()]
            if got != want:
                raise BackendUnavailable(f'{info["path"]}: graph inputs {got}, export.json '
                                         f'says {want}')
            self._sessions[name] = sess
        self._dev_type = 'cuda' if device.type == 'cuda' else 'cpu'
        self._dev_id = int(device.index or 0) if device.type == 'cuda' else 0
        self._export = {'dir': export['dir'], 'opset': export.get('opset'),
                        'onnx_precision': export['precision'],
                        'exporter': export.get('exporter'),
                        'files': {n: g['sha256'] for n, g in export['graphs'].items()}}
        super().__init__(spec, device, export, config)

    @staticmethod
    def _pick_device(ort, config: BackendConfig) -> torch.device:
        has_cuda_ep = 'CUDAExecutionProvider' in ort.get_available_providers()
        if config.device == 'auto':
            return resolve_device('cuda' if has_cuda_ep and torch.cuda.is_available()
                                  else 'cpu')
        device = resolve_device(config.device)
        if device.type == 'cuda' and not has_cuda_ep:
            raise BackendUnavailable(f'device {config.device!r} asked for, but this '
                                     f'onnxruntime has no CUDAExecutionProvider '
                                     f'(install onnxruntime-gpu)')
        return device

    def _info(self) -> dict:
        sess = self._sessions['rollout']
        return {'onnxruntime': self._ort.__version__, 'providers': sess.get_providers(),
                'threads': int(self.config.num_threads) or 'default',
                'spin_threads': self.config.spin_threads, **self._export}

    # ---------------------------------------------------------------- running graphs
    def _run(self, graph: str, inputs: dict[str, torch.Tensor],
             outputs: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """Run one graph on torch tensors (contiguous float32 on the device), zero-copy."""
        sess = self._sessions[graph]
        binding = sess.io_binding()
        for name, t in inputs.items():
            binding.bind_input(name, self._dev_type, self._dev_id, np.float32, tuple(t.shape),
                               t.data_ptr())
        out = {}
        for name, shape in outputs.items():
            o = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, self._dev_type, self._dev_id, np.float32, shape,
                                o.data_ptr())
            out[name] = o
        if self._dev_type == 'cuda':
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch
        sess.run_with_iobinding(binding)
        return out

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        return self._run('encoder', {'images': images}, {'latent': (b, self.latent_dim)})['latent']

    def _rollout_graph(self, z_hist, actions, past) -> torch.Tensor:
        b = actions.shape[0]
        out = self._run('rollout', self._rollout_inputs_for(z_hist, actions, past),
                        {'latents': (b, self._horizon, self.latent_dim)})
        return out['latents']

    def _probe(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        n = z.shape[0]
        shapes = {name: (n, dim) for name, dim in self.spec.probes}
        return self._run('probes', {'latent': z}, shapes)

    # ---------------------------------------------------------------- whole plans
    def plan_search(self, planner, cost):
        """A whole planner search as one ONNX Runtime call (``ami_ros.planning.graph``).

        The graph is exported from the checkpoint on first use and cached under
        ``<cache>/onnx/plan-<weights>-<planner, budget, cost and horizon key>.onnx``; None
        (eager search) for costs other than a latent goal cost or without the checkpoint.
        """
        from ami_ros.planning.graph import PLAN_INPUTS, PLAN_OUTPUTS, plan_key

        if getattr(cost, 'metric', None) is None or not self._source.available:
            return None
        h, d = int(planner.config.horizon), self.latent_dim
        name = f'plan-{plan_key(planner, cost, h)}'
        if name not in self._sessions:
            path = export_plan(self._source.model(), planner, cost, h, self._cache_dir,
                               self.sha256)
            opts = _session_options(self._ort, self.config, spin_within_calls=True)
            try:
                self._sessions[name] = self._ort.InferenceSession(str(path), opts,
                                                                  providers=self._providers)
            except _ort_errors() as exc:
                log.warning(f'{path}: ONNX Runtime cannot load the plan graph ({exc}); '
                            f'plans run in torch')
                return None
        goal = cost.goal.to(device=self.device, dtype=torch.float32).reshape(d).contiguous()
        k = self.history

        def search(state, mean, std, noise, hold, limits):
            z = state.to(self.device, torch.float32)
            if z.shape[1] < k:  # as rollout(): too short a history repeats the oldest latent
                z = torch.cat([z[:, :1].expand(-1, k - z.shape[1], -1), z], dim=1)
            values = (z[:1, -k:], goal, mean, std, noise, hold, limits)
            inputs = {n: v.to(self.device, torch.float32).contiguous()
                      for n, v in zip(PLAN_INPUTS, values)}
            shapes = dict(zip(PLAN_OUTPUTS, ((1,), tuple(mean.shape), (h, d))))
            out = self._run(name, inputs, shapes)
            return tuple(out[n] for n in PLAN_OUTPUTS)
        return search
