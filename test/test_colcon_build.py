"""The ROS 2 workspace install path: ``colcon build`` / ``colcon test`` of ami_ros from the venv.

The package's files (what git tracks or would track: no .venv, build/, caches) are copied into
``<tmp>/ws/src/ami_ros`` so colcon crawls nothing else, then built with colcon-ros's
ament_python support; the install tree must hold everything a ``ros2 run`` / ``ros2 launch``
user needs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO, console_scripts

COLCON = shutil.which('colcon', path=str(Path(sys.executable).parent)) or shutil.which('colcon')
IGNORED = shutil.ignore_patterns('.venv', '.git', 'build', 'install', 'log', '__pycache__',
                                 '*.egg-info', '.pytest_cache', 'runs', 'data', '*.pyc')

pytestmark = pytest.mark.skipif(COLCON is None, reason='colcon is not installed')


def _package_files() -> list[Path] | None:
    """Files of the package as git sees them (tracked or new, not ignored), or None without git."""
    try:
        out = subprocess.run(
            ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
            cwd=REPO, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [Path(p) for p in out.decode().split('\0') if p and (REPO / p).is_file()]


def _copy_package(dest: Path) -> None:
    files = _package_files()
    if files is None:  # a source tarball: copy everything but the usual build outputs
        shutil.copytree(REPO, dest, ignore=IGNORED)
        return
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)


def _colcon(ws: Path, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLCON_HOME=str(ws / '.colcon'), COLCON_LOG_PATH=str(ws / 'log'))
    return subprocess.run([COLCON, *args, '--base-paths', 'src', '--build-base', 'build',
                           '--install-base', 'install'],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp('ws')
    _copy_package(ws / 'src' / 'ami_ros')
    result = _colcon(ws, 'build')
    assert result.returncode == 0, f'colcon build failed:\n{result.stdout}\n{result.stderr}'
    return ws


def test_install_tree_has_share_files_index_and_executables(workspace):
    prefix = workspace / 'install' / 'ami_ros'
    share = prefix / 'share' / 'ami_ros'
    assert (share / 'package.xml').is_file()
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'ami_ros').is_file()
    for folder, pattern in (('launch', '*.py'), ('config', '*'), ('urdf', '*')):
        sources = sorted(p.relative_to(REPO) for p in (REPO / folder).rglob(pattern)
                         if p.is_file() and '__pycache__' not in p.parts)
        assert sources, f'{folder}/ has no files to install'
        missing = [str(s) for s in sources if not (share / s).is_file()]
        assert not missing, f'not installed under {share}: {missing}'
    scripts = console_scripts()
    assert 'sim' in scripts
    for name in scripts:
        exe = prefix / 'lib' / 'ami_ros' / name
        assert exe.is_file() and os.access(exe, os.X_OK), f'{exe} missing or not executable'


def test_install_tree_holds_every_module(workspace):
    """A sub-package without __init__.py would be left out by find_packages without a word."""
    site = next((workspace / 'install' / 'ami_ros' / 'lib').glob('python3*/site-packages'))
    sources = [p.relative_to(REPO) for p in (REPO / 'ami_ros').rglob('*.py')
               if '__pycache__' not in p.parts]
    missing = [str(s) for s in sources if not (site / s).is_file()]
    assert not missing, f'modules missing from the install (no __init__.py?): {missing}'


def test_installed_sim_executable_runs(workspace, ros_env):
    """The installed entry point starts the installed code (it refuses a bad scene by name)."""
    prefix = workspace / 'install' / 'ami_ros'
    site = next((prefix / 'lib').glob('python3*/site-packages'))
    paths = [str(site), ros_env.get('PYTHONPATH')]
    env = dict(ros_env, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    code = 'import ami_ros.nodes.sim as m; print(m.__file__)'
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path
    probe = subprocess.run([sys.executable, '-c', code], env=env, cwd=workspace,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and Path(probe.stdout.strip()).is_relative_to(site), probe
    result = subprocess.run([str(prefix / 'lib' / 'ami_ros' / 'sim'), '--ros-args', '-p',
                             'scene:=no_such_scene'], env=env, cwd=workspace,
                            capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and 'no_such_scene' in out and 'Traceback' not in out, out


def test_colcon_test_runs_pytest(workspace):
    """``colcon test`` finds pytest (``extras_require['test']``) and reports results.

    Only the static launch-file checks run in it; the suite runs from the venv directly.
    """
    result = _colcon(workspace, 'test', '--return-code-on-test-failure', '--pytest-args',
                     'test/test_lint.py', '-k', 'launch')
    report = workspace / 'build' / 'ami_ros' / 'pytest.xml'
    assert result.returncode == 0, f'colcon test failed:\n{result.stdout}\n{result.stderr}'
    assert report.is_file(), f'no pytest report (unittest ran instead?):\n{result.stdout}'
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    assert int(suite.get('tests')) >= 2 and int(suite.get('failures')) == 0 \
        and int(suite.get('errors')) == 0, ET.tostring(suite)[:2000]
