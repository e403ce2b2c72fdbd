"""rosbag2 writing/reading (ami_ros.data.bag) and image decoding (ami_ros.data.images).

No rclpy: bags are checked with the independent ``rosbags`` reader. ``DotScene`` is a tiny but
real analytic scene (a point servoed in a square, drawn as a dot) also used by test_collect.py.
"""
from __future__ import annotations

import math
import os
import shutil

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from ami_ros.data import bag as bagmod
from ami_ros.data.bag import (SIM_EPOCH_NS, BagError, BagTopics, BagWriter, BagWriterConfig,
                              find_bags, read_bag, read_bags, typestore)
from ami_ros.data.images import ImageDecodeError, decode_image, encode_rgb8, resize_image
from ami_ros.sim.base import Scene, SceneConfig
from ami_ros.sim.truth import split_truth, truth_from_pose

DT_NS = 100_000_000


class DotScene(Scene):
    """A point (x, y) in [-1, 1]^2 driven by a rate-limited position servo.

    Seen from above as a red 3x3 dot on black with the goal as a green pixel.
    """

    name = 'dot'
    joint_names = ('x_joint', 'y_joint')

    def __init__(self, config: SceneConfig | None = None):
        super().__init__(config or SceneConfig())
        self.lower = np.array([-1.0, -1.0])
        self.upper = np.array([1.0, 1.0])
        self.velocity_limit = np.array([4.0, 4.0])
        self.reset(self.config.seed)

    def reset(self, seed=None):
        rng = np.random.default_rng(self.config.seed if seed is None else seed)
        self._q = rng.uniform(-0.8, 0.8, 2)
        self._v = np.zeros(2)
        self._target = self._q.copy()
        self._goal = rng.uniform(-0.8, 0.8, 2)

    def set_target(self, target):
        self._target = self.check_target(target)

    def step(self):
        max_dq = self.velocity_limit * self.control_dt
        dq = np.clip(0.5 * (self._target - self._q), -max_dq, max_dq)
        self._v = dq / self.control_dt
        self._q = self._q + dq

    def _pixel(self, p):
        s = self.config.image_size
        return np.clip(np.round((np.asarray(p) + 1.0) / 2.0 * (s - 1)).astype(int), 1, s - 2)

    def render(self):
        s = self.config.image_size
        img = np.zeros((s, s, 3), np.uint8)
        gx, gy = self._pixel(self._goal)
        img[gy, gx] = (0, 255, 0)
        x, y = self._pixel(self._q)
        img[y - 1:y + 2, x - 1:x + 2] = (255, 0, 0)
        return img

    @property
    def joint_positions(self):
        return self._q.copy()

    @property
    def joint_velocities(self):
        return self._v.copy()

    @property
    def target(self):
        return self._target.copy()

    def ground_truth(self):
        heading = math.atan2(self._v[1], self._v[0])
        return {'dot_position': self._q.copy(), 'goal_position': self._goal.copy(),
                'heading_pose': np.array([self._q[0], self._q[1], heading]),
                'distance': np.array([np.linalg.norm(self._q - self._goal)])}

    def success(self):
        return bool(np.linalg.norm(self._q - self._goal) < 0.05)

    def make_explorer(self, rng):
        return lambda: rng.uniform(self.lower, self.upper)

    def get_state(self):
        return np.concatenate([self._q, self._v, self._target, self._goal])

    def set_state(self, state):
        self._q, self._v, self._target, self._goal = (np.array(state[i:i + 2]) for i in
                                                      range(0, 8, 2))


def record_dot(path, steps=20, seed=0, storage='mcap', image_size=32):
    """Drive DotScene with its explorer into a bag; return what was logged, per frame."""
    scene = DotScene(SceneConfig(image_size=image_size, seed=seed))
    explorer = scene.make_explorer(np.random.default_rng(seed + 100))
    log = {'images': [], 'joints': [], 'actions': [], 'truth': [], 'stamps': []}
    with BagWriter(path, scene.joint_names, BagWriterConfig(storage=storage)) as w:
        for k in range(steps):
            t = SIM_EPOCH_NS + k * DT_NS
            img, truth = scene.render(), scene.ground_truth()
            w.write_image(t, img)
            w.write_joint_state(t, scene.joint_positions, scene.joint_velocities)
            w.write_ground_truth(t, truth)
            scene.set_target(explorer())
            w.write_command(t, scene.target)
            log['images'].append(img)
            log['joints'].append(scene.joint_positions)
            log['actions'].append(scene.target)
            log['truth'].append(truth)
            log['stamps'].append(t / 1e9)
            scene.step()
    return log


def expected_truth(truths):
    """Ground truth as it must read back, built from truth.py's mapping."""
    rows = []
    for truth in truths:
        poses, signals = split_truth(truth)
        row = dict(signals)
        for name, (pos, quat) in poses.items():
            row.update(truth_from_pose(name, pos, quat))
        rows.append(row)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def check_episode(ep, log):
    assert len(ep) == len(log['images'])
    np.testing.assert_array_equal(ep.images, np.stack(log['images']))
    np.testing.assert_array_equal(ep.joint_positions, np.stack(log['joints']).astype(np.float32))
    np.testing.assert_array_equal(ep.actions, np.stack(log['actions']).astype(np.float32))
    np.testing.assert_allclose(ep.stamps, log['stamps'], rtol=0, atol=1e-6)
    assert ep.joint_names == DotScene.joint_names
    exp = expected_truth(log['truth'])
    assert set(ep.ground_truth) == set(exp)
    for key, value in exp.items():
        np.testing.assert_allclose(ep.ground_truth[key], value, atol=1e-12, err_msg=key)


@pytest.fixture(scope='module')
def dot_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('bags') / 'dot_0'
    return path, record_dot(path)


def test_round_trip_mcap_exact(dot_bag, tmp_path):
    path, log = dot_bag
    ep = read_bag(path, cache_dir=tmp_path)
    check_episode(ep, log)
    # images actually move and actions differ from joints (the explorer drives the dot)
    assert len({im.tobytes() for im in ep.images}) > len(ep) // 2
    assert not np.allclose(ep.actions, ep.joint_positions)
    # planar pose: yaw round-trips through the quaternion
    yaw = np.array([t['heading_pose'][2] for t in log['truth']])
    np.testing.assert_allclose(ep.ground_truth['heading_yaw'][:, 0], yaw, atol=1e-12)
    assert ep.ground_truth['distance'].shape == (len(ep), 1)


def test_independent_reader_sees_standard_topics(dot_bag):
    path, log = dot_bag
    n = len(log['images'])
    assert (path / 'metadata.yaml').is_file() and (path / f'{path.name}.mcap').is_file()
    assert 'storage_identifier: mcap' in (path / 'metadata.yaml').read_text()
    with AnyReader([path]) as reader:
        got = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        assert got == {
            '/camera/image_raw': ('sensor_msgs/msg/Image', n),
            '/camera/camera_info': ('sensor_msgs/msg/CameraInfo', n),
            '/joint_states': ('sensor_msgs/msg/JointState', n),
            '/forward_position_controller/commands': ('std_msgs/msg/Float64MultiArray', n),
            '/sim/dot_pose': ('geometry_msgs/msg/PoseStamped', n),
            '/sim/goal_pose': ('geometry_msgs/msg/PoseStamped', n),
            '/sim/heading_pose': ('geometry_msgs/msg/PoseStamped', n),
            '/sim/distance': ('std_msgs/msg/Float64MultiArray', n),
        }
        conns = [c for c in reader.connections if c.topic in
                 ('/camera/image_raw', '/camera/camera_info', '/joint_states')]
        seen = set()
        for conn, t, data in reader.messages(connections=conns):
            msg = reader.deserialize(data, conn.msgtype)
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
            if conn.topic in seen:
                continue
            seen.add(conn.topic)
            if conn.msgtype == 'sensor_msgs/msg/Image':
                assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 32, 32, 96)
                assert msg.header.frame_id == 'camera_optical'
            elif conn.msgtype == 'sensor_msgs/msg/CameraInfo':
                k = np.asarray(msg.k).reshape(3, 3)
                assert k[0, 0] > 0 and k[0, 0] == k[1, 1] and k[2, 2] == 1.0
                assert (k[0, 2], k[1, 2]) == (16.0, 16.0)
                assert msg.header.frame_id == 'camera_optical'
            else:
                assert list(msg.name) == list(DotScene.joint_names)
                assert len(msg.position) == 2 and len(msg.velocity) == 2
        assert len(seen) == 3
        assert reader.start_time == SIM_EPOCH_NS


def test_mcap_decodes_with_embedded_schemas(dot_bag):
    """The MCAP file alone (as Foxglove reads it) carries ros2msg schemas that decode."""
    mcap_reader = pytest.importorskip('mcap.reader', reason='mcap is not installed')
    decoder = pytest.importorskip('mcap_ros2.decoder', reason='mcap-ros2-support not installed')
    path, log = dot_bag
    with open(path / f'{path.name}.mcap', 'rb') as f:
        reader = mcap_reader.make_reader(f, decoder_factories=[decoder.DecoderFactory()])
        summary = reader.get_summary()
        assert {s.encoding for s in summary.schemas.values()} == {'ros2msg'}
        assert {c.message_encoding for c in summary.channels.values()} == {'cdr'}
        images = [m for _, _, _, m in reader.iter_decoded_messages(topics=['/camera/image_raw'])]
    assert len(images) == len(log['images'])
    np.testing.assert_array_equal(np.frombuffer(bytes(images[5].data), np.uint8).reshape(32, 32, 3),
                                  log['images'][5])


def test_sqlite3_round_trip(tmp_path):
    path = tmp_path / 'dot_sqlite'
    log = record_dot(path, steps=12, seed=3, storage='sqlite3')
    assert any(p.suffix == '.db3' for p in path.iterdir())
    check_episode(read_bag(path, cache=False), log)


def test_bare_mcap_file_reads(dot_bag):
    path, log = dot_bag
    check_episode(read_bag(path / f'{path.name}.mcap', cache=False), log)


def test_frame_skip_and_resize(dot_bag):
    path, log = dot_bag
    ep = read_bag(path, frame_skip=3, image_size=16, interpolation='area', cache=False)
    idx = list(range(0, len(log['images']), 3))
    assert len(ep) == len(idx)
    np.testing.assert_array_equal(ep.actions, np.stack(log['actions'])[idx].astype(np.float32))
    assert ep.images.shape == (len(idx), 16, 16, 3)
    want = cv2.resize(log['images'][3], (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(ep.images[1], want)
    with pytest.raises(ValueError, match='frame_skip'):
        read_bag(path, frame_skip=0, cache=False)


def test_find_and_read_bags(tmp_path):
    paths = [tmp_path / f'dot_{i}' for i in range(2)]
    logs = [record_dot(p, steps=5, seed=i) for i, p in enumerate(paths)]
    (tmp_path / 'notes.txt').write_text('not a bag')
    assert find_bags(tmp_path) == paths
    assert find_bags(paths[0]) == [paths[0]]
    for ep, log in zip(read_bags(find_bags(tmp_path), cache=False), logs):
        check_episode(ep, log)


# ---------------------------------------------------------------------------- alignment

def _write_raw(path, topics, storage=StoragePlugin.MCAP):
    """A bag from {topic: (msgtype, [(t_ns, msg)])} with the rosbags writer directly."""
    ts = typestore()
    with Writer(path, version=9, storage_plugin=storage) as w:
        conns = {tp: w.add_connection(tp, ty, typestore=ts) for tp, (ty, _) in topics.items()}
        events = sorted((t, tp, msg) for tp, (_, msgs) in topics.items() for t, msg in msgs)
        for t, tp, msg in events:
            w.write(conns[tp], t, ts.serialize_cdr(msg, topics[tp][0]))


def _header(t_ns):
    T = typestore().types
    return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](
        sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id='cam')


def _image(t_ns, img, encoding='rgb8'):
    T = typestore().types
    h, w = img.shape[:2]
    return T['sensor_msgs/msg/Image'](header=_header(t_ns), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=img[0].nbytes,
                                      data=np.ascontiguousarray(img).reshape(-1).view(np.uint8))


def _joint_state(t_ns, names, pos):
    T = typestore().types
    return T['sensor_msgs/msg/JointState'](header=_header(t_ns), name=list(names),
                                           position=np.asarray(pos, float), velocity=np.zeros(0),
                                           effort=np.zeros(0))


def _trajectory(names, pos):
    T = typestore().types
    point = T['trajectory_msgs/msg/JointTrajectoryPoint'](
        positions=np.asarray(pos, float), velocities=np.zeros(0), accelerations=np.zeros(0),
        effort=np.zeros(0),
        time_from_start=T['builtin_interfaces/msg/Duration'](sec=0, nanosec=10**8))
    return T['trajectory_msgs/msg/JointTrajectory'](header=_header(0), joint_names=list(names),
                                                    points=[point])


def test_alignment_async_rates_and_trajectory_commands(tmp_path):
    """Align streams at different rates, with trajectory commands.

    Camera 10 Hz, joint states 100 Hz offset by 3 ms, JTC commands at odd times with the
    joints in another order: joint = latest at/before (else nearest) within the tolerance,
    action = the command in force, the joints before the first command.
    """
    t0 = SIM_EPOCH_NS
    names = ['a', 'b']
    img_t = [t0 + 100_000_000 * (k - 1) for k in range(7)]  # the first one precedes all joints
    js_t = [t0 + 3_000_000 + 10_000_000 * k for k in range(60)]
    cmd_t = [t0 + 150_000_000, t0 + 300_000_000, t0 + 420_000_000]
    imgs = [np.full((4, 6, 3), 10 * k, np.uint8) for k in range(7)]
    cmd_vals = [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]  # in (a, b) order
    path = tmp_path / 'async'
    _write_raw(path, {
        '/camera/image_raw': ('sensor_msgs/msg/Image', [(t, _image(t, im)) for t, im in
                                                        zip(img_t, imgs)]),
        '/joint_states': ('sensor_msgs/msg/JointState',
                          [(t, _joint_state(t, names, [k, -k])) for k, t in enumerate(js_t)]),
        '/joint_trajectory_controller/joint_trajectory': (
            'trajectory_msgs/msg/JointTrajectory',
            [(t, _trajectory(['b', 'a'], [v[1], v[0]])) for t, v in zip(cmd_t, cmd_vals)]),
    })
    ep = read_bag(path, cache=False, joint_tolerance=0.05)
    # frame at -100 ms: no joint state within 50 ms, dropped; frame at 0: the one 3 ms later
    np.testing.assert_array_equal(ep.images[:, 0, 0, 0], [10, 20, 30, 40, 50, 60])
    np.testing.assert_allclose(ep.stamps, np.array(img_t[1:]) / 1e9)
    np.testing.assert_array_equal(ep.joint_positions[:, 0], [0, 9, 19, 29, 39, 49])
    np.testing.assert_array_equal(ep.joint_positions[:, 1], [0, -9, -19, -29, -39, -49])
    want = [(0, 0), (9, -9), (1, 2), (3, 4), (3, 4), (5, 6)]
    np.testing.assert_array_equal(ep.actions, np.array(want, np.float32))
    assert ep.ground_truth == {} and ep.joint_names == ('a', 'b')

    # 5 ms: the latest one before (7 ms old) is too old, the one 3 ms after is used
    ep5 = read_bag(path, cache=False, joint_tolerance=0.005)
    np.testing.assert_array_equal(ep5.joint_positions[:, 0], [0, 10, 20, 30, 40, 50])
    with pytest.raises(BagError, match='no frame has a joint state within 0.002 s'):
        read_bag(path, cache=False, joint_tolerance=0.002)


# ---------------------------------------------------------------------------- images

RNG = np.random.default_rng(7)
REF = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (5, 6), dtype=np.uint8)


def _pad(rows: np.ndarray, pad: int) -> tuple[int, bytes]:
    """Row-major bytes with ``pad`` garbage bytes at the end of every row."""
    h = rows.shape[0]
    flat = rows.reshape(h, -1).view(np.uint8)
    junk = np.full((h, pad), 0xAB, np.uint8)
    return flat.shape[1] + pad, np.hstack([flat, junk]).tobytes()


@pytest.mark.parametrize('pad', [0, 5])
@pytest.mark.parametrize('encoding,make,want', [
    ('rgb8', lambda: REF, REF),
    ('bgr8', lambda: REF[:, :, ::-1], REF),
    ('8UC3', lambda: REF[:, :, ::-1], REF),
    ('rgba8', lambda: np.dstack([REF, np.full(REF.shape[:2], 7, np.uint8)]), REF),
    ('bgra8', lambda: np.dstack([REF[:, :, ::-1], np.full(REF.shape[:2], 7, np.uint8)]), REF),
    ('mono8', lambda: GRAY, np.repeat(GRAY[:, :, None], 3, 2)),
    ('8UC1', lambda: GRAY, np.repeat(GRAY[:, :, None], 3, 2)),
])
def test_decode_8bit_encodings(encoding, make, want, pad):
    src = np.ascontiguousarray(make())
    step, data = _pad(src, pad)
    out = decode_image(encoding, 5, 6, step, 0, data)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize('bigendian', [0, 1])
@pytest.mark.parametrize('pad', [0, 4])
def test_decode_mono16_byte_order_and_padding(bigendian, pad):
    values = GRAY.astype(np.uint16) * 256 + 255 - GRAY  # low byte must not leak into the result
    src = values.astype('>u2' if bigendian else '<u2')
    step, data = _pad(src, pad)
    for encoding in ('mono16', '16UC1'):
        out = decode_image(encoding, 5, 6, step, bigendian, data)
        np.testing.assert_array_equal(out, np.repeat(GRAY[:, :, None], 3, 2))
    # the wrong byte order gives a different image: the flag is honoured
    assert not np.array_equal(decode_image('mono16', 5, 6, step, 1 - bigendian, data)[..., 0],
                              GRAY)


def _yuv_to_rgb(y, u, v):
    """BT.601 limited-range YUV -> RGB, the conversion ROS image pipelines use for yuv422."""
    c, d, e = y - 16.0, u - 128.0, v - 128.0
    rgb = np.stack([1.164 * c + 1.596 * e, 1.164 * c - 0.392 * d - 0.813 * e,
                    1.164 * c + 2.017 * d], axis=-1)
    return np.clip(np.round(rgb), 0, 255)


@pytest.mark.parametrize('pad', [0, 3])
def test_decode_yuv422_both_byte_orders(pad):
    h, w = 3, 4
    y = RNG.integers(16, 236, (h, w)).astype(np.uint8)
    u = RNG.integers(16, 241, (h, w // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, (h, w // 2)).astype(np.uint8)
    uyvy = np.stack([u, y[:, 0::2], v, y[:, 1::2]], axis=-1).reshape(h, 2 * w)
    yuyv = np.stack([y[:, 0::2], u, y[:, 1::2], v], axis=-1).reshape(h, 2 * w)
    want = _yuv_to_rgb(y.astype(float), np.repeat(u, 2, 1).astype(float),
                       np.repeat(v, 2, 1).astype(float))
    for encoding, packed in (('yuv422', uyvy), ('uyvy', uyvy), ('yuv422_yuy2', yuyv),
                             ('yuyv', yuyv)):
        step, data = _pad(packed, pad)
        out = decode_image(encoding, h, w, step, 0, data)
        assert out.shape == (h, w, 3)
        assert np.abs(out.astype(float) - want).max() <= 2, encoding
    # the two layouts are not interchangeable
    step, data = _pad(uyvy, pad)
    assert np.abs(decode_image('yuyv', h, w, step, 0, data).astype(float) - want).max() > 10


def test_decode_accepts_bytes_memoryview_list_and_array():
    _, data = _pad(REF, 0)
    for payload in (data, memoryview(data), bytearray(data), list(data),
                    np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(decode_image('rgb8', 5, 6, 18, 0, payload), REF)


@pytest.mark.parametrize('args,match', [
    (('bayer_rggb8', 5, 6, 6, 0, bytes(30)), "unsupported image encoding 'bayer_rggb8'"),
    (('32FC1', 5, 6, 24, 0, bytes(120)), 'supported: rgb8'),
    (('rgb8', 5, 6, 18, 0, bytes(18 * 5 - 1)), 'expected at least 90'),
    (('rgb8', 0, 6, 18, 0, b''), 'not in'),
    (('rgb8', 5, 0, 0, 0, b''), 'not in'),
    (('mono8', 9000, 10, 10, 0, bytes(10)), 'not in'),
    (('rgb8', 5, 6, 17, 0, bytes(200)), 'step 17 is shorter than one row'),
    (('yuv422', 2, 3, 6, 0, bytes(12)), 'even width'),
])
def test_decode_errors(args, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(*args)


def test_encode_rgb8_and_resize():
    enc, step, data = encode_rgb8(REF)
    assert (enc, step) == ('rgb8', 18)
    np.testing.assert_array_equal(decode_image(enc, 5, 6, step, 0, data), REF)
    with pytest.raises(ImageDecodeError, match='uint8'):
        encode_rgb8(REF.astype(np.float32))
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 200  # one 2x2 block -> one pixel
    img[0, 2] = 40
    area = resize_image(img, 2, 'area')
    np.testing.assert_array_equal(area[:, :, 0], [[200, 10], [0, 0]])
    near = resize_image(img, (2, 2), 'nearest')
    assert set(np.unique(near)) <= {0, 40, 200}
    assert resize_image(img, 4) is img
    with pytest.raises(ValueError, match='interpolation'):
        resize_image(img, 2, 'cubic')


# ---------------------------------------------------------------------------- bad input

def test_bad_inputs_name_the_file(tmp_path, dot_bag):
    good, _ = dot_bag
    cases = {}

    cases['not a bag'] = tmp_path / 'notes.txt'
    cases['not a bag'].write_text('hello')
    cases['no metadata'] = tmp_path / 'empty_dir'
    cases['no metadata'].mkdir()
    cases['missing'] = tmp_path / 'does_not_exist'

    no_image = tmp_path / 'no_image'
    _write_raw(no_image, {'/joint_states': ('sensor_msgs/msg/JointState',
                                            [(SIM_EPOCH_NS, _joint_state(SIM_EPOCH_NS, 'a',
                                                                         [0.0]))])})
    cases['no image topic'] = no_image

    empty = tmp_path / 'empty_bag'
    BagWriter(empty, ['a']).close()
    cases['empty'] = empty
    no_topics = tmp_path / 'no_topics'
    _write_raw(no_topics, {})
    cases['no topics'] = no_topics

    mcap = good / f'{good.name}.mcap'
    truncated = tmp_path / 'truncated'
    shutil.copytree(good, truncated)
    (truncated / mcap.name).write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    cases['truncated'] = truncated
    corrupt = tmp_path / 'corrupt'
    shutil.copytree(good, corrupt)
    data = bytearray(mcap.read_bytes())
    data[len(data) // 3:len(data) // 3 + 64] = b'\xff' * 64
    (corrupt / mcap.name).write_bytes(bytes(data))
    cases['corrupt'] = corrupt
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(os.urandom(256))
    cases['garbage'] = garbage

    mixed = tmp_path / 'mixed_sizes'
    with BagWriter(mixed, ['a']) as w:
        for k, shape in enumerate([(8, 8, 3), (8, 10, 3)]):
            t = SIM_EPOCH_NS + k * DT_NS
            w.write_image(t, np.zeros(shape, np.uint8))
            w.write_joint_state(t, [0.0])
            w.write_command(t, [0.0])
    cases['inconsistent sizes'] = mixed

    for what, path in cases.items():
        with pytest.raises(BagError) as info:
            read_bag(path, cache=False)
        assert str(path) in str(info.value), what

    def message(path):
        with pytest.raises(BagError) as info:
            read_bag(path, cache=False)
        return str(info.value)

    msg = message(no_image)
    assert 'no image topic /camera/image_raw' in msg and '/joint_states' in msg
    assert 'empty bag' in message(empty) and 'empty bag' in message(no_topics)
    assert 'inconsistent sizes' in message(mixed) and '10x8' in message(mixed)
    with pytest.raises(BagError, match='no command topic'):
        read_bag(good, BagTopics(commands=('/cmd',)), cache=False)
    with pytest.raises(ValueError, match='absolute topic'):
        BagTopics(image='camera')


# ---------------------------------------------------------------------------- cache

def test_cache_hit_is_identical_and_skips_decoding(tmp_path, monkeypatch):
    path = tmp_path / 'bag'
    record_dot(path, steps=10, seed=5)
    cache = tmp_path / 'cache'
    calls = []
    real = bagmod._read_uncached
    monkeypatch.setattr(bagmod, '_read_uncached', lambda *a: calls.append(a) or real(*a))

    first = read_bag(path, cache_dir=cache)
    files = list(cache.glob('*.npz'))
    assert len(calls) == 1 and len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = read_bag(path, cache_dir=cache)
    assert len(calls) == 1 and files[0].stat().st_mtime_ns == mtime
    for name in ('images', 'joint_positions', 'actions', 'stamps'):
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert first.joint_names == second.joint_names
    assert first.ground_truth.keys() == second.ground_truth.keys()
    for k in first.ground_truth:
        np.testing.assert_array_equal(first.ground_truth[k], second.ground_truth[k])
    # the cache holds no pickled objects
    with np.load(files[0], allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)

    # other settings are another entry; a rewritten bag invalidates its entry
    read_bag(path, frame_skip=2, cache_dir=cache)
    assert len(calls) == 2 and len(list(cache.glob('*.npz'))) == 2
    shutil.rmtree(path)
    log = record_dot(path, steps=7, seed=6)
    third = read_bag(path, cache_dir=cache)
    assert len(calls) == 3 and len(third) == 7
    check_episode(third, log)

    # a damaged cache file is ignored and rewritten, never trusted
    newest = max(cache.glob('*.npz'), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b'not a zip')
    check_episode(read_bag(path, cache_dir=cache), log)
    assert len(calls) == 4


def test_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('AMI_ROS_CACHE', str(tmp_path / 'c'))
    assert bagmod.default_cache_dir() == tmp_path / 'c' / 'episodes'
    path = tmp_path / 'bag'
    record_dot(path, steps=3)
    read_bag(path)
    assert len(list((tmp_path / 'c' / 'episodes').glob('bag-*.npz'))) == 1
