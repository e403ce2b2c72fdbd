"""Lint as a test: flake8 and pep257 (the ament linters), copyright, launch file rules.

Select with ``pytest -m lint`` (or ``make lint``). flake8 reads the ``[flake8]`` section of
setup.cfg (line length 100). pep257 uses ament's convention: D100-D107 (missing docstrings),
D203, D212 and D404 are not checked, as in most ROS 2 packages, nor D213 and D401 (see
test_pep257).
"""
from __future__ import annotations

import ast
import importlib.util

import pytest

from conftest import REPO, console_scripts

pytestmark = pytest.mark.lint

PATHS = [REPO / 'ami_ros', REPO / 'test', REPO / 'launch', REPO / 'setup.py']
LAUNCH_FILES = sorted((REPO / 'launch').glob('*.py'))


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


@pytest.mark.skipif(_missing('ament_flake8'), reason='ament_flake8 is not installed')
def test_flake8(tmp_path, monkeypatch):
    from ament_flake8.main import main_with_errors

    # ament_flake8 walks the working directory for folders to skip (.venv is huge): start it in
    # an empty one; setup.cfg's exclude list keeps .venv/build/install/log out of the paths
    monkeypatch.chdir(tmp_path)
    rc, errors = main_with_errors(argv=['--config', str(REPO / 'setup.cfg'),
                                        *map(str, PATHS)])
    assert rc == 0, f'{len(errors)} flake8 problem(s):\n' + '\n'.join(errors)


@pytest.mark.skipif(_missing('ament_pep257') or _missing('pydocstyle'),
                    reason='ament_pep257 needs pydocstyle, which is not installed')
def test_pep257(tmp_path, monkeypatch, capsys):
    from ament_pep257.main import main

    monkeypatch.chdir(tmp_path)
    # ament's convention, plus: D213 (the summary may start on the first line, as this code base
    # writes it) and D401 (descriptive summaries such as "The camera frame." are fine)
    rc = main(argv=[*map(str, PATHS), '--add-ignore', 'D213', 'D401'])
    out = capsys.readouterr()
    problems = [line for line in (out.out + out.err).splitlines() if ': D' in line]
    assert rc == 0, f'{len(problems)} pep257 problem(s):\n' + '\n'.join(problems)


@pytest.mark.skipif(_missing('ament_copyright'),
                    reason='ament_copyright is not on PyPI and not installed')
def test_copyright(tmp_path, monkeypatch):
    from ament_copyright.main import main

    monkeypatch.chdir(tmp_path)
    assert main(argv=[*map(str, PATHS)]) == 0


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=[p.name for p in LAUNCH_FILES])
def test_launch_file_rules(path):
    """Check a launch file without launch/launch_ros.

    It parses, has generate_launch_description, documents every argument and starts only
    executables that setup.py installs.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions, \
        f'{path.name}: no generate_launch_description()'
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for call in calls:
        if _call_name(call) != 'DeclareLaunchArgument':
            continue
        name = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else '?'
        desc = {k.arg: k.value for k in call.keywords}.get('description')
        assert desc is not None, f'{path.name}:{call.lineno}: argument {name!r} has no description'
        if isinstance(desc, ast.Constant):
            assert isinstance(desc.value, str) and desc.value.strip(), \
                f'{path.name}:{call.lineno}: argument {name!r} has an empty description'
    scripts = console_scripts()
    for call in calls:
        if _call_name(call) != 'Node':
            continue
        kw = {k.arg: k.value for k in call.keywords}
        package, executable = kw.get('package'), kw.get('executable')
        if (isinstance(package, ast.Constant) and package.value == 'ami_ros'
                and isinstance(executable, ast.Constant)):
            assert executable.value in scripts, \
                f'{path.name}:{call.lineno}: executable {executable.value!r} is not a ' \
                f'console script in setup.py ({sorted(scripts)})'


def test_sim_launch_declares_its_arguments():
    tree = ast.parse((REPO / 'launch' / 'sim.launch.py').read_text())
    declared = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and _call_name(c) == 'DeclareLaunchArgument'}
    assert {'scene', 'sim_params_file', 'namespace', 'use_sim_time', 'image_size'} <= declared
