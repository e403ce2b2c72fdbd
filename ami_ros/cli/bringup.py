"""``ami-ros bringup``: the perception, world_model and planner nodes in one process.

For machines without ``ros2 launch``: the same nodes and the same parameter files as
``launch/ami_bringup.launch.py`` (``config/ami_ros.yaml``, then ``config/<scene>.yaml``), spun by
one single-threaded executor; ``--scene`` overrides the files' scene in every node, ``--robot``
(a robot config) gives every node the arm: the world_model and planner its URDF and end effector,
the simulator the arm itself.
``--with-sim`` adds the built-in simulator node (``config/sim.yaml``) and runs every node on its
``/clock``. Anything after ``--ros-args`` goes to every node as usual
(``-p name:=value``, remaps). On exit (Ctrl-C or ``--duration``) a table of each node's rates,
latencies and counters is printed (one line of JSON with ``--json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ami_ros.cli import add_robot_argument, robot_of
from ami_ros.paths import config_path
from ami_ros.sim import SCENES


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument('--params', type=Path, default=None,
                   help='parameters YAML, one block per node (default: the package\'s '
                        'config/ami_ros.yaml)')
    p.add_argument('--scene', choices=sorted(SCENES), default='arm_reach',
                   help='scene: picks the model, the URDF and config/<scene>.yaml overrides')
    add_robot_argument(p)
    p.add_argument('--with-sim', action='store_true',
                   help='also run the built-in simulator node, all nodes on its /clock')
    p.add_argument('--use-sim-time', action='store_true',
                   help='run the nodes on /clock time (implied by --with-sim)')
    p.add_argument('--namespace', default='', help='namespace of every node (one per robot)')
    p.add_argument('--duration', type=float, default=0.0,
                   help='stop after this many seconds (0 = run until Ctrl-C)')
    p.add_argument('--json', action='store_true', help='print the final summary as JSON')
    p.add_argument('--ros-args', dest='ros_args', nargs=argparse.REMAINDER, default=[],
                   help='everything after it goes to every node (-p name:=value, '
                        '-p node:name:=value, -r from:=to)')


def ros_arguments(args: argparse.Namespace) -> list[str]:
    """The ``--ros-args`` every node is started with: parameter files in order, then overrides."""
    params = args.params or config_path('ami_ros.yaml')
    if not Path(params).is_file():
        raise ValueError(f'{params}: parameters file not found')
    files = [params]
    scene_file = config_path(f'{args.scene}.yaml')
    if scene_file.is_file():
        files.append(scene_file)
    if args.with_sim:
        files.insert(0, config_path('sim.yaml'))
    out = ['--ros-args']
    for f in files:
        out += ['--params-file', str(f)]
    if args.namespace:
        out += ['-r', f'__ns:=/{args.namespace.strip("/")}']
    return out + list(args.ros_args or [])


def node_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Parameters every node gets from the command line, above any parameter file."""
    values: dict[str, object] = {'scene': args.scene}
    robot = robot_of(args)
    if robot is not None:
        values['robot'] = str(robot.source)
    if args.with_sim or args.use_sim_time:
        values['use_sim_time'] = True
    return values


def _summary(nodes) -> dict[str, dict[str, str]]:
    out = {}
    for node in nodes:
        status = getattr(node, 'status', None)
        if status is None or getattr(node, 'model', None) is None:
            continue
        level, message, values = status()
        out[node.get_fully_qualified_name()] = {
            'lifecycle': node.state_label, 'level': level, 'message': message,
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()},
            'dropped': node.dropped, 'errors': node.errors, 'last_error': node.last_error}
    return out


def _print_table(summary: dict[str, dict]) -> None:
    keys = ('input_rate_hz', 'output_rate_hz', 'belief_rate_hz', 'command_rate_hz',
            'encode_latency_p50_ms', 'encode_latency_p99_ms', 'update_latency_p50_ms',
            'update_latency_p99_ms', 'plan_latency_p50_ms', 'plan_latency_p99_ms', 'commands',
            'hold_ticks', 'dropped', 'errors')
    for name, values in summary.items():
        shown = ', '.join(f'{k}={values[k]}' for k in keys if k in values)
        print(f'{name:<14} {values["lifecycle"]:<9} {shown}')


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.utilities import get_default_context

    from ami_ros.nodes.common import init_ros, prepare_exit, spin_until_stopped
    from ami_ros.nodes.perception import PerceptionNode
    from ami_ros.nodes.planner import PlannerNode
    from ami_ros.nodes.world_model import WorldModelNode

    try:
        ros_args = ros_arguments(args)
        node_overrides(args)  # a bad robot config fails here, before ROS starts
    except ValueError as e:
        print(f'ami-ros bringup: {e}', file=sys.stderr)
        return 2
    stop = init_ros(ros_args)
    context = get_default_context()
    logger = rclpy.logging.get_logger('bringup')
    executor = SingleThreadedExecutor()
    nodes = []
    code = 0
    try:
        makers = [PerceptionNode, WorldModelNode, PlannerNode]
        if args.with_sim:
            from ami_ros.nodes.sim import SimNode
            makers.insert(0, SimNode)
        try:
            overrides = [Parameter(k, value=v) for k, v in node_overrides(args).items()]
            for make in makers:
                nodes.append(make(parameter_overrides=overrides))
                executor.add_node(nodes[-1])
            for node in nodes:
                if hasattr(node, 'start'):
                    node.start()
        except ValueError as e:
            logger.fatal(str(e))
            return 2
        logger.info(f'running {", ".join(n.get_name() for n in nodes)} in one process '
                    f'(scene {args.scene})')
        spin_until_stopped(executor, stop, args.duration)
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    finally:
        summary = _summary(nodes)
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
        prepare_exit(context)  # exit without walking the heap (see prepare_exit)
    if summary:
        print(json.dumps(summary)) if args.json else _print_table(summary)
    return code
