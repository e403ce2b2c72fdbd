"""Inference backends: one interface, torch vs ONNX Runtime parity, fallback, input checks, cache.

The models are tiny WorldModels built here with fixed seeds (no shipped weights needed). The
TensorRT tests need the ``tensorrt`` package and a CUDA GPU and are skipped, with the reason,
where either is missing; the engine-cache key logic is pure Python and always tested.
"""
from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest
import torch

from ami_ros.inference import BackendConfig, BackendUnavailable, make_backend, model_sha256
from ami_ros.inference.engine_cache import EngineCache, EngineKey, engine_dir
from ami_ros.inference.onnx_backend import SIDECAR, export_onnx, read_export
from ami_ros.model import WorldModel, save_checkpoint
from ami_ros.model.config import CNNConfig, ModelConfig, PredictorConfig, ProbeSpec
from ami_ros.planning import PlannerConfig, latent_goal_cost, make_planner

torch.set_num_threads(1)

HAS_TRT = importlib.util.find_spec('tensorrt') is not None
HAS_CUDA = torch.cuda.is_available()
TRT_SKIP = ('tensorrt Python package is not installed' if not HAS_TRT
            else 'no CUDA GPU visible to torch' if not HAS_CUDA else '')
# parity tolerance torch vs ONNX Runtime (fp32, different kernels and summation order)
ATOL, RTOL = 2e-5, 1e-4


def tiny_model(seed: int = 0, action_history: int = 1, history: int = 2) -> WorldModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(image_size=16, latent_dim=8, action_dim=2, cnn=CNNConfig(channels=(4, 8)),
                      predictor=PredictorConfig(history=history, action_history=action_history,
                                                hidden=32, layers=2),
                      probe_hidden=8)
    model = WorldModel(cfg)
    model.set_action_stats([0.1, -0.2], [0.5, 2.0])
    model.set_probes([ProbeSpec('ee_position', 3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.1)),
                      ProbeSpec('block_yaw', 1, angle=True)])
    # bigger output weights than the near-zero init, so the rollout actually moves
    torch.nn.init.normal_(model.predictor.out.weight, std=0.3)
    return model.eval()


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('ami_ros_cache')


@pytest.fixture(scope='module')
def model():
    return tiny_model()


@pytest.fixture(scope='module')
def model_m2():
    """A model conditioned on 3 latents and 2 actions (past_actions matter)."""
    return tiny_model(seed=3, action_history=2, history=3)


@pytest.fixture(scope='module')
def backends(model, cache):
    cfg = BackendConfig(device='cpu', cache_dir=str(cache), horizon=4)
    return make_backend('torch', model, cfg), make_backend('onnxruntime', model, cfg)


@pytest.fixture(scope='module')
def backends_m2(model_m2, cache):
    cfg = BackendConfig(device='cpu', cache_dir=str(cache), horizon=3)
    return make_backend('torch', model_m2, cfg), make_backend('onnxruntime', model_m2, cfg)


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------ parity
def test_encode_parity_uint8_float_and_resize(backends, model):
    tb, ob = backends
    rng = np.random.default_rng(0)
    for shape in [(1, 16, 16, 3), (5, 16, 16, 3), (2, 30, 22, 3)]:
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        z = ob.encode(img)
        assert z.shape == (shape[0], 8) and z.dtype == torch.float32
        close(z, tb.encode(img))
        close(z, model.encode(torch.from_numpy(img)).detach())
    chw = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    close(ob.encode(chw), tb.encode(chw))


@pytest.mark.parametrize('batch', [1, 7, 300])
@pytest.mark.parametrize('horizon', [4, 1, 9])
def test_rollout_parity(backends, batch, horizon):
    """Exported H=4; shorter horizons are padded, longer ones chained: same answer."""
    tb, ob = backends
    gen = torch.Generator().manual_seed(batch * 10 + horizon)
    z = torch.randn(1, 2, 8, generator=gen)
    a = torch.randn(batch, horizon, 2, generator=gen)
    out = ob.rollout(z, a)
    assert out.shape == (batch, horizon, 8)
    ref = tb.rollout(z, a)
    assert float((ref[:, -1] - z[:, -1]).abs().max()) > 0.05  # the model does move
    close(out, ref)


def test_rollout_parity_with_action_history_and_short_history(backends_m2, model_m2):
    tb, ob = backends_m2
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(6, 3, 8, generator=gen)
    a = torch.randn(6, 7, 2, generator=gen)
    past = torch.randn(6, 1, 2, generator=gen)
    close(ob.rollout(z, a, past_actions=past), model_m2.rollout(z, a, past).detach())
    close(ob.rollout(z, a), tb.rollout(z, a))  # default past = first action repeated
    close(ob.rollout(z[:1, -1:], a), tb.rollout(z[:1, -1:], a))  # k' < k, broadcast batch
    close(ob.rollout(z, a, past_actions=past[:1]), tb.rollout(z, a, past_actions=past[:1]))


def test_probe_parity_any_leading_shape(backends):
    tb, ob = backends
    z = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(2))
    got, want = ob.probe(z), tb.probe(z)
    assert set(got) == {'ee_position', 'block_yaw'} == set(ob.probe_names)
    assert got['ee_position'].shape == (4, 5, 3) and got['block_yaw'].shape == (4, 5, 1)
    for k in got:
        close(got[k], want[k])


def test_planner_runs_on_either_backend(backends):
    """The backends are duck-compatible with WorldModel: rollout is the planner's dynamics."""
    goal = torch.randn(8, generator=torch.Generator().manual_seed(4))
    z = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(6))
    for backend in backends:
        planner = make_planner('cem', PlannerConfig(action_dim=2, horizon=4, n_samples=64,
                                                    iterations=3, n_elites=8, lower=-1.0,
                                                    upper=1.0))
        result = planner.plan(z, dynamics=backend.rollout, cost=latent_goal_cost(goal))
        assert result.info['reason'] == 'ok' and result.actions.shape == (4, 2)
        assert bool((result.actions.abs() <= 1.0).all())
        # the plan's predicted latents are what the reference model predicts for it
        close(result.predicted, backends[0].rollout(z, result.actions[None])[0])


@pytest.mark.parametrize('name', ['cem', 'mppi'])
def test_plan_graph_gives_the_eager_plan(backends, backends_m2, name, caplog):
    """ONNX Runtime runs a whole plan as one graph; the plan is the eager one.

    With bounds, rate limits from a current action, a hold action and a short belief history
    (padded like rollout()); also for a model conditioned on 2 past actions.
    """
    for (torch_b, ort_b), dim in ((backends, 8), (backends_m2, 8)):
        gen = torch.Generator().manual_seed(11)
        goal = torch.randn(dim, generator=gen)
        z = torch.randn(1, 1, dim, generator=gen)
        plans = []
        for backend in (torch_b, ort_b):
            planner = make_planner(name, PlannerConfig(
                action_dim=2, horizon=torch_b.horizon, n_samples=48, iterations=3, n_elites=6,
                lower=-1.0, upper=1.0, max_delta=0.3, temperature=0.5))
            cost = latent_goal_cost(goal, 'l2')
            search = backend.plan_search(planner, cost)
            assert (search is None) == (backend.name == 'torch')
            plans.append(planner.plan(z, dynamics=backend.rollout, cost=cost, search=search,
                                      current_action=torch.tensor([0.9, -0.9]),
                                      hold_action=torch.tensor([0.9, -0.9])))
        eager, graph = plans
        assert graph.info['reason'] == 'ok'
        close(graph.actions, eager.actions)
        close(graph.predicted, eager.predicted)
        assert graph.cost == pytest.approx(eager.cost, rel=1e-4, abs=1e-6)
        # bounds and the rate limit from the current action hold in the graph too
        assert bool((graph.actions.abs() <= 1.0).all())
        assert bool(((graph.actions[0] - torch.tensor([0.9, -0.9])).abs() <= 0.3 + 1e-6).all())
    # other costs (probe goals, sums) keep eager iterations
    planner = make_planner(name, PlannerConfig(action_dim=2, horizon=4))
    assert backends[1].plan_search(planner,
                                   lambda predicted, actions: predicted.sum((1, 2))) is None


# ------------------------------------------------------------------------------------ interface
def test_description_and_hash(model, backends, tmp_path, cache):
    ckpt = save_checkpoint(model, tmp_path / 'ckpt')
    file_hash = (ckpt / 'model.safetensors.sha256').read_text().split()[0]
    assert model_sha256(model) == file_hash
    cfg = BackendConfig(device='cpu', cache_dir=str(cache), horizon=4)
    from_dir = make_backend('onnxruntime', str(ckpt), cfg)
    for b in (*backends, from_dir):
        assert b.sha256 == file_hash
        assert (b.latent_dim, b.action_dim, b.history, b.image_size) == (8, 2, 2, 16)
        assert b.device == torch.device('cpu')
        info = b.info()
        assert info['backend'] == b.name and info['sha256'] == file_hash
        json.dumps(info)  # diagnostics must be serialisable
    assert [b.name for b in backends] == ['torch', 'onnxruntime']
    assert backends[1].info()['horizon'] == 4


def test_cached_export_is_reused_and_rebuilt_for_new_weights(model, cache, caplog):
    cfg = BackendConfig(device='cpu', cache_dir=str(cache), horizon=4)
    make_backend('onnxruntime', model, cfg)  # exported by the fixture already
    with caplog.at_level(logging.INFO, logger='ami_ros.inference'):
        make_backend('onnxruntime', model, cfg)
        assert not [r for r in caplog.records if 'exporting' in r.message]
        other = tiny_model(seed=9)
        b = make_backend('onnxruntime', other, cfg)
    assert [r for r in caplog.records if 'exporting' in r.message]
    assert b.sha256 == model_sha256(other) != model_sha256(model)


@pytest.mark.parametrize('which', ['torch', 'onnxruntime'])
def test_wrong_inputs_raise_value_errors_naming_expected_and_got(backends, which):
    b = dict(zip(['torch', 'onnxruntime'], backends))[which]
    z, a = torch.randn(3, 2, 8), torch.randn(3, 4, 2)
    cases = [
        (lambda: b.encode(np.zeros((1, 16, 16, 4), np.uint8)), r'RGB.*\(1, 16, 16, 4\)'),
        (lambda: b.encode(np.zeros((16, 16, 3), np.uint8)), r'uint8 \(B, H, W, 3\).*got'),
        (lambda: b.encode(torch.zeros(1, 3, 16, 16, dtype=torch.int32)), r'got int32'),
        (lambda: b.encode(torch.zeros(1, 16, 16, 3)), r'float images must be \(B, 3, H, W\)'),
        (lambda: b.rollout(torch.randn(3, 2, 7), a), r'z_hist must be .*D=8.*got .*7'),
        (lambda: b.rollout(z.long(), a), r'z_hist must be a float tensor.*got int64'),
        (lambda: b.rollout(torch.randn(3, 8), a), r"z_hist must be \(B, k', D=8\)"),
        (lambda: b.rollout(z, torch.randn(3, 4, 3)), r'actions must be \(B, H, A=2\).*got'),
        (lambda: b.rollout(z, torch.randn(4, 4, 2)), r'batch must be 1 or the actions batch 4'),
        (lambda: b.rollout(z, torch.zeros(3, 0, 2)), r'actions must be .*got shape'),
        (lambda: b.probe(torch.randn(5, 7)), r'z must be \(\.\.\., D=8\), got'),
        (lambda: b.probe(torch.ones(5, 8, dtype=torch.int64)), r'float tensor.*int64'),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_past_actions_shape_is_checked(backends_m2):
    for b in backends_m2:
        z, a = torch.randn(2, 3, 8), torch.randn(2, 3, 2)
        with pytest.raises(ValueError, match=r'past_actions must be .*got'):
            b.rollout(z, a, past_actions=torch.randn(3, 1, 2))
        with pytest.raises(ValueError, match=r'past_actions must be .*A=2'):
            b.rollout(z, a, past_actions=torch.randn(2, 1, 5))


def test_config_and_name_validation(model):
    with pytest.raises(ValueError, match="unknown inference backend 'tensorflow'"):
        make_backend('tensorflow', model)
    with pytest.raises(ValueError, match="device must be .*got 'gpu0'"):
        BackendConfig(device='gpu0')
    with pytest.raises(ValueError, match="fallback: unknown backend 'onnx'"):
        BackendConfig(fallback=('onnx',))
    with pytest.raises(ValueError, match="precision must be one of .*'int8'"):
        BackendConfig(precision='int8')
    with pytest.raises(ValueError, match='horizon must be in'):
        BackendConfig(horizon=0)


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-GPU path; this machine has CUDA')
def test_cuda_device_without_gpu_is_unavailable_and_falls_back(model, cache, caplog):
    with pytest.raises(BackendUnavailable, match='no CUDA'):
        make_backend('torch', model, BackendConfig(device='cuda'))
    cfg = BackendConfig(device='cuda', fallback=('onnxruntime',), cache_dir=str(cache))
    with pytest.raises(BackendUnavailable, match='no inference backend could be loaded'):
        make_backend('torch', model, cfg)


# ------------------------------------------------------------------------------------ fallback
@pytest.fixture
def export_dir(model, tmp_path):
    export_onnx(model, tmp_path / 'onnx', horizon=4)
    return tmp_path / 'onnx'


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_onnx_dir_loads_without_checkpoint(export_dir, model):
    b = make_backend('onnxruntime', None, BackendConfig(device='cpu', onnx_dir=str(export_dir)))
    z, a = torch.randn(1, 2, 8), torch.randn(5, 4, 2)
    close(b.rollout(z, a), model.rollout(z, a).detach())
    assert b.sha256 == model_sha256(model)


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'missing', 'garbage_rehashed'])
def test_broken_onnx_falls_back_with_one_clear_line(export_dir, model, caplog, damage):
    path = export_dir / 'rollout.onnx'
    if damage == 'missing':
        path.unlink()
    elif damage == 'truncated':
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(b'this is not an onnx file')
    if damage == 'garbage_rehashed':  # hash matches: ONNX Runtime itself must reject the file
        import hashlib
        sidecar = json.loads((export_dir / SIDECAR).read_text())
        sidecar['graphs']['rollout']['sha256'] = hashlib.sha256(path.read_bytes()).hexdigest()
        (export_dir / SIDECAR).write_text(json.dumps(sidecar))
    strict = BackendConfig(device='cpu', onnx_dir=str(export_dir))
    with pytest.raises(BackendUnavailable, match='rollout.onnx'):
        make_backend('onnxruntime', model, strict)
    caplog.clear()
    cfg = BackendConfig(device='cpu', onnx_dir=str(export_dir), fallback=('torch',))
    with caplog.at_level(logging.WARNING):
        b = make_backend('onnxruntime', model, cfg)
    assert b.name == 'torch'
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert "'onnxruntime' unavailable" in lines[0] and 'rollout.onnx' in lines[0]
    assert "falling back to 'torch'" in lines[0]


def test_export_of_other_weights_is_refused(export_dir):
    other = tiny_model(seed=7)
    with pytest.raises(BackendUnavailable, match='exported from weights .* export again'):
        make_backend('onnxruntime', other, BackendConfig(device='cpu', onnx_dir=str(export_dir)))


def test_not_an_export_dir(tmp_path):
    with pytest.raises(BackendUnavailable, match='export.json: missing'):
        read_export(tmp_path)
    (tmp_path / SIDECAR).write_text('{"format": "something else"}')
    with pytest.raises(BackendUnavailable, match='not an ami_ros ONNX export'):
        read_export(tmp_path)


@pytest.mark.skipif(HAS_TRT and HAS_CUDA,
                    reason='checks the fallback when TensorRT cannot load; it can here')
def test_tensorrt_missing_falls_back_in_order(model, cache, caplog):
    cfg = BackendConfig(device='auto', cache_dir=str(cache), horizon=4,
                        fallback=('onnxruntime', 'torch'))
    with caplog.at_level(logging.WARNING):
        b = make_backend('tensorrt', model, cfg)
    assert b.name == 'onnxruntime'
    lines = _warnings(caplog)
    assert len(lines) == 1 and "'tensorrt' unavailable" in lines[0]
    assert ('tensorrt Python package is not installed' in lines[0]
            or 'CUDA' in lines[0]), lines[0]


# ------------------------------------------------------------------------------------ TensorRT
@pytest.fixture(scope='module')
def trt_backends(model, cache):
    if TRT_SKIP:
        pytest.skip(f'TensorRT tests need tensorrt and a CUDA GPU: {TRT_SKIP}')
    cfg = BackendConfig(device='cuda', cache_dir=str(cache), horizon=4, planning_batch=300,
                        precision='fp16')
    return make_backend('torch', model, cfg), make_backend('tensorrt', model, cfg)


def test_tensorrt_matches_torch_within_fp16_tolerance(trt_backends):
    tb, rb = trt_backends
    assert rb.name == 'tensorrt' and rb.device.type == 'cuda'
    img = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    torch.testing.assert_close(rb.encode(img), tb.encode(img), atol=2e-2, rtol=2e-2)
    for batch in (1, 37, 300, 450):  # 300 replays the CUDA graph; 450 > profile max: split
        z = torch.randn(1, 2, 8, device=rb.device)
        a = torch.randn(batch, 4, 2, device=rb.device)
        torch.testing.assert_close(rb.rollout(z, a), tb.rollout(z, a), atol=3e-2, rtol=3e-2)
    zs = torch.randn(10, 8, device=rb.device)
    for k, v in tb.probe(zs).items():
        torch.testing.assert_close(rb.probe(zs)[k], v, atol=3e-2, rtol=3e-2)


def test_tensorrt_cuda_graph_replay_sees_new_inputs(trt_backends):
    _, rb = trt_backends
    z = torch.randn(1, 2, 8, device=rb.device)
    a1 = torch.randn(300, 4, 2, device=rb.device)
    a2 = torch.randn(300, 4, 2, device=rb.device)
    o1, o2, o1b = rb.rollout(z, a1), rb.rollout(z, a2), rb.rollout(z, a1)
    assert not torch.equal(o1, o2)
    torch.testing.assert_close(o1, o1b, rtol=0, atol=0)


def test_tensorrt_engine_is_cached_and_reused(model, cache, trt_backends, caplog):
    cfg = BackendConfig(device='cuda', cache_dir=str(cache), horizon=4, planning_batch=300)
    with caplog.at_level(logging.WARNING):
        make_backend('tensorrt', model, cfg)
    assert not [m for m in _warnings(caplog) if 'building TensorRT' in m]
    assert list(engine_dir(cache).glob('*.engine'))


# ------------------------------------------------------------------------------------ cache key
def _key(**kw) -> EngineKey:
    base = dict(onnx_sha256='a' * 64, gpu='NVIDIA H100 80GB HBM3', compute_capability='9.0',
                tensorrt='10.3.0', precision='fp16',
                profiles=[[('z_hist', (1, 3, 32), (1, 3, 32), (1, 3, 32))],
                          [('z_hist', (1, 3, 32), (300, 3, 32), (300, 3, 32))]])
    base.update(kw)
    return EngineKey(**base)


def test_engine_key_changes_with_every_component():
    ref = _key()
    assert _key().digest() == ref.digest()
    variants = [_key(onnx_sha256='b' * 64), _key(gpu='Orin'), _key(compute_capability='8.7'),
                _key(tensorrt='10.0.1'), _key(precision='fp32'),
                _key(profiles=[[('z_hist', (1, 3, 32), (1, 3, 32), (1, 3, 32))],
                               [('z_hist', (1, 3, 32), (512, 3, 32), (512, 3, 32))]])]
    digests = {v.digest() for v in variants}
    assert ref.digest() not in digests and len(digests) == len(variants)
    assert EngineKey.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_engine_cache_hit_stale_and_corrupt(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    first = cache.lookup('m-rollout', key)
    assert first.rebuild and 'no cached engine' in first.reason
    path = cache.store('m-rollout', key, b'engine bytes')
    assert path.parent == tmp_path / 'engines'
    hit = cache.lookup('m-rollout', key)
    assert not hit.rebuild and hit.path == path
    # another TensorRT (or GPU): a different file; the old one is named as stale, with why
    newer = _key(tensorrt='10.4.0')
    stale = cache.lookup('m-rollout', newer)
    assert stale.rebuild and stale.path != path
    assert 'stale engine' in stale.reason and 'tensorrt 10.3.0 -> 10.4.0' in stale.reason
    gpu = cache.lookup('m-rollout', _key(gpu='Orin', compute_capability='8.7'))
    assert 'gpu NVIDIA H100 80GB HBM3 -> Orin' in gpu.reason and 'compute_capability' in gpu.reason
    # a truncated engine file is rebuilt, not loaded
    path.write_bytes(b'engine')
    corrupt = cache.lookup('m-rollout', key)
    assert corrupt.rebuild and 'corrupt' in corrupt.reason
    cache.discard('m-rollout', key)
    assert not path.exists()


def test_engine_cache_location_is_per_user(monkeypatch, tmp_path):
    monkeypatch.setenv('AMI_ROS_CACHE', str(tmp_path / 'c'))
    assert engine_dir() == tmp_path / 'c' / 'engines'
    monkeypatch.delenv('AMI_ROS_CACHE')
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert engine_dir() == tmp_path / 'home' / '.cache' / 'ami_ros' / 'engines'
    assert engine_dir(tmp_path / 'x') == tmp_path / 'x' / 'engines'
    with pytest.raises(ValueError, match='engine name'):
        EngineCache(tmp_path).paths('../escape', _key())


def test_tensorrt_profiles_come_from_the_graph(export_dir):
    from ami_ros.inference.tensorrt_backend import graph_profiles

    graphs = read_export(export_dir)['graphs']
    one, many = graph_profiles({**graphs['rollout'], 'graph': 'rollout'}, 300, 4)
    assert dict((n, (lo, opt, hi)) for n, lo, opt, hi in one) == {
        'z_hist': ((1, 2, 8),) * 3, 'actions': ((1, 4, 2),) * 3}
    assert dict((n, hi) for n, _, _, hi in many) == {'z_hist': (300, 2, 8), 'actions': (300, 4, 2)}
    _, probes = graph_profiles({**graphs['probes'], 'graph': 'probes'}, 300, 4)
    assert probes[0][3] == (1200, 8)  # a probe cost sees N x H latents
