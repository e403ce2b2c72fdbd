"""The safety layer as a property: whatever a planner outputs, no command leaves the limits.

100,000 random plans (planner-like outputs, wild values, NaN/inf injections) go through
``Limits.clamp`` / ``clamp_sequence`` / ``final_check`` with random limits, some read from random
URDFs: every command that comes out is finite, inside the position bounds and within the rate
limit of the command before it; every non-finite input is refused with ``UnsafeCommand``.
Hypothesis searches the same properties for the smallest counter-example.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ami_ros.safety import Limits, UnsafeCommand

DT = 0.1


def _ok(command, previous, limits: Limits, dt: float) -> bool:
    tol = 1e-9 * np.maximum(1.0, np.abs(command))
    inside = np.all(command >= limits.lower - tol) and np.all(command <= limits.upper + tol)
    rate_ok = previous is None or np.all(np.abs(command - previous) <= limits.rate * dt + tol)
    return bool(np.all(np.isfinite(command)) and inside and rate_ok)


def _random_limits(rng: np.random.Generator) -> Limits:
    a = int(rng.integers(1, 9))
    lower = rng.uniform(-4.0, 1.0, a)
    upper = lower + rng.uniform(1e-3, 5.0, a)
    return Limits(tuple(f'j{i}' for i in range(a)), lower, upper, rng.uniform(1e-3, 10.0, a))


def _urdf_limits(rng: np.random.Generator, tmp_path) -> Limits:
    """Limits read from a random serial-chain URDF (random joint ranges and velocities)."""
    a = int(rng.integers(1, 7))
    links = ''.join(f'<link name="l{i}"/>' for i in range(a + 1))
    joints = []
    for i in range(a):
        lo = float(rng.uniform(-3.0, 0.5))
        hi = lo + float(rng.uniform(0.05, 4.0))
        joints.append(f'<joint name="j{i}" type="revolute"><parent link="l{i}"/>'
                      f'<child link="l{i + 1}"/><axis xyz="0 0 1"/>'
                      f'<limit lower="{lo}" upper="{hi}" velocity="{rng.uniform(0.1, 5.0)}" '
                      f'effort="10"/></joint>')
    path = tmp_path / f'robot_{rng.integers(1 << 30)}.urdf'
    path.write_text(f'<robot name="r">{links}{"".join(joints)}</robot>')
    return Limits.from_urdf(path, velocity_scale=float(rng.uniform(0.1, 1.0)),
                            position_margin=0.0)


def _plan(rng: np.random.Generator, limits: Limits, previous: np.ndarray, h: int) -> np.ndarray:
    """A plan (H, A) as a planner (or a broken model) might output it."""
    kind = rng.integers(5)
    a = limits.size
    if kind == 0:    # a planner's random walk from the command in force
        plan = previous + np.cumsum(rng.normal(0, 0.3, (h, a)), axis=0)
    elif kind == 1:  # wild values
        plan = rng.normal(0, 1e3, (h, a))
    elif kind == 2:  # exactly at and just past the bounds
        plan = np.where(rng.random((h, a)) < 0.5, limits.lower, limits.upper) + \
            rng.choice([-1e-7, 0.0, 1e-7], (h, a))
    elif kind == 3:  # huge magnitudes
        plan = rng.choice([-1e300, 1e300, -1e12, 1e12], (h, a))
    else:            # NaN / inf injected
        plan = previous + rng.normal(0, 0.1, (h, a))
        plan[rng.integers(h), rng.integers(a)] = rng.choice([np.nan, np.inf, -np.inf])
    return plan


def test_100k_random_plans_never_leave_the_limits(tmp_path):
    rng = np.random.default_rng(0)
    sent = refused = 0
    limits = _random_limits(rng)
    for i in range(100_000):
        if i % 1000 == 0:  # new limits every 1000 plans, every fourth set from a URDF
            limits = _urdf_limits(rng, tmp_path) if i % 4000 == 0 else _random_limits(rng)
            previous = limits.hold(rng.uniform(limits.lower, limits.upper))
        plan = _plan(rng, limits, previous, int(rng.integers(1, 4)))
        finite = np.all(np.isfinite(plan))
        try:
            if plan.shape[0] == 1:
                safe, _ = limits.clamp(plan[0], previous, DT)
                seq = safe[None]
            else:
                seq, _ = limits.clamp_sequence(plan, previous, DT)
            command = limits.final_check(seq[0])
        except UnsafeCommand:
            assert not finite, f'refused a finite plan {plan}'
            refused += 1
            continue
        assert finite, f'accepted a plan with NaN/inf {plan}'
        before = previous
        for step in seq:  # each planned step within the limits of the one before
            assert _ok(step, before, limits, DT), (step, before, limits)
            before = step
        previous = command  # the first step is what is sent: the command in force next
        sent += 1
    assert sent > 70_000 and refused > 10_000, (sent, refused)


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6).flatmap(lambda a: st.tuples(
    st.lists(st.tuples(st.floats(-5, 5), st.floats(1e-3, 5), st.floats(1e-3, 10)),
             min_size=a, max_size=a),
    st.lists(st.floats(0, 1), min_size=a, max_size=a),
    st.lists(st.one_of(finite, st.just(float('nan')), st.just(float('inf'))),
             min_size=a, max_size=a))))
def test_clamp_property(case):
    bounds, where, target = case
    lower = np.array([b[0] for b in bounds])
    limits = Limits(tuple(f'j{i}' for i in range(len(bounds))), lower,
                    lower + np.array([b[1] for b in bounds]), np.array([b[2] for b in bounds]))
    previous = limits.lower + np.array(where) * (limits.upper - limits.lower)
    t = np.array(target)
    if not np.all(np.isfinite(t)):
        with pytest.raises(UnsafeCommand):
            limits.clamp(t, previous, DT)
        return
    safe, _ = limits.clamp(t, previous, DT)
    assert _ok(limits.final_check(safe), previous, limits, DT)
