"""The goal posture: inverse kinematics on the world model's learned forward kinematics.

A goal image gives the planner two readings of the goal (world model v2): the joint positions
(coarse: which of the look-alike postures, the *basin*) and the end effector (precise). Damped
least squares (Levenberg-Marquardt) on the learned forward kinematics, started from the joint
reading and kept within the joint limits, turns them into one joint configuration whose end
effector is the read one. The planner evaluates the path to it (rate-limited) among its
candidates every tick: a sampling planner cannot find the way out of a posture where the end
effector is close but the arm is folded the wrong way (pressed against two joint limits 7 cm from
the goal, say), and near the goal the exact configuration beats every noisy sample.
"""
from __future__ import annotations

from typing import Callable

import torch


def solve_ik(fk: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor,
             q0: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
             iterations: int = 30, damping: float = 1e-3) -> tuple[torch.Tensor, float]:
    """Joint positions (J,) near ``q0`` whose ``fk`` is ``target`` (E,), and the residual (m).

    ``fk`` maps (J,) radians to (E,) metres and is differentiable (the world model's
    ``ee_of_joints``); every iterate is clamped into [lower, upper] (J,).
    """
    dtype = torch.float32
    target = torch.as_tensor(target, dtype=dtype).reshape(-1).detach()
    lower = torch.as_tensor(lower, dtype=dtype).reshape(-1)
    upper = torch.as_tensor(upper, dtype=dtype).reshape(-1)

    def error(x: torch.Tensor) -> torch.Tensor:
        return fk(x).reshape(-1).to(dtype) - target

    q = torch.as_tensor(q0, dtype=dtype).reshape(-1).detach().clamp(lower, upper)
    eye = torch.eye(q.numel(), dtype=dtype)
    with torch.no_grad():
        r = error(q)
    lam = float(damping)
    for _ in range(int(iterations)):
        with torch.enable_grad():
            jac = torch.autograd.functional.jacobian(error, q)  # (E, J)
        step = torch.linalg.solve(jac.T @ jac + lam * eye, jac.T @ r)  # (J,)
        trial = (q - step).clamp(lower, upper)
        with torch.no_grad():
            r_trial = error(trial)
        if bool(r_trial.norm() < r.norm()):  # Levenberg-Marquardt: keep what helps
            q, r, lam = trial.detach(), r_trial, max(lam / 3.0, 1e-6)
        else:
            lam *= 10.0
    return q, float(r.norm())
