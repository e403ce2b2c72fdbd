"""Does the belief filter's surprise flag real anomalies? Injected faults vs normal steps (no ROS).

The arm runs the scene's exploration policy (or the MPC towards a goal image) while the agent's
belief filter fuses every frame; its surprise score (RMS innovation, prediction vs observation,
over the typical error calibrated on normal episodes) is recorded per frame. Each episode gets
one anomaly at a random time after a warm-up, of one of these types:

- ``teleport``: the goal marker (arm_reach) or the block (pusht) jumps to a random place;
- ``blocked_joint``: one joint stops following its commands for ``duration`` steps (its target
  is overridden with where it was, while the controller - and the filter - believe the command
  was executed);
- ``occlusion``: a black square covers part of the camera image for ``duration`` steps.

Labels per frame: *anomalous* = frames that show the anomaly (the teleport frame; occluded
frames; blocked frames where the joint is more than ``min_block_gap`` from where it would be
had it not been blocked: a shadow copy of the simulator runs the same commands unblocked);
*excluded* = frames right after an anomaly ends (``settle``) and blocked frames that do not
(yet) differ from the unblocked motion by that much (a joint blocked where it was to stay, or
still braking from its own motion at the onset); *normal* = all other frames after the warm-up.
AUROC (rank statistic, :func:`auroc`) of scores on anomalous vs normal frames, per type, for all
anomalous frames and for the first frame of each anomaly (``onset``).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ami_ros.agent import Agent
from ami_ros.sim import Scene

ANOMALIES = ('teleport', 'blocked_joint', 'occlusion')
NORMAL, ANOMALOUS, EXCLUDED = 0, 1, -1


def auroc(normal, anomalous) -> float:
    """Area under the ROC curve of scores: P(anomalous score > normal score), ties count half.

    Mann-Whitney U with average ranks for ties; NaN if either set is empty.
    """
    x0 = np.asarray(normal, dtype=np.float64).reshape(-1)
    x1 = np.asarray(anomalous, dtype=np.float64).reshape(-1)
    if x0.size == 0 or x1.size == 0:
        return float('nan')
    if not (np.isfinite(x0).all() and np.isfinite(x1).all()):
        raise ValueError('auroc: scores must be finite')
    x = np.concatenate([x0, x1])
    order = np.argsort(x, kind='mergesort')
    sorted_x = x[order]
    # average rank (1-based) of each group of tied values
    _, first, counts = np.unique(sorted_x, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # (groups,)
    ranks = np.empty_like(x)
    ranks[order] = np.repeat(avg, counts)
    u = ranks[x0.size:].sum() - x1.size * (x1.size + 1) / 2.0
    return float(u / (x0.size * x1.size))


@dataclass
class SurpriseEvalConfig:
    """What ``ami-ros eval-surprise`` runs."""

    steps: int = 60
    """Frames per episode."""
    warmup: int = 10
    """Frames at the start that are neither labelled nor anomalous (belief and history fill)."""
    duration: int = 8
    """Frames a blocked joint or an occlusion lasts."""
    settle: int = 3
    """Frames after an anomaly ends that are excluded (the belief recovers)."""
    patch_fraction: float = 0.35
    """Side of the occluding black square as a fraction of the image side."""
    min_block_gap: float = 0.05
    """A blocked frame is anomalous only if the joint is more than this (rad or m) from where it
    would be unblocked: a joint blocked while it was to stay put shows nothing."""
    calibration_episodes: int = 3
    """Normal episodes that set the surprise scale before the evaluation."""

    def __post_init__(self):
        for name in ('steps', 'duration', 'settle', 'calibration_episodes'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if not 1 <= int(self.warmup):
            raise ValueError(f'warmup must be >= 1, got {self.warmup}')
        if int(self.steps) < int(self.warmup) + int(self.duration) + int(self.settle) + 4:
            raise ValueError(f'steps={self.steps} leaves no room for warmup + duration + settle')
        if not 0.05 <= float(self.patch_fraction) <= 1.0:
            raise ValueError(f'patch_fraction must be in [0.05, 1], got {self.patch_fraction}')
        if not float(self.min_block_gap) >= 0.0:
            raise ValueError(f'min_block_gap must be >= 0, got {self.min_block_gap}')


def teleport(scene: Scene, rng: np.random.Generator) -> None:
    """Move the goal marker (arm_reach) or the block (pusht) to a random place."""
    if scene.name == 'arm_reach':
        q = scene.random_configuration(rng, min_ee_height=0.05)
        scene.set_goal(scene.forward_kinematics(q))
    elif scene.name == 'pusht':
        x, y = rng.uniform(120.0, 392.0, size=2)
        scene.set_block_pose(float(x), float(y), float(rng.uniform(-np.pi, np.pi)))
    else:
        raise ValueError(f'no teleport anomaly for scene {scene.name!r}')


class _Unblocked:
    """A shadow of the scene that runs the same commands without the block.

    Its joint positions are where the arm would be had nothing held it.
    """

    def __init__(self, scene: Scene):
        self.scene, self.state, self.q = scene, None, None

    def step(self, target: np.ndarray) -> None:
        """One control period of the shadow from its own state (the scene's own at the start)."""
        real = self.scene.get_state()
        if self.state is not None:
            self.scene.set_state(self.state)
        self.scene.set_target(target)
        self.scene.step()
        self.state, self.q = self.scene.get_state(), self.scene.joint_positions.copy()
        self.scene.set_state(real)


class _Driver:
    """Commands for the arm: the scene's explorer, or the MPC towards a goal image."""

    def __init__(self, scene: Scene, agent: Agent, policy: str, rng: np.random.Generator,
                 goal_image=None):
        self.scene, self.agent, self.policy = scene, agent, policy
        self.explore = scene.make_explorer(rng) if policy == 'explorer' else None
        if policy == 'mpc':
            agent.set_goal_image(goal_image)

    def __call__(self, commanded: np.ndarray, stamp: float) -> np.ndarray:
        if self.explore is not None:
            # the explorer goes on from the target in force: show it its own last command, not
            # the one a blocked joint got
            self.scene.set_target(commanded)
            return self.explore()
        return self.agent.act(self.scene.joint_positions, stamp)[0]


def run_episode(scene: Scene, agent: Agent, cfg: SurpriseEvalConfig, kind: str | None,
                rng: np.random.Generator, policy: str = 'explorer',
                goal_image=None) -> tuple[np.ndarray, list, np.ndarray, int]:
    """One episode; returns (scores, errors, labels, onset index) per frame.

    Scores are NaN and errors (a dict by channel, :attr:`FilterStep.channels`) None where the
    frame got no score.
    """
    n = int(cfg.steps)
    onset = int(rng.integers(cfg.warmup + 2, n - cfg.duration - cfg.settle)) if kind else -1
    joint = int(rng.integers(scene.num_joints))
    size = scene.render().shape[0]
    side = max(2, int(round(cfg.patch_fraction * size)))
    y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    agent.reset()
    drive = _Driver(scene, agent, policy, rng, goal_image)
    commanded = scene.target
    held, unblocked = None, _Unblocked(scene)
    scores, errors = np.full(n, np.nan), [None] * n
    labels = np.full(n, NORMAL)
    labels[:cfg.warmup] = EXCLUDED
    dt = scene.control_dt
    for t in range(n):
        if kind == 'teleport' and t == onset:
            teleport(scene, rng)
        image = scene.render()
        occluded = kind == 'occlusion' and onset <= t < onset + cfg.duration
        if occluded:
            image = image.copy()
            image[y0:y0 + side, x0:x0 + side] = 0
        step = agent.observe(image, t * dt, commanded, joints=scene.joint_positions)
        if step.surprise is not None:
            scores[t], errors[t] = step.surprise, step.channels
        # label of this frame; ``last``: the last frame that can show the anomaly
        last = {'teleport': onset, 'occlusion': onset + cfg.duration - 1,
                'blocked_joint': onset + cfg.duration}.get(kind, -1)
        if kind == 'teleport' and t == onset or occluded:
            labels[t] = ANOMALOUS
        elif kind == 'blocked_joint' and onset < t <= last:
            # the frame shows the commands up to t - 1, blocked since ``onset``
            gap = abs(unblocked.q[joint] - scene.joint_positions[joint])
            labels[t] = ANOMALOUS if gap > cfg.min_block_gap else EXCLUDED
        elif kind and last < t <= last + cfg.settle:
            labels[t] = EXCLUDED
        # next command; a blocked joint keeps its position whatever is commanded
        commanded = drive(commanded, t * dt)
        applied = commanded.copy()
        if kind == 'blocked_joint' and onset <= t < onset + cfg.duration:
            held = scene.joint_positions[joint] if held is None else held
            applied[joint] = held
            unblocked.step(np.clip(commanded, scene.lower, scene.upper))
        scene.set_target(np.clip(applied, scene.lower, scene.upper))
        scene.step()
    return scores, errors, labels, onset


def evaluate_surprise(scene: Scene, agent: Agent, episodes: int, seed: int,
                      cfg: SurpriseEvalConfig, policy: str = 'explorer',
                      goal_fn: Callable | None = None,
                      log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Calibrate on normal episodes, then one anomaly per episode (types in turn); AUROCs."""
    rng = np.random.default_rng(seed)

    def episode(ep: int, kind):
        scene.reset(seed=int(seed) * 100_003 + ep)
        goal = goal_fn(scene, rng) if goal_fn is not None else None
        return run_episode(scene, agent, cfg, kind, rng, policy, goal)

    calib = []
    for ep in range(int(cfg.calibration_episodes)):
        _, errors, labels, _ = episode(ep, None)
        calib += [e for e, label in zip(errors, labels) if label == NORMAL and e is not None]
    scale, threshold = agent.monitor.calibrate(calib)
    scales = ', '.join(f'{c} {v:.4g}' for c, v in agent.monitor.scales.items())
    log(f'eval-surprise: calibrated on {cfg.calibration_episodes} normal episodes: typical '
        f'error {scales}; threshold {threshold:.3g}')
    normal, per_type = [], {k: {'all': [], 'onset': []} for k in ANOMALIES}
    for i in range(int(episodes)):
        kind = ANOMALIES[i % len(ANOMALIES)]
        scores, _, labels, onset = episode(int(cfg.calibration_episodes) + i, kind)
        ok = np.isfinite(scores)
        normal.append(scores[(labels == NORMAL) & ok])
        anomalous = np.flatnonzero((labels == ANOMALOUS) & ok)
        per_type[kind]['all'].append(scores[anomalous])
        if anomalous.size:
            per_type[kind]['onset'].append(scores[anomalous[:1]])
        shown = f'max score {np.max(scores[anomalous]):.2f}' if anomalous.size else \
            'no frame showed it (e.g. a joint blocked where it was to stay)'
        log(f'episode {i + 1}/{episodes}: {kind} at frame {onset}: {shown}, normal max '
            f'{np.nanmax(scores[(labels == NORMAL) & ok]):.2f}')
    normal_all = np.concatenate(normal)
    out = {'typical_error': scale, 'typical_errors': dict(agent.monitor.scales),
           'threshold': threshold, 'normal_frames': int(normal_all.size),
           'false_positive_rate': float(np.mean(normal_all > threshold)), 'types': {}}
    for kind, d in per_type.items():
        a_all = np.concatenate(d['all']) if d['all'] else np.zeros(0)
        a_on = np.concatenate(d['onset']) if d['onset'] else np.zeros(0)
        out['types'][kind] = {
            'events': len(d['onset']), 'anomalous_frames': int(a_all.size),
            'auroc': auroc(normal_all, a_all), 'auroc_onset': auroc(normal_all, a_on),
            'detection_rate': float(np.mean(a_all > threshold)) if a_all.size else math.nan,
            'onset_detection_rate': float(np.mean(a_on > threshold)) if a_on.size else math.nan,
            'scores': a_all.tolist()}
    out['normal_scores'] = normal_all.tolist()
    return out
