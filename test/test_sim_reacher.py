"""The `reacher` scene: dm_control's suite reacher under effort commands, and its eval protocol."""
import json
from pathlib import Path

import numpy as np
import pytest

from ami_ros.sim import CommandError, SceneConfig, make_scene

pytest.importorskip('dm_control', reason='dm-control not installed')

GOLDEN = Path(__file__).parent / 'golden' / 'tiny_model'  # a 2-action model: fits the 2 joints


@pytest.fixture
def scene():
    sc = make_scene('reacher', SceneConfig(image_size=64, seed=3))
    yield sc
    sc.close()


def test_effort_commands_within_bounds_and_holding_is_no_torque(scene):
    assert scene.joint_names == ('shoulder', 'wrist') and scene.control_mode == 'effort'
    np.testing.assert_array_equal(scene.lower, [-1.0, -1.0])
    np.testing.assert_array_equal(scene.upper, [1.0, 1.0])
    assert scene.frameskip == 5  # 0.1 s control period of 0.02 s physics steps
    np.testing.assert_array_equal(scene.hold_command(), [0.0, 0.0])
    for bad in ([1.5, 0.0], [np.nan, 0.0], [0.0]):
        with pytest.raises(CommandError):
            scene.set_target(bad)


def test_a_torque_turns_the_joint_and_the_camera_sees_it(scene):
    q0, frame0 = scene.joint_positions, scene.render()
    scene.set_target([1.0, 0.0])
    for _ in range(3):
        scene.step()
    assert scene.joint_positions[0] > q0[0] + 0.05 and scene.joint_velocities[0] > 0.0
    changed = (np.abs(scene.render().astype(int) - frame0).sum(axis=-1) > 30).sum()
    assert changed > 20


def test_state_round_trip_is_exact(scene):
    start = scene.get_state()
    runs = []
    for _ in range(2):
        scene.set_state(start)
        for a in ([0.5, -0.5], [-1.0, 1.0], [0.2, 0.3]):
            scene.set_target(a)
            scene.step()
        runs.append(scene.get_state())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_the_target_is_hidden_unless_asked_for():
    from ami_ros.sim.reacher import ReacherConfig, ReacherScene

    frames = []
    for show in (False, True):
        sc = ReacherScene(ReacherConfig(image_size=64, seed=1, show_target=show))
        frames.append(sc.render().astype(int))
        sc.close()
    red = [((f[..., 0] > 150) & (f[..., 1] < 100)).sum() for f in frames]
    assert red[0] == 0 and red[1] > 10


def test_the_oracle_reaches_goals_under_the_benchmark_protocol():
    """The planner with the simulator as its model meets the joint-space criterion.

    So the protocol and the planner are sound before any model is judged on them.
    """
    from ami_ros.config import load_scene_config
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.safety import Limits

    cfg = load_scene_config('reacher')
    sc = make_scene('reacher', SceneConfig(image_size=32, seed=0))
    limits = Limits(('j0', 'j1'), sc.lower, sc.upper, sc.velocity_limit)
    ecfg = pe.PlanEvalConfig(**cfg.eval_protocol('swm')[1])
    assert ecfg.success_at == 'any' and ecfg.joint_tolerance == 0.05
    policies = {'oracle': pe.OraclePolicy(sc, cfg.mpc(limits), ecfg),
                'random': pe.RandomPolicy(cfg.mpc(limits).planning, seed=0)}
    results, _ = pe.evaluate(sc, policies, 3, 0, ecfg, log=lambda m: None)
    policies['oracle'].close()
    sc.close()
    oracle, rand = (pe.summarize(results[k]) for k in ('oracle', 'random'))
    assert oracle['success_rate'] == 1.0, oracle
    assert oracle['final_error'] < rand['final_error']


def test_eval_plan_runs_the_reacher_protocol(tmp_path, capsys):
    from ami_ros.cli import main as cli_main

    rc = cli_main(['eval-plan', '--checkpoint', str(GOLDEN), '--scene', 'reacher',
                   '--episodes', '1', '--steps', '2', '--threads', '1', '--methods',
                   'world_model', 'random', '--json', '--out', str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out)
    assert report['config']['eval']['success_at'] == 'any'
    assert report['config']['eval']['protocol'] == 'swm'  # the scene's only protocol
    assert 'every joint within eval.joint_tolerance' in report['config']['success']
    assert report['methods']['world_model']['plan_ms_p50'] > 0.0


def test_collect_logs_efforts_on_the_effort_controller_topic(tmp_path):
    from rosbags.highlevel import AnyReader

    from ami_ros.cli.collect import CollectConfig, collect

    collect(CollectConfig(scene='reacher', episodes=1, steps=4, out=tmp_path / 'bags'),
            progress=False)
    bag = next((tmp_path / 'bags').iterdir())
    with AnyReader([bag]) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
    assert topics['/forward_effort_controller/commands'] == 4
    assert '/forward_position_controller/commands' not in topics


def test_the_sim_node_refuses_an_effort_scene_clearly():
    from ami_ros.nodes.sim import SimNodeConfig

    with pytest.raises(ValueError, match='takes joint efforts'):
        SimNodeConfig(scene='reacher')


@pytest.mark.parametrize('name, size', [('reacher', 96), ('reacher_proprio', 64)])
def test_the_shipped_reacher_models_plan_on_the_scene_at_their_own_image_size(name, size):
    """The shipped reacher models load by name and plan one step.

    models/reacher: 96 px, pixels only; models/reacher_proprio: 64 px, the joints in the state,
    the goal's joints given with its image.
    """
    from ami_ros.agent import Agent
    from ami_ros.config import load_scene_config
    from ami_ros.model.checkpoint import load_checkpoint
    from ami_ros.safety import Limits

    model = load_checkpoint(name, device='cpu')  # checks the weights' sha256
    assert model.input_size == size and model.action_dim == 2
    sc = make_scene('reacher', SceneConfig(image_size=model.input_size, seed=3))
    cfg = load_scene_config('reacher')
    limits = Limits(('joint0', 'joint1'), sc.lower, sc.upper, np.asarray(sc.velocity_limit))
    agent = Agent(model, cfg.mpc(limits), position=False)
    goal = sc.render()
    assert goal.shape == (size, size, 3)
    agent.set_goal_image(goal, sc.joint_positions)
    if model.has_proprio:  # the goal's joints as given, not as read
        q = model.probe(agent.controller.goal[0][None])['joint_positions'][0].detach().numpy()
        np.testing.assert_allclose(q, sc.joint_positions, atol=1e-5)
    agent.observe(sc.render(), 0.0, sc.hold_command(), joints=sc.joint_positions)
    command, info = agent.act(sc.joint_positions, 0.0)
    sc.close()
    assert info['plan_ms'] > 0.0
    assert command.shape == (2,) and np.all(np.abs(command) <= 1.0)
