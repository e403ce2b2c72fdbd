"""rosbag2 recording and reading with standard ROS 2 messages, without rclpy.

Messages are built and CDR-serialized with the ``rosbags`` typestore, so bags written here open in
``ros2 bag info/play`` and Foxglove, and bags recorded on a robot read back here.

Writing (:class:`BagWriter`) logs what a real robot logs: camera frames and intrinsics, joint
states, the position command sent to a forward controller, and the simulator's ground truth on
``/sim/...`` topics (:mod:`ami_ros.sim.truth`). Reading (:func:`read_bag`) aligns everything to
the camera frames and returns an :class:`~ami_ros.data.episode.Episode`, cached as ``.npz``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from ami_ros.data.episode import Episode
from ami_ros.data.images import ImageDecodeError, decode_image, encode_rgb8, prepare_image
from ami_ros.sim.truth import SIM_NAMESPACE, quaternion_yaw, split_truth

log = logging.getLogger(__name__)

IMAGE = 'sensor_msgs/msg/Image'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
JOINT_STATE = 'sensor_msgs/msg/JointState'
FLOAT64_ARRAY = 'std_msgs/msg/Float64MultiArray'
JOINT_TRAJECTORY = 'trajectory_msgs/msg/JointTrajectory'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
COMMAND_TYPES = (FLOAT64_ARRAY, JOINT_TRAJECTORY)

SIM_EPOCH_NS = 1_700_000_000 * 10**9
"""Sim time of the first frame of episode 0 (a fixed, plausible wall-clock epoch)."""

CACHE_FORMAT_VERSION = 1
"""Bump when the decoded layout or the alignment rules change: old cache entries are ignored."""

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


class BagError(Exception):
    """A bag that cannot be read or written; the message names the file and the problem."""


@lru_cache(maxsize=None)
def typestore():
    """The newest ROS 2 typestore this ``rosbags`` knows (Kilted, else Jazzy, else Humble)."""
    for name in ('ROS2_KILTED', 'ROS2_JAZZY', 'ROS2_HUMBLE'):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    raise BagError('rosbags has no ROS 2 Kilted/Jazzy/Humble typestore; upgrade rosbags')


def _ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# --------------------------------------------------------------------------------------------
# writing


@dataclass
class BagWriterConfig:
    """Where and how a :class:`BagWriter` records."""

    storage: str = 'mcap'
    """rosbag2 storage plugin: ``mcap`` (default of ROS 2 Jazzy and later) or ``sqlite3``."""
    image_topic: str = '/camera/image_raw'
    """Camera frames, ``sensor_msgs/Image`` rgb8."""
    camera_info_topic: str = '/camera/camera_info'
    """Camera intrinsics, ``sensor_msgs/CameraInfo``, one per frame."""
    joint_states_topic: str = '/joint_states'
    """``sensor_msgs/JointState`` with names, position and velocity."""
    command_topic: str = '/forward_position_controller/commands'
    """The position command sent, ``std_msgs/Float64MultiArray`` (a ros2_control forward
    position controller's input)."""
    camera_frame: str = 'camera_optical'
    """``header.frame_id`` of images and camera info (REP-103 optical frame)."""
    world_frame: str = 'world'
    """``header.frame_id`` of the ground-truth poses."""
    camera_fovy_deg: float = 45.0
    """Vertical field of view used for the pinhole intrinsics in CameraInfo."""

    def __post_init__(self):
        if self.storage not in STORAGES:
            raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {self.storage!r}')
        for name in ('image_topic', 'camera_info_topic', 'joint_states_topic', 'command_topic'):
            topic = getattr(self, name)
            if not isinstance(topic, str) or not topic.startswith('/') or topic.endswith('/'):
                raise ValueError(f'{name} must be an absolute topic name like /a/b, got {topic!r}')
        if not 1.0 <= float(self.camera_fovy_deg) < 179.0:
            raise ValueError(f'camera_fovy_deg must be in [1, 179), got {self.camera_fovy_deg}')


def pinhole_k(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """Row-major 3x3 intrinsics of an ideal pinhole camera with square pixels, centred."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
    return np.array([f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0])


class BagWriter:
    """One rosbag2 bag (a directory) of one episode; use as a context manager.

    Timestamps are integer nanoseconds of sim time; header stamps equal the bag timestamps.
    Ground-truth topics are created on first use from the keys of ``scene.ground_truth()``.
    """

    def __init__(self, path, joint_names, config: BagWriterConfig | None = None,
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.config = config or BagWriterConfig()
        self.joint_names = [str(n) for n in joint_names]
        if not self.joint_names:
            raise ValueError(f'{self.path}: joint_names is empty')
        self.frames = 0
        self._ts = typestore()
        self._types = self._ts.types
        self._gt_conns: dict[str, object] = {}
        try:
            self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                                  storage_plugin=STORAGES[self.config.storage])
            for key, value in (metadata or {}).items():
                self._writer.set_custom_data(str(key), str(value))
            self._writer.open()
        except (WriterError, OSError) as err:
            raise BagError(f'{self.path}: cannot create bag: {err}') from None
        cfg = self.config
        add = self._add
        self._image = add(cfg.image_topic, IMAGE)
        self._info = add(cfg.camera_info_topic, CAMERA_INFO)
        self._joints = add(cfg.joint_states_topic, JOINT_STATE)
        self._command = add(cfg.command_topic, FLOAT64_ARRAY)
        self._info_cache: tuple[tuple[int, int], object] | None = None
        self._closed = False

    def _add(self, topic: str, msgtype: str):
        return self._writer.add_connection(topic, msgtype, typestore=self._ts)

    def _write(self, conn, stamp_ns: int, msg, msgtype: str) -> None:
        self._writer.write(conn, int(stamp_ns), self._ts.serialize_cdr(msg, msgtype))

    def _header(self, stamp_ns: int, frame_id: str):
        t = self._types
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        stamp = t['builtin_interfaces/msg/Time'](sec=sec, nanosec=nsec)
        return t['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)

    def _float_array(self, values) -> object:
        t = self._types
        layout = t['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
        return t[FLOAT64_ARRAY](layout=layout,
                                data=np.ascontiguousarray(values, dtype=np.float64).reshape(-1))

    def write_image(self, stamp_ns: int, image: np.ndarray) -> None:
        """Log an (H, W, 3) uint8 RGB frame as rgb8 plus its CameraInfo, both at ``stamp_ns``."""
        t = self._types
        encoding, step, data = encode_rgb8(image)
        h, w = image.shape[:2]
        header = self._header(stamp_ns, self.config.camera_frame)
        msg = t[IMAGE](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                       step=step, data=np.frombuffer(data, dtype=np.uint8))
        self._write(self._image, stamp_ns, msg, IMAGE)
        k = pinhole_k(w, h, self.config.camera_fovy_deg)
        p = np.array([k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0])
        roi = t['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        info = t[CAMERA_INFO](header=header, height=h, width=w, distortion_model='plumb_bob',
                              d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0,
                              binning_y=0, roi=roi)
        self._write(self._info, stamp_ns, info, CAMERA_INFO)
        self.frames += 1

    def write_joint_state(self, stamp_ns: int, position, velocity=None) -> None:
        """Log joint positions (and velocities) in ``joint_names`` order."""
        pos = np.asarray(position, dtype=np.float64).reshape(-1)
        if pos.size != len(self.joint_names):
            raise ValueError(f'{self.path}: joint state has {pos.size} positions for '
                             f'{len(self.joint_names)} joints {self.joint_names}')
        vel = (np.zeros(0) if velocity is None
               else np.asarray(velocity, dtype=np.float64).reshape(-1))
        msg = self._types[JOINT_STATE](header=self._header(stamp_ns, ''), name=self.joint_names,
                                       position=pos, velocity=vel, effort=np.zeros(0))
        self._write(self._joints, stamp_ns, msg, JOINT_STATE)

    def write_command(self, stamp_ns: int, target) -> None:
        """Log the joint command sent at ``stamp_ns`` (in force until the next one)."""
        self._write(self._command, stamp_ns, self._float_array(target), FLOAT64_ARRAY)

    def write_ground_truth(self, stamp_ns: int, truth: dict) -> None:
        """Log a scene's ``ground_truth()``: poses as PoseStamped, signals as Float64MultiArray."""
        t = self._types
        poses, signals = split_truth(truth)
        for name, (pos, quat) in poses.items():
            topic = f'{SIM_NAMESPACE}/{name}_pose'
            pose = t['geometry_msgs/msg/Pose'](
                position=t['geometry_msgs/msg/Point'](x=float(pos[0]), y=float(pos[1]),
                                                      z=float(pos[2])),
                orientation=t['geometry_msgs/msg/Quaternion'](
                    x=float(quat[0]), y=float(quat[1]), z=float(quat[2]), w=float(quat[3])))
            msg = t[POSE_STAMPED](header=self._header(stamp_ns, self.config.world_frame),
                                  pose=pose)
            self._write(self._gt_conn(topic, POSE_STAMPED), stamp_ns, msg, POSE_STAMPED)
        for name, value in signals.items():
            topic = f'{SIM_NAMESPACE}/{name}'
            self._write(self._gt_conn(topic, FLOAT64_ARRAY), stamp_ns, self._float_array(value),
                        FLOAT64_ARRAY)

    def _gt_conn(self, topic: str, msgtype: str):
        conn = self._gt_conns.get(topic)
        if conn is None:
            conn = self._gt_conns[topic] = self._add(topic, msgtype)
        elif conn.msgtype != msgtype:
            raise BagError(f'{self.path}: ground truth topic {topic} was {conn.msgtype}, '
                           f'now {msgtype}')
        return conn

    def close(self) -> None:
        """Finish the storage file and write metadata.yaml (idempotent)."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the bag directory (complete after :meth:`close`)."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        # a bag cut short by an error is still a valid bag of what was recorded
        self.close()


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class BagTopics:
    """Which topics :func:`read_bag` reads.

    The defaults are what :class:`BagWriter` and a ros2_control robot with a forward or
    joint-trajectory controller publish.
    """

    image: str = '/camera/image_raw'
    """``sensor_msgs/Image``: one sample per message."""
    joint_states: str = '/joint_states'
    """``sensor_msgs/JointState``."""
    commands: tuple[str, ...] = ('/forward_position_controller/commands',
                                 '/joint_trajectory_controller/joint_trajectory',
                                 '/forward_effort_controller/commands')
    """Accepted command topics, first present wins: ``std_msgs/Float64MultiArray`` (positions,
    or efforts on the effort controller's topic) or ``trajectory_msgs/JointTrajectory`` (the
    first point's positions)."""
    ground_truth_namespace: str = SIM_NAMESPACE
    """Every PoseStamped / Float64MultiArray topic under this namespace is ground truth."""

    def __post_init__(self):
        self.commands = tuple(self.commands)
        if not self.commands:
            raise ValueError('commands must name at least one command topic')
        for name, topic in [('image', self.image), ('joint_states', self.joint_states),
                            ('ground_truth_namespace', self.ground_truth_namespace),
                            *[('commands', c) for c in self.commands]]:
            if not isinstance(topic, str) or not topic.startswith('/') or topic.endswith('/'):
                raise ValueError(f'{name} must be an absolute topic name like /a/b, got {topic!r}')


@dataclass
class _Raw:
    """Everything needed from a bag before alignment (stamps are integer ns)."""

    image_stamps: list = field(default_factory=list)
    images: list = field(default_factory=list)        # (encoding, h, w, step, bigendian, data)
    joint_names: list | None = None
    joint_stamps: list = field(default_factory=list)
    joint_positions: list = field(default_factory=list)
    joint_skipped: int = 0
    command_stamps: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    truth: dict = field(default_factory=dict)  # name under /sim -> (type, [stamps], [values])


def default_cache_dir() -> Path:
    """Where decoded episodes are cached.

    ``$AMI_ROS_CACHE/episodes``, else ``$XDG_CACHE_HOME/ami_ros/episodes``, else
    ``~/.cache/ami_ros/episodes``.
    """
    root = os.environ.get('AMI_ROS_CACHE')
    if not root:
        root = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
                            'ami_ros')
    return Path(root) / 'episodes'


def is_bag(path) -> bool:
    """Whether ``path`` looks like a rosbag2 bag.

    That is a directory with metadata.yaml, or a .mcap / .db3 storage file.
    """
    p = Path(path)
    return (p.is_dir() and (p / 'metadata.yaml').is_file()) or \
        (p.is_file() and p.suffix in ('.mcap', '.db3'))


def find_bags(root) -> list[Path]:
    """``root`` itself if it is a bag, else the bags directly inside it, sorted by name."""
    p = Path(root)
    if is_bag(p):
        return [p]
    if not p.is_dir():
        raise BagError(f'{p}: not a rosbag2 bag or a directory of bags')
    return sorted(c for c in p.iterdir() if is_bag(c))


def _storage_path(path: Path) -> Path:
    """The path to hand to rosbags.

    That is the bag directory, or its single storage file when the directory lacks
    metadata.yaml (``ros2 bag`` can play such a bare .mcap too).
    """
    if not path.exists():
        raise BagError(f'{path}: no such file or directory')
    if path.is_dir():
        if (path / 'metadata.yaml').is_file():
            return path
        files = sorted(p for p in path.iterdir() if p.suffix in ('.mcap', '.db3'))
        if len(files) == 1:
            return files[0]
        raise BagError(f'{path}: not a rosbag2 bag (no metadata.yaml'
                       f'{" and several storage files" if files else " and no .mcap/.db3 file"})')
    if path.suffix not in ('.mcap', '.db3'):
        raise BagError(f'{path}: not a rosbag2 bag (expected a bag directory, .mcap or .db3)')
    return path


def _bag_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


# rosbags raises these for unreadable metadata, truncated or corrupt storage files and payloads
# (MemoryError / OverflowError: a corrupt length field asking for an absurd allocation)
_READ_ERRORS = (AnyReaderError, ReaderError, SerdeError, OSError, ValueError, KeyError,
                IndexError, struct.error, EOFError, UnicodeDecodeError, zipfile.BadZipFile,
                OverflowError, MemoryError)


def _collect(path: Path, topics: BagTopics) -> _Raw:
    """One pass over the bag: keep the fields of the selected topics."""
    raw = _Raw()
    with AnyReader([_storage_path(path)], default_typestore=typestore()) as reader:
        present = {c.topic: c.msgtype for c in reader.connections}
        listing = ', '.join(f'{k} [{v}]' for k, v in sorted(present.items())) or 'none'
        if not present or sum(c.msgcount for c in reader.connections) == 0:
            raise BagError(f'{path}: empty bag (no messages; topics: {listing})')

        def need(topic: str, msgtypes: tuple[str, ...], what: str) -> None:
            if topic not in present:
                raise BagError(f'{path}: no {what} topic {topic}; topics present: {listing}')
            if present[topic] not in msgtypes:
                raise BagError(f'{path}: {what} topic {topic} has type {present[topic]}, '
                               f'expected {" or ".join(msgtypes)}')

        need(topics.image, (IMAGE,), 'image')
        need(topics.joint_states, (JOINT_STATE,), 'joint state')
        command = next((c for c in topics.commands if present.get(c) in COMMAND_TYPES), None)
        if command is None:
            raise BagError(f'{path}: no command topic (any of {list(topics.commands)} with type '
                           f'{" or ".join(COMMAND_TYPES)}); topics present: {listing}')
        prefix = topics.ground_truth_namespace + '/'
        truth_topics = {t for t, ty in present.items()
                        if t.startswith(prefix) and ty in (POSE_STAMPED, FLOAT64_ARRAY)}
        wanted = {topics.image, topics.joint_states, command} | truth_topics
        conns = [c for c in reader.connections if c.topic in wanted]

        counts = dict.fromkeys(wanted, 0)
        for conn, logtime, data in reader.messages(connections=conns):
            msg = reader.deserialize(data, conn.msgtype)
            topic = conn.topic
            counts[topic] += 1
            if topic == topics.image:
                stamp = _ns(msg.header.stamp) or logtime
                raw.image_stamps.append(stamp)
                raw.images.append((msg.encoding, msg.height, msg.width, msg.step,
                                   msg.is_bigendian, msg.data))
            elif topic == topics.joint_states:
                _add_joint_state(raw, msg, _ns(msg.header.stamp) or logtime)
            elif topic == command:
                # a command takes effect when it is sent: the bag's log time
                cmd = _command_positions(msg, conn.msgtype, raw.joint_names)
                if cmd is not None:
                    raw.command_stamps.append(logtime)
                    raw.commands.append(cmd)
            else:
                if conn.msgtype == POSE_STAMPED:
                    p, q = msg.pose.position, msg.pose.orientation
                    value = (np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]))
                    stamp = _ns(msg.header.stamp) or logtime
                else:
                    value, stamp = np.asarray(msg.data, dtype=np.float64).copy(), logtime
                entry = raw.truth.setdefault(topic[len(prefix):], (conn.msgtype, [], []))
                entry[1].append(stamp)
                entry[2].append(value)
        # a damaged chunk can make the storage reader stop early without an error
        declared = {t: 0 for t in wanted}
        for c in conns:
            declared[c.topic] += c.msgcount
        short = [f'{t}: {counts[t]} of {n}' for t, n in sorted(declared.items()) if counts[t] < n]
        if short:
            raise BagError(f'{path}: corrupt or truncated bag, fewer messages readable than its '
                           f'index lists ({"; ".join(short)})')
    if not raw.images:
        raise BagError(f'{path}: no messages on image topic {topics.image}')
    if not raw.joint_stamps:
        raise BagError(f'{path}: no usable messages on joint state topic {topics.joint_states}')
    if not raw.commands:
        raise BagError(f'{path}: no usable messages on command topic {command}')
    return raw


def _add_joint_state(raw: _Raw, msg, stamp: int) -> None:
    names = list(msg.name)
    pos = np.asarray(msg.position, dtype=np.float64)
    if raw.joint_names is None:
        if not names or len(names) != pos.size:
            raw.joint_skipped += 1
            return
        raw.joint_names = names
    if names == raw.joint_names and pos.size == len(names):
        raw.joint_stamps.append(stamp)
        raw.joint_positions.append(pos.copy())
        return
    index = {n: i for i, n in enumerate(names)}
    if len(names) != pos.size or any(n not in index for n in raw.joint_names):
        # another publisher on /joint_states (e.g. a gripper) with a different joint set
        raw.joint_skipped += 1
        return
    raw.joint_stamps.append(stamp)
    raw.joint_positions.append(pos[[index[n] for n in raw.joint_names]])


def _command_positions(msg, msgtype: str, joint_names: list | None) -> np.ndarray | None:
    if msgtype == FLOAT64_ARRAY:
        return np.asarray(msg.data, dtype=np.float64).copy()
    if not msg.points or len(msg.points[0].positions) == 0:
        return None  # an empty trajectory cancels goals; the previous target stays the reference
    pos = np.asarray(msg.points[0].positions, dtype=np.float64)
    names = list(msg.joint_names)
    if joint_names and sorted(names) == sorted(joint_names) and len(names) == pos.size:
        index = {n: i for i, n in enumerate(names)}
        return pos[[index[n] for n in joint_names]]
    return pos.copy()


def _latest_at_or_before(stamps: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the last stamp <= each query, -1 where there is none. ``stamps`` sorted."""
    return np.searchsorted(stamps, query, side='right') - 1


def _nearest(stamps: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the stamp closest to each query. ``stamps`` sorted, non-empty."""
    hi = np.clip(np.searchsorted(stamps, query), 0, len(stamps) - 1)
    lo = np.clip(hi - 1, 0, len(stamps) - 1)
    return np.where(np.abs(stamps[lo] - query) <= np.abs(stamps[hi] - query), lo, hi)


def _stack(path: Path, what: str, rows: list) -> np.ndarray:
    sizes = {np.shape(r) for r in rows}
    if len(sizes) != 1:
        raise BagError(f'{path}: {what} messages have different lengths: {sorted(sizes)}')
    return np.stack(rows)


def _align(path: Path, raw: _Raw, frame_skip: int, image_size, interpolation: str,
           joint_tolerance: float) -> Episode:
    sizes = {(h, w) for _, h, w, _, _, _ in raw.images}
    if len(sizes) > 1:
        listed = ', '.join(f'{w}x{h}' for h, w in sorted(sizes))
        raise BagError(f'{path}: images of inconsistent sizes in one bag (WxH): {listed}')
    order = np.argsort(np.asarray(raw.image_stamps, dtype=np.int64), kind='stable')
    img_t = np.asarray(raw.image_stamps, dtype=np.int64)[order]

    js_order = np.argsort(np.asarray(raw.joint_stamps, dtype=np.int64), kind='stable')
    js_t = np.asarray(raw.joint_stamps, dtype=np.int64)[js_order]
    js_q = np.stack(raw.joint_positions)[js_order]
    tol = int(round(joint_tolerance * 1e9))
    # joint state: latest at or before the frame if fresh enough, else the nearest within tolerance
    before = _latest_at_or_before(js_t, img_t)
    near = _nearest(js_t, img_t)
    before_ok = (before >= 0) & (img_t - js_t[np.maximum(before, 0)] <= tol)
    joint_idx = np.where(before_ok, before, near)
    valid = before_ok | (np.abs(js_t[near] - img_t) <= tol)

    cmd_order = np.argsort(np.asarray(raw.command_stamps, dtype=np.int64), kind='stable')
    cmd_t = np.asarray(raw.command_stamps, dtype=np.int64)[cmd_order]
    cmds = _stack(path, 'command', raw.commands)[cmd_order]
    cmd_idx = _latest_at_or_before(cmd_t, img_t)
    if cmds.shape[1] != js_q.shape[1]:
        # before the first command the joint positions stand in for it; impossible if the
        # command has another size than the joint state, so such frames are dropped
        valid &= cmd_idx >= 0

    if raw.joint_skipped:
        log.warning('%s: skipped %d joint state messages without all of the joints %s',
                    path, raw.joint_skipped, raw.joint_names)
    dropped = int((~valid).sum())
    if dropped:
        log.warning('%s: dropped %d of %d frames with no joint state within %.3f s or no command',
                    path, dropped, len(img_t), joint_tolerance)
    keep = np.flatnonzero(valid)[::frame_skip]
    if keep.size == 0:
        raise BagError(f'{path}: no frame has a joint state within {joint_tolerance} s '
                       f'(image stamps {img_t[0] / 1e9:.3f}..{img_t[-1] / 1e9:.3f} s, joint '
                       f'states {js_t[0] / 1e9:.3f}..{js_t[-1] / 1e9:.3f} s)')

    joints = js_q[joint_idx[keep]]
    ci = cmd_idx[keep]
    actions = np.where((ci >= 0)[:, None], cmds[np.maximum(ci, 0)], joints) \
        if cmds.shape[1] == joints.shape[1] else cmds[ci]
    for what, arr in (('joint position', joints), ('command', actions)):
        bad = ~np.isfinite(arr).all(axis=1) | (np.abs(arr) > 1e30).any(axis=1)
        if bad.any():
            first = img_t[keep][np.argmax(bad)] / 1e9
            raise BagError(f'{path}: {int(bad.sum())} frames have non-finite or absurd '
                           f'{what}s (first at {first:.6f} s)')
    images = []
    for i in keep:
        encoding, h, w, step, bigendian, data = raw.images[order[i]]
        try:
            img = decode_image(encoding, h, w, step, bigendian, data)
        except ImageDecodeError as err:
            raise BagError(f'{path}: image at {img_t[i] / 1e9:.6f} s: {err}') from None
        if image_size is not None:
            img = prepare_image(img, image_size, interpolation)
        images.append(img)

    truth = {}
    for topic, (kind, stamps, values) in sorted(raw.truth.items()):
        t_order = np.argsort(np.asarray(stamps, dtype=np.int64), kind='stable')
        t_idx = t_order[_nearest(np.asarray(stamps, dtype=np.int64)[t_order], img_t[keep])]
        name = topic.replace('/', '_')
        if kind == POSE_STAMPED:
            name = name[:-len('_pose')] if name.endswith('_pose') else name
            pos = np.stack([values[i][0] for i in t_idx])
            quat = np.stack([values[i][1] for i in t_idx])
            truth[f'{name}_position'] = pos
            truth[f'{name}_quaternion'] = quat
            truth[f'{name}_yaw'] = np.array([[quaternion_yaw(q)] for q in quat])
        else:
            truth[name] = _stack(path, f'ground truth {topic}', values)[t_idx]

    return Episode(images=np.stack(images), joint_positions=joints.astype(np.float32),
                   actions=actions.astype(np.float32), stamps=img_t[keep] / 1e9,
                   joint_names=tuple(raw.joint_names), ground_truth=truth, source=str(path))


def _read_uncached(path: Path, topics: BagTopics, frame_skip: int, image_size,
                   interpolation: str, joint_tolerance: float) -> Episode:
    try:
        raw = _collect(path, topics)
    except BagError:
        raise
    except _READ_ERRORS as err:
        kind = type(err).__name__
        raise BagError(f'{path}: not a readable rosbag2 bag ({kind}: {err}); a recording cut '
                       f'short can be repaired with `mcap recover` or `ros2 bag reindex`') from None
    return _align(path, raw, frame_skip, image_size, interpolation, joint_tolerance)


def _cache_key(path: Path, params: dict) -> str:
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _bag_files(path)]
    blob = json.dumps({'version': CACHE_FORMAT_VERSION, 'path': str(path), 'files': files,
                       **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _save_npz(file: Path, ep: Episode) -> None:
    arrays = {'images': ep.images, 'joint_positions': ep.joint_positions,
              'actions': ep.actions, 'stamps': ep.stamps,
              'joint_names': np.array(ep.joint_names, dtype=str)}
    arrays.update({f'gt__{k}': v for k, v in ep.ground_truth.items()})
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f'{file.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
        np.savez(f, **arrays)
    os.replace(tmp, file)  # atomic: a concurrent reader sees the old state or the whole file


def _load_npz(file: Path, source: str) -> Episode:
    with np.load(file, allow_pickle=False) as z:
        truth = {k[len('gt__'):]: z[k] for k in z.files if k.startswith('gt__')}
        return Episode(images=z['images'], joint_positions=z['joint_positions'],
                       actions=z['actions'], stamps=z['stamps'],
                       joint_names=tuple(str(n) for n in z['joint_names']),
                       ground_truth=truth, source=source)


def read_bag(path, topics: BagTopics | None = None, frame_skip: int = 1, *,
             image_size: int | tuple[int, int] | None = None, interpolation: str = 'area',
             joint_tolerance: float = 0.2, cache: bool = True, cache_dir=None) -> Episode:
    """Read one bag (directory, .mcap or .db3; MCAP or sqlite3) into an aligned :class:`Episode`.

    One sample per image (then every ``frame_skip``-th): the joint state is the latest at or
    before the image stamp (or the nearest one within ``joint_tolerance`` seconds; frames with
    none are dropped), the action is the command in force at the image stamp (the joint
    positions before the first command), ground truth is the nearest sample of each
    ``/sim/...`` topic. Images come out RGB uint8, resized to ``image_size`` if given.
    Decoded episodes are cached as .npz under ``cache_dir`` (default :func:`default_cache_dir`)
    keyed by the bag files' size and mtime and these settings. Raises :class:`BagError`.
    """
    topics = topics or BagTopics()
    if int(frame_skip) != frame_skip or frame_skip < 1:
        raise ValueError(f'frame_skip must be an integer >= 1, got {frame_skip!r}')
    if interpolation not in ('area', 'nearest'):
        raise ValueError(f"interpolation must be 'area' or 'nearest', got {interpolation!r}")
    if not 0.0 <= float(joint_tolerance) <= 10.0:
        raise ValueError(f'joint_tolerance must be in [0, 10] s, got {joint_tolerance}')
    if image_size is not None:
        size = (image_size,) * 2 if np.isscalar(image_size) else tuple(image_size)
        if len(size) != 2 or not all(0 < int(s) <= 8192 for s in size):
            raise ValueError(f'image_size must be a side or (height, width) in [1, 8192], '
                             f'got {image_size!r}')
        image_size = (int(size[0]), int(size[1]))
    path = Path(path).expanduser().absolute()
    _storage_path(path)  # fail early, naming the path, before touching the cache
    args = (topics, int(frame_skip), image_size, interpolation, float(joint_tolerance))
    if not cache:
        return _read_uncached(path, *args)
    params = {'topics': asdict(topics), 'frame_skip': args[1], 'image_size': image_size,
              'interpolation': interpolation, 'joint_tolerance': args[4]}
    file = Path(cache_dir or default_cache_dir()) / f'{path.name}-{_cache_key(path, params)}.npz'
    if file.is_file():
        try:
            return _load_npz(file, str(path))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning('%s: ignoring unreadable cache entry %s (%s)', path, file, err)
    episode = _read_uncached(path, *args)
    try:
        _save_npz(file, episode)
    except OSError as err:  # a read-only cache must not stop reading data
        log.warning('%s: cannot write cache entry %s (%s)', path, file, err)
    return episode


def read_bags(paths, topics: BagTopics | None = None, frame_skip: int = 1, *,
              image_size: int | tuple[int, int] | None = None, interpolation: str = 'area',
              joint_tolerance: float = 0.2, cache: bool = True, cache_dir=None,
              progress: bool = False) -> list[Episode]:
    """:func:`read_bag` on each path with the same settings; ``progress`` shows a tqdm bar."""
    paths = list(paths)
    if progress:
        from tqdm import tqdm
        paths = tqdm(paths, desc='reading bags', unit='bag')
    return [read_bag(p, topics, frame_skip, image_size=image_size, interpolation=interpolation,
                     joint_tolerance=joint_tolerance, cache=cache, cache_dir=cache_dir)
            for p in paths]
