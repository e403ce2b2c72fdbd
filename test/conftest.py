"""Shared fixtures for tests that talk ROS 2 (the core's tests need none of them).

* ``ros_domain_id``: a ROS_DOMAIN_ID in 1..101 held exclusively (a file lock) for one test, so
  tests running at the same time - in this pytest, another one, or another engineer's - never
  hear each other.
* ``ros_env``: that domain and a private ROS_LOG_DIR (rclpy cannot start logging without a HOME
  otherwise) in this process's environment and in the dict returned for child processes.
* ``rclpy_context``: an initialised rclpy context on that domain, shut down from the main thread.
* ``ros_executor`` / ``ros_node``: a single-threaded executor and a test-side node in it.
* ``wait_for(predicate, timeout)``: spins the test node until ``predicate()`` holds; returns
  whether it did. Fails at once, with the output of the node, if a started process died.
* ``ros_process``: starts a node as a real separate process (``start([...])``) and stops it
  (SIGINT, then SIGKILL) at the end of the test.

rclpy is imported inside the fixtures so that collecting core tests never loads it.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Headless rendering for every test process, whichever module imports MuJoCo first.
os.environ.setdefault('MUJOCO_GL', 'egl')

REPO = Path(__file__).resolve().parent.parent
DOMAIN_IDS = range(1, 102)
"""ROS_DOMAIN_ID values tests may use (Fast DDS's port arithmetic allows up to 232)."""
_LOCK_DIR = Path(tempfile.gettempdir()) / 'ami_ros_test_ros_domains'


def pytest_configure(config):
    config.addinivalue_line('markers', 'lint: static checks (flake8, pep257, launch files)')
    # A shell that runs the suite in the background (`make test &`) starts it with SIGINT
    # ignored, and every node or demo process the tests start would inherit that and ignore
    # the SIGINT the tests stop them with. Ctrl-C back to normal, here and in the children.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def console_scripts(setup_py: Path = REPO / 'setup.py') -> dict[str, str]:
    """{executable: 'module:function'} of setup.py's console_scripts, read without running it."""
    tree = ast.parse(setup_py.read_text(), filename=str(setup_py))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    entries = ast.literal_eval(value)
                    pairs = (e.split('=', 1) for e in entries)
                    return {name.strip(): target.strip() for name, target in pairs}
    raise AssertionError(f'{setup_py}: no console_scripts entry points found')


def _flock_within(f, seconds: float) -> bool:
    """Block until the exclusive lock on ``f`` is ours, at most ``seconds``; False if not."""
    def expire(signum, frame):
        raise TimeoutError
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        return True
    except TimeoutError:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _hold_domain_id(timeout: float = 60.0):
    """Lock a free domain id in DOMAIN_IDS; other holders of the same lock file skip it.

    When every id is held (more parallel sessions than ids), wait for one of them to be
    released, up to ``timeout``.
    """
    _LOCK_DIR.mkdir(parents=True, exist_ok=True)
    ids = list(DOMAIN_IDS)
    random.shuffle(ids)  # spread parallel sessions over the range instead of racing for 1
    held = None
    for domain_id in ids:
        f = open(_LOCK_DIR / f'{domain_id}.lock', 'a')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = domain_id, f
            break
        except OSError:
            f.close()
    if held is None:
        domain_id = ids[0]
        f = open(_LOCK_DIR / f'{domain_id}.lock', 'a')
        if not _flock_within(f, timeout):
            f.close()
            raise RuntimeError(f'no free ROS_DOMAIN_ID in {DOMAIN_IDS} after {timeout} s '
                               f'(locks in {_LOCK_DIR})')
        held = domain_id, f
    domain_id, f = held
    try:
        yield domain_id
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


@pytest.fixture
def ros_domain_id():
    """A ROS_DOMAIN_ID in 1..101 that no other test uses while this one runs."""
    with _hold_domain_id() as domain_id:
        yield domain_id


@pytest.fixture
def ros_env(ros_domain_id, tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for this test and the nodes it starts: own domain, own log dir."""
    log_dir = tmp_path / 'ros_log'
    log_dir.mkdir()
    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain_id))
    monkeypatch.setenv('ROS_LOG_DIR', str(log_dir))
    monkeypatch.setenv('MUJOCO_GL', os.environ.get('MUJOCO_GL', 'egl'))
    # log lines reach the captured output at once, not when the node exits
    monkeypatch.setenv('RCUTILS_LOGGING_BUFFERED_STREAM', '0')
    monkeypatch.setenv('PYTHONUNBUFFERED', '1')
    return dict(os.environ)


@pytest.fixture
def rclpy_context(ros_env, ros_domain_id):
    """An rclpy context initialised on the test's domain; shut down from the main thread."""
    rclpy = pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def ros_executor(rclpy_context):
    """A single-threaded executor (steadier than the multi-threaded one), spun by wait_for."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=rclpy_context)
    try:
        yield executor
    finally:
        executor.shutdown()


@pytest.fixture
def ros_node(rclpy_context, ros_executor):
    """A test-side node added to ``ros_executor``."""
    from rclpy.node import Node

    node = Node('ami_ros_test', context=rclpy_context)
    ros_executor.add_node(node)
    try:
        yield node
    finally:
        ros_executor.remove_node(node)
        node.destroy_node()


class RosProcess:
    """A node running as a separate process, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.popen = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        if not self._log.closed:  # still running; after stop() the file is complete
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (the node shuts down cleanly), SIGKILL if it has not exited by ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self._log.close()
        return self.popen.returncode


def rig_brightness_heat_maps(encoder, gain: float) -> None:
    """Set a two-layer keypoint encoder's weights so that every heat map is ``gain`` x brightness.

    The first 5x5 conv sums RGB at its centre, the next passes it on, the 1x1 head scales it.
    """
    import torch

    with torch.no_grad():
        conv = encoder.points.conv
        for layer in conv:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
                layer.bias.zero_()
        conv[0].weight[:, :3, 2, 2] = 1.0
        conv[2].weight[:, :, 1, 1] = torch.eye(conv[2].weight.shape[0])
        conv[-1].weight[:, 0, 0, 0] = gain


def node_command(executable: str, module: str) -> list[str]:
    """The console script of the venv running the tests, or ``python -m module`` without it."""
    script = Path(sys.executable).parent / executable
    return [str(script)] if script.is_file() else [sys.executable, '-m', module]


@pytest.fixture
def ros_process(ros_env, tmp_path):
    """``start(args, name=...)`` runs a node process on the test's domain; all stop at the end."""
    procs: list[RosProcess] = []

    def start(args: list[str], name: str = 'node') -> RosProcess:
        proc = RosProcess(list(args), ros_env, tmp_path / f'{name}-{len(procs)}.log')
        procs.append(proc)
        return proc

    start.processes = procs
    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def wait_for(ros_executor, ros_node, ros_process):
    """Spin the test node until a predicate holds or a timeout passes; say whether it held.

    Call as ``wait_for(predicate, timeout=10.0)``. Raises at once if a process started with
    ``ros_process`` has exited, showing its output.
    """

    def _wait_for(predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            for proc in ros_process.processes:
                if not proc.alive():
                    raise AssertionError(
                        f'{proc.args[0]} exited with code {proc.popen.returncode} while waiting; '
                        f'its output:\n{proc.output()[-4000:]}')
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ros_executor.spin_once(timeout_sec=min(0.05, remaining))

    return _wait_for


def train_tiny_arm_model(out: Path) -> Path:
    """Train a tiny arm_reach world model with ee_position and joint_positions probes (~10 s)."""
    from ami_ros.model.config import (CNNConfig, GenerateConfig, LossConfig, ModelConfig,
                                      PredictorConfig, ProbeTrainConfig, RunConfig, TrainConfig)
    from ami_ros.train.dataset import episodes_from_scene, split_episodes
    from ami_ros.train.trainer import Trainer

    episodes = episodes_from_scene(GenerateConfig(scene='arm_reach', episodes=6, length=24,
                                                  image_size=32, seed=0))
    config = RunConfig(
        model=ModelConfig(image_size=32, latent_dim=16, cnn=CNNConfig(channels=(8, 16, 16)),
                          predictor=PredictorConfig(history=2, hidden=64, layers=2),
                          probe_hidden=32),
        loss=LossConfig(horizon=3, sigreg_projections=32),
        train=TrainConfig(max_steps=40, batch_size=16, lr=3e-3, warmup_steps=5, num_threads=1,
                          val_every=40, val_windows=32, log_every=20, checkpoint_every=40),
        probe=ProbeTrainConfig(steps=60, targets=('ee_position', 'joint_positions')))
    train, val = split_episodes(episodes, 0.2, 0)
    Trainer(config, train, val, out, progress=False).run()
    return out / 'model'


@pytest.fixture(scope='session')
def tiny_arm_model(tmp_path_factory) -> Path:
    """One tiny trained arm_reach checkpoint for every test of the session that needs one."""
    return train_tiny_arm_model(tmp_path_factory.mktemp('tiny_arm'))
