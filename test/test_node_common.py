"""The helpers every node shares (ami_ros/nodes/common.py) and the sim node's trajectory logic."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')

from builtin_interfaces.msg import Duration  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ami_ros.nodes.common import (ConfigParameters, RateMeter, ThrottledLog,  # noqa: E402
                                  camera_info_msg, diagnostic_status, field_docs, guarded,
                                  image_to_msg, msg_to_image, seconds, time_msg)
from ami_ros.nodes.sim import SimNodeConfig, TrajectoryFollower  # noqa: E402


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- time and images ---------------------------------------------------------------------------

def test_time_round_trip():
    for t in (0.0, 0.05, 1.5, 12345.000000001):
        assert seconds(time_msg(t)) == pytest.approx(t, abs=1e-9)
    assert time_msg(1.9999999999).sec == 2  # rounds to the nanosecond, carries into seconds
    assert seconds(Duration(sec=-1, nanosec=500_000_000)) == -0.5
    with pytest.raises(ValueError, match='>= 0'):
        time_msg(-1.0)


@pytest.mark.parametrize('shape, dtype, encoding', [
    ((4, 5, 3), np.uint8, 'rgb8'), ((4, 5), np.uint8, 'mono8'), ((4, 5), np.float32, '32FC1'),
    ((4, 5, 3), np.uint8, 'bgr8'), ((4, 5), np.uint16, 'mono16'), ((4, 5, 4), np.uint8, 'rgba8'),
])
def test_image_round_trip(shape, dtype, encoding):
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 200).astype(dtype)
    explicit = None if encoding in ('rgb8', 'mono8', '32FC1') else encoding
    msg = image_to_msg(image, time_msg(1.25), 'cam', explicit)
    assert msg.encoding == encoding and (msg.height, msg.width) == shape[:2]
    assert msg.step * msg.height == len(msg.data) and msg.header.frame_id == 'cam'
    np.testing.assert_array_equal(msg_to_image(msg), image)


def test_msg_to_image_honours_row_padding_and_endianness():
    image = np.arange(2 * 3, dtype=np.uint16).reshape(2, 3) * 257
    msg = image_to_msg(image, time_msg(0.0), 'cam', 'mono16')
    rows = image.astype('>u2').tobytes()
    padded = b''.join(rows[i * 6:(i + 1) * 6] + b'\0\0' for i in range(2))  # 2 padding bytes/row
    msg.data, msg.step, msg.is_bigendian = padded, 8, 1
    np.testing.assert_array_equal(msg_to_image(msg), image)
    msg.step = 4  # shorter than a row
    with pytest.raises(ValueError, match='too small'):
        msg_to_image(msg)


def test_image_errors_name_the_problem():
    with pytest.raises(ValueError, match='no default encoding'):
        image_to_msg(np.zeros((4, 4, 3), np.float64), time_msg(0.0), 'cam')
    with pytest.raises(ValueError, match='does not fit encoding'):
        image_to_msg(np.zeros((4, 4), np.uint8), time_msg(0.0), 'cam', 'rgb8')
    with pytest.raises(ValueError, match='dtype'):
        image_to_msg(np.zeros((4, 4, 3), np.float32), time_msg(0.0), 'cam', 'rgb8')
    msg = image_to_msg(np.zeros((4, 4), np.uint8), time_msg(0.0), 'cam')
    msg.encoding = 'yuv422'
    with pytest.raises(ValueError, match='unsupported image encoding'):
        msg_to_image(msg)


def test_camera_info_is_a_pinhole_with_the_given_field_of_view():
    info = camera_info_msg(64, 48, 90.0, time_msg(2.0), 'cam')
    assert info.k[0] == pytest.approx(24.0) and info.k[4] == pytest.approx(24.0)  # 0.5 h / tan 45
    assert (info.k[2], info.k[5]) == (31.5, 23.5) and info.p[0] == info.k[0]
    with pytest.raises(ValueError, match='fovy'):
        camera_info_msg(64, 48, 180.0, time_msg(0.0), 'cam')


# -- diagnostics and logging ---------------------------------------------------------------------

def test_rate_meter_counts_over_its_window():
    clock = FakeClock()
    meter = RateMeter(window_sec=1.0, clock=clock)
    assert meter.rate() == 0.0
    for _ in range(11):
        meter.tick()
        clock.t += 0.05
    assert meter.rate() == pytest.approx(20.0)
    clock.t += 5.0
    assert meter.rate() == 0.0  # old ticks leave the window


def test_diagnostic_status():
    status = diagnostic_status('sim: arm', 'arm', 1, 'careful', {'rate': 9.87654321, 'n': 3})
    assert status.level == DiagnosticStatus.WARN and status.name == 'sim: arm'
    assert {kv.key: kv.value for kv in status.values} == {'rate': '9.87654', 'n': '3'}
    assert diagnostic_status('a', 'b', DiagnosticStatus.ERROR, '', {}).level == b'\x02'
    with pytest.raises(ValueError, match='level'):
        diagnostic_status('a', 'b', 7, '', {})


def test_throttled_log_holds_repeats_per_key_and_counts_them():
    lines = []

    class Logger:
        def error(self, message):
            lines.append(message)

    clock = FakeClock()
    log = ThrottledLog(Logger(), period_sec=1.0, clock=clock)
    assert log.log('a', 'first a')
    assert not log.log('a', 'second a')
    assert not log.log('a', 'third a')
    assert log.log('b', 'first b')  # another reason is not hidden by a's flood
    clock.t += 1.5
    assert log.log('a', 'fourth a')
    assert lines == ['first a', 'first b', 'fourth a (2 more like this in the last 1.5 s)']


def test_throttled_logs_of_every_severity_share_a_real_rclpy_logger():
    """One call site logging at two severities makes rclpy raise: ThrottledLog never does it."""
    import rclpy.logging

    logger = rclpy.logging.get_logger('ami_ros_test_throttled')
    logs = [ThrottledLog(logger, period_sec=0.0, severity=s)
            for s in ('error', 'warning', 'info', 'debug', 'fatal')]
    for _ in range(3):  # every order, several times: the rclpy context of each site persists
        for log in logs + logs[::-1]:
            assert log.log('k', 'a message')


def test_guarded_callbacks_report_and_survive():
    errors = []

    def callback(msg):
        raise RuntimeError(f'bad {msg}')

    safe = guarded(callback, lambda key, message: errors.append((key, message)), 'joint_states')
    assert safe('x') is None
    assert errors == [('callback:joint_states',
                       'joint_states failed, input dropped: RuntimeError: bad x')]
    assert guarded(lambda m: m * 2, lambda *a: errors.append(a))(4) == 8  # a result passes through

    from std_srvs.srv import Trigger

    def service(request, response):
        raise ValueError('no')
    response = Trigger.Response()
    assert guarded(service, lambda *a: None)(Trigger.Request(), response) is response


# -- parameters from a dataclass ------------------------------------------------------------------

@dataclass
class DemoConfig:
    """A config to declare."""

    rate: float = 10.0
    """Loop rate, Hz."""
    count: int = 3
    """How many, at most rate."""
    name: str = 'a'
    """A name."""
    flag: bool = True
    gains: tuple[float, ...] = (1.0, 2.0)
    """Gains."""
    mode: str = field(default='x', metadata={'choices': ('x', 'y'), 'description': 'Mode.'})

    def __post_init__(self):
        if not self.rate > 0:
            raise ValueError(f'rate must be > 0, got {self.rate}')
        if self.count > self.rate:
            raise ValueError(f'count must be <= rate ({self.rate}), got {self.count}')


def test_field_docs_read_the_attribute_docstrings():
    docs = field_docs(DemoConfig)
    assert docs['rate'] == 'Loop rate, Hz.' and 'flag' not in docs
    assert 'render_hz' in field_docs(SimNodeConfig)


def test_config_parameters_declare_validate_and_apply(rclpy_context):
    node = Node('demo', context=rclpy_context,
                parameter_overrides=[Parameter('rate', value=20), Parameter('gains', value=[3, 4])])
    changes = []
    try:
        params = ConfigParameters(node, DemoConfig, ranges={'count': (0, 50)}, read_only=('name',),
                                  on_change=lambda old, new: changes.append((old, new)))
        cfg = params.config
        assert cfg.rate == 20.0 and isinstance(cfg.rate, float)  # an integer override is fine
        assert cfg.gains == (3.0, 4.0)
        d = node.describe_parameter('rate')
        assert d.description == 'Loop rate, Hz.' and 'number' in d.additional_constraints
        assert node.describe_parameter('count').integer_range[0].to_value == 50
        assert node.describe_parameter('name').read_only
        assert node.describe_parameter('mode').description == 'Mode.'
        assert node.describe_parameter('flag').description == 'flag'

        def set_one(name, value):
            return node.set_parameters([Parameter(name, value=value)])[0]

        bad = [('count', 30, 'count must be <= rate'),   # the dataclass's own check
               ('count', 60, 'range'),                    # the declared range
               ('rate', 'fast', 'DOUBLE'),                # wrong type
               ('rate', math.nan, 'finite'),
               ('mode', 'z', 'one of'),
               ('name', 'b', 'read-only'),
               ('flag', 1, 'type')]
        for name, value, words in bad:
            result = set_one(name, value)
            assert not result.successful and words in result.reason, (name, result.reason)
        assert params.config == cfg and not changes, 'a rejected change was applied'

        assert set_one('rate', 40).successful and params.config.rate == 40.0
        assert set_one('count', 30).successful and params.config.count == 30
        assert [(o.rate, n.rate) for o, n in changes] == [(20.0, 40.0), (40.0, 40.0)]
        assert node.set_parameters([Parameter('use_sim_time', value=True)])[0].successful
    finally:
        node.destroy_node()


@pytest.mark.parametrize('override, words', [
    (Parameter('count', value=11), 'count must be <= rate'),
    (Parameter('count', value=-1), 'count'),
    (Parameter('rate', value='fast'), 'rate'),
    (Parameter('mode', value='q'), 'mode'),
])
def test_config_parameters_refuse_bad_start_values(rclpy_context, override, words):
    node = Node('demo', context=rclpy_context, parameter_overrides=[override])
    try:
        with pytest.raises(ValueError, match=words):
            ConfigParameters(node, DemoConfig, ranges={'count': (0, 50)})
    finally:
        node.destroy_node()


# -- the sim node's trajectory interpolation (no ROS needed) -------------------------------------

def test_trajectory_follower_interpolates_from_the_start_position():
    f = TrajectoryFollower.from_start(10.0, np.array([0.0, 0.0]), np.array([1.0, 3.0]),
                                      np.array([[1.0, -1.0], [3.0, 1.0]]))
    np.testing.assert_allclose(f.sample(9.0), [0.0, 0.0])    # before the start: hold
    np.testing.assert_allclose(f.sample(10.5), [0.5, -0.5])
    np.testing.assert_allclose(f.sample(12.0), [2.0, 0.0])
    np.testing.assert_allclose(f.sample(99.0), [3.0, 1.0])   # after the end: the last point
    assert not f.done(12.9) and f.done(13.0)
    # a first point due at once replaces the start position
    g = TrajectoryFollower.from_start(0.0, np.zeros(1), np.array([0.0, 2.0]),
                                      np.array([[1.0], [3.0]]))
    np.testing.assert_allclose(g.sample(0.0), [1.0])
    np.testing.assert_allclose(g.sample(1.0), [2.0])
