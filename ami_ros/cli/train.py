"""``ami-ros train``: train the world model from bags (self-supervised), then its probes.

Runs unchanged under ``torchrun --nproc_per_node N ami_ros/cli/train.py ...`` or
``torchrun --nproc_per_node N -m ami_ros.cli.train ...`` (DistributedDataParallel; only rank 0
writes). Ctrl-C saves a resumable checkpoint; ``--resume`` continues from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger('ami_ros.train')


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', type=Path, required=True,
                        help='training YAML (blocks model/loss/train/probe/data), e.g. '
                             'config/train_arm_reach.yaml')
    parser.add_argument('--data', type=Path, nargs='+', default=None,
                        help='bag directories (or bags); overrides data.paths')
    parser.add_argument('--val-data', type=Path, nargs='+', default=None,
                        help='held-out bags; overrides data.val_paths (default: hold out '
                             'train.val_fraction of the episodes)')
    parser.add_argument('--out', type=Path, default=Path('runs/train'),
                        help='output directory (logs, curves, resume/, model/)')
    parser.add_argument('--max-steps', type=int, default=None, help='overrides train.max_steps')
    parser.add_argument('--seed', type=int, default=None, help='overrides train.seed')
    parser.add_argument('--device', default=None, help="overrides train.device ('auto', 'cpu', "
                                                       "'cuda')")
    parser.add_argument('--robot', default=None, metavar='FILE',
                        help='robot config of the arm (a path, or a name in config/robots): the '
                             'arm of the reader\'s calibration sweep and of generated episodes; '
                             'overrides reader.sweep_robot and data.generate.robot')
    parser.add_argument('--resume', action='store_true',
                        help='continue from OUT/resume (model, optimizer, step, logs)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def _apply_overrides(cfg, args) -> None:
    from ami_ros.model.config import TrainConfig, to_dict
    train = to_dict(cfg.train)
    if args.max_steps is not None:
        train['max_steps'] = args.max_steps
    if args.seed is not None:
        train['seed'] = args.seed
    if args.device is not None:
        train['device'] = args.device
    cfg.train = TrainConfig(**train)
    if args.data is not None:  # the config's weights were for its own paths
        cfg.data = dataclasses.replace(cfg.data, paths=tuple(str(p) for p in args.data),
                                       weights=(), generate=None)
    if args.val_data is not None:
        cfg.data = dataclasses.replace(cfg.data, val_paths=tuple(str(p) for p in args.val_data))
    if args.robot:
        _apply_robot(cfg, args.robot)


def _apply_robot(cfg, robot: str) -> None:
    """The arm of the calibration sweep and of generated episodes (ConfigError if bad)."""
    import dataclasses

    from ami_ros.model.config import ConfigError
    from ami_ros.robot_config import RobotError, load_robot

    try:
        path = str(load_robot(robot).source)
    except RobotError as e:
        raise ConfigError(str(e)) from None
    cfg.reader = dataclasses.replace(cfg.reader, sweep_robot=path)
    if cfg.data.generate is not None:
        cfg.data = dataclasses.replace(
            cfg.data, generate=dataclasses.replace(cfg.data.generate, robot=path))


def load_data(cfg, progress: bool):
    """(train episodes, val episodes, description) from the run config's data block."""
    from ami_ros.model.config import to_dict
    from ami_ros.train.dataset import (DataError, episodes_from_scene, load_episodes,
                                       split_episodes)
    size = cfg.model.image_size
    if cfg.data.paths:
        episodes = []
        for path, weight in zip(cfg.data.paths, cfg.data.weights or [1.0] * len(cfg.data.paths)):
            loaded = load_episodes([path], image_size=size, progress=progress,
                                   **cfg.data.read_options())
            for ep in loaded:
                ep.weight = weight
            episodes += loaded
        info = {'paths': list(cfg.data.paths), 'episodes': len(episodes)}
        if cfg.data.weights:
            info['weights'] = list(cfg.data.weights)
    elif cfg.data.generate is not None:
        episodes = episodes_from_scene(cfg.data.generate, progress=progress)
        info = {'generate': to_dict(cfg.data.generate), 'episodes': len(episodes)}
    else:
        raise DataError('no training data: give --data DIR (bags from `ami-ros collect`) or set '
                        'data.paths / data.generate in the config')
    if cfg.data.val_paths:
        val = load_episodes(cfg.data.val_paths, image_size=size, progress=progress,
                            **cfg.data.read_options())
        info['val_paths'] = list(cfg.data.val_paths)
        return episodes, val, info
    train, val = split_episodes(episodes, cfg.train.val_fraction, cfg.train.seed)
    return train, val, info


def run(args) -> int:
    import torch

    from ami_ros.model.checkpoint import CheckpointError
    from ami_ros.model.config import ConfigError, load_run_config
    from ami_ros.train.dataset import DataError
    from ami_ros.train.trainer import Trainer, TrainingInterrupted

    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s', stream=sys.stderr)
    try:
        cfg = load_run_config(args.config)
        _apply_overrides(cfg, args)
        progress = rank == 0 and not args.no_progress
        train_eps, val_eps, info = load_data(cfg, progress)
        if rank == 0:
            log.info('%d training and %d validation episodes (%d frames)', len(train_eps),
                     len(val_eps), sum(len(e) for e in train_eps))
        trainer = Trainer(cfg, train_eps, val_eps, args.out, resume=args.resume,
                          progress=progress, data_info=info)
        summary = trainer.run()
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f'ami-ros train: error: {exc}', file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        if exc.resume_dir is not None:
            print(f'ami-ros train: interrupted at step {exc.step}; saved {exc.resume_dir}; '
                  f'continue with --resume --out {args.out}', file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=100)
    t = Table(title=f"training done: {summary['steps']} steps -> {summary.get('checkpoint')}")
    t.add_column('metric')
    t.add_column('value', justify='right')
    for key, value in summary.get('val', {}).items():
        t.add_row(key, f'{value:.4g}')
    for name, m in summary.get('probes', {}).items():
        t.add_row(f"probe {name} error ({m['units']}, {m['split']})",
                  f"{m['error']:.4g} (mean baseline {m['baseline']:.4g})")
    console.print(t)


def main(argv=None) -> int:
    """Entry point for ``torchrun ... ami_ros/cli/train.py`` / ``python -m ami_ros.cli.train``."""
    from ami_ros.cli import run_standalone
    return run_standalone('train', argv)


if __name__ == '__main__':
    sys.exit(main())
