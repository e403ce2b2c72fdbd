"""eval-plan / eval-surprise smoke runs with tiny models and tiny budgets; AUROC; no ROS."""
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ami_ros.evaluation.surprise_eval import auroc

os.environ.setdefault('MUJOCO_GL', 'egl')
torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / 'golden' / 'tiny_model'


def brute_auroc(normal, anomalous):
    pairs = list(itertools.product(normal, anomalous))
    return sum(1.0 if a > n else 0.5 if a == n else 0.0 for n, a in pairs) / len(pairs)


def test_auroc_known_values():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    assert auroc([0, 2], [1]) == 0.5
    assert np.isnan(auroc([], [1.0]))
    rng = np.random.default_rng(0)
    for _ in range(5):  # with many ties
        n, a = rng.integers(0, 6, 40), rng.integers(2, 8, 25)
        assert auroc(n, a) == pytest.approx(brute_auroc(n, a), abs=1e-12)
    with pytest.raises(ValueError, match='finite'):
        auroc([np.nan], [1.0])


def run_cli(argv, capsys):
    from ami_ros.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_plan_smoke_pusht_json(tmp_path, capsys):
    rc, out, err = run_cli(['eval-plan', '--checkpoint', str(GOLDEN), '--scene', 'pusht',
                            '--episodes', '1', '--steps', '3', '--threads', '1', '--json',
                            '--budget', '16', '--out', str(tmp_path)], capsys)
    assert rc == 0, err
    report = json.loads(out)  # exactly one JSON object on stdout
    assert set(report['methods']) == {'world_model', 'random', 'oracle'}
    for m in report['methods'].values():
        for key in ('success_rate', 'final_error', 'steps_mean', 'plan_ms_p50', 'plan_ms_p99'):
            assert key in m
        assert 0.0 <= m['success_rate'] <= 1.0 and m['final_error'] >= 0.0
        assert len(m['success_vs_step']) == 3
    assert report['methods']['world_model']['plan_ms_p50'] > 0.0
    default = report['config']['planning']['n_samples']
    assert [b['n_samples'] for b in report['budgets']] == sorted([16, default])
    assert report['config']['episodes'] == 1 and 'eval' in report['config']
    for plot in report['plots']:
        assert Path(plot).is_file() and Path(plot).stat().st_size > 1000
    assert 'episode 1/1' in err


def tiny_arm_checkpoint(directory: Path) -> Path:
    """An untrained 4-joint model with an ee_position probe (shapes only matter here)."""
    from ami_ros.model import ModelConfig, WorldModel, save_checkpoint
    from ami_ros.model.config import CNNConfig, PredictorConfig, ProbeSpec

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, latent_dim=8, action_dim=4, cnn=CNNConfig(channels=(4, 8)),
                      predictor=PredictorConfig(history=2, hidden=16, layers=1), probe_hidden=8,
                      probes=(ProbeSpec('ee_position', 3),))
    return save_checkpoint(WorldModel(cfg), directory / 'tiny_arm')


def test_eval_plan_smoke_arm_reach_table(tmp_path, capsys):
    ckpt = tiny_arm_checkpoint(tmp_path)
    rc, out, err = run_cli(['eval-plan', '--checkpoint', str(ckpt), '--scene', 'arm_reach',
                            '--episodes', '1', '--steps', '2', '--threads', '1', '--methods',
                            'world_model', 'random', '--out', str(tmp_path / 'plots')], capsys)
    assert rc == 0, err
    assert 'world_model' in out and 'random' in out and 'success' in out
    assert (tmp_path / 'plots' / 'filmstrip.png').is_file()


def test_eval_plan_bad_input_is_a_clear_error(tmp_path, capsys):
    rc, _, err = run_cli(['eval-plan', '--checkpoint', str(tmp_path / 'missing'), '--episodes',
                          '1'], capsys)
    assert rc == 2 and 'missing' in err and 'Traceback' not in err
    # a 2-action model on the 4-joint arm
    rc, _, err = run_cli(['eval-plan', '--checkpoint', str(GOLDEN), '--scene', 'arm_reach',
                          '--episodes', '1'], capsys)
    assert rc == 2 and 'action' in err
    bad = tmp_path / 'plan.yaml'
    bad.write_text('/**/eval_plan:\n  ros__parameters:\n    stepz: 3\n')
    rc, _, err = run_cli(['eval-plan', '--checkpoint', str(GOLDEN), '--scene', 'pusht',
                          '--config', str(bad), '--episodes', '1'], capsys)
    assert rc == 2 and 'stepz' in err
    rc, _, err = run_cli(['eval-plan', '--scene', 'pusht', '--methods', 'random',
                          '--episodes', '2', '--first-episode', '2'], capsys)
    assert rc == 2 and '--first-episode' in err


def test_eval_surprise_smoke_json(tmp_path, capsys):
    ckpt = tiny_arm_checkpoint(tmp_path)
    rc, out, err = run_cli(['eval-surprise', '--checkpoint', str(ckpt), '--scene', 'arm_reach',
                            '--episodes', '3', '--steps', '25', '--threads', '1', '--json',
                            '--out', str(tmp_path / 'plots')], capsys)
    assert rc == 0, err
    report = json.loads(out)
    assert set(report['types']) == {'teleport', 'blocked_joint', 'occlusion'}
    for v in report['types'].values():
        assert {'auroc', 'auroc_onset', 'events', 'detection_rate'} <= set(v)
    assert report['normal_frames'] > 0 and report['threshold'] > 0
    assert Path(report['plots'][0]).is_file()


def test_blocked_joint_labels_come_from_an_unblocked_shadow_of_the_scene():
    """The shadow steps the same commands unblocked and leaves the scene exactly as it was."""
    pytest.importorskip('mujoco', reason='the arm_reach scene needs MuJoCo')
    from ami_ros.evaluation.surprise_eval import _Unblocked
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene('arm_reach', SceneConfig(image_size=16, seed=5))
    try:
        scene.reset(seed=5)
        shadow = _Unblocked(scene)
        start, q0 = scene.get_state(), scene.joint_positions.copy()
        target = np.clip(scene.joint_positions + 0.4, scene.lower, scene.upper)
        for _ in range(3):
            shadow.step(target)
        assert np.array_equal(scene.get_state(), start)
        for _ in range(3):
            scene.set_target(target)
            scene.step()
        assert np.allclose(shadow.q, scene.joint_positions, atol=1e-9)
        assert np.abs(shadow.q - q0).max() > 0.05  # it moved
    finally:
        scene.close()


def test_true_dynamics_observe_encodes_the_frames_the_simulator_renders():
    """oracle_latent's dynamics: the frames each candidate would produce, encoded in one batch."""
    from ami_ros.evaluation.oracle import TrueDynamics
    from ami_ros.sim import SceneConfig, make_scene

    config = SceneConfig(image_size=16, seed=3)
    calls = []

    def observe(images):  # a stand-in encoder: the mean colour of each frame
        calls.append(images.shape)
        return torch.as_tensor(images.reshape(len(images), -1, 3).mean(1))

    dyn = TrueDynamics('arm_reach', config, observe)
    scene = make_scene('arm_reach', config)
    try:
        start = scene.get_state()
        q = scene.joint_positions
        actions = torch.as_tensor(np.stack([np.stack([q, q]), np.stack([q + 0.3, q + 0.6])]))
        z = dyn(torch.as_tensor(start), actions)                  # (N=2, H=2, D=3)
        assert z.shape == (2, 2, 3) and calls == [(4, 16, 16, 3)]  # one batch of N*H frames
        for n in range(2):  # the same as stepping the scene by hand
            scene.set_state(start)
            for h in range(2):
                scene.set_target(np.clip(actions[n, h].numpy(), scene.lower, scene.upper))
                scene.step()
                expected = scene.render().reshape(-1, 3).mean(0)
                assert np.allclose(z[n, h].numpy(), expected, atol=1e-4)
        assert not torch.allclose(z[0, 1], z[1, 1])  # moving the arm changes the frame
    finally:
        dyn.close()
        scene.close()


def test_eval_plan_oracle_latent_smoke(tmp_path, capsys):
    ckpt = tiny_arm_checkpoint(tmp_path)
    rc, out, err = run_cli(['eval-plan', '--checkpoint', str(ckpt), '--scene', 'arm_reach',
                            '--episodes', '2', '--oracle-episodes', '1', '--steps', '2',
                            '--threads', '1', '--json', '--methods', 'oracle_latent', 'random',
                            '--out', str(tmp_path / 'plots')], capsys)
    assert rc == 0, err
    methods = json.loads(out)['methods']
    m = methods['oracle_latent']
    assert len(m['success_vs_step']) == 2 and m['final_error'] >= 0.0 and m['plan_ms_p50'] > 0
    # --oracle-episodes limits the policies that step the simulator, not the others
    assert m['episodes'] == 1 and methods['random']['episodes'] == 2


def test_protocols_come_from_the_scene_file():
    from ami_ros.config import load_scene_config
    from ami_ros.evaluation import plan_eval as pe

    arm = load_scene_config('arm_reach')
    assert arm.eval_protocol()[0] == 'own'
    with pytest.raises(ValueError, match=r"no 'swm' eval-plan protocol.*eval_plan_swm"):
        arm.eval_protocol('swm')
    name, block = load_scene_config('pusht').eval_protocol('swm')
    cfg = pe.PlanEvalConfig(**block)
    assert name == 'swm' and cfg.success_at == 'any' and not cfg.require_coverage
    assert (cfg.goal_steps, cfg.steps) == (25, 50)
    assert load_scene_config('reacher').eval_protocol()[0] == 'swm'  # its only one


def test_oracle_holds_each_planned_action_for_its_block_and_replans_every_block():
    """The benchmarks' planning on the simulator: actions held k steps, a plan every k steps."""
    from ami_ros.config import load_scene_config
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.safety import Limits
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene('pusht', SceneConfig(image_size=32, seed=3))
    cfg = load_scene_config('pusht')
    limits = Limits(('x', 'y'), scene.lower, scene.upper, np.asarray(scene.velocity_limit))
    mpc = cfg.mpc(limits)
    ecfg = pe.PlanEvalConfig(steps=6, goal_steps=5, success_at='any', require_coverage=False,
                             oracle_samples=4, oracle_iterations=1, oracle_horizon=2,
                             oracle_action_block=3, oracle_replan_every=3, oracle_init_std=0.1)
    oracle = pe.OraclePolicy(scene, mpc, ecfg)
    start, goal = pe.make_goal(scene, np.random.default_rng(0), ecfg)
    pe.reset_to(scene, start, goal)
    oracle.begin(goal)
    sent, plans = [], 0
    for t in range(6):
        target, ms = oracle(scene.render(), scene.joint_positions, 0.1 * t, scene.target)
        sent.append(target)
        plans += ms is not None
        scene.set_target(target)
        scene.step()
    assert plans == 2                                   # a plan every 3 steps
    np.testing.assert_array_equal(sent[0], sent[1])     # the block's action, held
    np.testing.assert_array_equal(sent[1], sent[2])
    np.testing.assert_array_equal(sent[3], sent[5])
    # each plan: (4 samples x 1 iteration + the final mean) x 2 actions x 3 steps
    assert oracle.dynamics.steps == 2 * 5 * 2 * 3
    oracle.close()
    with pytest.raises(ValueError, match='oracle_replan_every'):
        pe.PlanEvalConfig(oracle_action_block=3, oracle_replan_every=4)
    with pytest.raises(ValueError, match='oracle_init_std'):
        pe.PlanEvalConfig(oracle_init_std=0.0)
    with pytest.raises(ValueError, match='goal_policy'):
        pe.PlanEvalConfig(goal_policy='human')


def test_oracle_weighs_its_features_and_starts_from_the_scenes_pushes():
    """oracle_feature_weights scale the true cost; oracle_candidates add scripted starts."""
    from ami_ros.config import load_scene_config
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.safety import Limits
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene('pusht', SceneConfig(image_size=32, seed=3))
    limits = Limits(('x', 'y'), scene.lower, scene.upper, np.asarray(scene.velocity_limit))
    mpc = load_scene_config('pusht').mpc(limits)
    base = dict(steps=6, goal_steps=5, success_at='any', require_coverage=False,
                oracle_samples=4, oracle_iterations=1, oracle_horizon=2, oracle_action_block=3,
                oracle_replan_every=3)
    ecfg = pe.PlanEvalConfig(**base, oracle_feature_weights=(0, 0, 1, 1, 1, 1),
                             oracle_candidates=3)
    start, goal = pe.make_goal(scene, np.random.default_rng(0), ecfg)
    pe.reset_to(scene, start, goal)
    g = torch.as_tensor(goal.features)
    pusher_off = g.clone()
    pusher_off[:2] += 50.0                              # the pusher 50 units off, the T right
    predicted = torch.stack([g, pusher_off])[:, None]   # (2, H=1, 6)
    costs = {}
    for name, cfg in (('weighted', ecfg), ('plain', pe.PlanEvalConfig(**base))):
        oracle = pe.OraclePolicy(scene, mpc, cfg)
        oracle.begin(goal)
        costs[name] = oracle.cost(predicted, torch.zeros(2, 1, 2)).tolist()
        oracle(scene.render(), scene.joint_positions, 0.0, scene.target)
        costs[name + ' steps'] = oracle.dynamics.steps
        oracle.close()
    assert costs['weighted'][0] == pytest.approx(costs['weighted'][1])  # the pusher weighs 0
    assert costs['plain'][1] > costs['plain'][0] + 10.0
    # one plan: (4 samples + the final mean) x 2 actions x 3 steps, and 3 starts + the mean once
    assert costs['plain steps'] == 5 * 2 * 3
    assert costs['weighted steps'] == 5 * 2 * 3 + 4 * 2 * 3
    with pytest.raises(ValueError, match='oracle_feature_weights'):
        pe.PlanEvalConfig(oracle_feature_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match='oracle_candidates'):
        pe.PlanEvalConfig(oracle_candidates=-1)


def test_a_shard_of_an_evaluation_runs_the_episodes_of_the_whole_run():
    from ami_ros.config import load_scene_config
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.safety import Limits
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene('pusht', SceneConfig(image_size=32, seed=0))
    limits = Limits(('x', 'y'), scene.lower, scene.upper, np.asarray(scene.velocity_limit))
    mpc = load_scene_config('pusht').mpc(limits)
    ecfg = pe.PlanEvalConfig(steps=4, goal_steps=5)

    def run(first):
        policies = {'random': pe.RandomPolicy(mpc.planning, seed=7)}
        results, goals = pe.evaluate(scene, policies, 3, 5, ecfg, log=lambda m: None,
                                     first=first)
        return [r.final_error for r in results['random']], [g.state for g in goals]

    whole, shard = run(0), run(1)
    assert len(shard[0]) == 2 and shard[0] == whole[0][1:]
    np.testing.assert_array_equal(np.array(shard[1]), np.array(whole[1][1:]))


def test_recorded_episodes_are_training_data_of_what_the_policy_saw_and_sent(tmp_path):
    from ami_ros.config import load_scene_config
    from ami_ros.data.bag import read_bag
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.safety import Limits
    from ami_ros.sim import SceneConfig, make_scene

    scene = make_scene('pusht', SceneConfig(image_size=32, seed=0))
    limits = Limits(('x', 'y'), scene.lower, scene.upper, np.asarray(scene.velocity_limit))
    mpc = load_scene_config('pusht').mpc(limits)
    ecfg = pe.PlanEvalConfig(steps=6, goal_steps=5)
    seen, sent = [], []

    class Spy(pe.RandomPolicy):
        def __call__(self, image, q, stamp, executed):
            target, ms = super().__call__(image, q, stamp, executed)
            seen.append(image.copy())
            sent.append(np.clip(target, scene.lower, scene.upper))
            return target, ms

    def run():
        return pe.evaluate(scene, {'random': Spy(mpc.planning, seed=3)}, 2, 4, ecfg,
                           log=lambda m: None, first=1, bags=tmp_path)

    results, _ = run()
    bags = sorted((tmp_path / 'random').iterdir())
    assert [b.name for b in bags] == ['pusht_4_0001']  # the shard's episode only
    ep = read_bag(bags[0])
    assert len(ep) == 6
    np.testing.assert_array_equal(ep.images, np.stack(seen))
    np.testing.assert_allclose(ep.actions, np.stack(sent), atol=1e-6)
    assert np.abs(np.diff(ep.joint_positions, axis=0)).max() > 0  # the pusher moved
    with pytest.raises(FileExistsError, match='pusht_4_0001'):
        run()  # nothing recorded is overwritten
