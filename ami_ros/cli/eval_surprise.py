"""``ami-ros eval-surprise``: surprise scores on injected anomalies vs normal frames (AUROC).

Runs the scene's exploration policy (or the MPC) with the belief filter of the latent MPC agent,
injects one anomaly per episode (teleported goal/object, blocked joint, occluded camera) and
compares surprise scores of anomalous and normal frames; protocol and labels:
:mod:`ami_ros.evaluation.surprise_eval`. Prints a table, or with ``--json`` one JSON object on
stdout (progress on stderr), and writes a PNG of the score distributions under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ami_ros.cli import add_robot_argument, json_clean
from ami_ros.cli.eval_plan import _fmt, _log, add_model_arguments, load_closed_loop


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint directory, training output dir, or shipped model name')
    parser.add_argument('--scene', choices=('arm_reach', 'pusht'), default='arm_reach',
                        help='built-in scene')
    add_robot_argument(parser)
    parser.add_argument('--episodes', type=int, default=30,
                        help='episodes with one anomaly each (types in turn)')
    parser.add_argument('--policy', choices=('explorer', 'mpc'), default='explorer',
                        help='what drives the arm: the scene\'s explorer or the MPC to a goal')
    parser.add_argument('--steps', type=int, default=None, help='frames per episode')
    parser.add_argument('--seed', type=int, default=0, help='seed of episodes and anomalies')
    parser.add_argument('--config', type=Path, default=None,
                        help='the scene\'s config with the belief settings '
                             '(default config/<scene>.yaml)')
    add_model_arguments(parser)
    parser.add_argument('--out', type=Path, default=None,
                        help='directory for the PNG (default runs/eval-surprise/<scene or '
                             'robot>)')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object on stdout instead of a table')


def run(args) -> int:
    from ami_ros.agent import Agent
    from ami_ros.evaluation import plan_eval as pe
    from ami_ros.evaluation import surprise_eval as se
    from ami_ros.evaluation.plots import plot_surprise
    from ami_ros.model.checkpoint import CheckpointError

    try:
        if args.episodes < 1 or args.threads < 1:
            raise ValueError(f'--episodes and --threads must be >= 1, got {args.episodes} and '
                             f'{args.threads}')
        cfg_file, mpc, eval_block, model, ckpt_path, scene = load_closed_loop(args)
        cfg = se.SurpriseEvalConfig(**({'steps': args.steps} if args.steps else {}))
        ecfg = pe.PlanEvalConfig(**eval_block)
    except (CheckpointError, ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        print(f'ami-ros eval-surprise: error: {exc}', file=sys.stderr)
        return 2
    agent = Agent(model, mpc)

    def goal_fn(scene_, rng):
        return pe.make_goal(scene_, rng, ecfg)[1].image

    _log(f'eval-surprise: {ckpt_path} ({args.backend}) on {args.scene}, {args.episodes} episodes, '
         f'policy {args.policy}')
    result = se.evaluate_surprise(scene, agent, args.episodes, args.seed, cfg, args.policy,
                                  goal_fn if args.policy == 'mpc' else None, log=_log)
    out = args.out or Path('runs') / 'eval-surprise' / getattr(scene, 'robot_name', args.scene)
    per_type = {k: {'normal': result['normal_scores'], 'anomalous': v['scores'],
                    'auroc': v['auroc']} for k, v in result['types'].items()}
    plot = plot_surprise(per_type, out / 'surprise.png',
                         f'{args.scene}: surprise on normal vs anomalous frames ({args.policy})')
    scene.close()
    report = {'checkpoint': ckpt_path, 'backend': args.backend, 'scene': args.scene,
              'policy': args.policy, 'plots': [str(plot)],
              'typical_error': result['typical_error'],
              'typical_errors': result['typical_errors'], 'threshold': result['threshold'],
              'normal_frames': result['normal_frames'],
              'false_positive_rate': result['false_positive_rate'],
              'types': {k: {kk: vv for kk, vv in v.items() if kk != 'scores'}
                        for k, v in result['types'].items()},
              'config': {**dataclasses.asdict(cfg), 'episodes': args.episodes, 'seed': args.seed,
                         'belief_gain': mpc.belief.gain,
                         'channels': list(mpc.surprise.scored), 'plan_config': str(cfg_file)}}
    if args.json:
        json.dump(json_clean(report), sys.stdout)
        sys.stdout.write('\n')
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f'eval-surprise {args.scene} ({args.policy}): '
                            f'{report["normal_frames"]} normal frames, false-positive rate '
                            f'{report["false_positive_rate"]:.3f} at threshold '
                            f'{report["threshold"]:.2f}')
        for col in ('anomaly', 'events', 'frames', 'AUROC', 'AUROC onset', 'detected',
                    'onset detected'):
            table.add_column(col, justify='right')
        for k, v in report['types'].items():
            table.add_row(k, str(v['events']), str(v['anomalous_frames']), _fmt(v['auroc']),
                          _fmt(v['auroc_onset']), _fmt(v['detection_rate'], '.2f'),
                          _fmt(v['onset_detection_rate'], '.2f'))
        console = Console(width=None if sys.stdout.isatty() else 140)  # no wrapping in logs
        console.print(table)
        console.print(f'plot: {plot}')
    return 0


def main(argv=None) -> int:
    """Run ``ami-ros eval-surprise`` (``python -m ami_ros.cli.eval_surprise``)."""
    from ami_ros.cli import run_standalone
    return run_standalone('eval-surprise', argv)


if __name__ == '__main__':
    sys.exit(main())
