"""TensorRT backend: engines built from the exported ONNX graphs, run on torch CUDA tensors.

* ``tensorrt`` is imported only when this backend is made; without it, or without a CUDA GPU,
  the backend is unavailable (``BackendUnavailable``) and ``make_backend`` falls back.
* Engines are built with the TensorRT Python API (10.x, 11.x; 8.6 should work) from the ONNX
  files ONNX Runtime serves, with two optimisation profiles per graph: batch 1 (the perception
  node's frame, the belief's one-step prediction) and 1..planning_batch, tuned for
  planning_batch (the planner's samples). FP16 by default: TensorRT <= 10 from the fp32 graphs
  with the FP16 builder flag; TensorRT 11 (strongly typed networks only) from fp16 graphs
  exported for it (fp32 inputs/outputs). LayerNormalization stays one ONNX op, computed in
  fp32 (its stash_type), so the norms' reductions stay accurate.
* Engines are cached by :mod:`ami_ros.inference.engine_cache` under a key of (ONNX sha256, GPU
  name + compute capability, TensorRT version, precision, profiles) and rebuilt, with one log
  line saying what changed, when no engine matches or TensorRT cannot deserialize one.
* Execution: ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` with the
  ``data_ptr()`` of torch tensors and ``execute_async_v3`` on a private CUDA stream ordered with
  torch's current stream (no pycuda, no host copies). One execution context per profile. The
  rollout at the planning batch is captured once as a CUDA graph and replayed for every CEM /
  MPPI iteration (static input/output buffers; inputs are copied in, outputs cloned out).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from ami_ros.inference.base import (BackendConfig, BackendUnavailable, ModelSource,
                                    resolve_device)
from ami_ros.inference.engine_cache import EngineCache, EngineKey
from ami_ros.inference.onnx_backend import GraphBackend, ensure_export

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30
"""Builder scratch memory limit (1 GiB: ample for these graphs, fits a Jetson Orin Nano)."""


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying why not."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f'the tensorrt Python package is not installed ({exc}); on '
                                 f'Jetson it comes with JetPack, elsewhere `pip install '
                                 f'tensorrt`') from None
    return trt


def _trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split('.')[0])
    except ValueError:
        return 0


def weak_typing(trt) -> bool:
    """Whether this TensorRT still takes precision flags (<= 10.x; 11 removed BuilderFlag.FP16)."""
    return hasattr(trt.BuilderFlag, 'FP16')


def onnx_precision_for(trt, precision: str) -> str:
    """Precision of the ONNX graphs an engine of ``precision`` is built from.

    TensorRT <= 10 builds FP16 engines from fp32 graphs with the FP16 builder flag (and keeps
    layers in fp32 where that is faster or needed); TensorRT 11 networks are strongly typed, so
    FP16 must be in the graph itself.
    """
    return 'fp16' if precision == 'fp16' and not weak_typing(trt) else 'fp32'


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(GPU name, 'major.minor' compute capability) of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f'{major}.{minor}'


def graph_profiles(graph: dict, planning_batch: int, horizon: int) -> list[tuple]:
    """Optimisation profiles of one exported graph: batch 1, and 1..N tuned for N.

    N is the planning batch; for the probes graph, which a planner's probe cost calls on every
    predicted step, N * horizon. Non-batch dimensions come from the graph itself.
    """
    n = int(planning_batch) * (int(horizon) if graph.get('graph') == 'probes' else 1)
    one, many = [], []
    for desc in graph['inputs']:
        rest = tuple(int(d) for d in desc['shape'][1:])
        one.append((desc['name'], (1, *rest), (1, *rest), (1, *rest)))
        many.append((desc['name'], (1, *rest), (n, *rest), (n, *rest)))
    return [tuple(one), tuple(many)]


def build_engine(trt, onnx_path: Path, profiles, precision: str, logger,
                 strongly_typed: bool = False) -> bytes:
    """Serialized engine for an ONNX file with the given profiles and precision.

    ``strongly_typed``: the graph's own types decide each layer's precision (fp16 graphs, and
    always in TensorRT 11); otherwise ``precision`` 'fp16' sets the FP16 builder flag.
    """
    builder = trt.Builder(logger)
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if _trt_major(trt) < 10:  # explicit batch is the only mode in TensorRT 10
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if strongly_typed and hasattr(creation, 'STRONGLY_TYPED'):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f'{onnx_path}: TensorRT cannot parse it: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == 'fp16' and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    for entries in profiles:
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in entries:
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f'{onnx_path}: TensorRT failed to build an engine (see the '
                                 f'TensorRT log above)')
    return bytes(serialized)


_DTYPES = {}


def _torch_dtype(trt, dtype):
    if not _DTYPES:
        _DTYPES.update({trt.float32: torch.float32, trt.float16: torch.float16,
                        trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool})
    return _DTYPES[dtype]


class _EngineRunner:
    """One engine: an execution context per optimisation profile, and optional CUDA graphs."""

    def __init__(self, trt, engine, device: torch.device, name: str, cuda_graphs: bool):
        self.trt, self.engine, self.device, self.name = trt, engine, device, name
        self.stream = torch.cuda.Stream(device=device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.out_dtype = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in self.outputs}
        self.contexts, self.max_batch = [], []
        for p in range(engine.num_optimization_profiles):
            ctx = engine.create_execution_context()
            if ctx is None:
                raise BackendUnavailable(f'{name}: TensorRT could not create an execution '
                                         f'context (out of GPU memory?)')
            ctx.set_optimization_profile_async(p, self.stream.cuda_stream)
            self.contexts.append(ctx)
            self.max_batch.append(int(engine.get_tensor_profile_shape(self.inputs[0], p)[2][0]))
        self.stream.synchronize()
        self.cuda_graphs = cuda_graphs
        # an execution context holds shapes and addresses between calls: one caller at a time
        # (perception and planner may share a backend across executor threads)
        self._lock = threading.Lock()
        self._graph = None  # (batch, CUDAGraph, static inputs, static outputs)
        self._graph_failed = False

    def _profile_for(self, batch: int) -> int:
        return 0 if batch == 1 else len(self.contexts) - 1

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on contiguous CUDA tensors (batch first); batches beyond the profile are split."""
        with self._lock:
            return self._run(inputs)

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = next(iter(inputs.values())).shape[0]
        limit = self.max_batch[-1]
        if batch > limit:
            parts = [self._run({k: v[i:i + limit] for k, v in inputs.items()})
                     for i in range(0, batch, limit)]
            return {k: torch.cat([p[k] for p in parts]) for k in self.outputs}
        p = self._profile_for(batch)
        if self.cuda_graphs and p == len(self.contexts) - 1 and batch == limit \
                and not self._graph_failed:
            return self._run_graph(p, inputs)
        if self._graph is not None and p == len(self.contexts) - 1:
            self._graph = None  # the context's shapes/addresses change: capture again later
        return self._enqueue(self.contexts[p], inputs)

    def _bind(self, ctx, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name in self.inputs:
            t = inputs[name]
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f'{self.name}: input {name} shape {tuple(t.shape)} is outside '
                                 f'the engine profile')
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            o = torch.empty(shape, dtype=self.out_dtype[name], device=self.device)
            ctx.set_tensor_address(name, o.data_ptr())
            outs[name] = o
        return outs

    def _enqueue(self, ctx, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        current = torch.cuda.current_stream(self.device)
        outs = self._bind(ctx, inputs)
        self.stream.wait_stream(current)  # inputs are written on torch's stream
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f'{self.name}: TensorRT execute_async_v3 failed')
        for t in [*inputs.values(), *outs.values()]:
            t.record_stream(self.stream)  # keep the allocator from reusing them too early
        current.wait_stream(self.stream)
        return outs

    def _run_graph(self, p: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = next(iter(inputs.values())).shape[0]
        if self._graph is None or self._graph[0] != batch:
            if not self._capture(p, inputs):
                return self._enqueue(self.contexts[p], inputs)
        _, graph, static_in, static_out = self._graph
        for name in self.inputs:
            static_in[name].copy_(inputs[name])
        graph.replay()  # on torch's current stream, after the copies
        return {k: v.clone() for k, v in static_out.items()}

    def _capture(self, p: int, inputs: dict[str, torch.Tensor]) -> bool:
        ctx = self.contexts[p]
        static_in = {k: v.clone() for k, v in inputs.items()}
        try:
            static_out = self._bind(ctx, static_in)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            # TensorRT updates internal state on the first enqueue after a shape change; that
            # must happen before capture
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError('execute_async_v3 failed before capture')
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode='thread_local'):
                if not ctx.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError('execute_async_v3 failed during capture')
        except RuntimeError as exc:
            log.warning(f'{self.name}: CUDA graph capture failed ({exc}); running without')
            self._graph_failed = True
            self._graph = None
            torch.cuda.synchronize(self.device)
            return False
        self._graph = (int(next(iter(inputs.values())).shape[0]), graph, static_in, static_out)
        return True


class TensorRTBackend(GraphBackend):
    """Serves the exported graphs with TensorRT engines from the per-user engine cache."""

    name = 'tensorrt'

    def __init__(self, source: ModelSource, config: BackendConfig):
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable('TensorRT needs a CUDA GPU and torch sees none')
        device = resolve_device('cuda' if config.device == 'auto' else config.device)
        if device.type != 'cuda':
            raise BackendUnavailable(f'TensorRT runs on CUDA devices, BackendConfig.device is '
                                     f'{config.device!r}')
        want = onnx_precision_for(trt, config.precision)
        export = ensure_export(source, config, precision=want)
        if export['precision'] != want:  # an onnx_dir exported for another precision
            if export['precision'] == 'fp16' and config.precision == 'fp32':
                raise BackendUnavailable(f'{export["dir"]} holds fp16 graphs; precision fp32 '
                                         f'needs an fp32 export')
            if want == 'fp16':
                raise BackendUnavailable(
                    f'TensorRT {trt.__version__} builds FP16 engines only from fp16 graphs '
                    f'(strong typing); {export["dir"]} is fp32: export with `ami-ros export '
                    f'--format onnx --precision fp16`, or use precision fp32')
        self._strongly_typed = export['precision'] == 'fp16' or not weak_typing(trt)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._gpu, self._cc = gpu_identity(device)
        self._cache = EngineCache(config.cache_dir)
        self._engines: dict[str, Path] = {}
        self._runners: dict[str, _EngineRunner] = {}
        with torch.cuda.device(device):
            for graph, info in export['graphs'].items():
                info = {**info, 'graph': graph}
                self._runners[graph] = self._load(graph, info, export, config, device)
        super().__init__(export['spec'], device, export, config)

    def _load(self, graph: str, info: dict, export: dict, config: BackendConfig,
              device: torch.device) -> _EngineRunner:
        trt = self._trt
        profiles = graph_profiles(info, config.planning_batch, int(export['horizon']))
        key = EngineKey(info['sha256'], self._gpu, self._cc, str(trt.__version__),
                        config.precision, profiles)
        name = f'{export["weights_sha256"][:12]}-{graph}'
        decision = self._cache.lookup(name, key)
        engine = None
        if not decision.rebuild:
            runtime = trt.Runtime(self._logger)
            engine = runtime.deserialize_cuda_engine(decision.path.read_bytes())
            if engine is None:
                log.warning(f'TensorRT could not deserialize {decision.path}; rebuilding it')
                self._cache.discard(name, key)
        if engine is None:
            log.warning(f'building TensorRT {config.precision} engine for {graph} '
                        f'({decision.reason}); this takes a while once')
            data = build_engine(trt, Path(info['path']), profiles, config.precision,
                                self._logger, self._strongly_typed)
            path = self._cache.store(name, key, data, extra={'onnx': info['path']})
            engine = trt.Runtime(self._logger).deserialize_cuda_engine(data)
            if engine is None:
                raise BackendUnavailable(f'{path}: TensorRT cannot deserialize the engine it '
                                         f'just built')
            decision.path = path
        self._engines[graph] = decision.path
        use_graphs = bool(config.cuda_graphs) and graph == 'rollout'
        return _EngineRunner(trt, engine, device, f'{graph} engine', use_graphs)

    def _info(self) -> dict:
        return {'tensorrt': str(self._trt.__version__), 'gpu': self._gpu,
                'compute_capability': self._cc, 'precision': self.config.precision,
                'strongly_typed': self._strongly_typed,
                'cuda_graphs': bool(self.config.cuda_graphs),
                'engines': {k: str(v) for k, v in self._engines.items()}}

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._runners['encoder'].run({'images': images})['latent'].float()

    def _rollout_graph(self, z_hist, actions, past) -> torch.Tensor:
        inputs = self._rollout_inputs_for(z_hist, actions, past)
        return self._runners['rollout'].run(inputs)['latents'].float()

    def _probe(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._runners['probes'].run({'latent': z})
        return {k: v.float() for k, v in out.items()}
