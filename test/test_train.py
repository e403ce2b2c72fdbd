"""Training end to end on a tiny analytic world.

The world is ami_ros.train.synthetic (a dot that follows its command with lag). Covered:
learning, determinism, resume, Ctrl-C, the CLI, DDP, evaluation.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ami_ros.model import load_checkpoint
from ami_ros.model.config import (CNNConfig, LossConfig, ModelConfig, PredictorConfig,
                                  ProbeTrainConfig, RunConfig, TrainConfig, to_dict)
from ami_ros.train import trainer as trainer_mod
from ami_ros.train.dataset import DataError, WindowDataset, load_episodes, split_episodes
from ami_ros.train.evaluate import evaluate
from ami_ros.train.synthetic import make_dot_episodes
from ami_ros.train.trainer import Trainer, TrainingInterrupted, lr_at

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


def tiny_run_config(steps=30, regularizer='sigreg', target='online', seed=0) -> RunConfig:
    return RunConfig(
        model=ModelConfig(image_size=16, latent_dim=8, cnn=CNNConfig(channels=(8, 16)),
                          predictor=PredictorConfig(history=2, hidden=64, layers=2),
                          probe_hidden=32),
        loss=LossConfig(horizon=3, regularizer=regularizer, target=target,
                        reg_weight=0.1 if regularizer == 'sigreg' else 1.0,
                        sigreg_projections=32),
        train=TrainConfig(max_steps=steps, batch_size=8, lr=3e-3, warmup_steps=5, seed=seed,
                          num_threads=1, val_every=10, val_windows=32, log_every=5,
                          checkpoint_every=10),
        probe=ProbeTrainConfig(steps=50, targets=('ee_position', 'joint_positions', 'absent')))


@pytest.fixture(scope='module')
def episodes():
    return split_episodes(make_dot_episodes(8, length=24, image_size=16, seed=0), 0.25, 0)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_windows_cover_each_episode_without_crossing():
    eps = make_dot_episodes(3, length=10, image_size=16)
    ds = WindowDataset(eps, window=4)
    assert len(ds) == 3 * 7
    images, actions, joints = ds.batch(torch.arange(len(ds)))
    assert images.shape == (21, 4, 16, 16, 3) and actions.shape == (21, 4, 2)
    np.testing.assert_array_equal(joints[8].numpy(), eps[1].joint_positions[1:5])
    # window 7 is the first of episode 1
    np.testing.assert_array_equal(images[7].numpy(), eps[1].images[:4])
    np.testing.assert_array_equal(actions[20].numpy(), eps[2].actions[6:10])


def test_lr_schedule():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)


def test_tiny_run_writes_everything_and_is_deterministic(tmp_path, episodes):
    train, val = episodes
    summary = Trainer(tiny_run_config(), train, val, tmp_path / 'a', progress=False).run()
    out = tmp_path / 'a'
    for name in ('config.yaml', 'log.csv', 'log.json', 'curves.png', 'resume/optimizer.safetensors',
                 'resume/train_state.json', 'model/model.safetensors', 'model/config.json'):
        assert (out / name).is_file(), name
    log = json.loads((out / 'log.json').read_text())
    steps = [r['step'] for r in log['records']]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert 'val_rollout_ratio_h3' in log['records'][-1]
    assert all(np.isfinite(r['loss']) for r in log['records'])
    assert set(summary['probes']) == {'ee_position', 'joint_positions'}   # 'absent' skipped
    header = (out / 'log.csv').read_text().splitlines()[0].split(',')
    assert {'step', 'loss', 'pred_1step', 'pred_rollout', 'reg', 'samples_per_s'} <= set(header)
    model = load_checkpoint(out)
    assert model.training_info['steps'] == 30
    assert model.probe_names == ('ee_position', 'joint_positions')
    # same seed, same everything -> bit-identical weights
    Trainer(tiny_run_config(), train, val, tmp_path / 'b', progress=False).run()
    assert_same(weights(model), weights(load_checkpoint(tmp_path / 'b')))


def _interrupt_at(trainer, monkeypatch, step: int, exc: type[BaseException]) -> None:
    """Make the batch for optimiser step ``step`` (0-based) raise ``exc``."""
    real_batch = trainer.train_data.batch
    calls = {'n': 0}

    def batch(idx):
        calls['n'] += 1
        if calls['n'] == step + 1:
            raise exc('simulated')
        return real_batch(idx)

    monkeypatch.setattr(trainer.train_data, 'batch', batch)


@pytest.mark.parametrize('target', ['online', 'ema'])
def test_ctrl_c_and_crash_resume_exactly(tmp_path, episodes, monkeypatch, target):
    """Interrupted runs resume exactly.

    Ctrl-C saves a resumable state at the current step; after a crash, --resume continues from
    the last periodic checkpoint; either way the result equals an uninterrupted run.
    """
    train, val = episodes
    cfg = tiny_run_config(steps=20, target=target)
    cfg.probe.steps = 0
    cfg.loss.idm_weight = cfg.loss.proprio_weight = 0.5     # their heads must resume too
    cfg.loss.contrastive_weight = 0.5                       # and the batch-wide term
    Trainer(cfg, train, val, tmp_path / 'ref', progress=False).run()
    reference = weights(load_checkpoint(tmp_path / 'ref'))

    t = Trainer(cfg, train, val, tmp_path / 'ctrl_c', progress=False)
    _interrupt_at(t, monkeypatch, 7, KeyboardInterrupt)
    with pytest.raises(TrainingInterrupted) as info:
        t.run()
    assert info.value.step == 7
    state = json.loads((tmp_path / 'ctrl_c' / 'resume' / 'train_state.json').read_text())
    assert state['state']['step'] == 7
    monkeypatch.undo()
    t = Trainer(cfg, train, val, tmp_path / 'ctrl_c', resume=True, progress=False)
    assert t.step == 7
    t.run()
    assert_same(reference, weights(load_checkpoint(tmp_path / 'ctrl_c')))

    t = Trainer(cfg, train, val, tmp_path / 'crash', progress=False)
    _interrupt_at(t, monkeypatch, 13, RuntimeError)
    with pytest.raises(RuntimeError, match='simulated'):
        t.run()
    monkeypatch.undo()
    t = Trainer(cfg, train, val, tmp_path / 'crash', resume=True, progress=False)
    assert t.step == 10                                     # checkpoint_every = 10
    t.run()
    assert_same(reference, weights(load_checkpoint(tmp_path / 'crash')))
    rows = json.loads((tmp_path / 'crash' / 'log.json').read_text())['records']
    assert [r['step'] for r in rows] == [5, 10, 15, 20]


@pytest.mark.parametrize('regularizer', ['sigreg', 'vicreg'])
def test_trained_model_beats_copy_last_on_its_data(tmp_path, regularizer):
    """A short training run on the dot world learns its dynamics.

    Open-loop rollouts beat the "nothing changes" baseline, the probes beat predicting the
    mean, and the latent does not collapse.
    """
    eps = make_dot_episodes(10, length=30, image_size=16, seed=1)
    cfg = tiny_run_config(steps=200, regularizer=regularizer)
    cfg.train.val_fraction = 0.0
    cfg.train.lr = 5e-3
    cfg.train.checkpoint_every = 200                    # (each checkpoint also draws a plot)
    cfg.probe.steps = 300
    Trainer(cfg, eps, [], tmp_path / 'run', progress=False).run()
    result = evaluate(load_checkpoint(tmp_path / 'run'), eps, horizons=(1, 3, 5))
    ratio = dict(zip(result['horizons'], result['rollout_ratio']))
    assert ratio[3] < 0.7 and ratio[5] < 0.7, result
    assert result['probe_error']['ee_position'] < 0.6 * result['probe_error']['baseline'][
        'ee_position']
    assert result['effective_rank'] > 2.0
    assert 0.0 <= result['retrieval'] <= 1.0


# ------------------------------------------------------------------------------------ CLI
def write_dot_bags(folder: Path, episodes) -> None:
    from ami_ros.data.bag import SIM_EPOCH_NS, BagWriter

    for i, ep in enumerate(episodes):
        with BagWriter(folder / f'dot_{i:02d}', ep.joint_names) as w:
            for t in range(len(ep)):
                ns = SIM_EPOCH_NS + int(round(ep.stamps[t] * 1e9))
                w.write_image(ns, ep.images[t])
                w.write_joint_state(ns, ep.joint_positions[t])
                w.write_ground_truth(ns, {'ee_position': ep.ground_truth['ee_position'][t]})
                w.write_command(ns, ep.actions[t])


def test_cli_train_then_eval_model_json(tmp_path, monkeypatch, capsys):
    eps = make_dot_episodes(5, length=20, image_size=16, seed=2)
    write_dot_bags(tmp_path / 'bags', eps[:4])
    write_dot_bags(tmp_path / 'heldout', eps[4:])
    monkeypatch.setenv('AMI_ROS_CACHE', str(tmp_path / 'cache'))
    read = load_episodes([tmp_path / 'bags'], image_size=16)
    np.testing.assert_array_equal(read[0].images, eps[0].images)
    np.testing.assert_allclose(read[0].actions, eps[0].actions, atol=1e-6)
    cfg = to_dict(tiny_run_config(steps=10))
    cfg['data'] = {'paths': ['does/not/matter']}           # --data overrides it
    (tmp_path / 'tiny.yaml').write_text(yaml.safe_dump(cfg))
    from ami_ros.cli import main
    rc = main(['train', '--config', str(tmp_path / 'tiny.yaml'), '--data', str(tmp_path / 'bags'),
               '--out', str(tmp_path / 'run'), '--max-steps', '12', '--no-progress'])
    assert rc == 0
    assert load_checkpoint(tmp_path / 'run').training_info['steps'] == 12
    env = dict(os.environ, AMI_ROS_CACHE=str(tmp_path / 'cache'))
    r = subprocess.run([sys.executable, '-m', 'ami_ros.cli.eval_model', '--checkpoint',
                        str(tmp_path / 'run'), '--data', str(tmp_path / 'heldout'), '--json',
                        '--horizons', '1', '5', '--plot', str(tmp_path / 'h.png')],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)                          # exactly one JSON object
    assert result['horizons'] == [1, 5]
    assert len(result['rollout_error']) == len(result['copy_last_error']) == 2
    assert set(result['probe_error']['baseline']) == {'ee_position', 'joint_positions'}
    assert result['latent_dim'] == 8 and 1.0 <= result['effective_rank'] <= 8.0
    assert 'retrieval' in result
    assert (tmp_path / 'h.png').stat().st_size > 1000
    # data of another robot (3 joints instead of 2) is refused, naming the bag
    other = make_dot_episodes(1, length=20, image_size=16, seed=3)[0]
    other.actions = np.concatenate([other.actions, other.actions[:, :1]], axis=1)
    other.joint_positions = other.actions.copy()
    other.joint_names = ('a', 'b', 'c')
    write_dot_bags(tmp_path / 'other', [other])
    capsys.readouterr()
    assert main(['eval-model', '--checkpoint', str(tmp_path / 'run'), '--data',
                 str(tmp_path / 'other')]) == 2
    err = capsys.readouterr().err
    assert 'dot_00' in err and 'model was trained on 2' in err
    # the table form
    assert main(['eval-model', '--checkpoint', str(tmp_path / 'run'), '--data',
                 str(tmp_path / 'heldout'), '--plot', str(tmp_path / 'h2.png')]) == 0
    assert 'rollout error' in capsys.readouterr().out


def test_cli_train_errors_name_the_input(tmp_path, capsys):
    from ami_ros.cli import main
    (tmp_path / 'empty').mkdir()
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(yaml.safe_dump(to_dict(tiny_run_config())))
    assert main(['train', '--config', str(cfg), '--data', str(tmp_path / 'empty'),
                 '--out', str(tmp_path / 'o')]) == 2
    assert f'{tmp_path / "empty"}: no rosbag2 bags found' in capsys.readouterr().err
    cfg.write_text('train:\n  max_step: 3\n')
    assert main(['train', '--config', str(cfg), '--out', str(tmp_path / 'o')]) == 2
    assert 'train.max_step: unknown field (did you mean train.max_steps?)' in \
        capsys.readouterr().err
    with pytest.raises(DataError, match='no such file or directory'):
        load_episodes([tmp_path / 'nowhere'])


# ------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train, val = split_episodes(make_dot_episodes(6, length=20, image_size=16), 0.2, 0)
    cfg = tiny_run_config(steps=6)
    cfg.train.device = 'cpu'
    cfg.probe.steps = 20
    out = Path(root) / ('run' if rank == 0 else 'run_rank1')  # rank 1 must write nothing
    t = Trainer(cfg, train, val, out, progress=False)
    t.run()
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in t.model.state_dict().items()
             if not k.startswith('probes.')}
    save_file(state, str(Path(root) / f'weights_{rank}.safetensors'))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_gloo(tmp_path):
    from safetensors.torch import load_file
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                                join=True)
    w0 = load_file(str(tmp_path / 'weights_0.safetensors'))
    w1 = load_file(str(tmp_path / 'weights_1.safetensors'))
    assert_same(w0, w1)                                    # gradients were averaged in sync
    assert not (tmp_path / 'run_rank1').exists()
    model = load_checkpoint(tmp_path / 'run')
    assert model.training_info['world_size'] == 2
    assert_same(w0, {k: v for k, v in model.state_dict().items() if not k.startswith('probes.')})
    init = trainer_mod.WorldModel(model.config)
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in w0.items())


def test_cli_train_from_generated_episodes(tmp_path):
    """``data.generate`` trains straight from a scene (here the analytic dot world)."""
    from ami_ros.cli import main
    cfg = to_dict(tiny_run_config(steps=4))
    cfg['data'] = {'generate': {'scene': 'dot', 'episodes': 3, 'length': 12, 'image_size': 16}}
    cfg['probe']['steps'] = 5
    (tmp_path / 'gen.yaml').write_text(yaml.safe_dump(cfg))
    assert main(['train', '--config', str(tmp_path / 'gen.yaml'), '--out', str(tmp_path / 'run'),
                 '--no-progress']) == 0
    model = load_checkpoint(tmp_path / 'run')
    assert model.training_info['data']['generate']['scene'] == 'dot'
    assert model.training_info['train_episodes'] + model.training_info['val_episodes'] == 3


def test_random_shift_moves_whole_windows_alike():
    from ami_ros.train.trainer import random_shift
    gen = torch.Generator().manual_seed(0)
    frame = torch.zeros(16, 16, 3, dtype=torch.uint8)
    frame[6:10, 6:10] = 255                                  # a bright square in the middle
    images = frame.expand(8, 3, 16, 16, 3).clone()           # (B=8 windows, L=3 frames)
    out = random_shift(images, 2, gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    # every frame of a window is shifted the same way, windows differ, content is preserved
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert len({bytes(w[0].numpy()) for w in out}) > 1
    assert all(int((w[0] == 255).all(-1).sum()) == 16 for w in out)


def test_the_contrastive_term_on_encodings_trains_the_encoder_alone(tmp_path, episodes):
    """contrastive_on: encoding needs no rollout; on the rollout it needs one."""
    from ami_ros.model.config import ConfigError

    train, val = episodes
    cfg = tiny_run_config(steps=4)
    cfg.probe.steps = 0
    cfg.loss.contrastive_weight, cfg.loss.contrastive_on, cfg.loss.rollout_weight = \
        1.0, 'encoding', 0.0
    Trainer(cfg, train, val, tmp_path / 'enc', progress=False).run()
    rows = json.loads((tmp_path / 'enc' / 'log.json').read_text())['records']
    values = [r['contrastive'] for r in rows if r.get('contrastive') is not None]
    assert values and all(0.0 < v < 10.0 for v in values)   # logged, finite, below log(N)...
    cfg.loss.contrastive_visual = True                       # the visual latent alone
    Trainer(cfg, train, val, tmp_path / 'vis', progress=False).run()
    rows = json.loads((tmp_path / 'vis' / 'log.json').read_text())['records']
    assert [r['contrastive'] for r in rows if r.get('contrastive') is not None] != values
    with pytest.raises(ConfigError, match='contrastive_on'):
        LossConfig(contrastive_weight=1.0, rollout_weight=0.0)
    with pytest.raises(ConfigError, match='contrastive_on'):
        LossConfig(contrastive_on='pixels')


@pytest.mark.parametrize('path', sorted((REPO / 'config').glob('train_*.yaml')),
                         ids=lambda p: p.name)
def test_every_training_config_in_the_repo_loads(path):
    """The training configs the docs give commands for stay valid as the config grows."""
    from ami_ros.model.config import load_run_config

    cfg = load_run_config(path)
    assert cfg.data.paths or cfg.data.generate is not None


def test_an_image_moments_model_learns_the_dot_worlds_dynamics(tmp_path):
    """keypoints.moments: statistics from the training frames, a predictor that beats copying."""
    from ami_ros.model.config import KeypointEncoderConfig

    eps = make_dot_episodes(10, length=30, image_size=16, seed=1)
    cfg = tiny_run_config(steps=150, regularizer='vicreg')
    cfg.model.encoder, cfg.model.latent_dim = 'keypoints', 9
    cfg.model.keypoints = KeypointEncoderConfig(background=True, moments=True)
    cfg.model.__post_init__()
    cfg.loss.reg_weight = 0.0
    cfg.train.val_fraction, cfg.train.lr, cfg.train.checkpoint_every = 0.0, 5e-3, 150
    cfg.probe.steps = 50
    Trainer(cfg, eps, [], tmp_path / 'run', progress=False).run()
    model = load_checkpoint(tmp_path / 'run')
    assert float(model.encoder.moment_std[0]) != 1.0         # set from the training frames
    result = evaluate(model, eps, horizons=(1, 3, 5))
    ratio = dict(zip(result['horizons'], result['rollout_ratio']))
    assert ratio[3] < 0.7 and ratio[5] < 0.7, result


def test_a_fixed_encoders_latents_are_computed_once_and_train_alike(tmp_path, monkeypatch):
    """An encoder without parameters: windows come from latents cached at start, same losses."""
    from ami_ros.model.config import KeypointEncoderConfig

    eps = make_dot_episodes(6, length=20, image_size=16, seed=2)
    cfg = tiny_run_config(steps=20, regularizer='vicreg')
    cfg.model.encoder, cfg.model.latent_dim = 'keypoints', 9
    cfg.model.keypoints = KeypointEncoderConfig(background=True, moments=True)
    cfg.model.__post_init__()
    cfg.loss.reg_weight, cfg.loss.target = 0.0, 'online'
    cfg.train.lr, cfg.train.log_every, cfg.train.val_every = 5e-3, 5, 10
    cached = Trainer(cfg, eps[:5], eps[5:], tmp_path / 'cached', progress=False)
    assert cached.latents is not None and len(cached.latents['train']) == 5 * 20
    frames = cached.train_data.frames(torch.arange(3))
    images, _, joints = cached.train_data.batch(torch.arange(3))
    with torch.no_grad():
        z = cached.model.visual(cached.model.preprocess(images.flatten(0, 1)),
                                joints[..., :2].flatten(0, 1))
    assert torch.allclose(cached.latents['train'][frames].flatten(0, 1), z, atol=1e-5)
    cached.run()
    monkeypatch.setattr(Trainer, '_cache_latents', lambda self: None)
    plain = Trainer(cfg, eps[:5], eps[5:], tmp_path / 'plain', progress=False)
    plain.run()
    for key in ('loss', 'val_loss', 'val_rollout_ratio_h5'):
        a, b = cached._last(key), plain._last(key)
        assert a == pytest.approx(b, rel=1e-3), (key, a, b)


def test_data_weights_draw_each_paths_windows_as_often_as_asked(tmp_path, capsys):
    from ami_ros.cli.train import load_data
    from ami_ros.model.config import ConfigError, DataConfig

    eps = make_dot_episodes(4, length=12, image_size=16, seed=4)
    write_dot_bags(tmp_path / 'explore', eps[:3])
    write_dot_bags(tmp_path / 'own', eps[3:])
    cfg = tiny_run_config()
    cfg.data = DataConfig(paths=(str(tmp_path / 'explore'), str(tmp_path / 'own')),
                          weights=(1.0, 6.0), val_paths=(str(tmp_path / 'own'),))
    train, _, info = load_data(cfg, progress=False)
    assert [ep.weight for ep in train] == [1.0, 1.0, 1.0, 6.0] and info['weights'] == [1.0, 6.0]
    ds = WindowDataset(train, window=4)
    idx = ds.draw(20_000, torch.Generator().manual_seed(0))
    own = (ds.starts[idx] >= ds.episode_offsets[3]).float().mean().item()
    assert own == pytest.approx(6 / 9, abs=0.02)  # 9 windows per episode: 6 of 3 + 6
    # all alike: the uniform draws of before
    plain = WindowDataset(make_dot_episodes(2, length=12, image_size=16), window=4)
    assert plain.window_weights is None
    torch.testing.assert_close(plain.draw(5, torch.Generator().manual_seed(1)),
                               torch.randint(18, (5,), generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match='one weight per path'):
        DataConfig(paths=('a', 'b'), weights=(1.0,))
    with pytest.raises(ConfigError, match='> 0'):
        DataConfig(paths=('a',), weights=(0.0,))
