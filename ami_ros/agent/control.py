"""Control: goal, cost, planner, hold and limits -> the command.

From the belief history (the last k beliefs, what the model's predictor rolls out from) a
sampling planner (CEM/MPPI, warm-started) chooses the next commands towards a goal image (its
encoded state) and/or a pose goal (a probed quantity); the plan then goes through the safety
layer (:class:`~ami_ros.safety.Limits`: bounds, rate limit, final check), the choke point of
every command. Without goal or belief, with a stale belief or a failed plan, it holds. No ROS
import: the ``planner`` node and the :class:`~ami_ros.agent.Agent` both run it.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from ami_ros.control.config import MPCConfig
from ami_ros.planning import latent_goal_cost, make_planner, probe_goal_cost, sum_costs
from ami_ros.planning.ik import solve_ik
from ami_ros.robot import Workspace
from ami_ros.safety import Limits, UnsafeCommand


def limits_of(config: MPCConfig, names=()) -> Limits:
    """The safety limits an MPC config's planning bounds and rate limit describe."""
    p = config.planning
    a = int(p.action_dim)
    lower = np.array(p.vector('lower') or [-np.inf] * a)  # (A,)
    upper = np.array(p.vector('upper') or [np.inf] * a)  # (A,)
    delta = p.vector('max_delta')
    rate = np.array(delta) / float(config.belief.dt) if delta is not None else np.full(a, 1e12)
    return Limits(tuple(names) or tuple(f'a{i}' for i in range(a)), lower, upper, rate)


class Controller:
    """The control stage around a model with the world model's duck type.

    ``limits``: the safety layer's (default: from the config's bounds and rate limit);
    ``position``: commands are positions (hold = where the robot is) or velocities (hold = 0);
    ``workspace``: pose goals the tip cannot reach are refused (None = no check).
    """

    def __init__(self, model, config: MPCConfig, limits: Optional[Limits] = None,
                 position: bool = True, workspace: Optional[Workspace] = None,
                 device: Optional[torch.device] = None):
        if int(config.planning.action_dim) != int(model.action_dim):
            raise ValueError(f'planning.action_dim={config.planning.action_dim} but the model '
                             f'has action_dim={model.action_dim}')
        self.model, self.config, self.position = model, config, bool(position)
        self.limits = limits if limits is not None else limits_of(config)
        if self.limits.size != int(model.action_dim):
            raise ValueError(f'the model has {model.action_dim} action dims, the limits '
                             f'{self.limits.size}: {list(self.limits.names)}')
        self.workspace = workspace
        self.device = torch.device(device) if device is not None else getattr(
            model, 'device', torch.device('cpu'))
        self.planner = make_planner(config.planner, config.planning)
        self._goal_state: Optional[torch.Tensor] = None  # (D,)
        self._goal_pose: Optional[tuple[str, torch.Tensor]] = None
        self._guide: tuple = (None, None)  # (goal state, its goal posture (A,)) for goal_guide
        self.command: Optional[np.ndarray] = None  # (A,) the command in force

    # ------------------------------------------------------------------ goals
    def set_goal_state(self, z: Optional[torch.Tensor]) -> None:
        """The goal image's state (from the perceive stage); ValueError if it is None/NaN."""
        if z is None or not bool(torch.isfinite(z).all()):
            raise ValueError('goal image encodes to a non-finite latent')
        self._goal_state = z
        self.guide()  # once per goal, outside the timed plans

    @property
    def goal(self) -> tuple:
        """(goal state or None, (probe name, value) or None)."""
        return self._goal_state, self._goal_pose

    def replace_goal(self, state=None, pose=None, position=None) -> None:
        """Make the newest goal replace any earlier one.

        If it is refused (ValueError), the earlier one stays. ``state``: a goal image's state;
        ``pose``: (probe name, value); ``position``: (probe name, point (x, y, z) checked
        against the workspace).
        """
        old = self.goal
        self.clear_goal()
        try:
            if state is not None:
                self.set_goal_state(state)
            if pose is not None:
                self.set_goal_pose(*pose)
            if position is not None:
                self.set_goal_position(*position)
        except ValueError:
            self._goal_state, self._goal_pose = old
            raise

    def probe_dims(self) -> dict[str, int]:
        with torch.no_grad():
            return {k: int(v.shape[-1]) for k, v in self.model.probe(
                torch.zeros(1, self.model.latent_dim, device=self.device)).items()}

    def set_goal_pose(self, name: str, value) -> None:
        """Goal for a probed quantity (e.g. 'ee_position', metres); ValueError if unknown."""
        dims = self.probe_dims()
        if name not in dims:
            raise ValueError(f'pose goal {name!r}: the model has probes {sorted(dims)}')
        try:
            v = np.asarray(value, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f'pose goal {name!r} must be numbers, got {value!r}') from None
        if v.size != dims[name] or not np.isfinite(v).all():
            raise ValueError(f'pose goal {name!r} must be {dims[name]} finite numbers, '
                             f'got {v.tolist()}')
        self._goal_pose = (name, torch.as_tensor(v, device=self.device))

    def set_goal_position(self, name: str, position) -> None:
        """Goal for a probed position from a point (x, y, z) in the world frame.

        Refused (GoalError) when the workspace says the tip cannot reach it; the probe takes as
        many coordinates as it has.
        """
        p = np.asarray(position, dtype=np.float64).reshape(-1)
        if self.workspace is not None:
            self.workspace.check(p[['xyz'.index(a) for a in self.workspace.axes]])
        self.set_goal_pose(name, p[:self.probe_dims().get(name, p.size)])

    def clear_goal(self) -> None:
        self._goal_state, self._goal_pose = None, None

    @property
    def has_goal(self) -> bool:
        return self._goal_state is not None or self._goal_pose is not None

    # ------------------------------------------------------------------ commands
    def reset(self) -> None:
        """Forget the plan and the command in force (a new episode); the goal stays."""
        self.planner.reset()
        self.command = None

    def set_command(self, command) -> None:
        """The command actually in force (as sent): the rate limit starts from it."""
        c = np.asarray(command, dtype=np.float64).reshape(-1)
        if c.shape != (self.limits.size,) or not np.isfinite(c).all():
            raise ValueError(f'command must be {self.limits.size} finite numbers, got '
                             f'{c.tolist()}')
        self.command = c.copy()

    def hold(self, q=None) -> Optional[np.ndarray]:
        """Return the hold command, or None when there is nothing safe to hold.

        Zero velocity, the measured position inside the limits, or (no position feedback) the
        command in force.
        """
        if not self.position:
            return np.zeros(self.limits.size)
        if q is not None and np.isfinite(np.asarray(q, dtype=np.float64)).all():
            return self.limits.hold(q)
        return None if self.command is None else self.command.copy()

    def act(self, history: Optional[torch.Tensor], q=None, age: Optional[float] = None,
            points: int = 1, dt: Optional[float] = None) -> tuple[np.ndarray, dict]:
        """Plan from the belief history (k', D) and make it safe: ((K, A) commands, info).

        ``q``: the measured position (the hold; zeros for velocity commands); ``age``: of the
        belief, seconds (held when older than ``max_belief_age``); ``points``: plan steps
        returned, ``dt`` seconds apart (default the control period). The first is the command,
        now in force. info: 'reason' ('ok' or why it held), 'plan_ms', 'cost', 'result' (the
        PlanResult or None), 'clamped' (the safety layer changed the plan), 'held' (the command
        is the hold, not the plan).
        """
        if q is not None and np.asarray(q).size != self.limits.size:
            raise ValueError(f'joint_positions must have {self.limits.size} entries, got '
                             f'{np.asarray(q).size}')
        hold = self.hold(q)
        if hold is None:
            raise ValueError(f'joint positions {q} are not finite and no command was sent yet: '
                             f'nothing safe to hold')
        max_age = self.config.max_belief_age
        reason = ('no_goal' if not self.has_goal else 'no_belief' if history is None else
                  'stale_belief' if max_age is not None and age is not None and age > max_age
                  else None)
        info = {'reason': reason, 'plan_ms': 0.0, 'cost': float('inf'), 'result': None,
                'clamped': False, 'held': True}
        if reason is not None:
            return self._send(hold[None]), info
        plan, info = self._plan(history, hold, info)
        if plan is None:
            return self._send(hold[None]), info
        previous = self.command if self.command is not None else hold
        dt = float(self.config.belief.dt if dt is None else dt)
        try:
            safe, info['clamped'] = self.limits.clamp_sequence(plan[:max(int(points), 1)],
                                                               previous, dt)
            safe = np.stack([self.limits.final_check(c) for c in safe])
        except UnsafeCommand as e:
            info['reason'] = f'unsafe plan: {e}'
            return self._send(hold[None]), info
        info['held'] = False
        return self._send(safe), info

    def _plan(self, history: torch.Tensor, hold: np.ndarray,
              info: dict) -> tuple[Optional[np.ndarray], dict]:
        """((H, A) plan or None when it is not finite, info) from the planner."""
        state = history.to(self.device)[None]  # (1, k', D)
        current = self.command if self.command is not None else hold
        t0 = time.perf_counter()
        cost = self._cost(current)
        plan_search = getattr(self.model, 'plan_search', None)  # a backend may run whole plans
        search = plan_search(self.planner, cost) if plan_search is not None else None
        with torch.no_grad():
            result = self.planner.plan(state, self._rollout, cost,
                                       current_action=torch.as_tensor(current),
                                       hold_action=torch.as_tensor(hold), search=search,
                                       guide_action=self.guide())
        info.update(plan_ms=1e3 * (time.perf_counter() - t0), cost=result.cost, result=result,
                    reason=result.info['reason'])
        plan = result.actions.detach().cpu().double().numpy()  # (H, A)
        if not np.isfinite(plan[0]).all():
            info['reason'] = 'non-finite plan; holding'
            return None, info
        return plan, info

    def guide(self) -> Optional[torch.Tensor]:
        """The goal image's posture for ``goal_guide`` (None: off, no image goal, no proprio).

        Inverse kinematics of its end-effector reading from its joint reading
        (``ami_ros.planning.ik``), computed once per goal.
        """
        z = self._goal_state
        slices = self.model.state_slices() if getattr(self.model, 'has_proprio', False) else {}
        if z is None or not self.config.goal_guide or not {'ee', 'joints'} <= set(slices):
            return None
        if self._guide[0] is not z:
            with torch.no_grad():
                q0 = self.model.decode_proprio(z, 'joints').float().cpu()
                ee = self.model.decode_proprio(z, 'ee').float().cpu()
            q, _ = solve_ik(self.model.ee_of_joints, ee, q0,
                            torch.as_tensor(self.limits.lower), torch.as_tensor(self.limits.upper))
            self._guide = (z, q.double())
        return self._guide[1]

    def path(self, result, probe: str) -> Optional[np.ndarray]:
        """(H, P) a probed quantity along a plan's predicted states, None when unknown."""
        if result is None or result.predicted is None or probe not in self.probe_dims():
            return None
        with torch.no_grad():
            return self.model.probe(result.predicted)[probe].detach().cpu().double().numpy()

    def _send(self, seq: np.ndarray) -> np.ndarray:
        self.command = np.asarray(seq[0], dtype=np.float64).copy()
        return np.asarray(seq, dtype=np.float64).copy()

    # ------------------------------------------------------------------ model and cost
    def _rollout(self, z_hist: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Planner dynamics: (1, k', D) and (N, H, A) -> (N, H, D)."""
        return self.model.rollout(z_hist, actions.to(z_hist.dtype))

    def _cost(self, current: np.ndarray):
        cfg, costs, weights = self.config, [], []
        if cfg.smoothness_weight > 0:
            c0 = torch.as_tensor(current, dtype=torch.float32, device=self.device)  # (A,)

            def smoothness(predicted, actions):  # actions (N, H, A) -> (N,)
                prev = torch.cat([c0.to(actions.dtype).expand(actions.shape[0], 1, -1),
                                  actions[:, :-1]], dim=1)  # (N, H, A)
                return (actions - prev).pow(2).sum(dim=(1, 2))
            costs.append(smoothness)
            weights.append(float(cfg.smoothness_weight))
        if self._goal_state is not None:
            costs_, weights_ = self._goal_image_costs()
            costs += costs_
            weights += weights_
        if self._goal_pose is not None:
            name, goal = self._goal_pose
            costs.append(probe_goal_cost(lambda z: self.model.probe(z)[name], goal, 'euclidean',
                                         cfg.terminal_weight, cfg.running_weight))
            weights.append(float(cfg.probe_weight))
        return sum_costs(*costs, weights=weights)

    def _goal_image_costs(self) -> tuple[list, list]:
        """The image goal's cost terms and their weights.

        The latent distance; for a model with proprioception, the weighted visual, end-effector
        and joint distances (the goal's posture read from the goal image), and the end
        effector's at the last planned command.
        """
        cfg, goal = self.config, self._goal_state
        slices = self.model.state_slices() if getattr(self.model, 'has_proprio', False) else {}
        if not slices:
            return [latent_goal_cost(goal, cfg.metric, cfg.terminal_weight,
                                     cfg.running_weight)], [1.0]
        costs, weights = [], []
        vis = slices['visual']
        if cfg.visual_weight > 0:
            part = latent_goal_cost(goal[vis], cfg.metric, cfg.terminal_weight,
                                    cfg.running_weight)
            costs.append(lambda predicted, actions: part(predicted[..., vis], actions))
            weights.append(float(cfg.visual_weight))
        decode = self.model.decode_proprio  # the state's part in physical units
        for key, weight in (('ee', cfg.ee_weight), ('joints', cfg.joint_weight)):
            if weight > 0 and key in slices:
                costs.append(probe_goal_cost(
                    lambda z, key=key: decode(z, key), decode(goal, key), 'euclidean',
                    cfg.terminal_weight, cfg.running_weight))
                weights.append(float(weight))
        if cfg.command_weight > 0 and 'ee' in slices:
            target = decode(goal, 'ee')
            ee_of = self.model.ee_of_joints

            def command_cost(predicted, actions):  # (N, H, A) -> (N,): where the arm rests
                return (ee_of(actions[:, -1]) - target.to(actions)).norm(dim=-1)
            costs.append(command_cost)
            weights.append(float(cfg.command_weight))
        if not costs:
            raise ValueError('cost: visual_weight, ee_weight, command_weight and joint_weight '
                             'are all 0')
        return costs, weights
