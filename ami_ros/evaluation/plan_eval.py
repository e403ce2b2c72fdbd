"""Closed-loop planning evaluation in the core simulator (no ROS): world model vs random vs oracle.

Protocol (DINO-WM's): from each episode's start state, run the scene's exploration policy for
``goal_steps`` steps; the state reached is the goal, shown to the agent only as an image (for
arm_reach the goal marker is moved onto the end effector there and stays there for the episode).
The start state is restored and each method gets ``steps`` control steps.

Success, judged at the END of the step budget (the agent must get there and stay):

- arm_reach: end effector within ``tolerance`` (0.05 m) of the goal end-effector position.
- pusht: BOTH gym-pusht's criterion, coverage of the goal state's T by the block above 0.95,
  AND DINO-WM's (``env/pusht/pusht_wrapper.py: eval_state``): the distance of (pusher x, y,
  block x, y) to the goal's below 20 units and the block angle error below pi/9.

Methods, each from the same start and goal: ``world_model`` (the Agent on the learned model),
``random`` (uniform steps within the rate limit, clipped to the bounds) and ``oracle`` (a
sampling planner, CEM by default, with the same bounds and rate limit on the simulator itself,
cost = distance of true state features to the goal's; smaller budget, see
:mod:`ami_ros.evaluation.oracle`). A diagnostic fourth, ``oracle_latent``: the oracle's planner and
budget on the simulator's dynamics, but with the world model's cost (the configured latent metric
between the encoded frames each candidate would produce and the encoded goal image): the world
model's cost under perfect dynamics. When ``oracle_latent`` fails like ``world_model``, the
representation (the cost) limits planning; when it succeeds, the learned dynamics do.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ami_ros.agent import Agent
from ami_ros.control import MPCConfig
from ami_ros.data.bag import SIM_EPOCH_NS
from ami_ros.evaluation.oracle import TrueDynamics, state_features
from ami_ros.planning import PlannerConfig, latent_goal_cost, make_planner, probe_goal_cost
from ami_ros.sim import Scene
from ami_ros.sim.record import open_episode_bag, write_step


@dataclass
class PlanEvalConfig:
    """What ``ami-ros eval-plan`` runs (an eval_plan block of ``config/<scene>.yaml``)."""

    protocol: str = 'own'
    """Name of the protocol the block describes ('own', 'swm'): reported, not interpreted."""
    steps: int = 50
    """Control steps per episode (the step budget)."""
    goal_steps: int = 25
    """Exploration steps from the start state to the goal state (DINO-WM: 25)."""
    goal_policy: str = 'explorer'
    """Policy whose steps lead to the goal: ``explorer`` (the scene's data-collection policy)
    or ``expert`` (an expert-like policy towards the scene's target, where the scene has one:
    pusht; the benchmarks take Push-T goals from expert demonstrations)."""
    goal_joints: bool = False
    """Models with proprioception: the goal's joint positions come with its image, as DINO-WM
    gives its goal's proprio (False: the model's reader reads them from the goal image)."""
    tolerance: float = 0.05
    """arm_reach: success radius around the goal end-effector position, metres."""
    joint_tolerance: float = 0.05
    """reacher: success when every joint is within this many radians of the goal's."""
    success_at: str = 'end'
    """'end': the criterion must hold at the end of the budget (get there and stay); 'any': at
    any step of it (the world-model benchmarks' rule on reacher and Push-T)."""
    position_threshold: float = 20.0
    """pusht (DINO-WM): largest distance of (pusher, block) positions to the goal's, env units."""
    angle_threshold: float = math.pi / 9
    """pusht (DINO-WM): largest block angle error, radians."""
    coverage_threshold: float = 0.95
    """pusht (gym-pusht): least coverage of the goal T by the block."""
    require_coverage: bool = True
    """pusht: success needs the coverage too (False: DINO-WM's pose criterion alone, as the
    world-model benchmarks judge Push-T)."""
    oracle_planner: str = 'cem'
    """Oracle planner by name; CEM by default: its elite selection does not depend on the cost's
    units (MPPI's temperature is set in latent-cost units, not metres)."""
    oracle_samples: int = 24
    """Oracle planner: candidates per iteration (each costs horizon real simulator steps)."""
    oracle_iterations: int = 2
    """Oracle planner: iterations per plan."""
    oracle_horizon: int = 5
    """Oracle planner: horizon, in planned actions (each held ``oracle_action_block`` steps)."""
    oracle_action_block: int = 1
    """Oracle planner: control steps each planned action is held (the benchmarks' frameskip:
    a horizon of 5 blocks of 5 looks 25 steps ahead for the search cost of 5)."""
    oracle_replan_every: int = 1
    """Oracle: control steps between plans; the plan's actions run in between, each for its
    block (the benchmarks' receding horizon: one block)."""
    oracle_init_std: Optional[float] = None
    """Oracle planner: initial sampling std per action dimension, in action units (None: the
    planner block's ``init_std``). Pushing needs wide first samples: the way round the T."""
    oracle_candidates: int = 0
    """Oracle planner: scripted motions the scene proposes (pusht: pushes of the T from random
    sides, the way round it included) that each plan's search may start from, instead of the
    last plan (0 = none; scenes without proposals ignore it)."""
    oracle_feature_weights: Optional[tuple] = None
    """Oracle: weight of each ground-truth feature in its cost (pusht: pusher x, y, block x, y,
    block angle cos, sin; see ``evaluation.oracle.state_features``); None = all 1. The success
    rule is not weighted."""
    oracle_episodes: Optional[int] = None
    """Run the oracle on only the first N episodes (it is slow); None = all."""

    def __post_init__(self):
        for name in ('steps', 'goal_steps', 'oracle_samples', 'oracle_iterations',
                     'oracle_horizon', 'oracle_action_block', 'oracle_replan_every'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'eval.{name} must be >= 1, got {getattr(self, name)}')
        if int(self.oracle_samples) < 2:
            raise ValueError(f'eval.oracle_samples must be >= 2, got {self.oracle_samples}')
        for name in ('tolerance', 'joint_tolerance', 'position_threshold', 'angle_threshold'):
            if not 0.0 < float(getattr(self, name)) < math.inf:
                raise ValueError(f'eval.{name} must be > 0, got {getattr(self, name)}')
        if not 0.0 < float(self.coverage_threshold) <= 1.0:
            raise ValueError(f'eval.coverage_threshold must be in (0, 1], '
                             f'got {self.coverage_threshold}')
        if self.goal_policy not in ('explorer', 'expert'):
            raise ValueError(f"eval.goal_policy must be 'explorer' or 'expert', "
                             f'got {self.goal_policy!r}')
        if self.success_at not in ('end', 'any'):
            raise ValueError(f"eval.success_at must be 'end' or 'any', got {self.success_at!r}")
        if self.oracle_planner not in ('cem', 'mppi'):
            raise ValueError(f"eval.oracle_planner must be 'cem' or 'mppi', "
                             f'got {self.oracle_planner!r}')
        if int(self.oracle_replan_every) != 1 and \
                int(self.oracle_replan_every) % int(self.oracle_action_block):
            raise ValueError(f'eval.oracle_replan_every must be 1 or a multiple of '
                             f'oracle_action_block={self.oracle_action_block}, '
                             f'got {self.oracle_replan_every}')
        if self.oracle_feature_weights is not None:
            self.oracle_feature_weights = tuple(float(v) for v in self.oracle_feature_weights)
            if not all(0.0 <= v < math.inf for v in self.oracle_feature_weights):
                raise ValueError(f'eval.oracle_feature_weights must be >= 0, '
                                 f'got {self.oracle_feature_weights}')
        if int(self.oracle_candidates) < 0:
            raise ValueError(f'eval.oracle_candidates must be >= 0, got {self.oracle_candidates}')
        if self.oracle_init_std is not None and not 0.0 < float(self.oracle_init_std) < math.inf:
            raise ValueError(f'eval.oracle_init_std must be > 0, got {self.oracle_init_std}')
        if self.oracle_episodes is not None and int(self.oracle_episodes) < 0:
            raise ValueError(f'eval.oracle_episodes must be >= 0, got {self.oracle_episodes}')


@dataclass
class Goal:
    image: np.ndarray      # (H, W, 3) uint8
    state: np.ndarray      # get_state() at the goal
    features: np.ndarray   # state_features() at the goal
    ee_position: Optional[np.ndarray] = None  # arm_reach: where the goal marker goes
    joints: Optional[np.ndarray] = None       # (J,) the joint positions at the goal


# ---------------------------------------------------------------------------------- success ---
def pusht_coverage(scene: Scene, goal_state: np.ndarray) -> float:
    """Fraction of the goal state's T covered by the block now (gym-pusht's coverage)."""
    from gym_pusht.envs.pusht import pymunk_to_shapely

    env = scene._env  # gym-pusht computes coverage against env.goal_pose: point it at our goal
    goal_body = env.get_goal_pose_body(np.array([goal_state[4], goal_state[5], goal_state[6]]))
    goal_geom = pymunk_to_shapely(goal_body, env.block.shapes)
    block_geom = pymunk_to_shapely(env.block, env.block.shapes)
    return float(goal_geom.intersection(block_geom).area / goal_geom.area)


def judge(scene: Scene, goal: Goal, cfg: PlanEvalConfig) -> tuple[bool, float, dict]:
    """(success now, error now, details).

    The error is in metres (arm_reach), radians (reacher: the largest joint error) or env units
    (pusht).
    """
    if scene.name == 'arm_reach':
        err = float(np.linalg.norm(scene.ground_truth()['ee_position'] - goal.ee_position))
        return err <= float(cfg.tolerance), err, {}
    if scene.name == 'reacher':
        err = float(scene.posture_error(goal.state[:2]).max())
        return err <= float(cfg.joint_tolerance), err, {}
    s, g = scene.get_state(), goal.state
    pos = float(np.linalg.norm(s[[0, 1, 4, 5]] - g[[0, 1, 4, 5]]))
    ang = float(abs((s[6] - g[6] + np.pi) % (2 * np.pi) - np.pi))
    cov = pusht_coverage(scene, g)
    pose_ok = pos < float(cfg.position_threshold) and ang < float(cfg.angle_threshold)
    cov_ok = cov > float(cfg.coverage_threshold)
    ok = pose_ok and (cov_ok or not cfg.require_coverage)
    return ok, pos, {'angle_error': ang, 'coverage': cov, 'pose_success': pose_ok,
                     'coverage_success': cov_ok}


def make_goal(scene: Scene, rng: np.random.Generator, cfg: PlanEvalConfig,
              tries: int = 10) -> tuple[np.ndarray, Goal]:
    """(start state, goal) per the module's protocol; the scene is left at the start state.

    Explorations that end where the start already counts as success are drawn again (up to
    ``tries``), so no goal is reached by doing nothing.
    """
    if cfg.goal_policy == 'expert' and not hasattr(scene, 'make_expert'):
        raise ValueError(f'eval.goal_policy expert: scene {scene.name!r} has no expert')
    policy = scene.make_expert if cfg.goal_policy == 'expert' else scene.make_explorer
    start = scene.get_state()
    for _ in range(tries):
        scene.set_state(start)
        explore = policy(rng)
        for _ in range(int(cfg.goal_steps)):
            scene.set_target(explore())
            scene.step()
        ee = None
        if scene.name == 'arm_reach':
            ee = scene.ground_truth()['ee_position']
            scene.set_goal(ee)
        goal = Goal(scene.render(), scene.get_state(), state_features(scene), ee,
                    scene.joint_positions.copy())
        reset_to(scene, start, goal)
        if not judge(scene, goal, cfg)[0]:
            break
    return scene.get_state(), goal


def reset_to(scene: Scene, state: np.ndarray, goal: Goal) -> None:
    scene.set_state(state)
    if goal.ee_position is not None:
        scene.set_goal(goal.ee_position)  # the marker shows the goal during the episode


# ---------------------------------------------------------------------------------- methods ---
class ModelPolicy:
    """The Agent, given the goal as an image (with its joint positions if ``goal_joints``)."""

    def __init__(self, agent: Agent, goal_joints: bool = False):
        self.agent = agent
        self.goal_joints = bool(goal_joints)

    def begin(self, goal: Goal) -> None:
        self.agent.reset()
        self.agent.set_goal_image(goal.image, goal.joints if self.goal_joints else None)

    def __call__(self, image, q, stamp, executed) -> tuple[np.ndarray, float]:
        self.agent.observe(image, stamp, executed, joints=q)
        target, info = self.agent.act(q, stamp)
        return target, info['plan_ms']


class RandomPolicy:
    """Uniform random steps within the rate limit from the command in force, within bounds."""

    def __init__(self, planning: PlannerConfig, seed: int):
        self.lower, self.upper = (np.array(planning.vector(n)) for n in ('lower', 'upper'))
        delta = planning.vector('max_delta')
        self.delta = np.array(delta) if delta is not None else (self.upper - self.lower)
        self.seed = int(seed)
        self.rng: np.random.Generator | None = None  # drawn per goal in begin

    def begin(self, goal: Goal) -> None:
        # draws depend on the seed and the goal only: a shard of a run draws what the run does
        self.rng = np.random.default_rng([self.seed, zlib.crc32(goal.state.tobytes())])

    def __call__(self, image, q, stamp, executed) -> tuple[np.ndarray, float]:
        step = self.rng.uniform(-self.delta, self.delta)
        return np.clip(executed + step, self.lower, self.upper), 0.0


class OraclePolicy:
    """The same planner with the simulator as its dynamics (see module docstring).

    model: None = the true cost (state features); a world model (anything with ``encode``) =
    its latent goal cost on the frames the simulator renders (``oracle_latent``).
    """

    steps_the_simulator = True
    """Each plan steps private copies of the simulator (slow): ``oracle_episodes`` limits it."""

    def __init__(self, scene: Scene, mpc: MPCConfig, cfg: PlanEvalConfig, model=None):
        self.scene = scene
        self.config = mpc
        planning = dataclasses.replace(
            mpc.planning, n_samples=int(cfg.oracle_samples), iterations=int(cfg.oracle_iterations),
            horizon=int(cfg.oracle_horizon),
            n_elites=max(2, min(int(mpc.planning.n_elites), int(cfg.oracle_samples) // 4)))
        planning = dataclasses.replace(planning, action_block=int(cfg.oracle_action_block))
        if cfg.oracle_init_std is not None:
            planning = dataclasses.replace(
                planning, init_std=(float(cfg.oracle_init_std),) * int(planning.action_dim))
        self.planner = make_planner(cfg.oracle_planner, planning)
        self.model = model
        self.replan_every = int(cfg.oracle_replan_every)
        self.candidates = int(cfg.oracle_candidates) if hasattr(scene, 'candidate_plans') else 0
        self.weights = cfg.oracle_feature_weights
        self.dynamics = TrueDynamics(scene.name, scene.config,
                                     None if model is None else model.encode)
        self.cost = None
        self._plan, self._age = None, 0  # the plan in force and control steps since it was made

    def begin(self, goal: Goal) -> None:
        self.planner.reset()
        self._plan = None
        self._rng = np.random.default_rng(zlib.crc32(goal.state.tobytes()))  # the proposals
        if self.model is None:
            # the simulator's features (N, H, P) against the goal's, weighted per feature
            self.cost = probe_goal_cost(lambda features: features, goal.features, 'euclidean',
                                        self.config.terminal_weight, self.config.running_weight,
                                        dim_weights=self.weights)
            return
        with torch.no_grad():
            z_goal = torch.as_tensor(self.model.encode(goal.image[None]))[0].double()
        self.cost = latent_goal_cost(z_goal, self.config.metric,
                                     self.config.terminal_weight, self.config.running_weight)

    def __call__(self, image, q, stamp, executed) -> tuple[np.ndarray, float]:
        """The plan's action for this step; a new plan every ``oracle_replan_every`` steps."""
        if self._plan is not None and self._age < self.replan_every:
            i = min(self._age // self.planner.config.action_block, len(self._plan) - 1)
            self._age += 1
            return self._plan[i].astype(np.float64), None  # no plan made at this step
        t0 = time.perf_counter()
        hold = self.scene.hold_command()
        # replanning every m blocks: the previous plan is m blocks further on (the planner
        # shifts it by one more); replanning every step, the planner counts the blocks itself
        m = self.replan_every // self.planner.config.action_block
        prev = None if self._plan is None or self.replan_every == 1 else \
            torch.as_tensor(self._plan[m - 1:])
        p = self.planner.config
        starts = None if not self.candidates else torch.as_tensor(self.scene.candidate_plans(
            self.candidates, int(p.horizon), int(p.action_block), self._rng))
        result = self.planner.plan(torch.as_tensor(self.scene.get_state()), self.dynamics,
                                   self.cost, prev_plan=prev,
                                   current_action=torch.as_tensor(executed),
                                   hold_action=torch.as_tensor(hold), starts=starts)
        self._plan, self._age = result.actions.numpy(), 1
        return self._plan[0].astype(np.float64), 1e3 * (time.perf_counter() - t0)

    def close(self) -> None:
        self.dynamics.close()


# ---------------------------------------------------------------------------------- running ---
@dataclass
class EpisodeResult:
    success: bool
    final_error: float
    initial_error: float                # the same error at the start state
    first_success_step: Optional[int]   # 1-based control step the criterion first held
    success_curve: list                 # success after each step (bool)
    plan_ms: list
    details: dict
    frames: Optional[list] = None       # rendered frames, when recorded


def run_episode(scene: Scene, policy, goal: Goal, cfg: PlanEvalConfig,
                record: bool = False, bag=None) -> EpisodeResult:
    """Run ``policy`` for cfg.steps control steps from the scene's current state.

    ``record``: keep the frames; ``bag``: a BagWriter that logs every step as ``ami-ros
    collect`` does (:mod:`ami_ros.sim.record`), training data from this policy's own actions.
    """
    policy.begin(goal)
    curve, plan_ms, frames, first = [], [], [], None
    initial = judge(scene, goal, cfg)[1]
    dt = scene.control_dt
    for t in range(int(cfg.steps)):
        image = scene.render()
        if record:
            frames.append(image)
        target, ms = policy(image, scene.joint_positions, t * dt, scene.target)
        scene.set_target(np.clip(target, scene.lower, scene.upper))  # float32 rounding
        if bag is not None:
            write_step(bag, SIM_EPOCH_NS + round(t * dt * 1e9), image, scene)
        scene.step()
        if ms is not None:  # None: the step ran an earlier plan (no planning time to count)
            plan_ms.append(ms)
        ok = judge(scene, goal, cfg)[0]
        curve.append(ok)
        if ok and first is None:
            first = t + 1
    if record:
        frames.append(scene.render())
    ok, err, details = judge(scene, goal, cfg)
    if cfg.success_at == 'any':
        ok = first is not None
    return EpisodeResult(ok, err, initial, first, curve, plan_ms, details,
                         frames if record else None)


def summarize(results: list[EpisodeResult]) -> dict:
    """Per-method numbers: success_rate, final_error (mean), steps_mean, plan_ms_p50/p99, ..."""
    if not results:
        return {'episodes': 0}
    ms = np.concatenate([np.asarray(r.plan_ms, dtype=np.float64) for r in results])
    firsts = [r.first_success_step for r in results if r.first_success_step is not None]
    errors = np.array([r.final_error for r in results])
    out = {
        'episodes': len(results),
        'success_rate': float(np.mean([r.success for r in results])),
        'final_error': float(errors.mean()),
        'final_error_median': float(np.median(errors)),
        'initial_error': float(np.mean([r.initial_error for r in results])),
        'reached_rate': len(firsts) / len(results),
        'steps_mean': float(np.mean(firsts)) if firsts else None,
        'plan_ms_p50': float(np.percentile(ms, 50)),
        'plan_ms_p99': float(np.percentile(ms, 99)),
        'success_vs_step': np.mean([r.success_curve for r in results], axis=0).tolist(),
    }
    for key in ('pose_success', 'coverage_success'):
        if key in results[0].details:
            out[f'{key}_rate'] = float(np.mean([r.details[key] for r in results]))
    return out


def evaluate(scene: Scene, policies: dict[str, object], episodes: int, seed: int,
             cfg: PlanEvalConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             record_episode: int = 0, first: int = 0, bags: Optional[Path] = None
             ) -> tuple[dict[str, list[EpisodeResult]], list[Goal]]:
    """Run every policy on the same episodes; returns results per method and the goals.

    ``first``: run episodes ``first``..``episodes - 1`` only; the goals of the ones before are
    still drawn, so each episode has the goal it has in a whole run (shards of one evaluation).
    ``bags``: record each method's episodes as rosbag2, ``<bags>/<method>/<scene>_<seed>_<ep>``
    (refused before the first episode if one exists).
    """
    if bags is not None:
        taken = [str(_bag_path(bags, name, scene, seed, ep)) for name in policies
                 for ep in range(int(first), int(episodes))
                 if _bag_path(bags, name, scene, seed, ep).exists()]
        if taken:
            raise FileExistsError(f'refusing to overwrite recorded episodes: {taken[0]}'
                                  f'{f" and {len(taken) - 1} more" if len(taken) > 1 else ""}')
    rng = np.random.default_rng(seed)
    results: dict[str, list[EpisodeResult]] = {name: [] for name in policies}
    goals = []
    for ep in range(int(episodes)):
        scene.reset(seed=int(seed) * 100_003 + ep)
        start, goal = make_goal(scene, rng, cfg)
        if ep < int(first):
            continue
        goals.append(goal)
        line = []
        for name, policy in policies.items():
            if getattr(policy, 'steps_the_simulator', False) and \
                    cfg.oracle_episodes is not None and ep >= int(cfg.oracle_episodes):
                continue
            reset_to(scene, start, goal)
            record = ep - int(first) == record_episode
            if bags is None:
                r = run_episode(scene, policy, goal, cfg, record=record)
            else:
                path = _bag_path(bags, name, scene, seed, ep)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open_episode_bag(path, scene, seed=int(seed) * 100_003 + ep,
                                      control_hz=1.0 / scene.control_dt,
                                      extra={'ami_ros.policy': name}) as bag:
                    r = run_episode(scene, policy, goal, cfg, record=record, bag=bag)
            results[name].append(r)
            line.append(f'{name} {"ok" if r.success else "--"} {r.final_error:.3g}')
        log(f'episode {ep + 1}/{episodes}: ' + ', '.join(line))
    return results, goals


def _bag_path(bags: Path, method: str, scene: Scene, seed: int, ep: int) -> Path:
    return Path(bags) / method / f'{scene.name}_{int(seed)}_{ep:04d}'
