"""``planner``: the control stage (:class:`ami_ros.agent.Controller`) on ROS topics.

In: ``ami/belief`` (the last k beliefs, from ``world_model``), ``ami/latent`` (fresh frames, for
the watchdog), ``joint_states``, the goals ``ami/goal_image`` (prepared and encoded like camera
frames) and ``ami/goal_pose`` (``PoseStamped`` in ``world_frame_id`` for ``goal_probe``, checked
against the reachable workspace); the newest goal replaces any earlier one. It plans as each
belief corrected by a frame arrives (``replan_on: frame``; the ``rate_hz`` timer steps in when
frames stop) or at every tick (``timer``). Out: the command on ``output`` (``joint_trajectory``
with ``trajectory_points`` steps, ``forward_position`` or ``twist``) and the predicted path on
``ami/plan_markers`` (stamped with the newest camera frame in the belief).

Safety, always on: every command passes :class:`ami_ros.safety.Limits` (in the Controller); a
watchdog holds when the newest frame, belief or joint state is older than ``stale_timeout``;
``ami/enable`` false = hold; ill-formed or unreachable goals are rejected with the reason.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped
from rclpy.event_handler import SubscriptionEventCallbacks
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from ami_ros.agent import Controller, Perceiver
from ami_ros.config import (AGENT_FIELDS, PlannerNodeConfig, WorldModelNodeConfig,
                            joint_names_for)
from ami_ros.nodes.common import RateMeter, latched_qos, seconds
from ami_ros.nodes.lifecycle import (LatencyStats, ModelNode, latency_values, msg_to_latent,
                                     rate_values, run_lifecycle_node)
from ami_ros.nodes.messages import (OUTPUTS, command_msg, goal_key, goal_pose, image_of,
                                    joint_positions, plan_markers)
from ami_ros.robot import UrdfError
from ami_ros.safety import Watchdog, check_goal_pose


class PlannerNode(ModelNode):
    """The control stage as a node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('planner', PlannerNodeConfig, **kwargs)
        self.rates = {k: RateMeter() for k in ('belief', 'frame', 'command')}
        self.plan_latency, self.tick_latency = LatencyStats(), LatencyStats()
        self.counts = {k: 0 for k in ('commands', 'hold_ticks', 'clamped', 'plans', 'goals',
                                      'rejected_goals', 'unsafe_blocked')}
        self.controller = None
        self.state, self.hold_reason, self.goal = 'idle', '', 'none'

    def setup(self, config: PlannerNodeConfig) -> None:
        self._dt, self._position = 1.0 / config.rate_hz, config.output != 'twist'
        try:
            self.limits = config.limits(joint_names_for(config) if self._position else ())
            self.workspace = config.workspace()
        except UrdfError as e:
            raise ValueError(str(e)) from None
        self.controller = self._controller(config)
        self.perceiver = Perceiver(self.model)
        self._history, self._frame_stamp, self._measured = None, None, None
        self._goal_position, self._last_goal_key, self._hold_target = None, None, None
        self._belief_stamp = self._planned_stamp = self._last_frame_tick = -np.inf
        self._last_sent = self._sent_stamp = -np.inf  # node clock, belief stamp
        self.enabled = config.start_enabled
        inputs = ('frame', 'belief') + (('joint_states',) if self._position else ())
        self.watchdog = Watchdog(config.stale_timeout, inputs, clock=self.now)
        msg_type, topic = OUTPUTS[config.output]
        self._cmd_pub = self.lifecycle_publisher(msg_type, topic)
        self._marker_pub = self.lifecycle_publisher(MarkerArray, 'ami/plan_markers')
        self.subscription(Image, 'ami/belief', self._on_belief)
        self.subscription(Image, 'ami/latent', self._on_latent)
        if self._position:
            self.subscription(JointState, 'joint_states', self._on_joint_states)
        # goals: any publisher (volatile), and a latched one for a (re)started planner; its
        # "incompatible QoS" warning about volatile publishers is silenced
        quiet = SubscriptionEventCallbacks(incompatible_qos=lambda info: None)
        for qos, events in ((10, None), (latched_qos(), quiet)):
            self.subscription(Image, 'ami/goal_image', self._on_goal, qos, event_callbacks=events)
            self.subscription(PoseStamped, 'ami/goal_pose', self._on_goal, qos,
                              event_callbacks=events)
        self.service(SetBool, 'ami/enable', self._on_enable)
        self.service(Trigger, '~/clear_goal', self._on_clear_goal)
        self.timer(self._dt, self._on_timer)

    def _controller(self, c: PlannerNodeConfig) -> Controller:
        # the watchdog judges staleness: no second, differently-clocked check inside
        world = WorldModelNodeConfig(scene=c.scene, rate_hz=c.rate_hz)
        return Controller(self.model, c.mpc(world, self.limits), self.limits, self._position,
                          self.workspace)

    def teardown(self) -> None:
        self.controller = None

    def backend_sizes(self, config: PlannerNodeConfig) -> dict[str, int]:
        return {'horizon': config.rollout_steps, 'planning_batch': config.samples}

    def on_params(self, old, new) -> None:
        if self.controller is None:
            return
        self.watchdog.timeout = float(new.stale_timeout)
        if any(getattr(old, k) != getattr(new, k) for k in AGENT_FIELDS):
            self.get_logger().info('planner parameters changed: the plan restarts')
            previous, self.controller = self.controller, self._controller(new)
            self.controller.replace_goal(*previous.goal)  # the goal and the rate limit go on
            self.controller.command = previous.command

    def on_active(self, active: bool) -> None:
        if not active and self.goal != 'none':
            self._hold('deactivated')  # leave the robot holding, not coasting on the last plan

    # -- inputs -----------------------------------------------------------------------------------

    def _on_belief(self, msg: Image) -> None:
        try:
            z = msg_to_latent(msg)  # (k', D), oldest first
            if z.shape[1] != self.model.latent_dim or not np.all(np.isfinite(z)) or \
                    z.shape[0] > int(self.model.history):
                raise ValueError(f'need 1..{self.model.history} rows of '
                                 f'{self.model.latent_dim} finite values, got '
                                 f'{z.shape[0]}x{z.shape[1]}')
        except ValueError as e:
            self.dropped += 1
            return self.record_error('belief', f'dropped a belief: {e}')
        self.watchdog.feed('belief')
        self.rates['belief'].tick()
        self._history, stamp = torch.from_numpy(z), seconds(msg.header.stamp)
        self._belief_stamp = stamp
        if msg.header.frame_id:  # fused from a camera frame (predict-only beliefs have none)
            self._frame_stamp = msg.header.stamp
            # a belief half a period newer than the one planned from last (judged by stamps,
            # not the node clock: a sim /clock may come in after the belief), or an older one
            # (the clock went back)
            newer = stamp - self._planned_stamp
            if self.params.config.replan_on == 'frame' and \
                    (newer >= 0.5 * self._dt or newer < -self._dt):
                self._last_frame_tick = self.now()
                self._tick()

    def _on_latent(self, msg: Image) -> None:
        self.watchdog.feed('frame')
        self.rates['frame'].tick()

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            q = joint_positions(msg, self.limits.names)
        except ValueError as e:
            self.dropped += 1
            return self.record_error('joint_states', str(e), 'warn')
        self._measured = q
        self.watchdog.feed('joint_states')

    def _on_goal(self, msg) -> None:
        """A goal image or pose; one that came in through both subscriptions is taken once."""
        key, image = goal_key(msg), isinstance(msg, Image)
        if self.controller is None or (key == self._last_goal_key and key[1:3] != (0, 0)):
            return
        self._last_goal_key = key
        cfg, position = self.params.config, None
        try:
            if image:
                self.controller.replace_goal(state=self.perceiver.encode(image_of(msg)))
            else:
                position, quaternion = goal_pose(msg)
                check_goal_pose(position, quaternion, msg.header.frame_id, cfg.world_frame_id)
                self.controller.replace_goal(position=(cfg.goal_probe, position))
        except ValueError as e:  # ImageDecodeError and GoalError are ValueErrors
            self.counts['rejected_goals'] += 1
            what = 'goal image' if image else f'goal pose {np.round(position, 4).tolist()}'
            return self.record_error('goal', f'rejected {what}: {e}')
        self.goal, self._goal_position = ('image', None) if image else ('pose', position)
        self.counts['goals'] += 1
        self.get_logger().info(f'new {self.goal} goal' + (
            f' at {np.round(position, 4).tolist()}' if position is not None else ''))

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        self.enabled = bool(request.data)
        response.success = True
        response.message = 'commands enabled' if self.enabled else 'disabled: holding'
        self.get_logger().info(f'ami/enable: {response.message}')
        return response

    def _on_clear_goal(self, request, response):
        if self.controller is not None:
            self.controller.clear_goal()
        self.goal, self._goal_position = 'none', None
        response.success, response.message = True, 'goal cleared'
        return response

    # -- the control tick -----------------------------------------------------------------------

    def _on_timer(self) -> None:
        # replan_on=frame: frames drive the loop; the timer steps in once they stop coming
        if self.params.config.replan_on == 'frame' and \
                self.now() - self._last_frame_tick < 1.5 * self._dt:
            return
        self._tick()

    def _tick(self) -> None:
        if not self.active or self.goal == 'none':
            self.state, self.hold_reason = 'idle', ''
            return
        self._planned_stamp = self._belief_stamp
        t0 = time.perf_counter()
        check = self.watchdog.check()
        if not self.enabled or not check.ok:
            self._hold('disabled by ami/enable' if not self.enabled else check.reason)
        else:
            self._plan()
        self.tick_latency.add(time.perf_counter() - t0)

    def _plan(self) -> None:
        cfg = self.params.config
        points = cfg.trajectory_points if cfg.output == 'joint_trajectory' else 1
        # trajectory points are dt apart; a bare target sent sooner may move only that much less
        # (by the node clock or by the beliefs' stamps: a sim /clock moves in steps)
        elapsed = max(self.now() - self._last_sent, self._belief_stamp - self._sent_stamp, 1e-3)
        dt = self._dt if cfg.output == 'joint_trajectory' else min(self._dt, elapsed)
        try:
            seq, info = self.controller.act(self._history, self._measured, None, points, dt)
        except ValueError as e:
            return self._hold(f'cannot plan: {e}')
        if info['held']:
            if info['reason'].startswith('unsafe'):
                self.counts['unsafe_blocked'] += 1
                self.record_error('unsafe', f'plan not sent: {info["reason"]}')
            return self._hold(f'planner: {info["reason"]}')
        self.counts['plans'] += 1
        self.counts['clamped'] += int(info['clamped'])
        self.plan_latency.add(info['plan_ms'] * 1e-3)
        self._publish(seq)
        if self.state == 'holding':
            self.get_logger().info('resumed planning')
        self.state, self.hold_reason, self._hold_target = 'planning', '', None
        self.plan_cost = float(info['cost'])
        self._publish_markers(info['result'])

    def _hold(self, reason: str) -> None:
        if self.state != 'holding':  # the reason's details (ages) go to /diagnostics
            self.get_logger().warning(f'holding: {reason}')
        if self._hold_target is None:
            self._hold_target = self.controller.hold(self._measured)
        self.state, self.hold_reason = 'holding', reason
        self.counts['hold_ticks'] += 1
        if self._hold_target is not None:
            self.controller.set_command(self._hold_target)
            self._publish(self.limits.final_check(self._hold_target)[None])

    def _publish(self, seq: np.ndarray) -> None:
        """Publish (K, A) commands the safety layer has checked."""
        cfg = self.params.config
        self._cmd_pub.publish(command_msg(cfg.output, seq, self.limits.names, self._dt))
        self._last_sent, self._sent_stamp = self.now(), self._belief_stamp
        self.counts['commands'] += 1
        self.rates['command'].tick()

    def _publish_markers(self, result) -> None:
        cfg = self.params.config
        path = self.controller.path(result, cfg.goal_probe if cfg.goal_probe.endswith(
            '_position') else 'ee_position')
        if path is None:
            return
        # stamped as of the newest camera frame in the belief: observers measure camera ->
        # command latency from it (ami-ros demo)
        stamp = self._frame_stamp or self.get_clock().now().to_msg()
        self._marker_pub.publish(plan_markers(path, stamp, cfg.world_frame_id,
                                              self._goal_position))

    def status(self) -> tuple[str, str, dict]:
        values = {k: v for name, meter in self.rates.items()
                  for k, v in rate_values(name, meter).items()}
        values.update({**latency_values('plan_latency', self.plan_latency),
                       **latency_values('tick_latency', self.tick_latency), **self.counts,
                       'state': self.state, 'hold_reason': self.hold_reason, 'goal': self.goal,
                       'watchdog': self.watchdog.check().reason or 'ok',
                       'enabled': self.enabled, 'output': self.params.config.output,
                       'planner': self.params.config.planner,
                       'plan_cost': getattr(self, 'plan_cost', float('nan'))})
        if self.state == 'holding':
            return 'warn', f'holding: {self.hold_reason}', values
        return 'ok', self.state, values


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(PlannerNode, args, name='planner')


if __name__ == '__main__':
    raise SystemExit(main())
