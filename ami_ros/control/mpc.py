"""Closed-loop model-predictive control in latent space (no ROS import).

The agent keeps a belief over the latent state (``observe``: encode the frame, predict with the
command that was executed, fuse) and replans a whole action sequence every control step from the
last k belief latents (``act``: CEM/MPPI with warm start, bounds, rate limit), towards a goal
image (latent distance) and/or a pose goal (distance of a probed quantity). Any object with the
world model's duck type works as the model: ``encode``, ``rollout``, ``probe``, ``latent_dim``,
``action_dim``, ``history`` (a :class:`~ami_ros.model.WorldModel` or an inference backend).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Optional

import numpy as np
import torch

from ami_ros.control.config import MPCConfig
from ami_ros.estimation import BeliefFilter, FilterStep, SurpriseMonitor
from ami_ros.planning import latent_goal_cost, make_planner, probe_goal_cost, sum_costs
from ami_ros.planning.ik import solve_ik


def check_image(image, what: str = 'image') -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or float in [0, 1]; ValueError naming what is wrong.

    Non-finite float pixels are returned as they are: the caller decides (reject or raise).
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise ValueError(f'{what} must be an (H, W, 3) RGB array with H, W >= 8, got shape '
                         f'{a.shape}')
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f'{what} must be uint8 (0-255) or float (0-1), got dtype {a.dtype}')
    return a


class LatentMPC:
    """Belief filter + receding-horizon sampling planner over a latent world model."""

    def __init__(self, model, config: MPCConfig, device: Optional[torch.device] = None):
        if int(config.planning.action_dim) != int(model.action_dim):
            raise ValueError(f'planning.action_dim={config.planning.action_dim} but the model '
                             f'has action_dim={model.action_dim}')
        self.model, self.config = model, config
        self.device = torch.device(device) if device is not None else getattr(
            model, 'device', torch.device('cpu'))
        p = config.planning
        self._lower = np.array(p.vector('lower') or [-np.inf] * p.action_dim)  # (A,)
        self._upper = np.array(p.vector('upper') or [np.inf] * p.action_dim)  # (A,)
        self.planner = make_planner(config.planner, p)
        self.monitor = SurpriseMonitor(config.surprise)
        self._goal_latent: Optional[torch.Tensor] = None  # (D,)
        self._goal_pose: Optional[tuple[str, torch.Tensor]] = None
        self._guide: Optional[np.ndarray] = None  # (A,) goal posture (goal_guide)
        self.reset()

    # ------------------------------------------------------------------ goals
    def set_goal_image(self, image) -> None:
        """Encode a goal image (H, W, 3) as the goal latent; ValueError if malformed."""
        a = check_image(image, 'goal image')
        if not np.isfinite(a).all():
            raise ValueError('goal image contains NaN/inf pixels')
        z = self._encode(a)
        if z is None:
            raise ValueError('goal image encodes to a non-finite latent')
        self._goal_latent, self._guide = z, self._goal_posture(z)

    def set_goal_pose(self, name: str, value) -> None:
        """Goal for a probed quantity (e.g. 'ee_position', metres); ValueError if unknown."""
        with torch.no_grad():
            dims = {k: int(v.shape[-1]) for k, v in self.model.probe(
                torch.zeros(1, self.model.latent_dim, device=self.device)).items()}
        if name not in dims:
            raise ValueError(f'pose goal {name!r}: the model has probes {sorted(dims)}')
        try:
            v = torch.as_tensor(np.asarray(value, dtype=np.float32).reshape(-1),
                                device=self.device)
        except (TypeError, ValueError):
            raise ValueError(f'pose goal {name!r} must be numbers, got {value!r}') from None
        if v.numel() != dims[name] or not bool(torch.isfinite(v).all()):
            raise ValueError(f'pose goal {name!r} must be {dims[name]} finite numbers, '
                             f'got {v.tolist()}')
        self._goal_pose = (name, v)
        if self._goal_latent is None:
            self._guide = None

    def clear_goal(self) -> None:
        self._goal_latent, self._goal_pose, self._guide = None, None, None

    def _goal_posture(self, z: torch.Tensor) -> Optional[np.ndarray]:
        """The goal image's posture for ``goal_guide`` (None without proprioception).

        Inverse kinematics of its end-effector reading from its joint reading
        (``ami_ros.planning.ik``).
        """
        slices = self.model.state_slices() if getattr(self.model, 'has_proprio', False) else {}
        if not self.config.goal_guide or not {'ee', 'joints'} <= set(slices):
            return None
        with torch.no_grad():
            q0 = self.model.decode_proprio(z, 'joints').float().cpu()
            ee = self.model.decode_proprio(z, 'ee').float().cpu()
        q, _ = solve_ik(self.model.ee_of_joints, ee, q0, torch.as_tensor(self._lower),
                        torch.as_tensor(self._upper))
        return q.double().numpy()

    @property
    def has_goal(self) -> bool:
        return self._goal_latent is not None or self._goal_pose is not None

    # ------------------------------------------------------------------ belief
    def reset(self) -> None:
        """Forget belief, plan and last command (new episode); goals and calibration stay."""
        self.planner.reset()
        self.monitor.reset()
        self.filter = BeliefFilter(self.config.belief, self._predict_one, self.monitor,
                                   getattr(self.model, 'innovation_scale', None))
        self._hist: deque[torch.Tensor] = deque(maxlen=int(self.model.history))  # (D,) each
        self._command: Optional[np.ndarray] = None  # (A,) the command in force

    @property
    def belief(self) -> Optional[torch.Tensor]:
        return self.filter.z

    def observe(self, image, stamp: float, executed_action=None, joints=None) -> FilterStep:
        """Fuse a camera frame taken at ``stamp`` (seconds) into the belief.

        ``executed_action`` (A,) is the command in force since the previous frame. ``joints``
        (J,): the joint positions measured with the frame (used by models with proprioception;
        without them such a model reads the posture from the image). ``image=None`` (dropped
        frame) only predicts; a frame with NaN is rejected (reason 'rejected_nan'); a malformed
        one raises ValueError.
        """
        z = None if image is None else self._encode(check_image(image), joints)
        if executed_action is not None:
            try:
                self.set_command(executed_action)
            except ValueError as exc:
                raise ValueError(f'executed_action: {exc}') from None
        f, dt = self.filter, float(self.config.belief.dt)
        if f.z is None or (self._command is None and z is not None):
            if z is None:
                return FilterStep(f.z, f.stamp, 'rejected_nan' if image is not None else
                                  'uninitialized')
            return self._restart(z, stamp)
        steps = int(round((float(stamp) - f.stamp) / dt))
        if steps > int(self.config.belief.max_advance):
            return self._restart(z, stamp) if z is not None else FilterStep(f.z, f.stamp,
                                                                            'stale')
        action = torch.as_tensor(self._command, dtype=torch.float32, device=self.device)
        step = None
        for i in range(max(steps, 0)):  # predict-only steps up to the frame's stamp
            step = f.predict(action, stamp=f.stamp + dt if i < steps - 1 else float(stamp))
            self._hist.append(f.z)
        if z is None:
            return step or FilterStep(f.z, f.stamp, 'rejected_nan')
        step = f.update(z, stamp)
        if step.reason in ('reset', 'reset_stale'):
            self._hist.clear()  # the belief restarted from this frame: so does its history
        if self._hist:
            self._hist[-1] = f.z
        else:
            self._hist.append(f.z)
        return step

    def set_belief(self, z_hist, stamp: float) -> None:
        """Take belief latents estimated elsewhere (the world_model node), oldest first."""
        zs = [torch.as_tensor(z).to(device=self.device, dtype=torch.float32).reshape(-1)
              for z in z_hist]
        d = int(self.model.latent_dim)
        if not zs or any(z.numel() != d or not bool(torch.isfinite(z).all()) for z in zs):
            raise ValueError(f'belief history must be 1..k finite latents of {d} values')
        self._restart(zs[-1], stamp)
        older = zs[:-1][len(zs) - self._hist.maxlen:] if self._hist.maxlen > 1 else []
        self._hist.extendleft(reversed(older))

    def set_command(self, command) -> None:
        """The command actually in force (after any safety layer): rate limits start from it."""
        c = np.asarray(command, dtype=np.float64).reshape(-1)
        if c.shape != self._lower.shape or not np.isfinite(c).all():
            raise ValueError(f'command must be {self._lower.size} finite numbers, got {c.tolist()}')
        self._command = c.copy()

    def _restart(self, z: torch.Tensor, stamp: float) -> FilterStep:
        self._hist.clear()
        step = self.filter.reset(z, float(stamp))
        self._hist.append(step.z)
        return step

    # ------------------------------------------------------------------ acting
    def act(self, joint_positions, stamp: Optional[float] = None) -> tuple[np.ndarray, dict]:
        """Plan from the belief; returns (target (A,) float64, info).

        Never NaN: without goal or belief, with a stale belief or a failed plan it holds the
        current position. info: 'reason' ('ok' or why it held), 'plan_ms', 'cost', 'result'
        (the PlanResult, or None).
        """
        q = np.asarray(joint_positions, dtype=np.float64).reshape(-1)
        if q.shape != self._lower.shape:
            raise ValueError(f'joint_positions must have {self._lower.size} entries, got '
                             f'{q.shape[0]}')
        if np.isfinite(q).all():
            hold = np.clip(q, self._lower, self._upper)  # (A,)
        elif self._command is not None:
            hold = self._command.copy()  # no position feedback: keep the command in force
        else:
            raise ValueError(f'joint_positions contain NaN/inf and no command was sent yet: '
                             f'nothing safe to hold ({q.tolist()})')
        age = None if stamp is None or self.filter.stamp is None else stamp - self.filter.stamp
        max_age = self.config.max_belief_age
        reason = ('no_goal' if not self.has_goal else 'no_belief' if not self._hist else
                  'stale_belief' if max_age is not None and age is not None and age > max_age
                  else None)
        info = {'reason': reason, 'plan_ms': 0.0, 'cost': float('inf'), 'result': None}
        if reason is not None:
            return self._send(hold), info
        state = torch.stack(list(self._hist))[None]  # (1, k', D)
        current = self._command if self._command is not None else hold
        t0 = time.perf_counter()
        cost = self._cost(current)
        plan_search = getattr(self.model, 'plan_search', None)  # a backend may run whole plans
        search = plan_search(self.planner, cost) if plan_search is not None else None
        with torch.no_grad():
            result = self.planner.plan(state, self._rollout, cost,
                                       current_action=torch.as_tensor(current),
                                       hold_action=torch.as_tensor(hold), search=search,
                                       guide_action=None if self._guide is None
                                       else torch.as_tensor(self._guide))
        info.update(plan_ms=1e3 * (time.perf_counter() - t0), cost=result.cost, result=result,
                    reason=result.info['reason'])
        target = result.actions[0].detach().cpu().double().numpy()  # (A,)
        if not np.isfinite(target).all():
            target, info['reason'] = hold, 'non-finite plan; holding'
        return self._send(target), info

    def _send(self, target: np.ndarray) -> np.ndarray:
        self._command = np.asarray(target, dtype=np.float64).copy()
        return self._command.copy()

    # ------------------------------------------------------------------ model calls
    def _encode(self, image: np.ndarray, joints=None) -> Optional[torch.Tensor]:
        """(D,) state of one image (with its joint positions, if any), or None if non-finite."""
        if not np.isfinite(image).all():
            return None
        if image.dtype != np.uint8:
            image = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        with torch.no_grad():
            z = self.model.encode(torch.as_tensor(image, device=self.device)[None])[0]
            if joints is not None and getattr(self.model, 'has_proprio', False):
                q = np.asarray(joints, dtype=np.float32).reshape(1, -1)
                if q.shape[1] != int(self.model.action_dim) or not np.isfinite(q).all():
                    raise ValueError(f'joints must be {self.model.action_dim} finite numbers, '
                                     f'got {q.ravel().tolist()}')
                z = self.model.with_joints(z[None], torch.as_tensor(q, device=z.device))[0]
        return z.detach() if bool(torch.isfinite(z).all()) else None

    def _rollout(self, z_hist: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Planner dynamics: (1, k', D) and (N, H, A) -> (N, H, D)."""
        return self.model.rollout(z_hist, actions.to(z_hist.dtype))

    def _predict_one(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Belief filter step: z (D,) after the belief history before it, action (A,) -> (D,)."""
        ctx = list(self._hist)[:-1][-(int(self.model.history) - 1):] if self.model.history > 1 \
            else []
        z_hist = torch.stack(ctx + [z])[None]  # (1, k', D)
        return self.model.rollout(z_hist, action.reshape(1, 1, -1).to(z.dtype))[0, 0]

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
        if self._goal_latent is not None:
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
        and joint distances (the goal's posture read from the goal image).
        """
        cfg, goal = self.config, self._goal_latent
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
