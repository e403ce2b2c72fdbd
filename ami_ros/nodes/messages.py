"""Messages the world_model and planner nodes translate the agent's stages to and from.

Commands (``JointTrajectory``, ``Float64MultiArray``, ``Twist``) <-> action vectors, the probed
estimate (``PoseArray``, ``PoseStamped``, ``JointState``) and the plan's path as markers. No
loop logic here: each function is one message's translation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, Twist
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from ami_ros.data.images import decode_image
from ami_ros.sim.truth import yaw_quaternion

TRAJECTORY_TOPIC = 'joint_trajectory_controller/joint_trajectory'
FORWARD_TOPIC = 'forward_position_controller/commands'
TWIST_TOPIC = 'cmd_vel'
OUTPUTS = {'joint_trajectory': (JointTrajectory, TRAJECTORY_TOPIC),
           'forward_position': (Float64MultiArray, FORWARD_TOPIC),
           'twist': (Twist, TWIST_TOPIC)}
"""Command interface name -> (message type, default topic)."""


def command_msg(output: str, seq: np.ndarray, names: Sequence[str], dt: float):
    """Return the message carrying (K, A) commands on ``output``.

    A JointTrajectory with K points ``dt`` apart (stamp 0: start now), or the first command as
    Float64MultiArray / Twist.
    """
    if output == 'joint_trajectory':
        msg = JointTrajectory(joint_names=list(names))
        for i, c in enumerate(seq):
            t = (i + 1) * dt
            msg.points.append(JointTrajectoryPoint(
                positions=[float(v) for v in c], time_from_start=Duration(
                    sec=int(t), nanosec=int(round((t - int(t)) * 1e9)) % 10**9)))
        return msg
    if output == 'forward_position':
        return Float64MultiArray(data=[float(v) for v in seq[0]])
    msg = Twist()
    for name, v in zip(names, seq[0]):
        part, axis = name.split('.')
        setattr(getattr(msg, part), axis, float(v))
    return msg


def trajectory_action(msg: JointTrajectory, names: Sequence[str]) -> np.ndarray:
    """Return the first point of a trajectory in ``names`` order.

    The target in force over the next control period, as in training; ValueError if it does
    not match its joint names.
    """
    have = list(msg.joint_names)
    if not msg.points or len(msg.points[0].positions) != len(have):
        raise ValueError('a trajectory without a first point matching its joint_names')
    try:
        order = [have.index(n) for n in names]
    except ValueError:
        raise ValueError(f'trajectory joints {have} do not cover {list(names)}') from None
    return np.asarray(msg.points[0].positions, dtype=np.float64)[order]


def twist_action(msg: Twist, fields: Sequence[str]) -> np.ndarray:
    return np.array([getattr(getattr(msg, f.split('.')[0]), f.split('.')[1]) for f in fields])


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """Return the finite positions of ``names`` from a JointState.

    ValueError if some are missing or NaN/inf.
    """
    try:
        index = [list(msg.name).index(n) for n in names]
        q = np.asarray(msg.position, dtype=np.float64)[index]
    except (ValueError, IndexError):
        raise ValueError(f'joint_states lacks joints {list(names)}: has {list(msg.name)}') \
            from None
    if not np.all(np.isfinite(q)):
        raise ValueError(f'dropped joint_states with NaN/inf positions {q.tolist()}')
    return q


def estimate_msgs(probes: dict, stamp: Time, frame_id: str, pose_names: Sequence[str],
                  joint_names: Sequence[str]) -> tuple[PoseArray, dict, Optional[JointState]]:
    """(PoseArray, {name: PoseStamped}, JointState or None) of the probes' decoding."""
    poses = PoseArray()
    poses.header.stamp, poses.header.frame_id = stamp, frame_id
    stamped = {}
    for name in pose_names:
        pose = Pose()
        value, p = probes[f'{name}_position'], np.zeros(3)
        p[:min(3, value.size)] = value[:3]
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p)
        q = yaw_quaternion(float(probes[f'{name}_yaw'][0])) if f'{name}_yaw' in probes \
            else (0.0, 0.0, 0.0, 1.0)
        o = pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        poses.poses.append(pose)
        stamped[name] = PoseStamped(header=poses.header, pose=pose)
    joints = None
    if 'joint_positions' in probes and probes['joint_positions'].size == len(joint_names):
        joints = JointState(name=list(joint_names), position=probes['joint_positions'].tolist())
        joints.header.stamp = stamp
    return poses, stamped, joints


def image_of(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a ``sensor_msgs/Image``; ImageDecodeError if it cannot be."""
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                        msg.data)


def goal_pose(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quaternion (x, y, z, w)) of a goal pose message."""
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])


def goal_key(msg) -> tuple:
    """What tells two goal messages (Image or PoseStamped) apart: kind, stamp, frame, content."""
    image = hasattr(msg, 'encoding')
    content = bytes(msg.data) if image else tuple(
        getattr(part, a) for part, axes in ((msg.pose.position, 'xyz'),
                                            (msg.pose.orientation, 'xyzw')) for a in axes)
    return (image, msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id,
            hash(content))


def plan_markers(path: np.ndarray, stamp: Time, frame_id: str,
                 goal: Optional[np.ndarray]) -> MarkerArray:
    """The plan's probed path (P, >= 1) as a LINE_STRIP, and the goal position as a sphere."""
    line = Marker(ns='ami_plan', id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
    line.header.frame_id, line.header.stamp = frame_id, stamp
    line.scale.x = 0.01
    line.color.r, line.color.g, line.color.b, line.color.a = 0.1, 0.8, 1.0, 1.0
    line.pose.orientation.w = 1.0
    for p in path:
        xyz = np.zeros(3)
        xyz[:min(3, p.size)] = p[:3]
        line.points.append(Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])))
    markers = [line]
    if goal is not None:
        sphere = Marker(ns='ami_plan', id=1, type=Marker.SPHERE, action=Marker.ADD)
        sphere.header = line.header
        sphere.pose.position = Point(**dict(zip('xyz', map(float, goal))))
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.04
        sphere.color.g, sphere.color.a = 1.0, 0.8
        markers.append(sphere)
    return MarkerArray(markers=markers)
