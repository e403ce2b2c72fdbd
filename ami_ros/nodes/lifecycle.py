"""What the perception, world_model and planner nodes share: a lifecycle node around a model.

:class:`ModelNode` is an ``rclpy`` lifecycle node that

* declares its ROS parameters from a dataclass config (:class:`ModelNodeConfig` fields plus the
  node's own) with :class:`~ami_ros.nodes.common.ConfigParameters`;
* loads the world model in ``on_configure`` (:func:`load_model`: a checkpoint directory or a
  shipped model name, on a backend and device chosen by parameter) and frees it in
  ``on_cleanup``; the node's subscriptions, timers and lifecycle publishers are made in
  ``on_configure`` too and process data only while active;
* publishes ``/diagnostics`` in every state (lifecycle state, rates, latency p50/p99, backend,
  model sha256, drops, last error) from a steady-clock timer;
* starts itself (configure + activate) when the ``autostart`` parameter is true, so it works
  without a lifecycle manager (:func:`run_lifecycle_node`, the ``main()`` of each node).

Also here: latents as ``sensor_msgs/Image`` 32FC1 (:func:`latent_to_msg` / :func:`msg_to_latent`)
and :class:`LatencyStats`.
"""
from __future__ import annotations

import collections
from typing import Any, Callable

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image

from ami_ros.nodes.common import (ConfigParameters, RateMeter, ThrottledLog, diagnostic_status,
                                  guarded, image_to_msg, msg_to_image, run_node, seconds)
from ami_ros.config import BACKENDS, ModelNodeConfig

LEVELS = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN,
          'error': DiagnosticStatus.ERROR, 'stale': DiagnosticStatus.STALE}


# ------------------------------------------------------------------------------------------------
# model loading


def load_model(config: ModelNodeConfig, horizon: int = 5,
               planning_batch: int = 300) -> tuple[Any, dict[str, str]]:
    """(model, info) for a node config: an :mod:`ami_ros.inference` backend.

    It has the world model's duck type (``encode``, ``rollout``, ``probe``, ``latent_dim``,
    ``action_dim``, ``history``, ``image_size``, ``probe_names``, ``device``). ``horizon`` and
    ``planning_batch`` size the rollout graphs of compiled backends. ``info`` holds the backend
    actually loaded (after any fallback), device, checkpoint and weights sha256 for diagnostics.
    Errors are ``ValueError`` naming the checkpoint and backend.
    """
    from ami_ros.inference import BackendConfig, make_backend

    try:
        backend_config = BackendConfig(
            device=config.device, fallback=config.backend_fallback,
            num_threads=config.torch_threads, horizon=horizon, planning_batch=planning_batch)
        model = make_backend(config.backend, config.model_name, backend_config)
    except (ValueError, OSError, RuntimeError) as e:
        # checkpoint errors name the file; BackendUnavailable says why each backend failed
        raise ValueError(f'cannot load world model {config.model_name!r} on backend '
                         f'{config.backend!r}: {e}') from None
    info = model.info()
    return model, {'backend': str(info['backend']), 'device': str(info['device']),
                   'checkpoint': str(info.get('checkpoint', config.model_name)),
                   'model_sha256': str(info['sha256'])}


# ------------------------------------------------------------------------------------------------
# latents as images


def latent_to_msg(z: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """A 32FC1 image: rows = tokens, cols = latent dims; a (D,) latent is one row."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2:
        raise ValueError(f'a latent must be (D,) or (tokens, D), got shape {z.shape}')
    return image_to_msg(np.ascontiguousarray(z), stamp, frame_id, '32FC1')


def msg_to_latent(msg: Image) -> np.ndarray:
    """(tokens, D) float32 from a 32FC1 latent image; ValueError for anything else."""
    if msg.encoding != '32FC1':
        raise ValueError(f'latent images must be 32FC1 (rows = tokens, cols = dims), got '
                         f'{msg.encoding!r}')
    if msg.height < 1 or msg.width < 1:
        raise ValueError(f'latent image is {msg.width}x{msg.height}: empty')
    return np.array(msg_to_image(msg), dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# diagnostics helpers


class LatencyStats:
    """p50 / p99 of the last ``window`` latencies, in milliseconds."""

    def __init__(self, window: int = 500):
        self._values: collections.deque[float] = collections.deque(maxlen=int(window))

    def add(self, seconds_: float) -> None:
        self._values.append(float(seconds_))

    def __len__(self) -> int:
        return len(self._values)

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) in ms; NaN while empty."""
        if not self._values:
            return float('nan'), float('nan')
        p50, p99 = np.percentile(np.fromiter(self._values, float), [50, 99])
        return 1e3 * float(p50), 1e3 * float(p99)


# ------------------------------------------------------------------------------------------------
# the node


class ModelNode(LifecycleNode):
    """Lifecycle node owning a world model; subclasses fill in the hooks below.

    Hooks: ``setup(config)`` makes publishers (with :meth:`lifecycle_publisher`), subscriptions
    and timers after the model is loaded (raise ValueError to fail configure); ``teardown()``
    drops references to what ``setup`` made (the entities themselves are destroyed here);
    ``on_active(active)`` runs after activation / before deactivation; ``status()`` returns
    (level, message, values) for /diagnostics.
    """

    def __init__(self, name: str, config_cls: type, **kwargs):
        # set before anything can fail: destroy_node() of a half-built node needs them
        self._entities: list[tuple[Callable, Any]] = []
        self.model = None
        self.model_info: dict[str, str] = {}
        super().__init__(name, **kwargs)
        # descriptions, ranges, choices and read-only flags: the config fields' own
        self.params = ConfigParameters(self, config_cls, on_change=self._on_params_changed)
        self.active = False
        self.state_label = 'unconfigured'
        self.last_error = ''
        self.errors = 0
        self.dropped = 0  # inputs received but not used (bad, late, or while inactive)
        self._pending_level = DiagnosticStatus.OK  # worst event since the last diagnostics
        self._pending_message = ''
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)  # diagnostics ignore sim time
        self.log_error = ThrottledLog(self.get_logger(), period_sec=1.0, severity='error')
        self.log_warn = ThrottledLog(self.get_logger(), period_sec=5.0, severity='warning')
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = None
        self._make_diag_timer()

    # -- hooks ----------------------------------------------------------------------------------

    def setup(self, config) -> None:
        """Make publishers, subscriptions and timers (the model is loaded)."""

    def teardown(self) -> None:
        """Forget what setup made (its entities are destroyed by the base class)."""

    def on_active(self, active: bool) -> None:
        """Called after activation (True) and before deactivation (False)."""

    def status(self) -> tuple[str, str, dict]:
        """(level 'ok'|'warn'|'error', message, values) of the node's own state."""
        return 'ok', '', {}

    def on_params(self, old, new) -> None:
        """A runtime parameter change was accepted."""

    def backend_sizes(self, config) -> dict[str, int]:
        """``horizon`` / ``planning_batch`` the backend's rollout graphs are built for."""
        return {}

    # -- entities made in configure, destroyed in cleanup ---------------------------------------

    def lifecycle_publisher(self, msg_type, topic: str, qos=10):
        pub = self.create_lifecycle_publisher(msg_type, topic, qos)
        self._entities.append((self.destroy_lifecycle_publisher, pub))
        return pub

    def subscription(self, msg_type, topic: str, callback, qos=10, **kwargs):
        sub = self.create_subscription(msg_type, topic, self.guard(callback, topic), qos,
                                       **kwargs)
        self._entities.append((self.destroy_subscription, sub))
        return sub

    def timer(self, period: float, callback, clock=None):
        timer = self.create_timer(period, self.guard(callback), clock=clock)
        self._entities.append((self.destroy_timer, timer))
        return timer

    def service(self, srv_type, name: str, callback):
        srv = self.create_service(srv_type, name, self.guard(callback, name))
        self._entities.append((self.destroy_service, srv))
        return srv

    def guard(self, callback, name: str = ''):
        """``callback`` whose exceptions are logged, counted on /diagnostics and survived."""
        return guarded(callback, self.record_error, name)

    def _destroy_entities(self) -> None:
        for destroy, entity in reversed(self._entities):
            destroy(entity)
        self._entities.clear()

    # -- lifecycle transitions ------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.params.config
        try:
            self.model, self.model_info = load_model(cfg, **self.backend_sizes(cfg))
            self.setup(cfg)
        except (ValueError, OSError, RuntimeError) as e:
            # rclpy swallows exceptions from transition callbacks: say what went wrong
            self.record_error('configure', f'configure failed: {e}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.state_label = 'inactive'
        self.get_logger().info(
            f'configured: model {self.model_info["checkpoint"]} on {self.model_info["backend"]}/'
            f'{self.model_info["device"]} (sha256 {self.model_info["model_sha256"][:12]})')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.active = True
        self.state_label = 'active'
        self.on_active(True)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.on_active(False)  # still active: a last message (e.g. a hold command) goes out
        self.active = False
        self.state_label = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.state_label = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self.on_active(False)
            self.active = False
        self._release()
        self.state_label = 'finalized'
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._release()
        self.state_label = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self._destroy_entities()
        self.teardown()
        self.model, self.model_info = None, {}

    def start(self) -> None:
        """Configure and activate when ``autostart``; ValueError (with the reason) on failure."""
        if not self.params.config.autostart:
            self.get_logger().info('autostart is false: waiting for configure / activate')
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise ValueError(f'{self.get_name()}: {self.last_error or "configure failed"}')
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise ValueError(f'{self.get_name()}: activate failed: {self.last_error}')

    # -- errors and diagnostics -----------------------------------------------------------------

    def now(self) -> float:
        """The node clock in seconds (sim time under use_sim_time)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def stamp_age(self, stamp: Time) -> float:
        """Seconds from a message stamp to now on the node clock."""
        return self.now() - seconds(stamp)

    def record_error(self, key: str, message: str, level: str = 'error') -> None:
        """Log (throttled per key) and show on /diagnostics at ``level`` until the next report."""
        self.errors += 1
        self.last_error = message
        (self.log_error if level == 'error' else self.log_warn).log(key, message)
        if LEVELS[level] >= self._pending_level:  # the latest of the worst
            self._pending_level, self._pending_message = LEVELS[level], message

    def _make_diag_timer(self) -> None:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self._diag_timer = self.create_timer(1.0 / self.params.config.diagnostics_hz,
                                             self.guard(self.publish_diagnostics),
                                             clock=self.steady)

    def _on_params_changed(self, old, new) -> None:
        if old.diagnostics_hz != new.diagnostics_hz:
            self._make_diag_timer()
        self.on_params(old, new)

    def publish_diagnostics(self) -> None:
        level, message, values = self.status() if self.model is not None else ('ok', '', {})
        level = LEVELS[level]
        if self._pending_level > level:
            level, message = self._pending_level, self._pending_message
        self._pending_level, self._pending_message = DiagnosticStatus.OK, ''
        if not message:
            message = self.state_label if self.state_label != 'active' else 'running'
        info = self.model_info or {'backend': self.params.config.backend, 'model_sha256': ''}
        status = diagnostic_status(
            f'{self.get_fully_qualified_name()}', self.params.config.scene, level, message, {
                'lifecycle_state': self.state_label, **info, **values,
                'dropped': self.dropped, 'errors': self.errors, 'last_error': self.last_error})
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()
        # rclpy's LifecycleNode leaves its state machine (the lifecycle services and the
        # transition_event publisher) alive, and with it the rcl node: both went only when the
        # garbage collector met the node object, at interpreter exit. Free them now, so the node
        # (and with the process's last node, its DDS participant) is gone when this returns.
        state_machine = getattr(self, '_state_machine', None)
        if state_machine is not None:
            state_machine.destroy_when_not_in_use()


def rate_values(prefix: str, meter: RateMeter) -> dict[str, float]:
    return {f'{prefix}_rate_hz': meter.rate()}


def latency_values(prefix: str, stats: LatencyStats) -> dict[str, float]:
    p50, p99 = stats.percentiles()
    return {f'{prefix}_p50_ms': p50, f'{prefix}_p99_ms': p99}


def run_lifecycle_node(node_cls: Callable[[], ModelNode], args: list[str] | None,
                       name: str) -> int:
    """``main()`` of a model node: build it, autostart it, spin until Ctrl-C (see run_node)."""
    def make():
        node = node_cls()
        try:
            node.start()
        except ValueError:
            node.destroy_node()
            raise
        return node

    return run_node(make, args, name=name)


__all__ = ['BACKENDS', 'LatencyStats', 'ModelNode', 'ModelNodeConfig', 'latency_values',
           'latent_to_msg', 'load_model', 'msg_to_latent', 'rate_values', 'run_lifecycle_node']
