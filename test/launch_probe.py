"""Resolve an ami_ros launch file the way ``ros2 launch`` does, without starting any process.

    python test/launch_probe.py ami_bringup.launch.py use_sim:=true scene:=pusht

Needs the real ``launch`` and ``launch_ros`` packages importable (a ROS 2 install, or their
sources on PYTHONPATH: see ``test/test_launch.py``). The probe

1. finds the file in the share directory of ami_ros, as ros2launch does (``os.walk``, which does
   not enter symlinked folders),
2. includes it with the ``name:=value`` arguments, as ros2launch does, and visits the description
   as LaunchService does (argument declarations and choices, includes, conditions),
3. executes every Node action up to the point where the process would start: all substitutions
   are performed (the executable found in ``<prefix>/lib/ami_ros``, parameter files, remaps),
   on an event loop that never runs, so no process starts.

It prints one JSON object: the versions of launch and launch_ros (from their package.xml), the
launch file found and, per node, its final command line.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import types
from pathlib import Path


def _stand_in_composition_interfaces() -> None:
    """Let ``launch_ros.actions`` import where composition_interfaces is not installed.

    launch_ros.actions imports composition_interfaces.srv for its component-container actions,
    which ami_ros does not use; the ROS 2 wheels on PyPI have no composition_interfaces.
    """
    try:
        import composition_interfaces.srv  # noqa: F401
    except ImportError:
        class Service:
            Request = Response = type('Message', (), {})
        srv = types.ModuleType('composition_interfaces.srv')
        srv.LoadNode = srv.UnloadNode = srv.ListNodes = Service
        package = types.ModuleType('composition_interfaces')
        package.srv = srv
        sys.modules.update({'composition_interfaces': package, 'composition_interfaces.srv': srv})


def version_of(module) -> str:
    """The <version> of a ROS package's package.xml: next to its source folder, else installed."""
    candidates = [Path(module.__file__).resolve().parents[1] / 'package.xml']
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(module.__name__)) / 'package.xml')
    except (ImportError, LookupError, ValueError):
        pass
    for path in candidates:
        if path.is_file():
            found = re.search(r'<version>([^<]+)</version>', path.read_text())
            if found:
                return found.group(1)
    return 'unknown'


def find_launch_file(file_name: str) -> str:
    """The launch file in share/ami_ros, found like ``ros2 launch ami_ros <file_name>``."""
    try:
        from ros2launch.api import get_share_file_path_from_package
    except ImportError:  # ros2launch needs ros2cli's packages installed too: the same walk
        from ament_index_python.packages import get_package_share_directory

        def get_share_file_path_from_package(*, package_name, file_name):
            share = get_package_share_directory(package_name)
            found = [os.path.join(root, f) for root, _, files in os.walk(share)
                     for f in files if f == file_name]
            if len(found) != 1:
                raise FileNotFoundError(f'{file_name}: found {len(found)} times under {share}')
            return found[0]
    return get_share_file_path_from_package(package_name='ami_ros', file_name=file_name)


def visit(entity, context, nodes: list) -> None:
    """Visit ``entity`` and what it yields, depth first, the way LaunchService does."""
    from launch_ros.actions import Node

    if isinstance(entity, Node):
        if entity.condition is None or entity.condition.evaluate(context):
            entity.visit(context)  # Node.execute: substitutions, then a task on the loop
            nodes.append(entity)
        return
    for sub in entity.visit(context) or ():
        visit(sub, context, nodes)


def probe(file_name: str, arguments: list[str]) -> dict:
    """Resolve ``file_name`` with ``arguments`` (``name:=value``); the result printed as JSON."""
    _stand_in_composition_interfaces()
    import launch
    import launch_ros
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    path = find_launch_file(file_name)
    launch_arguments = [tuple(a.split(':=', 1)) for a in arguments]
    root = launch.LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(path), launch_arguments=launch_arguments)])
    context = launch.LaunchContext()
    loop = asyncio.new_event_loop()
    context._set_asyncio_loop(loop)  # never run: the processes' tasks never start
    nodes = []
    try:
        visit(root, context, nodes)
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()  # cancelled before its first step: the coroutine never runs
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    return {
        'launch': version_of(launch), 'launch_ros': version_of(launch_ros), 'file': path,
        'nodes': [{'name': n.node_name, 'cmd': list(n.process_description.final_cmd)}
                  for n in nodes],
    }


if __name__ == '__main__':
    print(json.dumps(probe(sys.argv[1], sys.argv[2:]), indent=1))
