"""``ami-ros export``: a world-model checkpoint as ONNX graphs, and TensorRT engines from them.

ONNX (``--format onnx``) writes ``encoder.onnx``, ``rollout.onnx`` (the H-step rollout,
dynamic batch = the planner's sample count) and ``probes.onnx`` with ``export.json`` into
``--out``; tensor names and shapes come from the model and are recorded in each file's
metadata and in ``export.json``. The export is checked against the PyTorch model with ONNX
Runtime (batch 1 and a planning batch) before the command reports success. ``--precision
fp16`` exports graphs that compute in half precision with float32 inputs and outputs: what
TensorRT 11 (strongly typed networks only) needs to build FP16 engines.

TensorRT (``--format tensorrt``) does the same, then builds the engines (``--precision``, with
profiles for batch 1 and ``--planning-batch``) into the per-user engine cache
(``$AMI_ROS_CACHE/engines`` or ``~/.cache/ami_ros/engines``), where the tensorrt backend finds
them. Needs the ``tensorrt`` package and a CUDA GPU. The ONNX files written for it are fp32
(TensorRT <= 10 applies FP16 itself) or fp16 (TensorRT 11).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint directory, a training output dir, or a shipped model '
                             'name such as arm_reach')
    parser.add_argument('--format', choices=('onnx', 'tensorrt'), default='onnx',
                        help='what to produce')
    parser.add_argument('--precision', choices=('fp32', 'fp16'), default=None,
                        help='onnx: precision inside the graphs (default fp32); tensorrt: '
                             'engine precision (default fp16)')
    parser.add_argument('--horizon', type=int, default=5,
                        help="planning horizon H the rollout graph is unrolled for")
    parser.add_argument('--planning-batch', type=int, default=300,
                        help="TensorRT: the planner's sample count (profile and CUDA graph)")
    parser.add_argument('--out', type=Path, default=None,
                        help='output directory (default exports/<model name>)')
    parser.add_argument('--no-probes', action='store_true', help='do not export probes.onnx')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (>= 17)')
    parser.add_argument('--exporter', choices=('torchscript', 'dynamo'), default='torchscript',
                        help="torch's ONNX exporter: the TorchScript-based one (fast, default) "
                             "or torch.export's (opset >= 18)")
    parser.add_argument('--cache-dir', default=None,
                        help='cache root for TensorRT engines (default $AMI_ROS_CACHE or '
                             '~/.cache/ami_ros)')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object on stdout instead of text')


def _model_name(model) -> str:
    path = Path(getattr(model, 'checkpoint_path', 'model'))
    return path.parent.name if path.name == 'model' else path.name


def verify_backend(model, backend, batches=(1, 64)) -> dict:
    """Max |backend - PyTorch| of encode, rollout and probes on seeded random inputs."""
    import torch

    model = model.to(backend.device).eval()
    gen = torch.Generator().manual_seed(0)
    s, d, a, k = model.input_size, model.latent_dim, model.action_dim, model.history
    errors = {'encode': 0.0, 'rollout': 0.0, 'probes': 0.0}
    with torch.no_grad():
        for b in batches:
            img = torch.randint(0, 256, (min(b, 16), s, s, 3), dtype=torch.uint8, generator=gen)
            errors['encode'] = max(errors['encode'], float(
                (backend.encode(img) - model.encode(img.to(backend.device))).abs().max()))
            z = torch.randn(1, k, d, generator=gen).to(backend.device)
            act = (torch.randn(b, backend.horizon, a, generator=gen) * 0.5).to(backend.device)
            errors['rollout'] = max(errors['rollout'], float(
                (backend.rollout(z, act) - model.rollout(z, act)).abs().max()))
            zs = torch.randn(b, d, generator=gen).to(backend.device)
            got, want = backend.probe(zs), model.probe(zs)
            for name in got:
                errors['probes'] = max(errors['probes'],
                                       float((got[name] - want[name]).abs().max()))
    return errors


def run(args) -> int:
    from ami_ros.inference.base import BackendConfig, BackendUnavailable, make_backend
    from ami_ros.inference.onnx_backend import OPSET, export_onnx
    from ami_ros.inference.tensorrt_backend import import_tensorrt, onnx_precision_for
    from ami_ros.model.checkpoint import CheckpointError, load_checkpoint
    from ami_ros.model.config import ConfigError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='%(levelname)s %(name)s: %(message)s')
    prog = 'ami-ros export'
    if not 1 <= args.horizon <= 256:
        print(f'{prog}: error: --horizon must be in [1, 256], got {args.horizon}',
              file=sys.stderr)
        return 2
    if args.opset < OPSET:
        print(f'{prog}: error: --opset must be >= {OPSET}, got {args.opset}', file=sys.stderr)
        return 2
    try:
        model = load_checkpoint(args.checkpoint, device='cpu')
    except (CheckpointError, ConfigError) as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return 2
    out = args.out or Path('exports') / _model_name(model)
    precision = args.precision or ('fp16' if args.format == 'tensorrt' else 'fp32')
    onnx_precision = precision
    if args.format == 'tensorrt':
        try:
            onnx_precision = onnx_precision_for(import_tensorrt(), precision)
        except BackendUnavailable:
            onnx_precision = 'fp32'  # the engine build below reports why it cannot run
    sidecar = export_onnx(model, out, horizon=args.horizon, probes=not args.no_probes,
                          opset=args.opset, exporter=args.exporter,
                          checkpoint=str(model.checkpoint_path), precision=onnx_precision)
    ort_backend = make_backend('onnxruntime', model, BackendConfig(onnx_dir=str(out),
                                                                   device='cpu'))
    errors = verify_backend(model, ort_backend)
    result = {'format': args.format, 'out': str(out), 'checkpoint': str(model.checkpoint_path),
              'weights_sha256': sidecar['weights_sha256'], 'horizon': sidecar['horizon'],
              'onnx_precision': onnx_precision,
              'opset': sidecar['opset'], 'exporter': sidecar['exporter'],
              'graphs': {n: {'path': str(out / g['file']), 'sha256': g['sha256'],
                             'inputs': g['inputs'], 'outputs': g['outputs']}
                         for n, g in sidecar['graphs'].items()},
              'onnxruntime_max_abs_error': errors}
    # relative to the outputs' scale (~1): fp32 graphs agree to float rounding, fp16 ones to
    # half precision's 3 significant digits compounded over the rollout's steps
    tolerance = 1e-3 if onnx_precision == 'fp32' else 5e-2
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        print(f'{prog}: error: ONNX Runtime disagrees with PyTorch beyond {tolerance}: {bad} '
              f'(files left in {out} for inspection)', file=sys.stderr)
        return 1
    if args.format == 'tensorrt':
        config = BackendConfig(device='auto', onnx_dir=str(out),
                               horizon=args.horizon, planning_batch=args.planning_batch,
                               precision=precision, cache_dir=args.cache_dir)
        try:
            backend = make_backend('tensorrt', model, config)
        except BackendUnavailable as exc:
            print(f'{prog}: error: cannot build TensorRT engines: {exc} (the ONNX files are in '
                  f'{out})', file=sys.stderr)
            return 2
        result['tensorrt'] = backend.info()
        # FP16 engines differ from fp32 PyTorch by ~1e-3 relative: reported, not judged here
        result['tensorrt_max_abs_error'] = verify_backend(copy.deepcopy(model), backend)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write('\n')
        return 0
    print(f'exported {result["checkpoint"]} (weights {result["weights_sha256"][:12]}) to {out} '
          f'({onnx_precision} graphs, horizon {result["horizon"]})')
    for name, g in result['graphs'].items():
        ins = ', '.join(f'{i["name"]} {i["shape"]}' for i in g['inputs'])
        outs = ', '.join(f'{o["name"]} {o["shape"]}' for o in g['outputs'])
        print(f'  {name:8s} {g["path"]}: {ins} -> {outs}')
    print('  ONNX Runtime vs PyTorch, max |error|: '
          + ', '.join(f'{k} {v:.2e}' for k, v in errors.items()))
    if 'tensorrt' in result:
        info = result['tensorrt']
        print(f'  TensorRT {info["tensorrt"]} {info["precision"]} engines on {info["gpu"]}:')
        for name, path in info['engines'].items():
            print(f'    {name:8s} {path}')
        print('  TensorRT vs PyTorch, max |error|: '
              + ', '.join(f'{k} {v:.2e}' for k, v in result['tensorrt_max_abs_error'].items()))
    return 0


def main(argv=None) -> int:
    """Run ``ami-ros export`` (``python -m ami_ros.cli.export``)."""
    from ami_ros.cli import run_standalone
    return run_standalone('export', argv)


if __name__ == '__main__':
    sys.exit(main())
