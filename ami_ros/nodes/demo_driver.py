"""``ami_demo``: the observer ``ami-ros demo`` runs beside the simulator and the stack.

* Records the run into a rosbag2 (MCAP): every message of :data:`RECORDED` exactly as it
  arrived (its serialized CDR, no re-encoding), logged at its reception time on the system
  clock, as ``ros2 bag record`` does.
* Keeps what the demo judges and times by: the ground-truth end-effector pose (``/sim/ee_pose``,
  sim time), joint states, camera frames and their publication times, the planner's commands and
  path markers with theirs (DDS source timestamps, system clock), the latest ``/diagnostics``.
* Sends goals: the image on ``/ami/goal_image`` and the simulator's goal marker on
  ``/sim/set_goal_pose``.

Topics are absolute (the demo runs one robot, no namespace). The node only records and
forwards; ``ami_ros.cli.demo`` runs the demo and :mod:`ami_ros.demo` judges it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Writer
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from ami_ros.data.bag import STORAGES, typestore
from ami_ros.nodes.common import image_to_msg, latched_qos, msg_to_image, time_msg
from ami_ros.sim.truth import pose_topic, signal_topic

IMAGE_TOPIC = '/camera/image_raw'
JOINT_STATES_TOPIC = '/joint_states'
COMMAND_TOPIC = '/joint_trajectory_controller/joint_trajectory'
GOAL_IMAGE_TOPIC = '/ami/goal_image'
SIM_GOAL_TOPIC = '/sim/set_goal_pose'
MARKERS_TOPIC = '/ami/plan_markers'
DIAGNOSTICS_TOPIC = '/diagnostics'
EE_TOPIC = pose_topic('ee')
ESTIMATE_TOPIC = '/ami/estimate/ee_pose'
GOAL_TRUTH_TOPIC = pose_topic('goal')

# frames are best effort (sensor data) on the publisher side; a deep queue keeps them while the
# demo's main thread makes a goal
_SENSOR = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT,
                     history=HistoryPolicy.KEEP_LAST)
_RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST)

RECORDED = (
    (IMAGE_TOPIC, Image, _SENSOR),
    ('/camera/camera_info', CameraInfo, _SENSOR),
    (JOINT_STATES_TOPIC, JointState, _RELIABLE),
    (COMMAND_TOPIC, JointTrajectory, _RELIABLE),
    ('/forward_position_controller/commands', Float64MultiArray, _RELIABLE),
    (GOAL_IMAGE_TOPIC, Image, _RELIABLE),
    (SIM_GOAL_TOPIC, PoseStamped, _RELIABLE),
    (EE_TOPIC, PoseStamped, _RELIABLE),
    (GOAL_TRUTH_TOPIC, PoseStamped, _RELIABLE),
    (signal_topic('success'), Float64MultiArray, _RELIABLE),
    (ESTIMATE_TOPIC, PoseStamped, _RELIABLE),
    (MARKERS_TOPIC, MarkerArray, _RELIABLE),
    ('/ami/surprise', Float32, _RELIABLE),
    (DIAGNOSTICS_TOPIC, DiagnosticArray, _RELIABLE),
)
"""(topic, message class, QoS) of everything the demo records."""


def type_name(msg_class) -> str:
    """``pkg/msg/Name`` of a generated ROS message class, as rosbag2 stores it."""
    return f'{msg_class.__module__.split(".")[0]}/msg/{msg_class.__name__}'


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class _Recorder:
    """Subscription callback (serialized message, message info): to the bag, then to a handler."""

    def __init__(self, node: 'DemoDriver', topic: str, msg_class, connection):
        self.node, self.topic, self.msg_class, self.connection = node, topic, msg_class, connection

    def __call__(self, data: bytes, info) -> None:
        node = self.node
        node.writer.write(self.connection, int(info['received_timestamp']), bytes(data))
        node.counts[self.topic] = node.counts.get(self.topic, 0) + 1
        handler = node.handlers.get(self.topic)
        if handler is not None:
            handler(deserialize_message(data, self.msg_class), int(info['source_timestamp']))


class DemoDriver(Node):
    """Records the demo and keeps its measurements (see the module docstring)."""

    def __init__(self, bag_path: Path, storage: str = 'mcap', **kwargs):
        super().__init__('ami_demo', **kwargs)
        self.counts: dict[str, int] = {}
        self.sim_time = 0.0          # newest ground-truth / joint-state stamp, s
        self.joint_positions = None  # (J,) newest measured
        self.ee: list[tuple[float, np.ndarray, int]] = []  # (stamp s, xyz, publication ns)
        self.goal_truth = None       # (3,) where the simulator's goal marker is
        self.ee_truth: dict[int, np.ndarray] = {}      # stamp ns -> true end effector
        self.ee_estimates: list[tuple[int, np.ndarray]] = []  # (stamp ns, the belief's)
        self.frame_shape = None      # (H, W) of the camera
        self.frame_published: dict[int, int] = {}      # frame stamp ns -> publication ns
        self.frames: list[tuple[float, np.ndarray]] | None = None  # kept while not None
        self.commands_ns: list[int] = []               # publication ns of every command
        self.markers: list[tuple[int, int]] = []       # (publication ns, frame stamp ns)
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.handlers = {IMAGE_TOPIC: self._on_image, JOINT_STATES_TOPIC: self._on_joints,
                         EE_TOPIC: self._on_ee, GOAL_TRUTH_TOPIC: self._on_goal_truth,
                         COMMAND_TOPIC: self._on_command, MARKERS_TOPIC: self._on_markers,
                         ESTIMATE_TOPIC: self._on_estimate,
                         DIAGNOSTICS_TOPIC: self._on_diagnostics}
        store = typestore()
        self.writer = Writer(Path(bag_path), version=Writer.VERSION_LATEST,
                             storage_plugin=STORAGES[storage])
        self.writer.open()
        self._closed = False
        for topic, msg_class, qos in RECORDED:
            conn = self.writer.add_connection(topic, type_name(msg_class), typestore=store)
            self.create_subscription(msg_class, topic, _Recorder(self, topic, msg_class, conn),
                                     qos, raw=True)
        # latched: a planner restarted mid-goal gets the current goal again by itself
        self.goal_image_pub = self.create_publisher(Image, GOAL_IMAGE_TOPIC, latched_qos())
        self.sim_goal_pub = self.create_publisher(PoseStamped, SIM_GOAL_TOPIC, 10)

    # -- what arrives -------------------------------------------------------------------------

    def _on_image(self, msg: Image, published_ns: int) -> None:
        self.frame_published[_ns(msg.header.stamp)] = published_ns
        self.frame_shape = (int(msg.height), int(msg.width))
        if self.frames is not None:
            self.frames.append((_ns(msg.header.stamp) * 1e-9, np.array(msg_to_image(msg))))

    def _on_joints(self, msg: JointState, published_ns: int) -> None:
        self.joint_names = list(msg.name)
        self.joint_positions = np.asarray(msg.position, dtype=np.float64)
        self.sim_time = max(self.sim_time, _ns(msg.header.stamp) * 1e-9)

    def _on_ee(self, msg: PoseStamped, published_ns: int) -> None:
        p = msg.pose.position
        t = _ns(msg.header.stamp) * 1e-9
        self.sim_time = max(self.sim_time, t)
        self.ee.append((t, np.array([p.x, p.y, p.z]), published_ns))
        self.ee_truth[_ns(msg.header.stamp)] = self.ee[-1][1]
        del self.ee[:-1000]  # the demo loop takes them as they come; bound it when it does not

    def _on_estimate(self, msg: PoseStamped, published_ns: int) -> None:
        p = msg.pose.position
        self.ee_estimates.append((_ns(msg.header.stamp), np.array([p.x, p.y, p.z])))

    def _on_goal_truth(self, msg: PoseStamped, published_ns: int) -> None:
        p = msg.pose.position
        self.goal_truth = np.array([p.x, p.y, p.z])

    def _on_command(self, msg: JointTrajectory, published_ns: int) -> None:
        self.commands_ns.append(published_ns)

    def _on_markers(self, msg: MarkerArray, published_ns: int) -> None:
        for marker in msg.markers:
            if marker.ns == 'ami_plan' and marker.id == 0:  # the predicted path
                self.markers.append((published_ns, _ns(marker.header.stamp)))

    def _on_diagnostics(self, msg: DiagnosticArray, published_ns: int) -> None:
        for status in msg.status:
            level = ord(status.level) if isinstance(status.level, bytes) else int(status.level)
            self.diagnostics[status.name] = {'level': str(level), 'message': status.message,
                                             **{kv.key: kv.value for kv in status.values}}

    # -- goals ----------------------------------------------------------------------------------

    def send_goal(self, image: np.ndarray, position, world_frame: str = 'world') -> None:
        """The goal marker to the simulator, then the goal image to the planner."""
        stamp = time_msg(self.sim_time)
        marker = PoseStamped()
        marker.header.stamp, marker.header.frame_id = stamp, world_frame
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (
            float(v) for v in position)
        marker.pose.orientation.w = 1.0
        self.sim_goal_pub.publish(marker)
        self.goal_image_pub.publish(image_to_msg(np.ascontiguousarray(image), stamp,
                                                 'camera_optical_frame', 'rgb8'))

    def close_bag(self) -> None:
        """Finish the bag (idempotent); a run cut short still leaves a valid bag."""
        if not self._closed:
            self._closed = True
            self.writer.close()

    def destroy_node(self) -> None:
        self.close_bag()
        super().destroy_node()
