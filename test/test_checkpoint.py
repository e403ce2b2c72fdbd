"""Checkpoints: exact round trip, resolution of names, and clear errors for bad input."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ami_ros.model import checkpoint as ckpt
from ami_ros.model import (CheckpointError, CheckpointNotFoundError, ModelConfig, WorldModel,
                           load_checkpoint, save_checkpoint)
from ami_ros.model.config import CNNConfig, PredictorConfig, ProbeSpec

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


def make_model(seed=0, latent_dim=8) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(ModelConfig(
        image_size=16, latent_dim=latent_dim, action_dim=3, cnn=CNNConfig(channels=(4, 8)),
        predictor=PredictorConfig(history=2, action_history=2, hidden=16, layers=2),
        probe_hidden=8))
    model.set_action_stats([0.1, 0.2, 0.3], [1.5, 0.25, 0.7])
    model.set_probes([ProbeSpec('ee_position', 3, mean=(0.1, -0.2, 0.4), std=(0.3, 0.2, 0.1)),
                      ProbeSpec('joint_positions', 3)])
    # move the probes off their init so a lost probe weight would show
    with torch.no_grad():
        for p in model.probes.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def outputs(model):
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        z = model.encode(img)
        roll = model.rollout(torch.stack([z, z], 1), torch.randn(3, 4, 3, generator=g))
        return [z, roll, *model.probe(roll).values()]


def test_round_trip_is_exact(tmp_path):
    model = make_model()
    save_checkpoint(model, tmp_path / 'ck', training={'steps': 7})
    assert sorted(p.name for p in (tmp_path / 'ck').iterdir()) == [
        'config.json', 'model.safetensors', 'model.safetensors.sha256']
    loaded = load_checkpoint(tmp_path / 'ck')
    assert loaded.config == model.config
    assert loaded.training_info == {'steps': 7}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    for x, y in zip(outputs(model), outputs(loaded)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(loaded.action_std, torch.tensor([1.5, 0.25, 0.7]), rtol=0, atol=0)
    cfg = json.loads((tmp_path / 'ck' / 'config.json').read_text())
    assert cfg['normalization']['action_mean'] == pytest.approx([0.1, 0.2, 0.3])
    assert [p['name'] for p in cfg['probes']] == ['ee_position', 'joint_positions']
    digest = (tmp_path / 'ck' / 'model.safetensors.sha256').read_text().split()[0]
    assert digest == cfg['weights_sha256'] == ckpt.sha256_file(tmp_path / 'ck' /
                                                               'model.safetensors')


def test_save_replaces_an_existing_checkpoint(tmp_path):
    save_checkpoint(make_model(seed=0), tmp_path / 'ck')
    save_checkpoint(make_model(seed=1), tmp_path / 'ck')
    loaded = load_checkpoint(tmp_path / 'ck')
    torch.testing.assert_close(outputs(loaded)[0], outputs(make_model(seed=1))[0], rtol=0,
                               atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ['ck']   # no temporary directories left


def test_training_output_dir_and_bare_name_resolve(tmp_path, monkeypatch):
    save_checkpoint(make_model(), tmp_path / 'run' / 'model')
    assert ckpt.resolve_checkpoint(tmp_path / 'run') == tmp_path / 'run' / 'model'
    share = tmp_path / 'share'
    save_checkpoint(make_model(), share / 'models' / 'arm_reach')
    monkeypatch.setattr(ckpt, 'share_dir', lambda: share)
    monkeypatch.chdir(tmp_path)
    assert ckpt.resolve_checkpoint('arm_reach') == share / 'models' / 'arm_reach'
    assert load_checkpoint('arm_reach').latent_dim == 8
    with pytest.raises(CheckpointNotFoundError, match=re.escape(str(share / 'models' / 'nope'))):
        load_checkpoint('nope')
    with pytest.raises(CheckpointNotFoundError, match='no such checkpoint directory'):
        load_checkpoint(tmp_path / 'missing' / 'dir')


def test_hash_mismatch_names_the_file(tmp_path):
    d = save_checkpoint(make_model(), tmp_path / 'ck')
    raw = bytearray((d / 'model.safetensors').read_bytes())
    raw[-5] ^= 0x01                                         # flip one bit of a weight
    (d / 'model.safetensors').write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r'model\.safetensors: sha256 mismatch'):
        load_checkpoint(d)


def test_config_that_does_not_fit_the_weights(tmp_path):
    d = save_checkpoint(make_model(), tmp_path / 'ck')
    cfg = json.loads((d / 'config.json').read_text())
    cfg['model']['latent_dim'] = 12
    (d / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r'config\.json does not fit .*model\.safetensors.*'
                                              r'shape mismatch'):
        load_checkpoint(d)
    cfg['model']['latent_dim'] = 8
    cfg['probes'] = cfg['probes'][:1]                       # a probe head too few
    (d / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r'unexpected weights .*probes\.joint_positions'):
        load_checkpoint(d)
    cfg['model']['encoder'] = 'transformer'
    (d / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid model config.*encoder"):
        load_checkpoint(d)
    (d / 'config.json').write_text('{not json')
    with pytest.raises(CheckpointError, match=r'config\.json: not valid JSON'):
        load_checkpoint(d)


def test_weights_swapped_from_another_checkpoint(tmp_path):
    a = save_checkpoint(make_model(seed=0), tmp_path / 'a')
    b = save_checkpoint(make_model(seed=1), tmp_path / 'b')
    for name in ('model.safetensors', 'model.safetensors.sha256'):
        shutil.copy(b / name, a / name)
    with pytest.raises(CheckpointError, match='config and weights do not belong together'):
        load_checkpoint(a)


@pytest.mark.parametrize('missing', ['config.json', 'model.safetensors',
                                     'model.safetensors.sha256'])
def test_missing_file_is_named(tmp_path, missing):
    d = save_checkpoint(make_model(), tmp_path / 'ck')
    (d / missing).unlink()
    with pytest.raises(CheckpointNotFoundError, match=re.escape(str(d / missing))):
        load_checkpoint(d)


def test_train_state_round_trip(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        z = model.encode(torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8))
        loss = model.rollout(torch.stack([z, z], 1), torch.ones(2, 3, 3)).square().mean()
        model.zero_grad()
        loss.backward()
        opt.step()
    ckpt.save_train_state(tmp_path / 'st', model, opt, {'step': 2},
                          {'ema/w': torch.arange(4.0)})
    model2 = load_checkpoint(tmp_path / 'st')
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    state, extra = ckpt.load_train_state(tmp_path / 'st', opt2)
    assert state == {'step': 2}
    torch.testing.assert_close(extra['ema/w'], torch.arange(4.0))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1['param_groups'] == s2['param_groups']
    for pid in s1['state']:
        for key, value in s1['state'][pid].items():
            torch.testing.assert_close(s2['state'][pid][key], value, rtol=0, atol=0)
    raw = bytearray((tmp_path / 'st' / 'optimizer.safetensors').read_bytes())
    raw[-1] ^= 0x01
    (tmp_path / 'st' / 'optimizer.safetensors').write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r'optimizer\.safetensors: sha256 mismatch'):
        ckpt.load_train_state(tmp_path / 'st', opt2)


def test_nothing_is_unpickled():
    """Checkpoints are read with safetensors/JSON only: no torch.load / pickle in the code."""
    for folder in ('ami_ros/model', 'ami_ros/train', 'ami_ros/cli'):
        for path in (REPO / folder).glob('*.py'):
            text = path.read_text()
            assert 'torch.load(' not in text and 'import pickle' not in text, path


def test_eval_model_cli_errors_name_the_input(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    d = save_checkpoint(make_model(), tmp_path / 'ck')
    env_cmd = [sys.executable, '-m', 'ami_ros.cli.eval_model']
    r = subprocess.run(env_cmd + ['--checkpoint', str(d), '--data', str(empty), '--json'],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ''
    assert f'{empty}: no rosbag2 bags found' in r.stderr
    (d / 'model.safetensors.sha256').write_text('0' * 64 + '  model.safetensors\n')
    r = subprocess.run(env_cmd + ['--checkpoint', str(d), '--data', str(empty)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert 'model.safetensors: sha256 mismatch' in r.stderr
    assert 'Traceback' not in r.stderr


def test_checkpoint_size_of_default_arm_reach_model(tmp_path):
    """The shipped config's model must stay well under 20 MB."""
    from ami_ros.model.config import load_run_config
    cfg = load_run_config(REPO / 'config' / 'train_arm_reach.yaml').model
    cfg.action_dim = 4
    cfg.__post_init__()
    model = WorldModel(cfg)
    model.set_probes([ProbeSpec('ee_position', 3), ProbeSpec('joint_positions', 4),
                      ProbeSpec('goal_position', 3)])
    d = save_checkpoint(model, tmp_path / 'ck')
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < 20e6, size
    assert np.isfinite(size)
