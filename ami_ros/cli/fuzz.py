"""``ami-ros fuzz``: malformed messages into the running stack; it must survive and stay safe.

Starts the built-in simulator and the stack as child processes on a ROS_DOMAIN_ID of their own
(``ami-ros demo``'s :class:`~ami_ros.cli.demo.Stack`, layout ``two``: simulator | ``ami-ros
bringup``), every node publishing ``/diagnostics`` at 5 Hz. This process waits until the planner
is active, sends it a reachable goal pose (the simulator's goal marker) so that it commands the
arm, and then publishes ``--messages`` malformed messages at ``--rate``, one kind after the other
(:data:`KINDS`: broken camera frames, NaN or mismatched joint states, bad goals, latents and
beliefs of the wrong size or with NaN, NaN or wrong-length commands ...). After each block it
waits for the next ``/diagnostics`` round and records, per kind, how many messages the nodes that
read the topic counted (``errors`` / ``dropped`` of perception, world_model and planner, the
simulator's ``rejected_commands``) and the worst ``/diagnostics`` level reported with them.

It holds when every child process is still alive at the end, every command the planner sent
during the run is finite and inside the URDF position limits, the planner still commands after
the fuzz, every node still reports on ``/diagnostics`` and no kind made a node's callback raise
(an exception its callback guard caught: the process lives, but the input - and whatever else
that callback would have done - was dropped by accident; ``EXCEPTION``); exit code 0 then, 1
otherwise. Two kinds are valid but unusual frames (1280x960 camera frames, set ``is_bigendian``
flags): those must be *accepted*, seen as latents coming back from perception (``REFUSED`` if a
node counted them as errors). A kind no node counted or reported is listed as ``IGNORED``, a
finding that does not fail the run. ``--no-goal`` fuzzes the idle stack (no goal: no commands
in force). The table (one JSON object with ``--json``) goes to stdout, ``fuzz.json`` to
``--out`` and the children's logs to ``--out``/logs.
"""
from __future__ import annotations

import argparse
import array
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


MARK = 'ami_ros_fuzz'
"""frame_id of this tool's own messages where the frame does not matter: its trajectories are
left out of the safety check, its joint states out of the arm's state, and perception copies it
into the latents of the fuzzer's camera frames (how accepted frames are seen)."""
CAMERA_MARK = f'{MARK}/camera'
SOURCES = ('perception', 'world_model', 'planner', 'sim')
"""Who reports on /diagnostics: the three stack nodes and the simulator."""
LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}
GUARD_TEXT = 'failed, input dropped'
"""What :func:`ami_ros.nodes.common.guarded` logs for an exception it caught."""
TRAJECTORY_TOPIC = '/joint_trajectory_controller/joint_trajectory'
FORWARD_TOPIC = '/forward_position_controller/commands'
TOLERANCE = 1e-9
"""Position limits tolerance of the safety check, joint units."""


@dataclass(frozen=True)
class Kind:
    """One kind of malformed message: where it goes, who reads it, what must happen."""

    name: str
    topic: str
    msg: str
    """Message type: Image, JointState, PoseStamped, Float64MultiArray, JointTrajectory, Twist."""
    readers: tuple[str, ...]
    """Sources whose counters and /diagnostics count for this kind."""
    what: str
    expect: str = 'reject'
    """reject: some reader must count or report it; accept: valid, it must be encoded."""


KINDS = (
    Kind('image_unknown_encoding', '/camera/image_raw', 'Image', ('perception',),
         'encodings no decoder knows (jpeg, bayer, empty, random text)'),
    Kind('image_step_too_small', '/camera/image_raw', 'Image', ('perception',),
         'row step shorter than width x pixel size'),
    Kind('image_zero_size', '/camera/image_raw', 'Image', ('perception',),
         'width or height 0'),
    Kind('image_short_data', '/camera/image_raw', 'Image', ('perception',),
         'data shorter than height x step'),
    Kind('image_32fc1_nan', '/camera/image_raw', 'Image', ('perception',),
         '32FC1 frames holding NaN/inf'),
    Kind('image_absurd_size', '/camera/image_raw', 'Image', ('perception',),
         'headers claiming 8193 to 2^32-1 pixels a side, a few bytes of data'),
    Kind('image_large_frames', '/camera/image_raw', 'Image', ('perception',),
         'a burst of valid 1280x960 rgb8 noise frames', 'accept'),
    Kind('image_bigendian', '/camera/image_raw', 'Image', ('perception',),
         'valid rgb8 / mono16 frames with is_bigendian set (1..255)', 'accept'),
    Kind('joint_states_nan', '/joint_states', 'JointState', ('world_model', 'planner'),
         'the arm\'s joints with NaN/inf positions'),
    Kind('joint_states_length_mismatch', '/joint_states', 'JointState',
         ('world_model', 'planner'), 'four names, fewer positions'),
    Kind('joint_states_unknown_names', '/joint_states', 'JointState',
         ('world_model', 'planner'), 'only joints the arm does not have (a gripper\'s)'),
    Kind('goal_pose_nan', '/ami/goal_pose', 'PoseStamped', ('planner',),
         'NaN/inf in the goal position'),
    Kind('goal_pose_unreachable', '/ami/goal_pose', 'PoseStamped', ('planner',),
         'goal 10 m from the base'),
    Kind('goal_pose_wrong_frame', '/ami/goal_pose', 'PoseStamped', ('planner',),
         'reachable goal in map / base_link / odom ...'),
    Kind('goal_pose_bad_quaternion', '/ami/goal_pose', 'PoseStamped', ('planner',),
         'reachable goal, orientation of norm 0.01..0.5 or 1.5..10'),
    Kind('goal_image_garbage', '/ami/goal_image', 'Image', ('planner',),
         'goal images with unknown encodings, short data, zero size or short steps'),
    Kind('latent_wrong_size', '/ami/latent', 'Image', ('world_model', 'planner'),
         '32FC1 latents of the wrong shape (or not 32FC1, or short data)'),
    Kind('latent_nan', '/ami/latent', 'Image', ('world_model', 'planner'),
         'latents of the right shape holding NaN/inf'),
    Kind('belief_wrong_size', '/ami/belief', 'Image', ('planner',),
         'beliefs of the wrong shape (or not 32FC1, or short data)'),
    Kind('belief_nan', '/ami/belief', 'Image', ('planner',),
         'beliefs of the right shape holding NaN/inf'),
    Kind('forward_nan', FORWARD_TOPIC, 'Float64MultiArray', ('sim', 'world_model'),
         'four position targets with NaN/inf'),
    Kind('forward_wrong_length', FORWARD_TOPIC, 'Float64MultiArray', ('sim', 'world_model'),
         '0-3 or 5-8 position targets'),
    Kind('trajectory_nan', TRAJECTORY_TOPIC, 'JointTrajectory', ('sim', 'world_model'),
         'trajectories with NaN/inf positions'),
    Kind('trajectory_malformed', TRAJECTORY_TOPIC, 'JointTrajectory', ('sim', 'world_model'),
         'no points, unknown joints, time going back, 10 rad targets, short points'),
    Kind('cmd_vel_nan', '/cmd_vel', 'Twist', ('world_model',),
         'a Twist with NaN/inf (the arm takes no Twist)'),
)
KIND_NAMES = tuple(k.name for k in KINDS)
MIN_READERS = {'/camera/image_raw': 1, '/joint_states': 2, '/ami/goal_pose': 1,
               '/ami/goal_image': 1, '/ami/latent': 2, '/ami/belief': 1, FORWARD_TOPIC: 2,
               TRAJECTORY_TOPIC: 2, '/cmd_vel': 1}
"""Subscriptions of the stack each fuzzed topic has (this tool's own are counted on top)."""


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument('--messages', type=int, default=10000,
                   help='malformed messages to send, split evenly over the kinds')
    p.add_argument('--rate', type=float, default=500.0, help='messages per second')
    p.add_argument('--seed', type=int, default=0, help='seed of the malformed messages')
    p.add_argument('--kinds', nargs='+', choices=KIND_NAMES, default=None, metavar='KIND',
                   help=f'only these kinds (default: all): {", ".join(KIND_NAMES)}')
    p.add_argument('--no-goal', action='store_true',
                   help='fuzz the stack idle: no goal, so the planner sends no command (and the '
                        'world model predicts with the measured joints instead)')
    p.add_argument('--large-frames', type=int, default=40,
                   help='at most this many 1280x960 frames in the image_large_frames burst')
    p.add_argument('--checkpoint', default='arm_reach',
                   help='world model: shipped model name, checkpoint or training output dir')
    p.add_argument('--out', type=Path, default=Path('runs') / 'fuzz',
                   help='directory for fuzz.json, the parameters file and the logs')
    p.add_argument('--startup-timeout', type=float, default=180.0,
                   help='wall seconds the processes may take to start and load the model')
    p.add_argument('--settle-timeout', type=float, default=4.0,
                   help='wall seconds to wait after a block for /diagnostics to catch up')
    p.add_argument('--resume-timeout', type=float, default=10.0,
                   help='wall seconds the planner may take to command again after the fuzz')
    p.add_argument('--json', action='store_true',
                   help='print one JSON object on stdout (progress on stderr)')


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StackDied(RuntimeError):
    """A child process exited while the fuzzer ran."""


@dataclass
class Report:
    """One /diagnostics status of one source, as received."""

    t: float
    level: int
    message: str
    values: dict

    def count(self, key: str) -> int:
        try:
            return int(float(self.values.get(key, 0)))
        except (TypeError, ValueError):
            return 0

    @property
    def counters(self) -> tuple[int, int, int]:
        return self.count('errors'), self.count('dropped'), self.count('rejected_commands')


def _source(status_name: str) -> str | None:
    """'perception' | 'world_model' | 'planner' | 'sim' for a status name, else None."""
    if status_name.startswith('sim:'):
        return 'sim'
    name = status_name.rsplit('/', 1)[-1]
    return name if name in SOURCES else None


def _counted(before: Report | None, after: Report | None, source: str) -> dict[str, int]:
    """The increase of a source's counters between two reports."""
    if before is None or after is None:
        return {}
    if source == 'sim':
        return {'rejected': after.count('rejected_commands') - before.count('rejected_commands')}
    return {'errors': after.count('errors') - before.count('errors'),
            'dropped': after.count('dropped') - before.count('dropped')}


# ------------------------------------------------------------------------------ the messages ---
class Messages:
    """Makes the malformed messages of each kind from a seeded generator."""

    def __init__(self, rng: np.random.Generator, joint_names: tuple[str, ...], lower, upper,
                 latent_dim: int):
        from builtin_interfaces.msg import Time

        self.rng, self.joints, self.latent_dim = rng, tuple(joint_names), int(latent_dim)
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.stamp = Time()  # sim time of the newest joint state: set by the fuzzer
        self.position = np.zeros(len(self.joints))  # the arm's measured joints
        self.goal = np.array([0.3, 0.0, 0.3])  # a reachable goal: set by the fuzzer
        self._large: list = []

    def make(self, kind: str):
        return getattr(self, kind)()

    # -- helpers --------------------------------------------------------------------------------

    def _bytes(self, n: int) -> array.array:
        return array.array('B', self.rng.integers(0, 256, int(n), dtype=np.uint8).tobytes())

    def _image(self, encoding: str, height: int, width: int, step: int, data,
               frame_id: str = CAMERA_MARK, bigendian: int = 0):
        from sensor_msgs.msg import Image

        msg = Image(encoding=encoding, height=int(height), width=int(width), step=int(step),
                    is_bigendian=int(bigendian))
        msg.header.stamp, msg.header.frame_id = self.stamp, frame_id
        msg.data = data if isinstance(data, array.array) else self._bytes(data)
        return msg

    def _nonfinite(self, values: np.ndarray) -> np.ndarray:
        """``values`` with NaN/inf in at least one random place."""
        values = np.array(values, dtype=np.float64).reshape(-1)
        hit = self.rng.random(values.size) < 0.5
        hit[self.rng.integers(values.size)] = True
        values[hit] = self.rng.choice([np.nan, np.inf, -np.inf], int(hit.sum()))
        return values

    def _text(self) -> str:
        letters = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ -./'
        return ''.join(self.rng.choice(list(letters), int(self.rng.integers(1, 16))))

    def _bad_image(self, frame_id: str):
        """One of: unknown encoding, step too small, zero size, data too short."""
        which = int(self.rng.integers(4))
        if which == 0:
            return self._image(self._encoding(), 32, 32, 96, 32 * 96, frame_id)
        if which == 1:
            return self._image('rgb8', 32, 32, int(self.rng.integers(0, 96)), 32 * 96, frame_id)
        if which == 2:
            w, h = [(0, 32), (32, 0), (0, 0)][int(self.rng.integers(3))]
            return self._image('rgb8', h, w, w * 3, int(self.rng.integers(0, 64)), frame_id)
        return self._image('rgb8', 32, 32, 96, int(self.rng.integers(0, 32 * 96)), frame_id)

    def _encoding(self) -> str:
        names = ['jpeg', 'png', 'bayer_rggb8', 'RGB8', 'rgb 8', '', 'nv21', 'mono12', '32FC1x',
                 '64FC1', '32FC3']
        return names[int(self.rng.integers(len(names)))] if self.rng.random() < 0.7 \
            else self._text()

    def _latent(self, frame_id: str, bad_shape: bool):
        d = self.latent_dim
        if bad_shape:
            which = int(self.rng.integers(4))
            if which == 0:  # not 32FC1
                return self._image(['rgb8', 'mono8', '64FC1', ''][int(self.rng.integers(4))], 1,
                                   d, 4 * d, 4 * d, frame_id)
            if which == 1:  # short data
                return self._image('32FC1', 1, d, 4 * d, int(self.rng.integers(0, 4 * d)),
                                   frame_id)
            while True:  # another shape
                h, w = int(self.rng.integers(0, 4)), int(self.rng.integers(0, 2 * d + 1))
                if (h, w) != (1, d):
                    break
            z = self.rng.standard_normal((h, w)).astype('<f4')
            return self._image('32FC1', h, w, 4 * w, array.array('B', z.tobytes()), frame_id)
        z = self._nonfinite(self.rng.standard_normal(d)).astype('<f4')
        return self._image('32FC1', 1, d, 4 * d, array.array('B', z.tobytes()), frame_id)

    def _joint_state(self, names, positions):
        from sensor_msgs.msg import JointState

        msg = JointState(name=list(names), position=[float(v) for v in positions])
        msg.header.stamp, msg.header.frame_id = self.stamp, MARK
        return msg

    def _pose(self, position, quaternion=(0.0, 0.0, 0.0, 1.0), frame_id: str = 'world'):
        from geometry_msgs.msg import PoseStamped

        msg = PoseStamped()
        msg.header.frame_id = frame_id
        p, o = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = (float(v) for v in position)
        o.x, o.y, o.z, o.w = (float(v) for v in quaternion)
        return msg

    def _floats(self, values):
        from std_msgs.msg import Float64MultiArray

        return Float64MultiArray(data=[float(v) for v in values])

    def _trajectory(self, names, points, times=None):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory(joint_names=list(names))
        msg.header.frame_id = MARK
        times = times if times is not None else [0.1 * (i + 1) for i in range(len(points))]
        for q, t in zip(points, times):
            sec = math.floor(t)
            msg.points.append(JointTrajectoryPoint(
                positions=[float(v) for v in q],
                time_from_start=Duration(sec=int(sec), nanosec=int((t - sec) * 1e9))))
        return msg

    def _inside(self) -> np.ndarray:
        """A random target inside the joint limits."""
        return self.lower + self.rng.random(len(self.joints)) * (self.upper - self.lower)

    # -- camera ---------------------------------------------------------------------------------

    def image_unknown_encoding(self):
        return self._image(self._encoding(), 64, 64, 192, 64 * 192)

    def image_step_too_small(self):
        encoding, channels, size = [('rgb8', 3, 1), ('bgr8', 3, 1), ('mono8', 1, 1),
                                    ('rgba8', 4, 1), ('mono16', 1, 2)][int(self.rng.integers(5))]
        row = 64 * channels * size
        return self._image(encoding, 64, 64, int(self.rng.integers(0, row)), 64 * row)

    def image_zero_size(self):
        w, h = [(0, 64), (64, 0), (0, 0)][int(self.rng.integers(3))]
        return self._image('rgb8', h, w, 3 * w, int(self.rng.integers(0, 256)))

    def image_short_data(self):
        return self._image('rgb8', 64, 64, 192, int(self.rng.integers(0, 64 * 192)))

    def image_32fc1_nan(self):
        z = self._nonfinite(self.rng.standard_normal(64 * 64)).astype('<f4')
        return self._image('32FC1', 64, 64, 256, array.array('B', z.tobytes()))

    def image_absurd_size(self):
        side = [8193, 100_000, 2**31, 2**32 - 1][int(self.rng.integers(4))]
        h, w = (side, 64) if self.rng.random() < 0.5 else (64, side)
        return self._image('rgb8', h, w, min(3 * w, 2**32 - 1), int(self.rng.integers(0, 1024)))

    def image_large_frames(self):
        if not self._large:  # three noise frames, sent in turn (making each would take longer)
            self._large = [self._image('rgb8', 960, 1280, 3840, 960 * 3840) for _ in range(3)]
        msg = self._large[int(self.rng.integers(3))]
        msg.header.stamp = self.stamp
        return msg

    def image_bigendian(self):
        flag = int(self.rng.integers(1, 256))
        if self.rng.random() < 0.5:
            return self._image('rgb8', 64, 64, 192, 64 * 192, bigendian=flag)
        encoding = 'mono16' if self.rng.random() < 0.5 else '16UC1'
        return self._image(encoding, 64, 64, 128, 64 * 128, bigendian=flag)

    # -- joint states ---------------------------------------------------------------------------

    def joint_states_nan(self):
        return self._joint_state(self.joints, self._nonfinite(self.position))

    def joint_states_length_mismatch(self):
        n = int(self.rng.integers(0, len(self.joints)))
        return self._joint_state(self.joints, self.position[:n])

    def joint_states_unknown_names(self):
        names = ['gripper_finger_joint', 'gripper_left_finger_joint', 'wheel_left_joint',
                 'camera_pan_joint', 'tool_changer']
        chosen = list(self.rng.choice(names, int(self.rng.integers(1, 3)), replace=False))
        return self._joint_state(chosen, self.rng.uniform(-0.1, 0.1, len(chosen)))

    # -- goals ----------------------------------------------------------------------------------

    def goal_pose_nan(self):
        return self._pose(self._nonfinite(self.goal))

    def goal_pose_unreachable(self):
        direction = self.rng.standard_normal(3)
        return self._pose(10.0 * direction / np.linalg.norm(direction))

    def goal_pose_wrong_frame(self):
        frames = ['map', 'base_link', 'odom', 'camera_optical_frame', 'World', '/world', 'tool0']
        return self._pose(self.goal, frame_id=frames[int(self.rng.integers(len(frames)))])

    def goal_pose_bad_quaternion(self):
        q = self.rng.standard_normal(4)
        norm = self.rng.uniform(0.01, 0.5) if self.rng.random() < 0.5 else \
            self.rng.uniform(1.5, 10.0)
        return self._pose(self.goal, norm * q / np.linalg.norm(q))

    def goal_image_garbage(self):
        # stamp 0 ("now"): the planner takes a goal once per (stamp, frame_id), so goals that
        # share a stamp would be skipped before they are even looked at
        from builtin_interfaces.msg import Time

        msg = self._bad_image(MARK)
        msg.header.stamp = Time()
        return msg

    # -- latents --------------------------------------------------------------------------------

    def latent_wrong_size(self):
        return self._latent(MARK, bad_shape=True)

    def latent_nan(self):
        return self._latent(MARK, bad_shape=False)

    def belief_wrong_size(self):
        return self._latent(MARK, bad_shape=True)

    def belief_nan(self):
        return self._latent(MARK, bad_shape=False)

    # -- commands -------------------------------------------------------------------------------

    def forward_nan(self):
        return self._floats(self._nonfinite(self._inside()))

    def forward_wrong_length(self):
        n = [0, 1, 2, 3, 5, 6, 8][int(self.rng.integers(7))]
        return self._floats(self.rng.uniform(-0.1, 0.1, n))

    def trajectory_nan(self):
        points = [self._inside() for _ in range(int(self.rng.integers(1, 4)))]
        points[int(self.rng.integers(len(points)))] = self._nonfinite(points[0])
        return self._trajectory(self.joints, points)

    def trajectory_malformed(self):
        which = int(self.rng.integers(5))
        if which == 0:
            return self._trajectory(self.joints, [])
        if which == 1:
            names = list(self.joints)
            names[int(self.rng.integers(len(names)))] = 'gripper_finger_joint'
            return self._trajectory(names, [self._inside()])
        if which == 2:
            return self._trajectory(self.joints, [self._inside(), self._inside()], [0.2, 0.1])
        if which == 3:
            q = self._inside()
            q[int(self.rng.integers(q.size))] = 10.0 * (1 if self.rng.random() < 0.5 else -1)
            return self._trajectory(self.joints, [q])
        return self._trajectory(self.joints, [self._inside()[:int(self.rng.integers(4))]])

    def cmd_vel_nan(self):
        from geometry_msgs.msg import Twist

        v = self._nonfinite(np.zeros(6))
        msg = Twist()
        msg.linear.x, msg.linear.y, msg.linear.z = (float(x) for x in v[:3])
        msg.angular.x, msg.angular.y, msg.angular.z = (float(x) for x in v[3:])
        return msg


# ------------------------------------------------------------------------------------ the run ---
class Fuzzer:
    """One fuzz run: children up, a goal, the blocks of malformed messages, the checks."""

    def __init__(self, args, out: Path, checkpoint: Path, interrupt):
        from ami_ros.cli.demo import Stack, ros_environment
        from ami_ros.paths import urdf_path
        from ami_ros.safety import Limits

        self.args, self.out, self.checkpoint, self.interrupt = args, out, checkpoint, interrupt
        self.limits = Limits.from_urdf(urdf_path('arm_reach'))
        self.env, self.domain = ros_environment(out)
        params = out / 'fuzz_params.yaml'
        params.write_text('# written by ami-ros fuzz: error counters on /diagnostics at 5 Hz\n'
                          '/**:\n  ros__parameters:\n    diagnostics_hz: 5.0\n')
        self.stack = Stack('two', checkpoint, self.env, out / 'logs', params)
        self.kinds = [k for k in KINDS if args.kinds is None or k.name in args.kinds]
        # what the subscriptions collect
        self.reports: dict[str, list[Report]] = {s: [] for s in SOURCES}
        self.commands = 0
        self.unsafe: list[str] = []
        self.unsafe_count = 0
        self.joints_seen = 0
        self.sim_goal = None
        self.latents_back = 0  # latents perception made from this tool's camera frames
        self.latent_dim = None  # width of perception's own latents (the model's state size)
        self.crash: dict | None = None
        self._partial: dict | None = None  # the block being sent

    # -- ROS side -------------------------------------------------------------------------------

    def _setup(self, context) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, Twist
        from rclpy.event_handler import PublisherEventCallbacks
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.executor = SingleThreadedExecutor(context=context)
        node = self.node = Node('ami_ros_fuzz', context=context)
        self.executor.add_node(node)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        node.create_subscription(JointTrajectory, TRAJECTORY_TOPIC, self._on_command, 50)
        node.create_subscription(JointState, '/joint_states', self._on_joint_states, 10)
        node.create_subscription(PoseStamped, '/sim/goal_pose', self._on_sim_goal, 10)
        node.create_subscription(Image, '/ami/latent', self._on_latent, 50)
        types = {'Image': Image, 'JointState': JointState, 'PoseStamped': PoseStamped,
                 'Float64MultiArray': Float64MultiArray, 'JointTrajectory': JointTrajectory,
                 'Twist': Twist}
        # the planner also subscribes to goals latched; these volatile publishers reach its
        # volatile subscriptions, and rclpy's warning about the latched ones is silenced
        quiet = PublisherEventCallbacks(incompatible_qos=lambda info: None)
        self.pubs = {}
        for kind in self.kinds:
            if kind.topic not in self.pubs:
                qos = qos_profile_sensor_data if kind.topic == '/camera/image_raw' else 10
                self.pubs[kind.topic] = node.create_publisher(
                    types[kind.msg], kind.topic, qos,
                    event_callbacks=quiet if kind.topic.startswith('/ami/goal') else None)
        self.goal_pub = self.pubs.get('/ami/goal_pose') or node.create_publisher(
            PoseStamped, '/ami/goal_pose', 10, event_callbacks=quiet)
        self.messages = Messages(np.random.default_rng(self.args.seed), self.limits.names,
                                 self.limits.lower, self.limits.upper, 1)

    def _on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        for status in msg.status:
            source = _source(status.name)
            if source is None:
                continue
            level = status.level[0] if isinstance(status.level, (bytes, bytearray)) \
                else int(status.level)
            self.reports[source].append(Report(now, int(level), status.message,
                                               {kv.key: kv.value for kv in status.values}))

    def _on_command(self, msg) -> None:
        if msg.header.frame_id == MARK:
            return  # one of ours (trajectory kinds), not the planner's
        self.commands += 1
        problem = self._unsafe(msg)
        if problem:
            self.unsafe_count += 1
            if len(self.unsafe) < 10:
                self.unsafe.append(problem)

    def _unsafe(self, msg) -> str:
        """'' for a command inside the limits, else what is wrong with it."""
        names = list(msg.joint_names)
        try:
            order = [names.index(n) for n in self.limits.names]
        except ValueError:
            return f'joint_names {names} do not cover {list(self.limits.names)}'
        if not msg.points:
            return 'a trajectory without points'
        for i, point in enumerate(msg.points):
            q = np.asarray(point.positions, dtype=np.float64)
            if q.shape != (len(names),):
                return f'point {i} has {q.size} positions for {len(names)} joints'
            q = q[order]
            if not np.all(np.isfinite(q)):
                return f'point {i} is not finite: {q.tolist()}'
            out = (q < self.limits.lower - TOLERANCE) | (q > self.limits.upper + TOLERANCE)
            if np.any(out):
                return (f'point {i} beyond the URDF limits: ' + ', '.join(
                    f'{n}={v:.6g} not in [{lo:.6g}, {hi:.6g}]' for n, v, lo, hi, o in zip(
                        self.limits.names, q, self.limits.lower, self.limits.upper, out) if o))
        return ''

    def _on_joint_states(self, msg) -> None:
        if msg.header.frame_id == MARK:
            return
        try:
            index = [list(msg.name).index(n) for n in self.limits.names]
            self.messages.position = np.asarray(msg.position, dtype=np.float64)[index]
        except (ValueError, IndexError):
            return
        self.messages.stamp = msg.header.stamp
        self.joints_seen += 1

    def _on_sim_goal(self, msg) -> None:
        p = msg.pose.position
        self.sim_goal = np.array([p.x, p.y, p.z])

    def _on_latent(self, msg) -> None:
        if msg.header.frame_id == CAMERA_MARK:
            self.latents_back += 1
        elif not msg.header.frame_id.startswith(MARK) and msg.height == 1 and \
                self.latent_dim is None:
            self.latent_dim = self.messages.latent_dim = int(msg.width)

    # -- waiting --------------------------------------------------------------------------------

    def _spin(self, seconds: float = 0.05) -> None:
        self.interrupt.check()
        for name, proc in self.stack.procs.items():
            if proc.poll() is not None:
                raise StackDied(f'{name} exited with code {proc.returncode}')
        self.executor.spin_once(timeout_sec=max(seconds, 0.0))

    def _spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self._spin(min(0.05, max(deadline - time.monotonic(), 0.0)))
        return True

    def _last(self, source: str) -> Report | None:
        reports = self.reports[source]
        return reports[-1] if reports else None

    def _value(self, source: str, key: str, default: str = '') -> str:
        last = self._last(source)
        return str(last.values.get(key, default)) if last else default

    def _wait_ready(self) -> None:
        checks = {
            'the planner active on /diagnostics':
                lambda: self._value('planner', 'lifecycle_state') == 'active',
            'joint states from the simulator': lambda: self.joints_seen > 0,
            'the simulator\'s goal on /sim/goal_pose': lambda: self.sim_goal is not None,
            'a latent from perception': lambda: self.latent_dim is not None,
            'a belief from world_model':
                lambda: float(self._value('world_model', 'belief_stamp', '-1')) > 0,
            'a goal subscription': lambda: self.goal_pub.get_subscription_count() > 0,
        }
        deadline = time.monotonic() + float(self.args.startup_timeout)
        while True:
            missing = [name for name, ok in checks.items() if not ok()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f'the stack did not come up in {self.args.startup_timeout} s:'
                                   f' no {", ".join(missing)} (logs in {self.stack.log_dir})')
            self._spin(0.1)

    def _send_goal(self) -> np.ndarray:
        """A reachable goal pose (the simulator's goal marker) until the planner commands."""
        goal = self.sim_goal.copy()
        self.messages.goal = goal
        msg = self.messages._pose(goal)
        for attempt in range(5):
            before = self.commands
            self.goal_pub.publish(msg)
            if self._spin_until(lambda: self.commands >= before + 3, 4.0):
                return goal
            _log(f'fuzz: no command 4 s after goal {attempt + 1}; sending it again')
        raise RuntimeError(f'the planner sent no command after 5 goals '
                           f'(logs in {self.stack.log_dir})')

    def _wait_matched(self) -> None:
        """Every fuzzed topic's publisher matched with the stack's subscriptions (or 10 s)."""
        def short():
            return [t for t, pub in self.pubs.items()
                    if pub.get_subscription_count() < MIN_READERS.get(t, 1)]
        if not self._spin_until(lambda: not short(), 10.0):
            _log(f'fuzz: warning: fewer subscribers than expected on {", ".join(short())}')

    def _settle(self, t_end: float) -> bool:
        """Spin until every source reported twice since ``t_end`` with steady counters."""
        deadline = t_end + float(self.args.settle_timeout)

        def steady() -> bool:
            for reports in self.reports.values():
                if len(reports) < 2 or reports[-2].t <= t_end or \
                        reports[-1].counters != reports[-2].counters:
                    return False
            return True
        return self._spin_until(steady, max(deadline - time.monotonic(), 0.0))

    # -- the blocks -----------------------------------------------------------------------------

    def _shares(self) -> dict[str, int]:
        n, k = int(self.args.messages), len(self.kinds)
        shares = {kind.name: n // k + (1 if i < n % k else 0) for i, kind in enumerate(self.kinds)}
        if 'image_large_frames' in shares:
            shares['image_large_frames'] = min(shares['image_large_frames'],
                                               int(self.args.large_frames))
        return shares

    def _block(self, kind: Kind, n: int) -> dict:
        start = {s: len(r) for s, r in self.reports.items()}
        before = {s: self._last(s) for s in SOURCES}
        commands0, unsafe0, latents0 = self.commands, self.unsafe_count, self.latents_back
        pub, period = self.pubs[kind.topic], 1.0 / float(self.args.rate)
        t0 = time.monotonic()
        sent = 0
        result = self._partial = {
            'kind': kind.name, 'topic': kind.topic, 'type': kind.msg, 'what': kind.what,
            'expect': kind.expect, 'sent': 0, 'counted': 0, 'counted_by': {}, 'accepted': None,
            'level': None, 'message': '', 'exceptions': [], 'outcome': 'CRASH', 'commands': 0,
            'unsafe': 0}
        try:
            for i in range(n):
                pub.publish(self.messages.make(kind.name))
                sent += 1
                self._spin(0.0)  # once per message even when behind: callbacks, crash check
                while (wait := t0 + (i + 1) * period - time.monotonic()) > 0:
                    self._spin(wait)
            t_end = time.monotonic()
            settled = self._settle(t_end)
        finally:
            result['sent'] = sent
            result['wall_s'] = time.monotonic() - t0
        after = {s: self._last(s) for s in SOURCES}
        by_node = {s: _counted(before[s], after[s], s) for s in SOURCES}
        counted = {s: max(by_node[s].values(), default=0) for s in kind.readers}
        # reports from the readers that came with new errors: their level and message
        level, message, exceptions = 0, '', []
        for s in kind.readers:
            previous = self.reports[s][start[s] - 1] if start[s] else None
            for report in self.reports[s][start[s]:]:
                new = previous is not None and any(
                    a > b for a, b in zip(report.counters, previous.counters))
                previous = report
                if not new or report.level < 1:
                    continue
                if report.level > level:
                    level, message = report.level, f'{s}: {report.message}'
                if GUARD_TEXT in report.message or GUARD_TEXT in report.values.get(
                        'last_error', ''):
                    exceptions.append(f'{s}: {report.values.get("last_error") or report.message}')
        accepted = self.latents_back - latents0
        total = sum(max(v, 0) for v in counted.values())
        if exceptions:
            outcome = 'EXCEPTION'
        elif kind.expect == 'accept':
            # valid frames: refused = a bug; none back = lost on the way (sensor-data QoS is
            # best effort, and multi-megabyte frames travel as many UDP fragments)
            outcome = 'REFUSED' if total > 0 else 'accepted' if accepted > 0 else 'not received'
        else:
            outcome = 'rejected' if total > 0 or level >= 1 else 'IGNORED'
        result.update({
            'counted': total, 'counted_by': {s: v for s, v in counted.items() if v > 0},
            'accepted': accepted if kind.expect == 'accept' else None,
            'level': LEVELS.get(level) if level else None, 'message': message[:300],
            'exceptions': sorted(set(exceptions))[:5], 'outcome': outcome,
            'commands': self.commands - commands0, 'unsafe': self.unsafe_count - unsafe0,
            'all_nodes': by_node, 'diagnostics_settled': settled})
        self._partial = None
        return result

    # -- the whole run --------------------------------------------------------------------------

    def run(self) -> dict:
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        for key in ('ROS_DOMAIN_ID', 'ROS_LOG_DIR', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                    'ROS_LOCALHOST_ONLY'):
            if key in self.env:
                os.environ[key] = self.env[key]
        wall0 = time.monotonic()
        context = rclpy.Context()
        # no rclpy signal handlers: Ctrl-C stays a KeyboardInterrupt, so finally-blocks run
        rclpy.init(context=context, domain_id=self.domain,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.executor = self.node = None
        blocks, after, baseline, goal, startup_s = [], {}, {}, None, None
        commanding = not self.args.no_goal
        try:
            try:
                self.stack.start()
                _log(f'fuzz: sim | stack ({", ".join(self.stack.procs)}), ROS_DOMAIN_ID '
                     f'{self.domain}, model {self.checkpoint}; logs in {self.stack.log_dir}')
                self._setup(context)
                self._wait_ready()
                if commanding:
                    goal = self._send_goal()
                else:  # for the goal kinds' reachable positions only
                    goal = self.messages.goal = self.sim_goal.copy()
                startup_s = time.monotonic() - wall0
                _log('fuzz: stack up' + (' and commanding' if commanding else ', no goal sent')
                     + f' in {startup_s:.1f} s; goal {np.round(goal, 3).tolist()}')
                self._wait_matched()
                baseline = self._baseline()
                for kind, n in zip(self.kinds, self._shares().values()):
                    blocks.append(self._block(kind, n))
                    b = blocks[-1]
                    _log(f'fuzz: {kind.name}: sent {b["sent"]}, counted {b["counted"]}'
                         + (f', accepted {b["accepted"]}' if b['accepted'] is not None else '')
                         + f', level {b["level"] or "-"}: {b["outcome"]}')
                after = self._after(commanding)
            except StackDied as e:
                self._record_crash(str(e), blocks)
            finally:
                alive = {name: proc.poll() is None for name, proc in self.stack.procs.items()}
                exit_codes = self.stack.stop()
        finally:
            if self.executor is not None:
                self.executor.shutdown(timeout_sec=5.0)
            if self.node is not None:
                self.node.destroy_node()
            context.try_shutdown()
        return self._summary(blocks, after, baseline, goal, alive, exit_codes, startup_s,
                             time.monotonic() - wall0)

    def _baseline(self) -> dict:
        """Counter increases over two seconds of no fuzzing: what happens anyway."""
        before = {s: self._last(s) for s in SOURCES}
        t = time.monotonic()
        self._spin_until(lambda: False, 2.0)
        self._settle(t)
        return {s: _counted(before[s], self._last(s), s) for s in SOURCES}

    def _after(self, commanding: bool) -> dict:
        """Whether the planner commands again and every node still reports, after the fuzz."""
        t0, n0 = time.monotonic(), self.commands
        resumed = self._spin_until(lambda: self.commands >= n0 + 3,
                                   float(self.args.resume_timeout)) if commanding else None
        resumed_s = time.monotonic() - t0 if resumed else None
        t = time.monotonic()
        reporting = self._spin_until(
            lambda: all(r and r[-1].t > t for r in self.reports.values()), 5.0)
        silent = [s for s, r in self.reports.items() if not r or r[-1].t <= t]
        try:
            self.stack.check()  # every child still alive after the whole fuzz
        except RuntimeError as e:
            raise StackDied(str(e).split(';', 1)[0]) from None
        planner = self._last('planner')
        return {'commands_after_fuzz': self.commands - n0, 'resumed': resumed,
                'resumed_s': resumed_s, 'all_reporting': reporting, 'silent': silent,
                'planner': {k: planner.values.get(k) for k in (
                    'state', 'hold_reason', 'goal', 'commands', 'hold_ticks', 'rejected_goals',
                    'errors', 'dropped', 'unsafe_blocked')} if planner else {}}

    def _record_crash(self, what: str, blocks: list) -> None:
        # a crash inside a block leaves that block unfinished: it is listed as CRASH
        current = self._partial['kind'] if self._partial else \
            'after the fuzz' if len(blocks) == len(self.kinds) else 'before the fuzz'
        if self._partial:
            blocks.append(self._partial)
        name = what.split(' ', 1)[0]
        self.crash = {'process': name, 'during_kind': current, 'error': what,
                      'log': str(self.stack.log_dir / f'{name}.log'),
                      'log_tail': self.stack.log_tail(name, 4000)}
        _log(f'fuzz: CRASH: {what} during {current}; the end of its log:\n'
             f'{self.crash["log_tail"]}')

    def _log_findings(self) -> dict:
        """Tracebacks and exceptions caught by callback guards, from the children's logs."""
        found = {}
        for name in self.stack.procs:
            text = self.stack.log_tail(name, 10**8)
            guards = sorted(set(re.findall(rf'([\w/~.:]+ {GUARD_TEXT}: [^\n]{{0,200}})', text)))
            found[name] = {'tracebacks': text.count('Traceback (most recent call last)'),
                           'guard_exceptions': guards[:10]}
        return found

    def _summary(self, blocks, after, baseline, goal, alive, exit_codes, startup_s,
                 wall_s) -> dict:
        sent = sum(b['sent'] for b in blocks)
        failures = []
        if self.crash:
            failures.append(f'{self.crash["error"]} during {self.crash["during_kind"]}')
        dead = [n for n, a in alive.items() if not a]
        if dead and not self.crash:
            failures.append(f'not alive at the end: {", ".join(dead)}')
        if self.unsafe_count:
            failures.append(f'{self.unsafe_count} unsafe planner commands')
        if self.commands == 0 and not self.args.no_goal:
            failures.append('no planner command was checked')
        if not self.crash and after and after['resumed'] is False:
            failures.append(f'the planner did not command again within '
                            f'{self.args.resume_timeout} s after the fuzz')
        if not self.crash and after and not after['all_reporting']:
            failures.append(f'no /diagnostics after the fuzz from {", ".join(after["silent"])}')
        if not self.crash and len(blocks) < len(self.kinds):
            failures.append('not every kind was sent')
        for b in blocks:
            if b['outcome'] in ('EXCEPTION', 'REFUSED'):
                failures.append(f'{b["kind"]}: ' + ('a callback raised: ' + b['exceptions'][0]
                                                    if b['exceptions'] else 'valid frames refused'))
        return {
            'ok': not failures, 'failures': failures,
            'kinds': blocks, 'messages_sent': sent, 'messages_requested': self.args.messages,
            'rate_hz': self.args.rate, 'seed': self.args.seed, 'goal_sent': not self.args.no_goal,
            'processes_alive': all(alive.values()) and bool(alive), 'alive': alive,
            'exit_codes': exit_codes, 'crash': self.crash,
            'commands_checked': self.commands, 'unsafe_commands': self.unsafe_count,
            'unsafe_examples': self.unsafe, **after,
            'ignored_kinds': [b['kind'] for b in blocks if b['outcome'] == 'IGNORED'],
            'exception_kinds': [b['kind'] for b in blocks if b['outcome'] == 'EXCEPTION'],
            'baseline_2s': baseline, 'logs_findings': self._log_findings(),
            'goal': None if goal is None else goal.tolist(), 'startup_s': startup_s,
            'wall_s': wall_s, 'domain_id': self.domain,
            'checkpoint': str(self.checkpoint), 'logs': str(self.stack.log_dir),
            'limits': {'joints': list(self.limits.names), 'lower': self.limits.lower.tolist(),
                       'upper': self.limits.upper.tolist(), 'tolerance': TOLERANCE},
        }


# ------------------------------------------------------------------------------------ output ---
def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title='ami-ros fuzz: malformed messages into the running stack')
    for col, justify in (('kind', 'left'), ('topic', 'left'), ('sent', 'right'),
                         ('counted (by)', 'left'), ('level', 'left'), ('commands', 'right'),
                         ('outcome', 'left')):
        table.add_column(col, justify=justify)
    colour = {'rejected': 'green', 'accepted': 'green'}
    for b in summary['kinds']:
        if b['expect'] == 'accept':
            counted = f'{b["accepted"]} encoded'
        else:
            counted = ', '.join(f'{s} {v}' for s, v in b['counted_by'].items()) or '0'
        c = colour.get(b['outcome'], 'red')
        table.add_row(b['kind'], b['topic'], str(b['sent']), counted, b['level'] or '-',
                      str(b['commands']), f'[{c}]{b["outcome"]}[/]')
    console.print(table)
    alive = ', '.join(f'{n} {"alive" if a else "DEAD"}' for n, a in summary['alive'].items())
    resumed = summary.get('resumed_s')
    after = 'no goal sent' if not summary['goal_sent'] else \
        f'yes ({resumed:.1f} s)' if resumed is not None else 'NO'
    console.print(
        f'{summary["messages_sent"]} messages sent at {summary["rate_hz"]:g} Hz; processes: '
        f'{alive}; {summary["commands_checked"]} planner commands checked, '
        f'{summary["unsafe_commands"]} unsafe; commanding after the fuzz: {after}; wall time '
        f'{summary["wall_s"]:.0f} s')
    if summary['crash']:
        c = summary['crash']
        console.print(f'[red]CRASH[/]: {c["error"]} during {c["during_kind"]} (log {c["log"]})')
    for problem in summary['unsafe_examples']:
        console.print(f'[red]unsafe command[/]: {problem}')
    for name in summary['ignored_kinds']:
        console.print(f'[yellow]ignored[/]: {name}: no node counted or reported it')
    for b in summary['kinds']:
        for e in b['exceptions']:
            console.print(f'[red]exception[/] ({b["kind"]}): {e}')
    console.print(('[green]PASS[/]' if summary['ok'] else '[red]FAIL[/]: '
                   + '; '.join(summary['failures'])) + f' (logs in {summary["logs"]})')


def run(args) -> int:
    from ami_ros.cli.demo import arm_reach_checkpoint, run_and_report
    from ami_ros.model.checkpoint import CheckpointError

    try:
        if args.messages < 1:
            raise ValueError(f'--messages must be >= 1, got {args.messages}')
        for name in ('rate', 'startup_timeout', 'settle_timeout', 'resume_timeout'):
            if not getattr(args, name) > 0:
                raise ValueError(f'--{name.replace("_", "-")} must be > 0, got '
                                 f'{getattr(args, name)}')
        if args.large_frames < 1:
            raise ValueError(f'--large-frames must be >= 1, got {args.large_frames}')
        kinds = len(args.kinds or KINDS)
        if args.messages < kinds:
            raise ValueError(f'--messages {args.messages} is fewer than the {kinds} kinds')
        checkpoint = arm_reach_checkpoint(args.checkpoint, 'fuzzer')
        out = args.out.expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f'ami-ros fuzz: error: {exc}', file=sys.stderr)
        return 2

    def work(interrupt):
        return Fuzzer(args, out, checkpoint, interrupt).run()

    summary = run_and_report('fuzz', work, out / 'fuzz.json',
                             args.json, print_table)
    return 1 if summary is None or not summary['ok'] else 0
