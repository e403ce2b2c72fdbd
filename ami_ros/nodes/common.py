"""Helpers shared by every ami_ros node: messages <-> numpy, diagnostics, logging, parameters.

Nodes stay thin by doing all their ROS glue through these:

* :func:`image_to_msg` / :func:`msg_to_image` / :func:`camera_info_msg`: ``sensor_msgs`` images
  from and to numpy arrays, and a pinhole ``CameraInfo``.
* :func:`time_msg` / :func:`seconds`: ``builtin_interfaces`` times and durations <-> float seconds.
* :class:`RateMeter` and :func:`diagnostic_status`: what goes on ``/diagnostics``.
* :class:`ThrottledLog`: at most one log line per reason and period, counting what it held back
  (rclpy's own ``throttle_duration_sec`` throttles per call site, so two different problems
  logged from one line would hide each other).
* :func:`guarded`: a callback wrapper that turns an exception into a logged, counted error, so
  no callback can take its process down.
* :class:`ConfigParameters`: ROS parameters declared from a component's dataclass config (the
  field docstrings become descriptions), validated by that dataclass, bad runtime changes
  rejected in an on-set-parameters callback.
* :func:`run_node`: the ``main()`` of every node (clean exit on Ctrl-C, a one-line fatal error
  instead of a traceback for bad parameters); :func:`init_ros` and :func:`spin_until_stopped`:
  its start and its loop, which answer SIGINT / SIGTERM on the main thread
  (:class:`StopSignals`); :func:`prepare_exit`: its last step, which keeps interpreter exit from
  walking the heap (a node exits within a fraction of a second of SIGINT).
"""
from __future__ import annotations

import ast
import array
import collections
import dataclasses
import faulthandler
import functools
import gc
import inspect
import math
import os
import signal
import sys
import textwrap
import threading
import time
import typing
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterException
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image

# ------------------------------------------------------------------------------------------------
# time


def time_msg(t: float) -> Time:
    """A ``builtin_interfaces/Time`` for ``t`` seconds (sim or wall time), rounded to 1 ns."""
    ns = int(round(float(t) * 1e9))
    if ns < 0:
        raise ValueError(f'time must be >= 0, got {t} s')
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds(stamp: Time | Duration) -> float:
    """Seconds of a ``Time`` or ``Duration`` message (``Duration.sec`` may be negative)."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


# ------------------------------------------------------------------------------------------------
# images

# encoding -> (numpy dtype, channels); the encodings of sensor_msgs/image_encodings.hpp that nodes
# meet in practice
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    'rgb8': (np.dtype(np.uint8), 3), 'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4), 'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1), '8UC1': (np.dtype(np.uint8), 1),
    '8UC3': (np.dtype(np.uint8), 3), 'mono16': (np.dtype(np.uint16), 1),
    '16UC1': (np.dtype(np.uint16), 1), '32FC1': (np.dtype(np.float32), 1),
    '32FC3': (np.dtype(np.float32), 3), '64FC1': (np.dtype(np.float64), 1),
}


def image_to_msg(image: np.ndarray, stamp: Time, frame_id: str,
                 encoding: str | None = None) -> Image:
    """A ``sensor_msgs/Image`` holding ``image`` (H, W) or (H, W, C), rows packed (no padding).

    Without ``encoding``: uint8 (H, W, 3) is ``rgb8``, uint8 (H, W) ``mono8``, float32 (H, W)
    ``32FC1``; anything else needs an explicit encoding from :data:`ENCODINGS`.
    """
    image = np.asarray(image)
    if encoding is None:
        defaults = {(np.dtype(np.uint8), 3): 'rgb8', (np.dtype(np.uint8), 1): 'mono8',
                    (np.dtype(np.float32), 1): '32FC1'}
        channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else 0)
        encoding = defaults.get((image.dtype, channels))
        if encoding is None:
            raise ValueError(f'no default encoding for an image of shape {image.shape} and dtype '
                             f'{image.dtype}; pass one of {sorted(ENCODINGS)}')
    if encoding not in ENCODINGS:
        raise ValueError(f'unsupported encoding {encoding!r}; use one of {sorted(ENCODINGS)}')
    dtype, channels = ENCODINGS[encoding]
    expected = image.shape[:2] + ((channels,) if channels > 1 else ())
    if image.ndim == 3 and channels == 1 and image.shape[2] == 1:
        image = image[..., 0]
    if image.shape != expected or image.ndim not in (2, 3):
        raise ValueError(f'image of shape {image.shape} does not fit encoding {encoding!r} '
                         f'({channels} channel(s))')
    if image.dtype != dtype:
        raise ValueError(f'image dtype {image.dtype} does not fit encoding {encoding!r} ({dtype})')
    data = np.ascontiguousarray(image).astype(dtype.newbyteorder('<'), copy=False)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels * dtype.itemsize
    # array.array from bytes is a single memcpy; a list of ints would be ~100x slower
    msg.data = array.array('B', data.tobytes())
    return msg


def msg_to_image(msg: Image) -> np.ndarray:
    """The pixels of a ``sensor_msgs/Image`` as (H, W) or (H, W, C) in the message's encoding.

    Honours ``step`` (row padding) and ``is_bigendian``; without padding it is a view of the
    message buffer, not a copy.
    """
    if msg.encoding not in ENCODINGS:
        raise ValueError(f'unsupported image encoding {msg.encoding!r}; '
                         f'supported: {sorted(ENCODINGS)}')
    dtype, channels = ENCODINGS[msg.encoding]
    dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    row = msg.width * channels * dtype.itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ValueError(f'image {msg.width}x{msg.height} {msg.encoding}: step {msg.step} and '
                         f'{len(msg.data)} data bytes are too small (need rows of {row} bytes)')
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = buf.reshape(msg.height, msg.step)[:, :row]
    pixels = np.ascontiguousarray(rows).view(dtype)
    shape = (msg.height, msg.width) + ((channels,) if channels > 1 else ())
    return pixels.reshape(shape)


def camera_info_msg(width: int, height: int, fovy_deg: float, stamp: Time,
                    frame_id: str) -> CameraInfo:
    """A distortion-free pinhole ``CameraInfo`` with square pixels and vertical field of view."""
    if not 0.0 < fovy_deg < 180.0:
        raise ValueError(f'fovy_deg must be in (0, 180), got {fovy_deg}')
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    msg.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


# ------------------------------------------------------------------------------------------------
# diagnostics and logging

class RateMeter:
    """Events per second over a sliding window of wall (steady) time."""

    def __init__(self, window_sec: float = 2.0, clock: Callable[[], float] = time.monotonic):
        if not window_sec > 0.0:
            raise ValueError(f'window_sec must be > 0, got {window_sec}')
        self.window_sec = float(window_sec)
        self._clock = clock
        self._stamps: collections.deque[float] = collections.deque()

    def tick(self) -> None:
        """Count one event now."""
        now = self._clock()
        self._stamps.append(now)
        self._trim(now)

    def rate(self) -> float:
        """Events per second in the window (0 with fewer than two events)."""
        self._trim(self._clock())
        if len(self._stamps) < 2:
            return 0.0
        span = self._stamps[-1] - self._stamps[0]
        return (len(self._stamps) - 1) / span if span > 0.0 else 0.0

    def _trim(self, now: float) -> None:
        while self._stamps and self._stamps[0] < now - self.window_sec:
            self._stamps.popleft()


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def diagnostic_status(name: str, hardware_id: str, level: int | bytes, message: str,
                      values: Mapping[str, Any]) -> DiagnosticStatus:
    """One ``DiagnosticStatus``; ``level`` is ``DiagnosticStatus.OK/WARN/ERROR/STALE`` or 0-3."""
    if isinstance(level, int) and 0 <= level <= 3:
        level = bytes([level])
    if level not in (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
                     DiagnosticStatus.STALE):
        raise ValueError(f'diagnostic level must be OK/WARN/ERROR/STALE (0-3), got {level!r}')
    return DiagnosticStatus(
        level=level, name=name, hardware_id=hardware_id, message=message,
        values=[KeyValue(key=str(k), value=_format_value(v)) for k, v in values.items()])


# rclpy remembers the severity of each logging call site (file, line) and raises ValueError when
# one site logs at another severity ("Logger severity cannot be changed between calls."). Every
# severity therefore gets a call site of its own: an error and a warning through ThrottledLog can
# never share one, whatever the mix.
def _emit_debug(logger, message: str) -> None:
    logger.debug(message)


def _emit_info(logger, message: str) -> None:
    logger.info(message)


def _emit_warning(logger, message: str) -> None:
    logger.warning(message)


def _emit_error(logger, message: str) -> None:
    logger.error(message)


def _emit_fatal(logger, message: str) -> None:
    logger.fatal(message)


_EMITTERS = {'debug': _emit_debug, 'info': _emit_info, 'warning': _emit_warning,
             'error': _emit_error, 'fatal': _emit_fatal}


class ThrottledLog:
    """Log at most once per ``period_sec`` per key; the next line says how many were held back.

    ``log(key, message)`` with a key per reason (e.g. the topic a bad command came on) keeps a
    flood of one problem from hiding another, which rclpy's per-call-site throttle would do.
    """

    def __init__(self, logger, period_sec: float = 1.0, severity: str = 'error',
                 clock: Callable[[], float] = time.monotonic):
        if not period_sec >= 0.0:
            raise ValueError(f'period_sec must be >= 0, got {period_sec}')
        if severity not in ('debug', 'info', 'warning', 'error', 'fatal'):
            raise ValueError(f'unknown severity {severity!r}')
        self._emit = functools.partial(_EMITTERS[severity], logger)
        self.period_sec = float(period_sec)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def log(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged less than ``period_sec`` ago."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_sec:
            self._held[key] += 1
            return False
        held = self._held.pop(key, 0)
        suffix = f' ({held} more like this in the last {now - last:.1f} s)' if held else ''
        self._last[key] = now
        self._emit(f'{message}{suffix}')
        return True


def latched_qos(depth: int = 1):
    """Goal topics' QoS: reliable and transient-local ("latched").

    A node (re)started after the goal was sent still gets it from a publisher that keeps it.
    """
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def guarded(callback: Callable, on_error: Callable[[str, str], None], name: str = '') -> Callable:
    """``callback`` that never raises: an exception goes to ``on_error(key, message)`` instead.

    rclpy lets an exception in a subscription, timer or service callback out of ``spin()``, which
    ends the process (and every node of ``ami-ros bringup`` with it). Wrapped, the node logs the
    error once per period (``on_error`` is throttled per key), counts it on ``/diagnostics`` and
    keeps running; a service returns its default response.
    """
    label = name or getattr(callback, '__name__', 'callback')

    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the point: nothing escapes a callback
            on_error(f'callback:{label}', f'{label} failed, input dropped: '
                                          f'{type(exc).__name__}: {exc}')
            if len(args) >= 2 and hasattr(args[-1], 'get_fields_and_field_types'):
                return args[-1]  # a service callback (request, response): the default response
            return None
    return wrapper


# ------------------------------------------------------------------------------------------------
# parameters from a dataclass config

C = TypeVar('C')

_SCALAR_TYPES = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER,
                 float: Parameter.Type.DOUBLE, str: Parameter.Type.STRING}
_ARRAY_TYPES = {bool: Parameter.Type.BOOL_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
                float: Parameter.Type.DOUBLE_ARRAY, str: Parameter.Type.STRING_ARRAY}


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields: ``x: int = 1`` then a string literal.

    Python keeps no attribute docstrings at run time, so they are read from the class source
    (base classes first, so a subclass may override them). Missing source gives ``{}``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


@dataclasses.dataclass(frozen=True)
class _FieldSpec:
    name: str            # field name in the dataclass
    param: str           # ROS parameter name (prefix + field name)
    ptype: Parameter.Type
    sequence: bool       # tuple/list field
    element: type        # bool, int, float or str
    description: str
    value_range: tuple[float, float] | None
    choices: tuple | None
    read_only: bool


class ConfigParameters(Generic[C]):
    """Declare one ROS parameter per field of a dataclass config, keep the config in sync.

    * Types come from the annotations (``bool``, ``int``, ``float``, ``str`` and tuples/lists of
      them); descriptions from the field docstrings (or ``metadata['description']``).
    * ``ranges`` {field: (lo, hi)}, ``choices`` {field: (...)} and ``read_only`` (fields fixed at
      start-up) may also come from a field's ``metadata`` keys ``range``, ``choices``,
      ``read_only``. They go into the descriptors (``ros2 param describe``) and are checked here.
    * ``float`` fields accept integers too (``-p rate:=10``, ``ros2 param set n rate 10``): they
      are declared with dynamic typing and checked here instead, since a strictly typed double
      rejects ``10`` with an error users rarely understand.
    * The dataclass itself is the judge: every change is applied by building a new config
      (``dataclasses.replace``), so its ``__post_init__`` rejects bad combinations too; a change
      it refuses is answered ``successful=False`` with its message and never applied.
    * ``on_change(old, new)`` runs after an accepted runtime change.

    Bad start-up values raise ``ValueError`` naming the parameter and value.
    """

    def __init__(self, node, config_cls: type[C], *, prefix: str = '',
                 ranges: Mapping[str, tuple[float, float]] | None = None,
                 choices: Mapping[str, Iterable] | None = None,
                 read_only: Iterable[str] = (),
                 on_change: Callable[[C, C], None] | None = None):
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f'{config_cls!r} is not a dataclass')
        self._node = node
        self._cls = config_cls
        self._on_change = on_change
        self._specs = self._make_specs(prefix, dict(ranges or {}), dict(choices or {}),
                                       set(read_only))
        by_param = {s.param: s for s in self._specs}
        self._by_param = by_param
        self.config: C = self._declare_all()
        node.add_on_set_parameters_callback(self._on_set)
        node.add_post_set_parameters_callback(self._post_set)

    # -- declaration ------------------------------------------------------------------------------

    def _make_specs(self, prefix, ranges, choices, read_only) -> list[_FieldSpec]:
        hints = typing.get_type_hints(self._cls)
        docs = field_docs(self._cls)
        names = {f.name for f in dataclasses.fields(self._cls) if f.init}
        for what, keys in (('ranges', ranges), ('choices', choices), ('read_only', read_only)):
            unknown = set(keys) - names
            if unknown:
                raise ValueError(f'{what} names unknown fields of {self._cls.__name__}: '
                                 f'{sorted(unknown)}')
        specs = []
        for f in dataclasses.fields(self._cls):
            if not f.init:
                continue
            hint = hints[f.name]
            origin, args = typing.get_origin(hint), typing.get_args(hint)
            if hint in _SCALAR_TYPES:
                sequence, element, ptype = False, hint, _SCALAR_TYPES[hint]
            elif origin in (tuple, list) and args and args[0] in _ARRAY_TYPES and (
                    origin is list or len(args) == 1 or args[1] is Ellipsis):
                sequence, element, ptype = True, args[0], _ARRAY_TYPES[args[0]]
            else:
                raise TypeError(f'{self._cls.__name__}.{f.name}: type {hint} cannot be a ROS '
                                f'parameter (use bool, int, float, str or a tuple of them)')
            rng = ranges.get(f.name, f.metadata.get('range'))
            chs = choices.get(f.name, f.metadata.get('choices'))
            specs.append(_FieldSpec(
                name=f.name, param=f'{prefix}{f.name}', ptype=ptype, sequence=sequence,
                element=element,
                description=f.metadata.get('description', docs.get(f.name, f.name)),
                value_range=None if rng is None else (rng[0], rng[1]),
                choices=None if chs is None else tuple(chs),
                read_only=f.name in read_only or bool(f.metadata.get('read_only', False))))
        return specs

    def _descriptor(self, spec: _FieldSpec) -> ParameterDescriptor:
        constraints = []
        d = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.element is float:
            d.dynamic_typing = True
            constraints.append('a number (integers accepted)')
        if spec.value_range is not None:
            lo, hi = spec.value_range
            constraints.append(f'in [{lo}, {hi}]')
            if spec.element is float and not spec.sequence:
                d.floating_point_range = [FloatingPointRange(
                    from_value=float(lo), to_value=float(hi), step=0.0)]
            elif spec.element is int and not spec.sequence:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        if spec.choices is not None:
            constraints.append(f'one of: {", ".join(str(c) for c in spec.choices)}')
        if spec.read_only:
            constraints.append('read-only: set at start-up')
        d.additional_constraints = '; '.join(constraints)
        return d

    def _declare_all(self) -> C:
        defaults = self._cls()
        values = {}
        for spec in self._specs:
            default = getattr(defaults, spec.name)
            if spec.sequence:
                # rclpy would type an empty list as a byte array: declare the type, value unset
                default = list(default) or spec.ptype
            try:
                param = self._node.declare_parameter(spec.param, default, self._descriptor(spec))
                values[spec.name] = self._coerce(spec, param)
            except ParameterException as e:
                raise ValueError(f'parameter {spec.param!r}: {e}') from e
        try:
            return self._cls(**values)
        except (ValueError, TypeError) as e:
            raise ValueError(f'invalid parameters: {e}') from e

    # -- conversion and checks --------------------------------------------------------------------

    def _coerce(self, spec: _FieldSpec, param: Parameter) -> Any:
        """The field value of a parameter, or ValueError naming the parameter and value."""
        value = param.value
        if spec.sequence and param.type_ == Parameter.Type.NOT_SET:
            return ()  # an empty sequence (declared by type, or never given)
        accepted = {spec.ptype}
        if spec.element is float:
            accepted.add(Parameter.Type.INTEGER_ARRAY if spec.sequence else Parameter.Type.INTEGER)
        if param.type_ not in accepted:
            raise ValueError(f'parameter {spec.param!r} must be of type {spec.ptype.name}, got '
                             f'{value!r} ({param.type_.name})')
        if spec.sequence:
            value = tuple(spec.element(v) for v in value)
            items = value
        else:
            value = spec.element(value)
            items = (value,)
        for v in items:
            if spec.value_range is not None:
                lo, hi = spec.value_range
                if not lo <= v <= hi:
                    raise ValueError(f'parameter {spec.param!r} must be in [{lo}, {hi}], got {v!r}')
            if spec.element is float and not math.isfinite(v):
                raise ValueError(f'parameter {spec.param!r} must be finite, got {v!r}')
            if spec.choices is not None and v not in spec.choices:
                raise ValueError(f'parameter {spec.param!r} must be one of {list(spec.choices)}, '
                                 f'got {v!r}')
        return value

    def _changes(self, params: list[Parameter]) -> dict[str, Any]:
        return {self._by_param[p.name].name: self._coerce(self._by_param[p.name], p)
                for p in params if p.name in self._by_param}

    def _on_set(self, params: list[Parameter]) -> SetParametersResult:
        try:
            changes = self._changes(params)
            if changes:
                dataclasses.replace(self.config, **changes)
        except (ValueError, TypeError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _post_set(self, params: list[Parameter]) -> None:
        changes = self._changes(params)
        if not changes:
            return
        old, self.config = self.config, dataclasses.replace(self.config, **changes)
        if self._on_change is not None:
            self._on_change(old, self.config)


# ------------------------------------------------------------------------------------------------
# main()

def prepare_exit(context=None) -> None:
    """Last step of a node process's ``main()``: finalize what is left, then freeze the heap.

    Call it after the nodes are destroyed and rclpy is shut down. One garbage collection
    finalizes what only a cycle still holds (a handle the executor or a traceback kept in use
    keeps its rcl node, and with it the process's DDS participant, alive); ``context`` (the one
    the nodes ran in) is destroyed. Then :func:`gc.freeze` moves every object left out of the
    collector's sight: at exit CPython collects garbage several more times while it tears the
    modules down, and with torch, MuJoCo and a model loaded each pass walks a few hundred
    thousand objects for nothing (0.4-0.9 s of CPU in all, seconds on a busy machine, where a
    launcher escalates SIGINT to SIGTERM after a few). Exit itself is the usual one (atexit
    handlers, flushed streams and ROS log files).
    """
    gc.collect()
    if context is not None and hasattr(context, 'destroy'):
        context.destroy()  # rcl_context_fini now; deferred while something still uses it
    gc.freeze()


class StopSignals:
    """SIGINT and SIGTERM as a request to stop, answered by the main thread.

    rclpy's own handlers shut the context down from a thread of their own, whenever the signal
    comes: a callback the main thread is running at that moment then uses a context being torn
    down (a segfault, seen in 1 of 20 bring-ups stopped with SIGINT). Processes started with
    :func:`init_ros` run without them: a signal only sets :attr:`requested`, the spin loop
    (:func:`spin_until_stopped`) sees it within one poll, and the main thread stops the
    executor, destroys the nodes and shuts rclpy down in that order. A second signal raises
    ``KeyboardInterrupt`` (a start-up that does not reach the loop still stops).

    A stop never hangs: the signal also wakes a watchdog thread (through
    :func:`signal.set_wakeup_fd`, written by the C-level handler even while the main thread is
    stuck inside a C call), and a process still running ``grace`` seconds after the first signal
    says so on stderr and exits with code 0 (a shutdown in DDS that did not return was seen once
    in 45 node processes stopped under load: killed after 15 s). A stop stuck in a C call that
    holds the GIL starves that thread too (a world_model process was killed after 15 s in 1 of
    15 launches); ``BACKSTOP_S`` later faulthandler's C thread, which needs no GIL, prints every
    thread's stack to stderr and ends the process with code 1.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    GRACE_S = 1.5
    """Seconds the orderly stop has before the watchdog ends the process (normal: 0.3-1.0 s)."""
    BACKSTOP_S = 1.0
    """Seconds after the watchdog's turn that the GIL-free backstop ends the process (code 1)."""

    def __init__(self, grace: float = GRACE_S):
        self.requested: int | None = None
        self.grace = float(grace)
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._on_signal)
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watchdog, args=(read,), name='stop-watchdog',
                         daemon=True).start()

    def _watchdog(self, fd: int) -> None:
        while os.read(fd, 1)[0] not in self.SIGNALS:  # another signal (SIGCHLD, ...)
            pass
        time.sleep(self.grace)
        sys.stderr.write(f'stop requested {self.grace:.1f} s ago and not finished: exiting '
                         f'now (pid {os.getpid()})\n')
        sys.stderr.flush()
        os._exit(0)

    def _on_signal(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        # The watchdog thread needs the GIL to end the process; a stop stuck in a C call that
        # holds it (a deadlock in a finalizer or a DDS teardown) would starve it, and the
        # process would hang until killed. faulthandler's timer is a C thread that needs no
        # GIL: one second after the watchdog's turn it prints every thread's stack (where the
        # stop hung) and ends the process with code 1.
        faulthandler.dump_traceback_later(self.grace + self.BACKSTOP_S, exit=True)


def init_ros(args: list[str] | None = None) -> StopSignals:
    """``rclpy.init`` without rclpy's signal handlers, ours in their place (:class:`StopSignals`).

    Call from the main thread; returns the stop request :func:`spin_until_stopped` watches.
    """
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return StopSignals()


def spin_until_stopped(executor, stop: StopSignals, duration: float = 0.0,
                       poll: float = 0.1) -> None:
    """Spin ``executor`` until a stop signal, rclpy shut down, or ``duration`` s (0: no limit)."""
    deadline = time.monotonic() + duration if duration > 0 else None
    while stop.requested is None and rclpy.ok() and \
            (deadline is None or time.monotonic() < deadline):
        executor.spin_once(timeout_sec=poll)


def run_node(make_node: Callable[[], Any], args: list[str] | None = None,
             name: str = 'ami_ros') -> int:
    """Init rclpy, build the node, spin it single-threaded until Ctrl-C / SIGTERM, clean up.

    Returns the process exit code: 0 after a normal shutdown, 2 when the node refused its
    parameters (logged as one FATAL line naming the bad value, no traceback). Meant as the
    ``main()`` of a node process: it ends with :func:`prepare_exit`.
    """
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.utilities import get_default_context

    stop = init_ros(args)
    context = get_default_context()
    node = None
    # single-threaded: the multi-threaded executor delivered timers irregularly here
    executor = SingleThreadedExecutor()
    try:
        try:
            node = make_node()
        except ValueError as e:
            rclpy.logging.get_logger(name).fatal(str(e))
            return 2
        executor.add_node(node)
        spin_until_stopped(executor, stop)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        prepare_exit(context)
    return 0
