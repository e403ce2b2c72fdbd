"""``ami-ros eval-plan``: closed-loop planning in the core simulator, no ROS.

Runs the latent MPC (``world_model``), a ``random`` baseline and an ``oracle`` (the same planner
with the simulator as its model) on the same held-out goals, given as goal images; protocol and
success criteria: :mod:`ami_ros.evaluation.plan_eval`. Prints a table, or with ``--json`` one JSON
object on stdout (progress on stderr), and writes PNGs (success vs step and vs planning budget,
a filmstrip of the first episode with its goal image) under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ami_ros.cli import add_robot_argument, json_clean, robot_of

METHODS = ('world_model', 'random', 'oracle', 'oracle_latent')
"""What eval-plan can run side by side; the first three by default."""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint directory, training output dir, or shipped model name '
                             '(not needed when --methods are only random and oracle)')
    parser.add_argument('--scene', choices=('arm_reach', 'pusht', 'reacher'), default='arm_reach',
                        help='built-in scene')
    add_robot_argument(parser)
    parser.add_argument('--episodes', type=int, default=20, help='episodes (goals) per method')
    parser.add_argument('--first-episode', type=int, default=0,
                        help='run episodes FIRST..EPISODES-1 of the seed\'s goals only (the '
                             'same goals as a whole run): shards a slow evaluation across '
                             'processes')
    parser.add_argument('--protocol', choices=('own', 'swm'), default=None,
                        help="goals, budget and success rule: 'own' (the scene's eval_plan "
                             "block) or 'swm' (the world-model benchmarks' protocol, block "
                             "eval_plan_swm: LeWM / stable-worldmodel's Reacher and Push-T); "
                             "default: own, or the only one the scene has")
    parser.add_argument('--planner', choices=('cem', 'mppi'), default=None,
                        help='planner (default: the plan config\'s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of starts and goals')
    parser.add_argument('--config', type=Path, default=None,
                        help='the scene\'s config, a ROS parameters file (default: '
                             'config/<scene>.yaml)')
    parser.add_argument('--budget', type=int, nargs='+', default=None,
                        help='planning budgets to sweep for the success-vs-budget plot, as '
                             'samples per iteration (default: only the config\'s)')
    parser.add_argument('--steps', type=int, default=None,
                        help='control steps per episode (default: eval.steps of the config)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS[:3]), choices=METHODS,
                        help='methods to run; oracle_latent (a diagnostic, slow: it renders and '
                             'encodes every candidate step) = the simulator\'s dynamics with the '
                             'world model\'s latent cost')
    parser.add_argument('--goal-joints', action='store_true', default=None,
                        help='give the goal\'s joint positions with its image to a model with '
                             'proprioception, as DINO-WM gives its goal\'s proprio (default: '
                             'eval.goal_joints; otherwise its reader reads them from the image)')
    parser.add_argument('--oracle-episodes', type=int, default=None,
                        help='run the (slow) oracles on only the first N episodes')
    parser.add_argument('--record', type=Path, default=None, metavar='DIR',
                        help='also record every episode of each method as rosbag2, '
                             'DIR/<method>/<scene>_<seed>_<episode>/, the topics ami-ros collect '
                             'records: training data from the planner\'s own actions (use '
                             'another --seed than the evaluation\'s)')
    add_model_arguments(parser)
    parser.add_argument('--out', type=Path, default=None,
                        help='directory for the PNGs (default runs/eval-plan/<scene>)')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object on stdout instead of a table')


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--backend', choices=('torch', 'onnxruntime', 'tensorrt'),
                        default='torch', help='inference backend serving the world model')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch, ONNX Runtime)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'auto'")


def load_closed_loop(args, budgets=()):
    """(scene config path, MPC config, eval block, model, checkpoint path, scene) for ``args``.

    The scene's one config (``--config`` or config/<scene>.yaml, after config/ami_ros.yaml:
    the planner and world_model blocks the nodes run), the model on ``--backend`` sized for the
    planner (and the largest of ``budgets``), the simulator at the model's image size, and its
    joint limits as the safety limits. Raises ValueError/FileNotFoundError/CheckpointError.
    """
    import numpy as np

    from ami_ros.config import load_scene_config
    from ami_ros.safety import Limits
    from ami_ros.sim import SceneConfig, make_scene

    robot = robot_of(args)
    robot_file = None if robot is None else robot.source
    cfg = load_scene_config(args.scene, args.config, robot=robot_file)
    p = cfg.planner
    if args.checkpoint is None:  # model-free methods only (random, oracle): the scene's own size
        model, image_size, ckpt_path = None, SceneConfig.image_size, None
    else:
        model, image_size, ckpt_path = load_model(args, p.rollout_steps,
                                                  max([p.samples, *budgets]))
    hz = {} if robot is None else {'control_hz': robot.control_hz}  # the rate it was trained at
    scene = make_scene(args.scene, SceneConfig(image_size=image_size, seed=args.seed, **hz),
                       robot=robot_file)
    if model is not None and scene.num_joints != model.action_dim:
        arm = f'robot {robot.name}' if robot is not None else f'scene {args.scene}'
        raise ValueError(f'{arm} has {scene.num_joints} joints, the model '
                         f'{model.action_dim} action dimensions')
    limits = Limits(tuple(f'joint{i}' for i in range(scene.num_joints)), scene.lower,
                    scene.upper, np.asarray(scene.velocity_limit) * p.velocity_scale)
    mpc = cfg.mpc(limits, max_belief_age=p.stale_timeout)
    protocol, evaluation = cfg.eval_protocol(getattr(args, 'protocol', None))
    evaluation['protocol'] = protocol
    return cfg.files[-1], mpc, evaluation, model, ckpt_path, scene


def load_model(args, horizon: int, batch: int):
    """(model, image size, checkpoint path) for ``--backend``.

    torch: the WorldModel itself; others: an inference backend with the same duck type, built
    for the planner's horizon and batch.
    """
    import torch

    from ami_ros.model.checkpoint import load_checkpoint, resolve_checkpoint
    from ami_ros.train.trainer import resolve_device

    torch.set_num_threads(args.threads)
    if args.backend == 'torch':
        model = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
        return model, model.input_size, str(model.checkpoint_path)
    from ami_ros.inference import BackendConfig, make_backend

    config = BackendConfig(device=args.device, num_threads=args.threads, horizon=horizon,
                           planning_batch=batch)
    backend = make_backend(args.backend, args.checkpoint, config)
    return backend, backend.image_size, str(resolve_checkpoint(args.checkpoint))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> int:
    from ami_ros.agent import Agent
    from ami_ros.data.bag import BagError
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.evaluation.plots import plot_filmstrip, plot_success
    from ami_ros.model.checkpoint import CheckpointError

    try:
        if args.episodes < 1 or args.threads < 1:
            raise ValueError(f'--episodes and --threads must be >= 1, got {args.episodes} and '
                             f'{args.threads}')
        if not 0 <= args.first_episode < args.episodes:
            raise ValueError(f'--first-episode must be in [0, --episodes={args.episodes}), got '
                             f'{args.first_episode}')
        needs_model = sorted(set(args.methods) - {'random', 'oracle'})
        if args.checkpoint is None and needs_model:
            raise ValueError(f'--checkpoint is needed for {needs_model} (only random and '
                             'oracle run without a model)')
        if args.budget and min(args.budget) < 2:
            raise ValueError(f'--budget values must be >= 2 samples, got {args.budget}')
        cfg_file, mpc, eval_block, model, ckpt_path, scene = load_closed_loop(
            args, args.budget or ())
        if args.planner:
            mpc = dataclasses.replace(mpc, planner=args.planner)
        overrides = {'steps': args.steps, 'oracle_episodes': args.oracle_episodes,
                     'goal_joints': args.goal_joints}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        ecfg = pe.PlanEvalConfig(**{**eval_block, **overrides})
    except TypeError as exc:  # unknown eval key
        print(f'ami-ros eval-plan: error: eval block: {exc}', file=sys.stderr)
        return 2
    except (CheckpointError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f'ami-ros eval-plan: error: {exc}', file=sys.stderr)
        return 2

    policies = {}
    if 'world_model' in args.methods:
        policies['world_model'] = pe.ModelPolicy(
            Agent(model, mpc, position=scene.control_mode == 'position'), ecfg.goal_joints)
    if 'random' in args.methods:
        policies['random'] = pe.RandomPolicy(mpc.planning, seed=args.seed)
    if 'oracle' in args.methods:
        policies['oracle'] = pe.OraclePolicy(scene, mpc, ecfg)
    if 'oracle_latent' in args.methods:
        policies['oracle_latent'] = pe.OraclePolicy(scene, mpc, ecfg, model)
    _log(f'eval-plan: {ckpt_path} ({args.backend}) on {args.scene}, {args.episodes} episodes x '
         f'{ecfg.steps} steps, methods {list(policies)}')
    try:
        results, goals = pe.evaluate(scene, policies, args.episodes, args.seed, ecfg, log=_log,
                                     first=args.first_episode, bags=args.record)
    except (FileExistsError, BagError) as exc:
        print(f'ami-ros eval-plan: error: {exc}', file=sys.stderr)
        return 2
    methods = {name: pe.summarize(r) for name, r in results.items()}

    p = mpc.planning
    budgets = []
    if 'world_model' in methods:
        budgets.append(_budget_row(p.n_samples, p.iterations, methods['world_model']))
    for n in sorted(set(args.budget or [])):
        if 'world_model' not in policies or n == p.n_samples:
            continue
        planning = dataclasses.replace(p, n_samples=n, n_elites=max(2, min(p.n_elites, n // 10)))
        agent = Agent(model, dataclasses.replace(mpc, planning=planning),
                      position=scene.control_mode == 'position')
        _log(f'eval-plan: planning budget {n} samples x {p.iterations} iterations')
        policy = pe.ModelPolicy(agent, ecfg.goal_joints)
        r, _ = pe.evaluate(scene, {'world_model': policy}, args.episodes,
                           args.seed, dataclasses.replace(ecfg, oracle_episodes=0), log=_log,
                           record_episode=-1, first=args.first_episode)
        budgets.append(_budget_row(n, p.iterations, pe.summarize(r['world_model'])))
    budgets.sort(key=lambda b: b['rollouts_per_plan'])

    robot_name = getattr(scene, 'robot_name', None)
    out = args.out or Path('runs') / 'eval-plan' / (robot_name or args.scene)
    plots = [str(plot_success(methods, budgets, out / 'success.png',
                              f'{args.scene}: {args.episodes} goals, {ecfg.steps} steps',
                              oracle_rollouts=ecfg.oracle_samples * ecfg.oracle_iterations,
                              success_at=ecfg.success_at))]
    first = next(iter(results.values()))
    if first and first[0].frames:
        name = next(iter(results))
        plots.append(str(plot_filmstrip(
            goals[0].image, first[0].frames, out / 'filmstrip.png',
            f'{args.scene} episode 1, {name}: {"success" if first[0].success else "failure"}, '
            f'final error {first[0].final_error:.3g}')))
    for policy in policies.values():
        if hasattr(policy, 'close'):
            policy.close()
    scene.close()

    report = {
        'checkpoint': ckpt_path, 'backend': args.backend, 'scene': args.scene,
        'robot': robot_name, 'methods': methods, 'budgets': budgets, 'plots': plots,
        'config': {'episodes': args.episodes, 'first_episode': args.first_episode,
                   'seed': args.seed, 'plan_config': str(cfg_file),
                   'threads': args.threads, 'eval': dataclasses.asdict(ecfg),
                   'planner': mpc.planner, 'planning': dataclasses.asdict(mpc.planning),
                   'cost': {'metric': mpc.metric, 'terminal_weight': mpc.terminal_weight,
                            'running_weight': mpc.running_weight},
                   'belief_gain': mpc.belief.gain,
                   'success': _success_rule(args.scene, ecfg)},
    }
    if args.json:
        json.dump(json_clean(report), sys.stdout)
        sys.stdout.write('\n')
    else:
        _print_table(report)
    return 0


def _success_rule(scene: str, ecfg) -> str:
    when = 'at the end of the budget' if ecfg.success_at == 'end' else 'at any step of the budget'
    rule = {'arm_reach': 'end-effector distance <= eval.tolerance',
            'reacher': 'every joint within eval.joint_tolerance of the goal posture',
            'pusht': ('coverage > eval.coverage_threshold AND DINO-WM pose criterion'
                      if ecfg.require_coverage else 'DINO-WM pose criterion')}[scene]
    return f'{rule}, {when}'


def _budget_row(n_samples: int, iterations: int, summary: dict) -> dict:
    return {'n_samples': int(n_samples), 'iterations': int(iterations),
            'rollouts_per_plan': int(n_samples) * int(iterations),
            'success_rate': summary['success_rate'], 'plan_ms_p50': summary['plan_ms_p50'],
            'plan_ms_p99': summary['plan_ms_p99']}


def _fmt(v, spec: str = '.3f') -> str:
    return '-' if v is None else format(v, spec)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = {'arm_reach': 'm', 'reacher': 'rad'}.get(report['scene'], 'units')
    table = Table(title=f"eval-plan {report['scene']}: {report['checkpoint']}")
    for col in ('method', 'episodes', 'success', 'reached', f'final error ({unit})',
                'steps to reach', 'plan ms p50', 'plan ms p99'):
        table.add_column(col, justify='right')
    for name, m in report['methods'].items():
        table.add_row(name, str(m.get('episodes', 0)), _fmt(m.get('success_rate'), '.2f'),
                      _fmt(m.get('reached_rate'), '.2f'), _fmt(m.get('final_error'), '.4f'),
                      _fmt(m.get('steps_mean'), '.1f'), _fmt(m.get('plan_ms_p50'), '.1f'),
                      _fmt(m.get('plan_ms_p99'), '.1f'))
    console = Console(width=None if sys.stdout.isatty() else 140)  # no wrapping in logs
    console.print(table)
    if len(report['budgets']) > 1:
        bt = Table(title='world_model success vs planning budget')
        for col in ('samples x iterations', 'success', 'plan ms p50'):
            bt.add_column(col, justify='right')
        for b in report['budgets']:
            bt.add_row(f"{b['n_samples']} x {b['iterations']}", _fmt(b['success_rate'], '.2f'),
                       _fmt(b['plan_ms_p50'], '.1f'))
        console.print(bt)
    console.print(f"plots: {', '.join(report['plots'])}")


def main(argv=None) -> int:
    """Run ``ami-ros eval-plan`` (``python -m ami_ros.cli.eval_plan``)."""
    from ami_ros.cli import run_standalone
    return run_standalone('eval-plan', argv)


if __name__ == '__main__':
    sys.exit(main())
