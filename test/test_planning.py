"""Planners (CEM, MPPI) and planning costs on analytic systems; no ROS.

The device comes from AMI_TEST_DEVICE (default cpu), so the same tests check a GPU where there is
one: ``AMI_TEST_DEVICE=cuda .venv/bin/python -m pytest -q test/test_planning.py``.
"""
import math
import os
import time

import pytest
import torch

from ami_ros.planning import (PlannerConfig, latent_goal_cost, make_planner, probe_goal_cost,
                              sum_costs)

torch.set_num_threads(1)
DEVICE = torch.device(os.environ.get('AMI_TEST_DEVICE', 'cpu'))
if DEVICE.type == 'cuda' and not torch.cuda.is_available():
    pytest.skip('AMI_TEST_DEVICE asks for CUDA but none is available', allow_module_level=True)

PLANNERS = ['cem', 'mppi']


def integrator(x, actions):
    """Single integrator x_{t+1} = x_t + a_t: x (D,), actions (N, H, D) -> (N, H, D)."""
    return x + torch.cumsum(actions, dim=1)


def point_mass(state, actions, dt=0.1):
    """2-D point mass, state (4,) = position, velocity; actions = accelerations (N, H, 2)."""
    pos, vel = state[:2], state[2:]
    v = vel + dt * torch.cumsum(actions, dim=1)  # (N, H, 2)
    p = pos + dt * torch.cumsum(v, dim=1)  # (N, H, 2)
    return torch.cat([p, v], dim=-1)  # (N, H, 4)


def config(**kw):
    base = dict(action_dim=2, horizon=5, n_samples=64, iterations=4, n_elites=8,
                temperature=0.05, init_std=0.2)
    base.update(kw)
    return PlannerConfig(**base)


@pytest.mark.parametrize('name', PLANNERS)
def test_closed_loop_reaches_goal_within_bounds_and_rate_limits(name):
    lim, delta = 0.2, 0.05
    planner = make_planner(name, config(lower=-lim, upper=lim, max_delta=delta, seed=3))
    goal = torch.tensor([1.0, -0.5], device=DEVICE)
    cost = latent_goal_cost(goal, metric='l2', running_weight=1.0)
    x = torch.zeros(2, device=DEVICE)
    current = torch.zeros(2, device=DEVICE)
    for _ in range(40):
        result = planner.plan(x, integrator, cost, current_action=current,
                              hold_action=torch.zeros(2, device=DEVICE))
        plan = result.actions  # (H, A)
        assert plan.shape == (5, 2) and plan.device == x.device
        assert result.info['reason'] == 'ok' and torch.isfinite(plan).all()
        assert plan.abs().max() <= lim + 1e-6
        steps = torch.cat([current[None], plan]).diff(dim=0)  # from the current action on
        assert steps.abs().max() <= delta + 1e-6
        assert result.predicted.shape == (5, 2)
        torch.testing.assert_close(result.predicted, integrator(x, plan[None])[0])
        current = plan[0]
        x = x + current
    assert torch.linalg.norm(x - goal) < 0.05, f'{name} ended at {x.tolist()}'


def _closed_loop_cost(name, warm, seed):
    """Sum over a closed-loop run of the plan costs, at a small budget."""
    planner = make_planner(name, config(horizon=10, n_samples=24, iterations=2, n_elites=6,
                                        init_std=1.0, temperature=0.5, lower=-2.0, upper=2.0,
                                        warm_start=warm, seed=seed))
    goal = torch.tensor([1.0, -1.0, 0.0, 0.0], device=DEVICE)
    cost = latent_goal_cost(goal, metric='l2', running_weight=1.0, terminal_weight=5.0)
    state = torch.zeros(4, device=DEVICE)
    total = 0.0
    for _ in range(15):
        result = planner.plan(state, point_mass, cost)
        total += result.cost
        state = point_mass(state, result.actions[None, :1])[0, 0]
    return total


@pytest.mark.parametrize('name', PLANNERS)
def test_warm_start_lowers_cost_at_equal_budget(name):
    seeds = range(6)
    warm = sum(_closed_loop_cost(name, True, s) for s in seeds) / len(seeds)
    cold = sum(_closed_loop_cost(name, False, s) for s in seeds) / len(seeds)
    assert warm < 0.95 * cold, f'{name}: warm {warm:.3f} vs cold {cold:.3f}'


@pytest.mark.parametrize('name', PLANNERS)
def test_result_never_worse_than_warm_start(name):
    goal = torch.tensor([0.3, 0.3], device=DEVICE)
    cost = latent_goal_cost(goal, metric='l2', running_weight=1.0)
    x = torch.zeros(2, device=DEVICE)
    good = torch.tensor([[0.3, 0.3]] + [[0.0, 0.0]] * 4, device=DEVICE)  # reaches the goal
    prev = torch.cat([torch.zeros(1, 2, device=DEVICE), good])  # shifted by one -> `good`
    planner = make_planner(name, config(n_samples=4, iterations=1, n_elites=2, init_std=1.0))
    result = planner.plan(x, integrator, cost, prev_plan=prev[:5])
    assert result.cost <= float(cost(integrator(x, good[None]), good[None])[0]) + 1e-6


@pytest.mark.parametrize('name', PLANNERS)
def test_same_seed_same_plans(name):
    goal = torch.tensor([1.0, 0.5], device=DEVICE)
    cost = latent_goal_cost(goal, metric='l1')

    def run(seed):
        planner = make_planner(name, config(seed=seed))
        x, plans = torch.zeros(2, device=DEVICE), []
        for _ in range(3):
            plans.append(planner.plan(x, integrator, cost).actions)
            x = x + plans[-1][0]
        return torch.stack(plans)

    first = run(7)
    assert torch.equal(first, run(7))
    assert not torch.equal(first, run(8))


@pytest.mark.parametrize('name', PLANNERS)
def test_nan_rollouts_are_discarded(name):
    """Half the action space makes the model blow up; the plan must come from the other half."""

    def fragile(x, actions):
        out = integrator(x, actions)  # (N, H, 2)
        bad = (actions[..., 0] > 0.3).any(dim=1)  # (N,)
        return torch.where(bad[:, None, None], torch.full_like(out, float('nan')), out)

    goal = torch.tensor([2.0, 2.0], device=DEVICE)  # needs a[0] = 0.4 > 0.3 per step
    planner = make_planner(name, config(init_std=0.5, lower=-1.0, upper=1.0, seed=1))
    cost = latent_goal_cost(goal, metric='l2')
    x = torch.zeros(2, device=DEVICE)
    result = planner.plan(x, fragile, cost)
    still = torch.zeros(1, 5, 2, device=DEVICE)
    assert result.info['reason'] == 'ok'
    assert torch.isfinite(result.actions).all() and torch.isfinite(result.predicted).all()
    assert result.actions[:, 0].max() <= 0.3 and result.cost < float('inf')
    # It still made progress where it could: well below the cost of standing still.
    assert result.cost < 0.75 * float(cost(integrator(x, still), still)[0])


@pytest.mark.parametrize('name', PLANNERS)
def test_all_nan_falls_back_to_previous_plan_or_hold(name):
    def broken(x, actions):
        return torch.full(actions.shape, float('nan'), device=actions.device)

    cost = latent_goal_cost(torch.zeros(2, device=DEVICE), metric='l2')
    planner = make_planner(name, config(lower=-1.0, upper=1.0, max_delta=0.1))
    hold = torch.tensor([0.05, -0.05], device=DEVICE)
    result = planner.plan(torch.zeros(2, device=DEVICE), broken, cost, hold_action=hold)
    assert 'hold' in result.info['reason'] and result.predicted is None
    assert torch.equal(result.actions, hold.expand(5, 2))
    prev = torch.linspace(-0.2, 0.16, 10, device=DEVICE).reshape(5, 2)  # steps 0.08
    result = planner.plan(torch.zeros(2, device=DEVICE), broken, cost, prev_plan=prev,
                          current_action=prev[0], hold_action=hold)
    assert 'previous plan' in result.info['reason'] and result.cost == float('inf')
    assert torch.equal(result.actions, torch.cat([prev[1:], prev[-1:]]))
    # Costs that are NaN (rather than the rollout) are handled the same way.
    result = planner.plan(torch.zeros(2, device=DEVICE), integrator,
                          lambda p, a: torch.full(a.shape[:1], float('nan'), device=a.device))
    assert torch.isfinite(result.actions).all() and result.info['reason'] != 'ok'


def test_warm_start_default_is_the_last_plan_shifted():
    cfg = config(n_samples=2, iterations=1, n_elites=1, init_std=1e-6)
    planner = make_planner('cem', cfg)
    cost = latent_goal_cost(torch.tensor([5.0, 5.0], device=DEVICE), metric='l2')
    prev = torch.arange(10.0, device=DEVICE).reshape(5, 2) / 10
    first = planner.plan(torch.zeros(2, device=DEVICE), integrator, cost, prev_plan=prev).actions
    torch.testing.assert_close(first, torch.cat([prev[1:], prev[-1:]]), atol=1e-4, rtol=0)
    second = planner.plan(torch.zeros(2, device=DEVICE), integrator, cost)
    assert second.info['warm_start']
    torch.testing.assert_close(second.actions, torch.cat([first[1:], first[-1:]]), atol=1e-4,
                               rtol=0)
    planner.reset()
    assert not planner.plan(torch.zeros(2, device=DEVICE), integrator, cost).info['warm_start']


def test_action_blocks_hold_each_action_and_score_block_ends():
    """action_block k: the dynamics see every action held k steps, the cost the block ends."""
    k, h = 3, 4
    seen = {}

    def dynamics(x, actions):
        seen['actions'] = actions
        seen['rolled'] = integrator(x, actions)
        return seen['rolled']

    def cost(predicted, actions):
        seen['scored'] = predicted
        return (predicted[:, -1] - 6.0).square().sum(-1)

    cfg = config(horizon=h, action_block=k, init_std=1.0, n_samples=128, iterations=6)
    planner = make_planner('cem', cfg)
    result = planner.plan(torch.zeros(2, device=DEVICE), dynamics, cost)
    acts = seen['actions']
    assert acts.shape[1:] == (h * k, 2)
    blocks = acts.reshape(acts.shape[0], h, k, 2)
    assert bool((blocks == blocks[:, :, :1]).all())             # each action held k steps
    torch.testing.assert_close(seen['scored'], seen['rolled'][:, k - 1::k])
    assert result.actions.shape == (h, 2) and result.predicted.shape == (h, 2)
    # 12 steps reach 6 with actions near 0.5: the plan covers h * k steps
    assert float((result.predicted[-1] - 6.0).abs().max()) < 0.5
    # warm start: the previous plan advances one block after k plans (one per control step)
    cfg = config(horizon=h, action_block=k, n_samples=2, iterations=1, n_elites=1,
                 init_std=1e-6)
    planner = make_planner('cem', cfg)
    cost0 = latent_goal_cost(torch.zeros(2, device=DEVICE), metric='l2')
    prev = torch.arange(8.0, device=DEVICE).reshape(h, 2) / 10
    first = planner.plan(torch.zeros(2, device=DEVICE), integrator, cost0, prev_plan=prev).actions
    torch.testing.assert_close(first, torch.cat([prev[1:], prev[-1:]]), atol=1e-4, rtol=0)
    plans = [planner.plan(torch.zeros(2, device=DEVICE), integrator, cost0).actions
             for _ in range(k)]
    for p in plans[:k - 1]:                                     # within the block: unshifted
        torch.testing.assert_close(p, first, atol=1e-4, rtol=0)
    torch.testing.assert_close(plans[-1], torch.cat([first[1:], first[-1:]]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match='action_block'):
        PlannerConfig(action_dim=2, action_block=0)


def test_bad_configuration_and_arguments_are_named():
    with pytest.raises(ValueError, match='n_elites'):
        PlannerConfig(action_dim=2, n_samples=10, n_elites=20)
    with pytest.raises(ValueError, match=r'lower\[1\]'):
        PlannerConfig(action_dim=2, lower=(0.0, 1.0), upper=(1.0, 0.5))
    with pytest.raises(ValueError, match='max_delta must have action_dim=2'):
        PlannerConfig(action_dim=2, max_delta=(0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match='temperature'):
        PlannerConfig(action_dim=1, temperature=0.0)
    with pytest.raises(ValueError, match='unknown planner'):
        make_planner('ilqr', PlannerConfig(action_dim=1))
    planner = make_planner('mppi', config())
    cost = latent_goal_cost(torch.zeros(2), metric='l2')
    with pytest.raises(ValueError, match='dynamics must return'):
        planner.plan(torch.zeros(2), lambda x, a: a[:, 0], cost)
    with pytest.raises(ValueError, match='current_action must have 2'):
        planner.plan(torch.zeros(2), integrator, cost, current_action=torch.zeros(3))
    with pytest.raises(ValueError, match='unknown cost metric'):
        latent_goal_cost(torch.zeros(2), metric='l3')


def test_cost_helpers():
    goal = torch.tensor([1.0, 0.0])
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])  # (N=1, H=2, D=2)
    act = torch.zeros(1, 2, 2)
    # step distances: l1 (0.5, 0.5); l2 (0.5, 0.5); euclidean (1, 1); cosine (1, 1 - 1/sqrt 2)
    assert latent_goal_cost(goal, 'l1', 1.0, 0.0)(pred, act).item() == pytest.approx(0.5)
    assert latent_goal_cost(goal, 'l1', 2.0, 1.0)(pred, act).item() == pytest.approx(1.5)
    assert latent_goal_cost(goal, 'euclidean', 1.0, 1.0)(pred, act).item() == pytest.approx(2.0)
    cos = latent_goal_cost(goal, 'cosine', 1.0, 0.0)(pred, act).item()
    assert cos == pytest.approx(1 - 2 ** -0.5, abs=1e-6)
    # Token latents (N, H, T, D): the distance is averaged over tokens.
    tokens = torch.stack([pred, pred + 1.0], dim=2)  # (1, 2, 2, 2)
    goal_tokens = torch.stack([goal, goal + 1.0])  # (2, 2)
    assert latent_goal_cost(goal_tokens, 'l2', 1.0, 0.0)(tokens, act).item() == pytest.approx(0.5)
    probe = probe_goal_cost(lambda p: p[..., :1] * 2.0, [2.0], 'euclidean', 1.0, 1.0)
    assert probe(pred, act).item() == pytest.approx(2.0)  # |0 - 2| + |2 - 2|
    weighted = probe_goal_cost(lambda p: p, [1.0, 0.0], 'l1', 1.0, 0.0, dim_weights=[0.0, 4.0])
    assert weighted(pred, act).item() == pytest.approx(2.0)  # only the 2nd dim, scaled by 4
    total = sum_costs(latent_goal_cost(goal, 'l1', 1.0, 0.0), probe, weights=[2.0, 0.5])
    assert total(pred, act).item() == pytest.approx(2 * 0.5 + 0.5 * 2.0)
    with pytest.raises(ValueError, match='probe_fn must return'):
        probe_goal_cost(lambda p: p, [1.0], 'l1')(pred, act)


def test_cem_speed_with_mlp_dynamics():
    """CEM 300 samples x horizon 5 x 10 iterations through a 2-layer 256-wide MLP, latent 64."""
    latent, action_dim = 64, 6
    gen = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(latent + action_dim, 256), torch.nn.GELU(),
                              torch.nn.Linear(256, 256), torch.nn.GELU(),
                              torch.nn.Linear(256, latent)).to(DEVICE)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)

    def rollout(z, actions):  # z (D,), actions (N, H, A) -> (N, H, D)
        zs, cur = [], z.expand(actions.shape[0], -1)  # (N, D)
        for t in range(actions.shape[1]):
            cur = cur + mlp(torch.cat([cur, actions[:, t]], dim=-1))  # (N, D)
            zs.append(cur)
        return torch.stack(zs, dim=1)  # (N, H, D)

    cfg = PlannerConfig(action_dim=action_dim, horizon=5, n_samples=300, iterations=10,
                        n_elites=30, lower=-1.0, upper=1.0, max_delta=0.2)
    planner = make_planner('cem', cfg)
    z0 = torch.randn(latent, generator=gen).to(DEVICE)
    cost = latent_goal_cost(torch.randn(latent, generator=gen).to(DEVICE), metric='l1')
    first = planner.plan(z0, rollout, cost)  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        result = planner.plan(z0, rollout, cost, current_action=first.actions[0])
        if DEVICE.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1000 * sorted(times)[len(times) // 2]
    print(f'\nCEM 300x5x10, MLP 2x256, latent 64, {DEVICE}: {ms:.1f} ms per plan (median of 5)')
    assert torch.isfinite(result.actions).all()
    assert ms < 5000, f'CEM plan took {ms:.0f} ms'


def test_goal_posture_ik_stays_in_the_basin_of_its_start_and_within_limits():
    from ami_ros.planning.ik import solve_ik

    def fk(q):  # planar 2-link arm, links 1.0 and 0.8
        return torch.stack([torch.cos(q[0]) + 0.8 * torch.cos(q[0] + q[1]),
                            torch.sin(q[0]) + 0.8 * torch.sin(q[0] + q[1])])

    up = torch.tensor([0.2, 0.9])
    shift = 2 * math.atan2(0.8 * math.sin(0.9), 1.0 + 0.8 * math.cos(0.9))
    down = torch.tensor([0.2 + shift, -0.9])  # the same tip, the elbow mirrored
    target = fk(up)
    assert torch.allclose(fk(down), target, atol=1e-5)
    lo, hi = torch.tensor([-3.0, -3.0]), torch.tensor([3.0, 3.0])
    q, res = solve_ik(fk, target, up + torch.tensor([0.3, -0.3]), lo, hi)
    assert res < 1e-4 and q[1] > 0  # elbow up, as the start
    q, res = solve_ik(fk, target, down + torch.tensor([-0.2, 0.2]), lo, hi)
    assert res < 1e-4 and q[1] < 0  # elbow down, as the start
    q, res = solve_ik(fk, torch.tensor([5.0, 0.0]), torch.tensor([0.3, 0.3]), lo, hi)
    assert res == pytest.approx(3.2, abs=1e-2)  # out of reach: as close as it gets
    q, res = solve_ik(fk, target, up, lo, torch.tensor([3.0, 0.5]))
    assert q[1] <= 0.5 + 1e-6  # the limits hold at every iterate


def bump_world():
    """(dynamics, cost) where the state is the action and a bump lies between 0 and the goal 2."""
    def dynamics(state, actions):
        return actions

    def cost(predicted, actions):
        x = predicted[:, -1, 0]
        return torch.where(x < 1.0, x.abs() * 0.1, (x - 2.0).abs() * 0.01 - 0.05)

    return dynamics, cost


@pytest.mark.parametrize('name', ['cem', 'mppi'])
def test_the_guide_candidate_leads_out_of_a_local_minimum(name):
    """A cost with a local minimum at the start: sampling near it stays, the guide's path wins."""
    cfg = PlannerConfig(action_dim=1, horizon=4, n_samples=16, iterations=2, n_elites=4,
                        init_std=0.01, min_std=0.01, max_delta=(0.5,), seed=0)

    dynamics, cost = bump_world()

    zero = torch.zeros(1, device=DEVICE)
    stuck = make_planner(name, cfg).plan(zero, dynamics, cost, current_action=zero,
                                         hold_action=zero)
    assert abs(float(stuck.actions[-1, 0])) < 0.2
    led = make_planner(name, cfg).plan(zero, dynamics, cost, current_action=zero,
                                       hold_action=zero,
                                       guide_action=torch.tensor([2.0], device=DEVICE))
    assert led.actions[:, 0].tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0])  # at the rate limit
    with pytest.raises(ValueError, match='guide_action'):
        make_planner(name, cfg).plan(zero, dynamics, cost, guide_action=torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize('name', ['cem', 'mppi'])
def test_the_search_starts_from_the_cheapest_of_the_given_starts(name):
    """Multi-start: a start past the bump is chosen over the usual mean; backends refuse it."""
    cfg = PlannerConfig(action_dim=1, horizon=4, n_samples=16, iterations=2, n_elites=4,
                        init_std=0.01, min_std=0.01, seed=0)

    dynamics, cost = bump_world()

    zero = torch.zeros(1, device=DEVICE)
    starts = torch.tensor([[[0.1], [0.2], [0.1], [0.0]],     # stays before the bump
                           [[0.5], [1.0], [1.5], [1.9]]],    # gets past it
                          device=DEVICE)
    stuck = make_planner(name, cfg).plan(zero, dynamics, cost, hold_action=zero)
    assert abs(float(stuck.actions[-1, 0])) < 0.2
    led = make_planner(name, cfg).plan(zero, dynamics, cost, hold_action=zero, starts=starts)
    assert float(led.actions[-1, 0]) > 1.5  # past the bump, towards the goal
    with pytest.raises(ValueError, match='starts'):
        make_planner(name, cfg).plan(zero, dynamics, cost, starts=starts,
                                     search=lambda *args: None)
