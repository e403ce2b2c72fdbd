"""The ``ami-ros`` command line: one entry point for everything a user does.

Each sub-command lives in its own module of this package with two functions:
``add_parser(subparsers)`` (declares its arguments) and ``run(args) -> int`` (does the work).
Modules are imported only when their command runs, so ``ami-ros --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    'demo': ('ami_ros.cli.demo', 'sim + stack reaching goals: success, loop rate, latency, PNG'),
    'collect': ('ami_ros.cli.collect',
                'drive the simulator with an exploration policy, record rosbag2'),
    'train': ('ami_ros.cli.train', 'train the world model and its probes from bags'),
    'eval-model': ('ami_ros.cli.eval_model', 'evaluate a world model on held-out bags'),
    'export': ('ami_ros.cli.export', 'export a world model to ONNX / TensorRT engines'),
    'bench': ('ami_ros.cli.bench', 'time encoder, planning and the core loop on every backend'),
    'eval-plan': ('ami_ros.cli.eval_plan',
                  'closed-loop latent MPC vs random vs oracle in the simulator'),
    'eval-surprise': ('ami_ros.cli.eval_surprise', 'surprise score on injected anomalies (AUROC)'),
    'bringup': ('ami_ros.cli.bringup', 'run the nodes (and the sim) in one process'),
    'fuzz': ('ami_ros.cli.fuzz', 'malformed messages into the running stack: it must survive'),
    'soak': ('ami_ros.cli.soak', 'the demo for minutes on end: memory of every process sampled'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ami-ros',
        description='ami_ros: a learned world model for ROS 2 robots.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_parser(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


def add_robot_argument(parser: argparse.ArgumentParser) -> None:
    """``--robot FILE``: the arm of the arm scene as a robot config (ami_ros.robot_config)."""
    parser.add_argument('--robot', default=None, metavar='FILE',
                        help='robot config of an arm (YAML: URDF, end effector, joints, camera; '
                             'a path, or the name of one in config/robots such as boom5; or a '
                             'bare URDF: the end of its chain is the end effector); runs the '
                             'arm scene arm_reach with that arm')


def robot_of(args):
    """The RobotConfig of ``--robot`` (None without one); ValueError if bad or not an arm scene."""
    robot = getattr(args, 'robot', None)
    if not robot:
        return None
    from ami_ros.robot_config import load_robot
    from ami_ros.sim import ARM_SCENES

    scene = getattr(args, 'scene', None)
    if scene is not None and scene not in ARM_SCENES:
        raise ValueError(f'--robot drives the arm scene {list(ARM_SCENES)}, not --scene {scene}')
    return load_robot(robot)


def json_clean(obj, digits: int | None = None):
    """Make a result strict JSON: NaN/inf -> None, numpy scalars -> Python, keys -> str.

    Floats are rounded to ``digits`` decimals when given (tables of timings).
    """
    import math

    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return obj if digits is None else round(obj, digits)
    if isinstance(obj, dict):
        return {str(k): json_clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v, digits) for v in obj]
    if hasattr(obj, 'item') and callable(obj.item):  # numpy / torch scalars
        return json_clean(obj.item(), digits)
    return obj


def run_standalone(command: str, argv=None) -> int:
    """Run one sub-command as typed after ``ami-ros`` (``python -m ami_ros.cli.<module>``)."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    sys.exit(main())
