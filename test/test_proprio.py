"""World model v2: joint states and the end effector in the state, the posture reader, the cost.

Core only (no ROS): a tiny model with ``proprio.enabled`` checks the state layout, that measured
joints replace what the reader reads, that ``probe`` decodes them exactly, that checkpoints keep
it all, and that the MPC's image-goal cost scores the end effector in metres. A few training
steps on generated arm_reach episodes run every phase, the reader's calibration sweep included.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import rig_brightness_heat_maps
from ami_ros.agent import Agent
from ami_ros.control import MPCConfig
from ami_ros.model import WorldModel, load_checkpoint, save_checkpoint
from ami_ros.model.config import CNNConfig, ModelConfig, PredictorConfig, ProprioConfig
from ami_ros.planning import PlannerConfig

torch.set_num_threads(1)
J, D = 2, 8


def proprio_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(image_size=16, latent_dim=D, action_dim=J, cnn=CNNConfig(channels=(4, 8)),
                      predictor=PredictorConfig(history=2, action_history=1, hidden=16, layers=1),
                      probe_hidden=8, proprio=ProprioConfig(
                          enabled=True, reader_channels=(4, 4), reader_keypoints=4,
                          reader_hidden=8, fk_hidden=8))
    model = WorldModel(cfg)
    model.set_proprio_stats([0.5, -0.5], [2.0, 1.0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    return model.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, 16, 16, 3),
                                                                 dtype=np.uint8))


def test_state_layout_and_measured_joints_replace_the_reading():
    model = proprio_model()
    assert model.latent_dim == D + J + 3 and model.visual_dim == D and model.has_proprio
    assert model.state_slices() == {'visual': slice(0, D), 'joints': slice(D, D + J),
                                    'ee': slice(D + J, D + J + 3)}
    x, q = images(3), torch.tensor([[0.1, 0.2], [1.0, -1.0], [0.5, -0.5]])
    with torch.no_grad():
        read, measured = model.encode(x), model.encode(x, q)
        assert torch.equal(read[:, :D], measured[:, :D])  # the same visual latent
        assert not torch.allclose(read[:, D:], measured[:, D:])
        assert torch.allclose(model.probe(measured)['joint_positions'], q, atol=1e-6)
        assert torch.allclose(model.with_joints(read, q), measured)
        ee = model.probe(measured)['ee_position']
        assert torch.allclose(ee, model.fk(q) * model.ee_std + model.ee_mean)
    with pytest.raises(ValueError, match='2 values per row'):
        model.encode(x, torch.zeros(3, 3))


def test_checkpoint_keeps_reader_fk_and_statistics(tmp_path):
    model = proprio_model(seed=3)
    save_checkpoint(model, tmp_path / 'm')
    back = load_checkpoint(tmp_path / 'm').eval()
    assert back.has_proprio and back.config.proprio.joint_std == (2.0, 1.0)
    x, q = images(2), torch.tensor([[0.3, 0.1], [-0.2, 0.4]])
    with torch.no_grad():
        assert torch.allclose(back.encode(x), model.encode(x))
        assert torch.allclose(back.encode(x, q), model.encode(x, q))


def test_models_without_proprio_are_unchanged():
    cfg = ModelConfig(image_size=16, latent_dim=D, action_dim=J, cnn=CNNConfig(channels=(4, 8)))
    model = WorldModel(cfg)
    assert model.latent_dim == D and not model.has_proprio
    with torch.no_grad():
        assert torch.equal(model.encode(images(1), torch.zeros(1, J)), model.encode(images(1)))


def test_image_goal_cost_scores_the_end_effector_in_metres():
    model = proprio_model()
    planning = PlannerConfig(action_dim=J, horizon=2, n_samples=8, iterations=1, n_elites=2)
    mpc = Agent(model, MPCConfig(planning=planning, visual_weight=0.0, ee_weight=1.0,
                                 terminal_weight=1.0, running_weight=0.0))
    goal = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mpc.set_goal_image(goal)
    with torch.no_grad():
        g = model.encode(torch.from_numpy(goal)[None])[0]
        cost = mpc.controller._cost(np.zeros(J))
        states = g.expand(1, 2, -1).clone()
        assert float(cost(states, torch.zeros(1, 2, J))) == pytest.approx(0.0, abs=1e-6)
        moved = states.clone()
        moved[..., D + J] += 0.2 / float(model.ee_std[0])  # the end effector 0.2 m off in x
        moved[..., :D] += 5.0                               # the visual part has no weight
        assert float(cost(moved, torch.zeros(1, 2, J))) == pytest.approx(0.2, rel=1e-4)
    nothing = Agent(model, MPCConfig(planning=planning, visual_weight=0.0, ee_weight=0.0))
    nothing.set_goal_image(goal)
    with pytest.raises(ValueError, match='all 0'):
        nothing.controller._cost(np.zeros(J))


def test_observe_takes_the_measured_joints():
    model = proprio_model()
    planning = PlannerConfig(action_dim=J, horizon=2, n_samples=8, iterations=1, n_elites=2)
    mpc = Agent(model, MPCConfig(planning=planning))
    frame = images(1)[0].numpy()
    mpc.observe(frame, 0.0, np.zeros(J), joints=np.array([0.7, -0.3]))
    assert np.allclose(model.probe(mpc.belief)['joint_positions'].detach().numpy(), [0.7, -0.3],
                       atol=1e-6)
    with pytest.raises(ValueError, match='finite'):
        mpc.observe(frame, 0.1, np.zeros(J), joints=np.array([np.nan, 0.0]))


def test_a_goal_image_may_come_with_its_joint_positions():
    """DINO-WM's goal proprio: given joints replace the reader's reading in the goal state."""
    from ami_ros.evaluation.plan_eval import Goal, ModelPolicy

    model = proprio_model()
    planning = PlannerConfig(action_dim=J, horizon=2, n_samples=8, iterations=1, n_elites=2)
    frame = images(1)[0].numpy()
    q = np.array([1.2, -0.4])
    goal = Goal(frame, np.zeros(4), np.zeros(4), joints=q)
    states = {}
    for given in (False, True):
        policy = ModelPolicy(Agent(model, MPCConfig(planning=planning)), goal_joints=given)
        policy.begin(goal)
        states[given] = policy.agent.controller.goal[0]
    with torch.no_grad():
        read = model.encode(torch.from_numpy(frame)[None])[0]
    assert torch.equal(states[False], read)                        # the reader's reading
    assert torch.equal(states[True][:D], read[:D])                 # the same visual latent
    assert np.allclose(model.probe(states[True][None])['joint_positions'][0].numpy(), q,
                       atol=1e-6)
    with pytest.raises(ValueError, match='finite'):
        Agent(model, MPCConfig(planning=planning)).set_goal_image(frame, [np.nan, 0.0])


@pytest.mark.timeout(300)
def test_training_runs_every_phase_on_generated_arm_reach(tmp_path):
    pytest.importorskip('mujoco', reason='the arm_reach scene needs MuJoCo')
    from ami_ros.model.config import RunConfig, from_dict
    from ami_ros.train.dataset import episodes_from_scene, split_episodes
    from ami_ros.train.trainer import Trainer

    cfg = from_dict(RunConfig, {
        'model': {'image_size': 32, 'latent_dim': 4, 'cnn': {'channels': [8, 8]},
                  'predictor': {'history': 2, 'hidden': 16, 'layers': 1},
                  'proprio': {'enabled': True, 'reader_channels': [8, 8], 'reader_keypoints': 8,
                              'reader_hidden': 32, 'fk_hidden': 32}},
        'loss': {'horizon': 2},
        'train': {'max_steps': 4, 'batch_size': 4, 'warmup_steps': 1, 'val_every': 4,
                  'val_windows': 8, 'num_threads': 1, 'augment_shift': 0},
        'probe': {'targets': ['goal_position'], 'steps': 2},
        'reader': {'steps': 3, 'batch_size': 4, 'sweep_scene': 'arm_reach',
                   'sweep_frames': 6},
        'data': {'generate': {'scene': 'arm_reach', 'episodes': 4, 'length': 8,
                              'image_size': 32}}})
    episodes = episodes_from_scene(cfg.data.generate)
    train, val = split_episodes(episodes, 0.25, 0)
    summary = Trainer(cfg, train, val, tmp_path / 'run', progress=False).run()
    assert {'frames', 'goal_like'} <= set(summary['reader'])
    assert 0.0 <= summary['reader']['goal_like']['ee_within_5cm'] <= 1.0
    model = load_checkpoint(tmp_path / 'run' / 'model')
    assert model.has_proprio and len(model.config.proprio.ee_mean) == 3
    assert 'val_pred_1step_proprio' in summary['val']
    scale = model.innovation_scale  # measured on held-out episodes at the end of training
    assert scale is not None and scale.shape == (model.latent_dim,) and bool((scale > 0).all())


def test_innovations_are_scored_in_units_of_the_typical_error():
    from ami_ros.estimation import BeliefConfig, BeliefFilter

    scale = torch.tensor([1.0, 0.01])  # the second dimension is predicted 100x better
    filt = BeliefFilter(BeliefConfig(gain=1.0, dt=0.1), lambda z, a: z, None, scale)
    filt.reset(torch.zeros(2), 0.0)
    filt.predict(torch.zeros(1))
    step = filt.update(torch.tensor([0.0, 0.05]), 0.1)  # small in value, 5 typical errors
    assert step.error == pytest.approx((0.5 * 5.0 ** 2) ** 0.5)
    plain = BeliefFilter(BeliefConfig(gain=1.0, dt=0.1), lambda z, a: z)
    plain.reset(torch.zeros(2), 0.0)
    plain.predict(torch.zeros(1))
    assert plain.update(torch.tensor([0.0, 0.05]), 0.1).error == pytest.approx(
        (0.5 * 0.05 ** 2) ** 0.5)


def test_inference_backends_serve_the_proprio_parts():
    from ami_ros.inference import BackendConfig, make_backend

    model = proprio_model(seed=2)
    backend = make_backend('torch', model, BackendConfig(device='cpu'))
    assert backend.has_proprio and backend.latent_dim == model.latent_dim
    assert {'joint_positions', 'ee_position'} <= set(backend.probe_names)
    x, q = images(2), torch.tensor([[0.3, 0.1], [-0.2, 0.4]])
    with torch.no_grad():
        read = backend.encode(x)
        assert torch.allclose(backend.with_joints(read, q), model.encode(x, q), atol=1e-6)
        assert torch.allclose(backend.probe(model.encode(x, q))['joint_positions'], q, atol=1e-6)
    assert backend.state_slices() == model.state_slices()


def test_onnx_export_of_a_v2_model_serves_the_whole_state(tmp_path, capsys):
    pytest.importorskip('onnxruntime', reason='ONNX Runtime is not installed')
    from ami_ros.cli import main

    save_checkpoint(proprio_model(seed=4), tmp_path / 'm')
    # the export checks ONNX Runtime against PyTorch on every graph: the encoder graph must give
    # the whole state (visual latent + what the reader reads), D = 8 + 2 + 3
    assert main(['export', '--checkpoint', str(tmp_path / 'm'), '--format', 'onnx',
                 '--out', str(tmp_path / 'onnx')]) == 0
    assert "latent ['batch', 13]" in capsys.readouterr().out


def test_the_reader_may_read_larger_frames_than_the_encoder(tmp_path, capsys):
    """reader_image_size 32 with a stride-2 stem next to a 16 px encoder: frames come at 32."""
    from ami_ros.inference import BackendConfig, make_backend

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, latent_dim=D, action_dim=J, cnn=CNNConfig(channels=(4, 8)),
                      predictor=PredictorConfig(history=2, action_history=1, hidden=16, layers=1),
                      probe_hidden=8, proprio=ProprioConfig(
                          enabled=True, reader_image_size=32, reader_first_stride=2,
                          reader_channels=(4, 4), reader_keypoints=4, reader_hidden=8,
                          fk_hidden=8))
    model = WorldModel(cfg)
    model.set_proprio_stats([0.5, -0.5], [2.0, 1.0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    model.eval()
    assert model.reader_size == 32 and model.input_size == 32
    big = torch.from_numpy(
        np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        z = model.encode(big)
        x16 = model.preprocess(big)  # the encoder sees the frame at 16 px
        assert torch.allclose(z[:, :D], model.encoder(x16))
        assert torch.allclose(z[:, D:], model.reader(model.preprocess(big, 32)))
    backend = make_backend('torch', model, BackendConfig(device='cpu'))
    assert backend.image_size == 32  # what perception prepares frames to
    save_checkpoint(model, tmp_path / 'm')
    back = load_checkpoint(tmp_path / 'm').eval()
    with torch.no_grad():
        assert torch.allclose(back.encode(big), z, atol=1e-6)
    pytest.importorskip('onnxruntime', reason='ONNX Runtime is not installed')
    from ami_ros.cli import main

    # the export checks ONNX Runtime against PyTorch on 32 px frames
    assert main(['export', '--checkpoint', str(tmp_path / 'm'), '--format', 'onnx',
                 '--out', str(tmp_path / 'onnx')]) == 0
    assert "latent ['batch', 13]" in capsys.readouterr().out


def test_goal_guide_is_the_posture_that_reaches_the_read_end_effector():
    model = proprio_model(seed=5)
    planning = PlannerConfig(action_dim=J, horizon=2, n_samples=8, iterations=1, n_elites=2,
                             lower=(-2.0, -2.0), upper=(2.0, 2.0))
    goal = images(1, seed=4)[0].numpy()
    plain = Agent(model, MPCConfig(planning=planning, ee_weight=1.0))
    plain.set_goal_image(goal)
    assert plain.controller.guide() is None  # off unless asked for
    agent = Agent(model, MPCConfig(planning=planning, ee_weight=1.0, goal_guide=True))
    agent.set_goal_image(goal)
    with torch.no_grad():
        z = model.encode(torch.from_numpy(goal)[None])[0]
        read_q, read_ee = model.decode_proprio(z, 'joints'), model.decode_proprio(z, 'ee')
        guide = agent.controller.guide().float()
        assert guide.shape == (J,) and bool(((guide >= -2.0) & (guide <= 2.0)).all())
        before = (model.ee_of_joints(read_q.clamp(-2.0, 2.0)) - read_ee).norm()
        after = (model.ee_of_joints(guide) - read_ee).norm()
    assert after < before
    agent.observe(images(1)[0].numpy(), 0.0, np.zeros(J), joints=np.zeros(J))
    target, info = agent.act(np.zeros(J))
    assert np.isfinite(target).all() and info['reason'] == 'ok'
    agent.set_goal_pose('ee_position', [0.1, 0.2, 0.3])
    assert agent.controller.guide() is not None  # the image goal still stands
    agent.clear_goal()
    assert agent.controller.guide() is None


def test_the_agent_scores_the_cameras_reading_against_the_measured_joints():
    from ami_ros.agent import Agent
    from ami_ros.control.config import MPCConfig
    from ami_ros.estimation import SurpriseConfig
    from ami_ros.planning import PlannerConfig

    model = proprio_model(seed=5)
    agent = Agent(model, MPCConfig(planning=PlannerConfig(action_dim=J), surprise=SurpriseConfig(
        channels=('visual', 'reading'))))
    x, q = images(2, seed=3).numpy(), np.array([0.2, -0.1])
    agent.observe(x[0], 0.0, q, joints=q)
    step = agent.observe(x[1], 0.1, q, joints=q)
    with torch.no_grad():
        read = model.encode(torch.from_numpy(x[1:]))[0]
        measured = model.encode(torch.from_numpy(x[1:]), torch.from_numpy(q[None]).float())[0]
    expected = float((read - measured)[D:].double().pow(2).mean().sqrt())
    assert expected > 0 and step.channels['reading'] == pytest.approx(expected, rel=1e-5)
    assert set(step.channels) == {'all', 'visual', 'joints', 'ee', 'reading'}


def self_masked_model() -> WorldModel:
    """Foreground keypoints with the robot masked out where x = q0, y = q1 (0..1), radius 0.2.

    The heat maps are rigged to be a little brightness: keypoints near the foreground's centre.
    """
    from ami_ros.model.config import KeypointEncoderConfig

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, latent_dim=8, action_dim=J, encoder='keypoints',
                      keypoints=KeypointEncoderConfig(channels=(8, 8), background=True,
                                                      foreground=True, self_mask=(
                          1.0, 0.0, 0.0, 0.0, 1.0, 0.0), self_mask_radius=0.2),
                      predictor=PredictorConfig(history=2, action_history=1, hidden=16, layers=1),
                      probe_hidden=8, proprio=ProprioConfig(
                          enabled=True, reader_channels=(4, 4), reader_keypoints=4,
                          reader_hidden=8, fk_hidden=8))
    model = WorldModel(cfg)
    model.set_proprio_stats([0.5, 0.5], [0.3, 0.3], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    model.encoder.set_background(model.preprocess(np.zeros((1, 16, 16, 3), np.uint8)))
    rig_brightness_heat_maps(model.encoder, 0.1)
    return model.eval()


def test_the_self_mask_hides_the_robot_where_its_joints_put_it(tmp_path, capsys):
    """keypoints.self_mask: the robot's disc is blanked, so the keypoints sit on the object."""
    model = self_masked_model()
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    frames[:, 0:4, 12:16] = 255                               # the object, top right
    frames[0, 10:14, 2:6] = 255                               # the robot, bottom left ...
    frames[1, 10:14, 8:12] = 255                              # ... then bottom middle
    q = torch.tensor([[4 / 16, 12 / 16], [10 / 16, 12 / 16]])  # where the joints put it
    with torch.no_grad():
        z = model.encode(frames, q)[:, :8]
        torch.testing.assert_close(z[0], z[1])                # the robot moved: no change
        assert bool((z[:, :4] > 1.5).all() and (z[:, 4:] < -1.5).all())  # all on the object
        far = model.encode(frames, torch.tensor([[0.9, 0.9], [0.9, 0.9]]))[:, :8]
        assert bool((far[:, 4:] > z[:, 4:] + 1.0).all())      # unmasked, the robot pulls them
        # a goal image: the mask goes where the reader reads the joints
        read = model.encode(frames)
        torch.testing.assert_close(read[:, :8], model.visual(
            model.preprocess(frames), model.probe(read)['joint_positions']))
    with pytest.raises(ValueError, match='pass the joint positions'):
        model.encoder(model.preprocess(frames))
    pytest.importorskip('onnxruntime', reason='ONNX Runtime is not installed')
    from ami_ros.cli import main
    save_checkpoint(model, tmp_path / 'm')                     # ONNX Runtime == PyTorch
    assert main(['export', '--checkpoint', str(tmp_path / 'm'), '--format', 'onnx',
                 '--out', str(tmp_path / 'onnx')]) == 0
    torch.testing.assert_close(load_checkpoint(tmp_path / 'm').encode(frames, q), model.encode(
        frames, q))


def test_self_mask_settings_are_checked():
    from ami_ros.model.config import ConfigError, KeypointEncoderConfig, RunConfig, TrainConfig

    kp = KeypointEncoderConfig(self_mask=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), self_mask_radius=0.1,
                               background=True)
    proprio = ProprioConfig(enabled=True)
    with pytest.raises(ConfigError, match='needs encoder: keypoints and proprio'):
        ModelConfig(encoder='keypoints', keypoints=kp)
    with pytest.raises(ConfigError, match='2 x \\(joints \\+ 1\\) = 8'):
        ModelConfig(encoder='keypoints', keypoints=kp, proprio=proprio, action_dim=3)
    with pytest.raises(ConfigError, match='self_mask_radius'):
        KeypointEncoderConfig(self_mask=kp.self_mask, background=True)
    with pytest.raises(ConfigError, match='background'):
        KeypointEncoderConfig(self_mask=kp.self_mask, self_mask_radius=0.1)
    with pytest.raises(ConfigError, match='augment_shift'):
        RunConfig(model=ModelConfig(encoder='keypoints', keypoints=kp, proprio=proprio),
                  train=TrainConfig(augment_shift=4))
