"""``ami-ros export`` and ``ami-ros bench``: ONNX files, their metadata, the CLI, the bench JSON.

Models are tiny WorldModels saved to temporary checkpoints; nothing here needs a GPU (TensorRT
export is checked only for its clear refusal where ``tensorrt`` or CUDA is missing).
"""
from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
import torch

from ami_ros.cli import main as cli_main
from ami_ros.cli.bench import DOC_BEGIN, DOC_END, default_doc, update_doc
from ami_ros.inference import model_sha256
from ami_ros.inference.onnx_backend import SIDECAR, export_onnx
from ami_ros.model import WorldModel, save_checkpoint
from ami_ros.model.config import CNNConfig, ModelConfig, PredictorConfig, ProbeSpec

torch.set_num_threads(1)


def tiny_model(seed: int = 0, action_history: int = 1) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(ModelConfig(
        image_size=16, latent_dim=8, action_dim=3, cnn=CNNConfig(channels=(4, 8)),
        predictor=PredictorConfig(history=3, action_history=action_history, hidden=32,
                                  layers=2), probe_hidden=8))
    model.set_probes([ProbeSpec('ee_position', 3), ProbeSpec('joint_positions', 3)])
    return model.eval()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return save_checkpoint(tiny_model(), tmp_path_factory.mktemp('ckpt') / 'tiny')


def _meta(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize('action_history', [1, 2])
def test_onnx_files_have_dynamic_batch_and_model_metadata(tmp_path, action_history):
    model = tiny_model(action_history=action_history)
    sidecar = export_onnx(model, tmp_path, horizon=6)
    assert set(sidecar['graphs']) == {'encoder', 'rollout', 'probes'}
    rollout = onnx.load(str(tmp_path / 'rollout.onnx'))
    names = [i.name for i in rollout.graph.input]
    want = ['z_hist', 'actions'] + (['past_actions'] if action_history > 1 else [])
    assert names == want
    dims = {i.name: _dims(i) for i in [*rollout.graph.input, *rollout.graph.output]}
    assert dims['z_hist'] == ['batch', 3, 8] and dims['actions'] == ['batch', 6, 3]
    assert dims['latents'] == ['batch', 6, 8]
    meta = _meta(rollout)
    assert meta['ami_ros.graph'] == 'rollout' and meta['ami_ros.horizon'] == '6'
    assert meta['ami_ros.weights_sha256'] == model_sha256(model)
    assert [i['name'] for i in json.loads(meta['ami_ros.inputs'])] == want
    assert json.loads(meta['ami_ros.model'])['latent_dim'] == 8
    assert rollout.opset_import[0].version >= 17
    enc = onnx.load(str(tmp_path / 'encoder.onnx'))
    assert _dims(enc.graph.input[0]) == ['batch', 3, 16, 16]
    assert _dims(enc.graph.output[0]) == ['batch', 8]
    probes = onnx.load(str(tmp_path / 'probes.onnx'))
    assert [o.name for o in probes.graph.output] == ['ee_position', 'joint_positions']
    # the sidecar lists the same names and shapes, read from the graphs
    side = json.loads((tmp_path / SIDECAR).read_text())
    assert side['graphs']['rollout']['inputs'][1] == {'name': 'actions', 'shape': ['batch', 6, 3],
                                                      'dtype': 'float32'}
    assert side['horizon'] == 6 and side['model']['action_history'] == action_history


def test_dynamo_exporter_gives_the_same_graph_semantics(tmp_path):
    """torch.export-based exporter (opset raised to 18): same names, dynamic batch, parity."""
    import onnxruntime as ort

    model = tiny_model()
    side = export_onnx(model, tmp_path, horizon=2, probes=False, exporter='dynamo', opset=17)
    assert side['opset'] == 18 and set(side['graphs']) == {'encoder', 'rollout'}
    sess = ort.InferenceSession(str(tmp_path / 'rollout.onnx'),
                                providers=['CPUExecutionProvider'])
    z, a = torch.randn(5, 3, 8), torch.randn(5, 2, 3)
    out = sess.run(None, {'z_hist': z.numpy(), 'actions': a.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model.rollout(z, a).detach(), atol=2e-5,
                               rtol=1e-4)


def test_export_cli_writes_onnx_and_reports_parity(checkpoint, tmp_path, capsys):
    out = tmp_path / 'exp'
    rc = cli_main(['export', '--checkpoint', str(checkpoint), '--format', 'onnx',
                   '--horizon', '4', '--out', str(out), '--json'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    for name in ('encoder', 'rollout', 'probes'):
        assert (out / f'{name}.onnx').is_file()
        assert result['graphs'][name]['path'] == str(out / f'{name}.onnx')
    assert result['horizon'] == 4
    assert result['graphs']['rollout']['outputs'][0]['shape'] == ['batch', 4, 8]
    assert all(v < 1e-4 for v in result['onnxruntime_max_abs_error'].values())
    assert result['weights_sha256'] == (checkpoint / 'model.safetensors.sha256').read_text(
    ).split()[0]
    # text output names the files and the tensors
    assert cli_main(['export', '--checkpoint', str(checkpoint), '--out', str(out),
                     '--no-probes']) == 0
    text = capsys.readouterr().out
    assert 'rollout' in text and "z_hist ['batch', 3, 8]" in text


def test_export_cli_fp16_graphs_keep_fp32_io(checkpoint, tmp_path, capsys):
    """fp16 ONNX (for TensorRT 11's strongly typed builds): float32 in and out, close results."""
    out = tmp_path / 'fp16'
    rc = cli_main(['export', '--checkpoint', str(checkpoint), '--precision', 'fp16',
                   '--out', str(out), '--json'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result['onnx_precision'] == 'fp16'
    assert result['graphs']['rollout']['inputs'][0]['dtype'] == 'float32'
    assert result['graphs']['rollout']['outputs'][0]['dtype'] == 'float32'
    proto = onnx.load(str(out / 'rollout.onnx'))
    assert _meta(proto)['ami_ros.precision'] == 'fp16'
    half = onnx.TensorProto.FLOAT16
    assert any(t.data_type == half for t in proto.graph.initializer)  # weights are fp16
    errors = result['onnxruntime_max_abs_error']
    assert 0 < errors['rollout'] < 5e-2  # half precision: close, not equal


def test_export_cli_errors_are_clear(checkpoint, tmp_path, capsys):
    rc = cli_main(['export', '--checkpoint', str(tmp_path / 'nope'), '--out', str(tmp_path)])
    assert rc == 2 and 'nope' in capsys.readouterr().err
    rc = cli_main(['export', '--checkpoint', str(checkpoint), '--horizon', '0'])
    assert rc == 2 and '--horizon must be in [1, 256]' in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is not None
                    and torch.cuda.is_available(), reason='TensorRT and CUDA are present here')
def test_export_tensorrt_without_tensorrt_says_why(checkpoint, tmp_path, capsys):
    rc = cli_main(['export', '--checkpoint', str(checkpoint), '--format', 'tensorrt',
                   '--out', str(tmp_path / 'trt'), '--cache-dir', str(tmp_path / 'cache')])
    err = capsys.readouterr().err
    assert rc == 2 and 'cannot build TensorRT engines' in err
    assert 'tensorrt' in err and (tmp_path / 'trt' / 'rollout.onnx').is_file()


# ------------------------------------------------------------------------------------ bench
def test_bench_json_smoke(checkpoint, tmp_path, capsys):
    rc = cli_main(['bench', '--json', '--checkpoint', str(checkpoint), '--samples', '16',
                   '--repeats', '1', '--warmup', '0', '--encoder-batch', '4', '--threads', '1',
                   '--backend', 'torch', 'onnxruntime', 'tensorrt',
                   '--cache-dir', str(tmp_path / 'cache'), '--no-doc'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)  # exactly one JSON object on stdout
    for backend in ('torch', 'onnxruntime'):
        assert result['plan'][backend]['B1_ms'] > 0
        assert result['plan'][backend]['B2_ms'] > 0
        assert result['encoder'][backend]['b1_ms'] > 0
        assert result['encoder'][backend]['images_per_s'] > 0
        assert result['core_loop'][backend]['ms'] > 0
        assert result['backends'][backend]['sha256'] == result['checkpoint']['sha256']
    assert result['speedup_vs_torch']['torch']['plan_B1'] == 1.0
    assert result['settings']['samples'] == 16 and result['settings']['B2_iterations'] == 30
    assert result['machine']['threads'] == 1 and result['machine']['torch']
    if 'tensorrt' not in result['plan']:
        assert 'tensorrt' in result['unavailable']
    assert result['checkpoint']['shipped'] is False


def test_bench_doc_block_is_replaced_between_markers(tmp_path):
    doc = tmp_path / 'benchmarks.md'
    doc.write_text(f'# Bench\nintro\n{DOC_BEGIN}\nold table\n{DOC_END}\nafter\n')
    update_doc(doc, '| a | b |', 'ami-ros bench')
    update_doc(doc, '| c | d |', 'ami-ros bench')
    text = doc.read_text()
    assert text.count(DOC_BEGIN) == 1 and '| c | d |' in text and '| a | b |' not in text
    assert text.startswith('# Bench\nintro\n') and text.endswith(f'{DOC_END}\nafter\n')
    doc.write_text('no markers')
    with pytest.raises(ValueError, match='no bench markers'):
        update_doc(doc, 'x', 'y')


def test_shipped_benchmarks_doc_can_be_updated(tmp_path):
    doc = default_doc()
    assert doc.is_file() and doc.name == 'benchmarks.md'
    text = doc.read_text()
    assert text.count(DOC_BEGIN) == 1 and text.count(DOC_END) == 1
    assert '## Jetson' in text or '### Jetson' in text
    copy = tmp_path / 'benchmarks.md'
    copy.write_text(text)
    update_doc(copy, '| x |', 'ami-ros bench')
    assert '| x |' in copy.read_text()


def test_bench_writes_no_doc_for_a_model_that_is_not_shipped(checkpoint, tmp_path, capsys):
    rc = cli_main(['bench', '--checkpoint', str(checkpoint), '--samples', '8', '--repeats', '1',
                   '--warmup', '0', '--encoder-batch', '2', '--threads', '1',
                   '--backend', 'onnxruntime', '--cache-dir', str(tmp_path / 'cache')])
    captured = capsys.readouterr()
    assert rc == 0
    assert 'reports the shipped model only' in captured.err
    assert '| plan B1 (CEM 8x5x10) [ms] |' in captured.out


def test_bench_errors_are_clear(tmp_path, capsys):
    rc = cli_main(['bench', '--checkpoint', str(tmp_path / 'missing'), '--no-doc'])
    assert rc == 2 and 'missing' in capsys.readouterr().err
    rc = cli_main(['bench', '--repeats', '0', '--no-doc'])
    assert rc == 2 and '--repeats must be >= 1' in capsys.readouterr().err
