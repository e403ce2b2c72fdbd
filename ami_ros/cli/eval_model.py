"""``ami-ros eval-model``: how well a world model predicts and represents held-out episodes.

Prints tables (rollout vs copy-last error by horizon, probe errors, effective rank, retrieval),
or with ``--json`` exactly one JSON object on stdout (progress and logs go to stderr), and
writes a PNG of error vs horizon. Metric definitions: :mod:`ami_ros.train.evaluate`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ami_ros.cli import json_clean


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint directory, a training output dir, or a shipped model '
                             'name such as arm_reach')
    parser.add_argument('--data', type=Path, nargs='+', required=True,
                        help='held-out bag directories (or bags)')
    parser.add_argument('--horizons', type=int, nargs='+', default=[1, 2, 5, 10],
                        help='open-loop horizons (steps) to report')
    parser.add_argument('--max-windows', type=int, default=2000,
                        help='at most this many rollout start frames (random subset)')
    parser.add_argument('--plot', type=Path, default=None,
                        help='PNG of error vs horizon (default runs/eval-model/<name>.png)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--seed', type=int, default=0, help='seed of window/query sampling')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object on stdout instead of tables')


def run(args) -> int:
    from ami_ros.model.checkpoint import CheckpointError, load_checkpoint
    from ami_ros.model.config import ConfigError
    from ami_ros.train.dataset import DataError, load_episodes
    from ami_ros.train.evaluate import evaluate, plot_horizons, print_table
    from ami_ros.train.trainer import resolve_device

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        if any(h < 1 for h in args.horizons):
            raise DataError(f'--horizons must be >= 1, got {args.horizons}')
        if args.max_windows < 1:
            raise DataError(f'--max-windows must be >= 1, got {args.max_windows}')
        model = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
        episodes = load_episodes(args.data, image_size=model.config.image_size,
                                 progress=not args.json)
        if args.json:
            print(f'evaluating {model.checkpoint_path} on {len(episodes)} episodes',
                  file=sys.stderr)
        result = evaluate(model, episodes, horizons=args.horizons,
                          max_windows=args.max_windows, seed=args.seed)
    except (CheckpointError, ConfigError, DataError, ValueError) as exc:
        print(f'ami-ros eval-model: error: {exc}', file=sys.stderr)
        return 2
    name = Path(model.checkpoint_path).name
    if name == 'model':
        name = Path(model.checkpoint_path).parent.name
    plot = args.plot or Path('runs') / 'eval-model' / f'{name}.png'
    plot_horizons(result, plot, title=f'{name} on {len(episodes)} episodes')
    result['checkpoint'] = str(model.checkpoint_path)
    result['data'] = [str(p) for p in args.data]
    result['plot'] = str(plot)
    if args.json:
        json.dump(json_clean(result), sys.stdout)
        sys.stdout.write('\n')
    else:
        print_table(result, file=sys.stdout, title=f'{name}: world model on held-out data')
        print(f'plot: {plot}')
    return 0


def main(argv=None) -> int:
    """Run ``ami-ros eval-model`` (``python -m ami_ros.cli.eval_model``)."""
    from ami_ros.cli import run_standalone
    return run_standalone('eval-model', argv)


if __name__ == '__main__':
    sys.exit(main())
