"""The Agent on an analytic latent system in the world model's duck type, and on a real WorldModel.

The analytic system: a 2-joint "robot" whose camera image is a flat colour, red and green
encoding the two joint positions; its "encoder" reads them back, its dynamics are a first-order
lag towards the position target. The agent sees only images (goal and frames). No ROS.
"""
import dataclasses

import numpy as np
import pytest
import torch

from ami_ros.agent import Agent
from ami_ros.control import MPCConfig
from ami_ros.planning import PlannerConfig

torch.set_num_threads(1)
LO, HI = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
VEL, DT, LAG = np.array([2.0, 2.0]), 0.1, 0.5


def render(q) -> np.ndarray:
    """(16, 16, 3) uint8 whose red and green channels encode q in [LO, HI]."""
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[..., :2] = np.round((np.asarray(q) - LO) / (HI - LO) * 255.0).astype(np.uint8)
    return img


class AnalyticModel:
    """The world model's duck type: encode, rollout, probe, latent_dim, action_dim, history."""

    latent_dim, action_dim, history = 2, 2, 2
    device = torch.device('cpu')

    def __init__(self, nan_rollout: bool = False):
        self.nan_rollout = nan_rollout

    def encode(self, images) -> torch.Tensor:
        x = torch.as_tensor(images)
        x = x.float().permute(0, 3, 1, 2) / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = x[:, :2].mean(dim=(2, 3))  # (B, 2) in [0, 1]
        return mean * torch.tensor(HI - LO, dtype=torch.float32) + torch.tensor(
            LO, dtype=torch.float32)

    def rollout(self, z_hist, actions) -> torch.Tensor:
        assert z_hist.dim() == 3 and z_hist.shape[-1] == 2 and 1 <= z_hist.shape[1] <= 2
        z = z_hist[:, -1].expand(actions.shape[0], -1)  # (N, 2)
        out = []
        for h in range(actions.shape[1]):
            z = z + LAG * (actions[:, h] - z)
            out.append(z)
        pred = torch.stack(out, dim=1)  # (N, H, 2)
        return pred * float('nan') if self.nan_rollout else pred

    def probe(self, z) -> dict:
        return {'position': z}


def plant_step(q, target):
    return q + LAG * (np.asarray(target) - q)


def make_config(**planning) -> MPCConfig:
    p = dict(action_dim=2, horizon=4, n_samples=64, iterations=3, n_elites=8, init_std=0.3)
    p.update(planning)
    cfg = MPCConfig(planning=PlannerConfig(**p), metric='l2', running_weight=0.5)
    return cfg.with_limits(LO, HI, VEL, DT)


def run_loop(agent, q, steps=25, image_fn=render):
    targets = []
    command = q.copy()
    for t in range(steps):
        agent.observe(image_fn(q), t * DT, command)
        command, info = agent.act(q, t * DT)
        assert np.isfinite(command).all(), info
        targets.append(command)
        q = plant_step(q, command)
    return q, np.array(targets)


@pytest.mark.parametrize('planner', ['cem', 'mppi'])
def test_reaches_goal_image_within_bounds_and_rate_limit(planner):
    cfg = dataclasses.replace(make_config(), planner=planner)
    agent = Agent(AnalyticModel(), cfg)
    goal = np.array([0.6, -0.7])
    agent.set_goal_image(render(goal))
    q0 = np.array([-0.5, 0.4])
    q, targets = run_loop(agent, q0.copy())
    assert np.linalg.norm(q - goal) < 0.03, q
    assert (targets >= LO - 1e-6).all() and (targets <= HI + 1e-6).all()
    steps = np.diff(np.vstack([q0, targets]), axis=0)
    assert np.abs(steps).max() <= VEL[0] * DT + 1e-5  # max_delta from velocity x dt


def test_pose_goal_through_probe():
    agent = Agent(AnalyticModel(), make_config())
    agent.set_goal_pose('position', [-0.3, 0.5])
    q, _ = run_loop(agent, np.zeros(2))
    assert np.linalg.norm(q - [-0.3, 0.5]) < 0.03
    with pytest.raises(ValueError, match='probes'):
        agent.set_goal_pose('nope', [0.0])
    with pytest.raises(ValueError, match='2 finite numbers'):
        agent.set_goal_pose('position', [np.nan, 0.0])
    with pytest.raises(ValueError, match='2 finite numbers'):
        agent.set_goal_pose('position', [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match='numbers'):
        agent.set_goal_pose('position', 'left')


def test_holds_without_goal_or_belief_and_on_nan_images():
    agent = Agent(AnalyticModel(), make_config())
    q = np.array([0.2, -0.1])
    target, info = agent.act(q, 0.0)
    assert info['reason'] == 'no_goal' and np.array_equal(target, q)
    agent.set_goal_image(render([0.5, 0.5]))
    target, info = agent.act(q, 0.0)
    assert info['reason'] == 'no_belief' and np.array_equal(target, q)
    nan_image = np.full((16, 16, 3), np.nan, dtype=np.float32)
    step = agent.observe(nan_image, 0.0, q)
    assert step.reason == 'rejected_nan' and agent.belief is None
    target, info = agent.act(q, 0.0)
    assert np.array_equal(target, q)
    # a NaN frame after a good one: belief predicted on, action finite
    agent.observe(render(q), 0.1, q)
    step = agent.observe(nan_image, 0.2, q)
    assert step.reason == 'predicted' and torch.isfinite(agent.belief).all()
    target, info = agent.act(q, 0.2)
    assert info['reason'] == 'ok' and np.isfinite(target).all()
    # stale belief (perception stopped): hold
    target, info = agent.act(q, 5.0)
    assert info['reason'] == 'stale_belief' and np.array_equal(target, q)


def test_nan_rollouts_and_nan_joint_positions_never_give_nan():
    agent = Agent(AnalyticModel(nan_rollout=True), make_config())
    agent.set_goal_image(render([0.5, 0.5]))
    q = np.array([0.1, 0.1])
    for t in range(3):
        agent.observe(render(q), t * DT, q)
        target, info = agent.act(q, t * DT)
        assert np.isfinite(target).all()
        assert 'no candidate had a finite cost' in info['reason']
    # no joint feedback: keep the command in force
    target, _ = agent.act([np.nan, 0.0], 0.2)
    assert np.isfinite(target).all()
    fresh = Agent(AnalyticModel(), make_config())
    with pytest.raises(ValueError, match='nothing safe to hold'):
        fresh.act([np.nan, 0.0], 0.0)


@pytest.mark.parametrize('image, match', [
    (np.zeros((16, 16), dtype=np.uint8), r'\(H, W, 3\)'),
    (np.zeros((16, 16, 4), dtype=np.uint8), r'\(H, W, 3\)'),
    (np.zeros((4, 4, 3), dtype=np.uint8), 'H, W >= 8'),
    (np.zeros((16, 16, 3), dtype=np.int32), 'dtype'),
    (np.full((16, 16, 3), np.nan, dtype=np.float32), 'NaN'),
    ('not an image', r'\(H, W, 3\)'),
])
def test_malformed_goal_images_are_clear_errors(image, match):
    agent = Agent(AnalyticModel(), make_config())
    with pytest.raises(ValueError, match=match):
        agent.set_goal_image(image)
    assert not agent.has_goal


def test_bad_config_and_arguments_are_named():
    with pytest.raises(ValueError, match='action_dim'):
        Agent(AnalyticModel(), make_config(action_dim=3))
    with pytest.raises(ValueError, match='metric'):
        MPCConfig(planning=PlannerConfig(action_dim=2), metric='manhattan')
    with pytest.raises(ValueError, match='planner'):
        MPCConfig(planning=PlannerConfig(action_dim=2), planner='rrt')
    agent = Agent(AnalyticModel(), make_config())
    with pytest.raises(ValueError, match='executed_action'):
        agent.observe(render([0, 0]), 0.0, [np.nan, 0.0])
    with pytest.raises(ValueError, match='joint_positions'):
        agent.act([0.0, 0.0, 0.0], 0.0)


def test_scene_configs_load_into_the_agents_settings(tmp_path):
    """One file per scene gives the nodes' configs and the agent's MPC config alike."""
    from ami_ros.config import load_scene_config
    from ami_ros.safety import Limits

    for name, dim in (('arm_reach', 4), ('pusht', 2)):
        scene = load_scene_config(name)
        limits = Limits(tuple(f'j{i}' for i in range(dim)), [-1.0] * dim, [1.0] * dim,
                        [2.0] * dim)
        cfg = scene.mpc(limits)
        assert cfg.planning.action_dim == dim and 'steps' in scene.eval
        assert cfg.planning.n_samples == scene.planner.samples
        assert cfg.belief.gain == scene.world_model.gain
        assert cfg.planning.vector('max_delta') == pytest.approx((2.0 * cfg.belief.dt,) * dim)
    arm = load_scene_config('arm_reach')
    assert (arm.planner.planner, arm.planner.visual_weight, arm.planner.ee_weight,
            arm.planner.command_weight, arm.world_model.gain) == ('cem', 0.0, 0.0, 1.0, 1.0)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('/**/planner:\n  ros__parameters:\n    horizn: 5\n')
    with pytest.raises(ValueError, match=r'bad.yaml.*horizn'):
        load_scene_config('pusht', bad)
    bad.write_text('/**/planner:\n  ros__parameters:\n    metric: manhattan\n')
    with pytest.raises(ValueError, match=r'bad.yaml.*metric'):
        load_scene_config('pusht', bad)


def test_world_model_in_the_loop():
    """A real (tiny, golden) WorldModel through the same agent: shapes, history, finite plans."""
    from pathlib import Path

    from ami_ros.model import load_checkpoint

    model = load_checkpoint(Path(__file__).parent / 'golden' / 'tiny_model')
    agent = Agent(model, make_config())
    rng = np.random.default_rng(0)
    agent.set_goal_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    q = np.zeros(2)
    for t in range(4):
        step = agent.observe(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), t * DT, q)
        assert step.z.shape == (model.latent_dim,)
        q, info = agent.act(q, t * DT)
        assert info['reason'] == 'ok' and np.isfinite(q).all()
        assert info['result'].predicted.shape == (4, model.latent_dim)
    assert agent.estimator.history().shape == (model.history, model.latent_dim)


def test_control_stage_from_a_belief_history():
    """The planner node's stage: the Controller plans from a belief history made elsewhere.

    The history comes from the world_model node; the plan is rate-limited from the command in
    force.
    """
    agent = Agent(AnalyticModel(), make_config())
    agent.set_goal_image(render([0.5, 0.5]))
    hist = torch.tensor([[0.1, 0.1], [0.2, 0.2]])  # (k, D), oldest first
    agent.controller.set_command([0.2, 0.2])
    seq, info = agent.controller.act(hist, [0.2, 0.2])
    assert info['reason'] == 'ok' and seq.shape == (1, 2) and (seq[0] > 0.2).all()
    assert np.abs(seq[0] - 0.2).max() <= VEL[0] * DT + 1e-6  # rate-limited from the command
    seq, info = agent.controller.act(None, [0.2, 0.2])
    assert info['reason'] == 'no_belief' and np.allclose(seq[0], [0.2, 0.2])
    with pytest.raises(ValueError, match='command'):
        agent.controller.set_command([1.0])
