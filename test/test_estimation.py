"""Belief filter and surprise monitor on a constructed noisy linear system; no ROS.

Truth x_{t+1} = F x_t + B a_t + w (w ~ N(0, q^2)), observed latents z_t = x_t + v (v ~ N(0, r^2)),
and the filter's model is the exact noiseless F x + B a, so the steady-state Kalman gain is known.
"""
import math

import pytest
import torch

from ami_ros.estimation import (BeliefConfig, BeliefFilter, SurpriseConfig, SurpriseMonitor,
                                fit_gain)

torch.set_num_threads(1)
D, A, DT = 6, 2, 0.1
Q_STD, R_STD = 0.02, 0.1


def _model():
    theta = 0.1  # rotations: the model neither decays nor grows, so prediction-only drifts
    f = torch.zeros(D, D, dtype=torch.float64)
    for i in range(0, D, 2):
        f[i:i + 2, i:i + 2] = torch.tensor([[math.cos(theta), -math.sin(theta)],
                                            [math.sin(theta), math.cos(theta)]])
    b = torch.randn(D, A, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    return f, b


F, B = _model()


def predict(z, a):
    return F @ z + B @ a


def simulate(steps, seed, jump_at=None):
    """Truth (T, D), observations (T, D), actions (T, A); actions[t] moves t -> t+1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(steps, D, dtype=torch.float64)
    a = torch.randn(steps, A, generator=g, dtype=torch.float64)
    for t in range(steps - 1):
        x[t + 1] = predict(x[t], a[t]) + Q_STD * torch.randn(D, generator=g, dtype=torch.float64)
        if jump_at is not None and t + 1 == jump_at:
            x[t + 1] += 3.0  # someone moved the world
    z = x + R_STD * torch.randn(steps, D, generator=g, dtype=torch.float64)
    return x, z, a


def rmse(est, truth):
    return float((est - truth).pow(2).mean().sqrt())


def kalman_gain():
    q, r = Q_STD ** 2, R_STD ** 2
    p = q / 2 + math.sqrt(q * q / 4 + q * r)
    return p / (p + r)


@pytest.fixture(scope='module')
def fitted():
    _, z, a = simulate(1500, seed=1)
    return fit_gain(z, a, predict)


def run_filter(filt, z, a, keep=None, delay=0):
    """Drive the filter like the node; return the belief after each step (T, D) and the steps.

    Predict each step, fuse frame t (stamped t * DT) when it arrives, ``delay`` steps late.
    """
    beliefs, steps = [], []
    filt.reset(z[0], 0.0)
    beliefs.append(filt.z)
    for t in range(1, len(z)):
        filt.predict(a[t - 1])
        src = t - delay
        if src >= 1 and (keep is None or keep[src]):
            steps.append(filt.update(z[src], src * DT))
        beliefs.append(filt.z)
    return torch.stack(beliefs), steps


def test_fit_gain_recovers_the_kalman_gain(fitted):
    gain = torch.tensor(fitted.gain)
    assert gain.shape == (D,)
    assert abs(float(gain.mean()) - kalman_gain()) < 0.35 * kalman_gain(), fitted.gain
    r = torch.tensor(fitted.observation_var)
    assert abs(float(r.mean()) - R_STD ** 2) < 0.3 * R_STD ** 2
    assert fitted.one_step_rmse < 0.85 * fitted.observation_only_rmse


def test_filter_beats_observation_only_and_prediction_only(fitted):
    x, z, a = simulate(400, seed=2)
    est, steps = run_filter(BeliefFilter(BeliefConfig(gain=fitted.gain, dt=DT), predict), z, a)
    assert all(s.reason == 'fused' for s in steps)
    pred = [z[0]]
    for t in range(1, len(z)):
        pred.append(predict(pred[-1], a[t - 1]))
    e_filter, e_obs, e_pred = rmse(est, x), rmse(z, x), rmse(torch.stack(pred), x)
    assert e_filter < 0.7 * e_obs, (e_filter, e_obs)
    assert e_filter < 0.5 * e_pred, (e_filter, e_pred)


def test_dropped_frames_are_predict_only_steps(fitted):
    x, z, a = simulate(400, seed=3)
    keep = torch.rand(400, generator=torch.Generator().manual_seed(4)) > 0.4  # 40 % dropped
    est, steps = run_filter(BeliefFilter(BeliefConfig(gain=fitted.gain, dt=DT), predict), z, a,
                            keep=keep)
    assert len(steps) == int(keep[1:].sum())
    held, last = [], z[0]  # observation-only: hold the last frame that arrived
    for t in range(len(z)):
        last = z[t] if keep[t] else last
        held.append(last)
    assert torch.isfinite(est).all()
    assert rmse(est, x) < 0.7 * rmse(torch.stack(held), x)


def test_late_frames_are_fused_at_their_stamp_and_rolled_forward(fitted):
    x, z, a = simulate(400, seed=5)
    config = BeliefConfig(gain=fitted.gain, dt=DT)
    on_time, _ = run_filter(BeliefFilter(config, predict), z, a)
    late, steps = run_filter(BeliefFilter(config, predict), z, a, delay=2)
    assert all(s.reason == 'late' and s.lag_steps == 2 for s in steps)
    # The naive alternative: fuse the 2-step-old frame as if it were taken now.
    naive = BeliefFilter(config, predict)
    naive.reset(z[0], 0.0)
    stale = [naive.z]
    for t in range(1, len(z)):
        naive.predict(a[t - 1])
        if t >= 3:
            naive.update(z[t - 2], t * DT)
        stale.append(naive.z)
    e_on_time, e_late, e_naive = rmse(on_time, x), rmse(late, x), rmse(torch.stack(stale), x)
    assert e_late < 0.6 * e_naive, (e_late, e_naive)
    assert e_late < 1.3 * e_on_time, (e_late, e_on_time)


def test_out_of_range_stamps_nan_frames_and_stamps_ahead():
    x, z, a = simulate(40, seed=6)
    filt = BeliefFilter(BeliefConfig(gain=0.3, dt=DT, history=5, max_advance=4), predict)
    assert filt.predict(a[0]).reason == 'uninitialized'
    filt.reset(z[0], 0.0)
    for t in range(1, 10):
        filt.predict(a[t - 1])
    before = filt.z.clone()
    assert filt.update(z[2], 2 * DT).reason == 'rejected_old'  # beyond the 5-step history
    nan_frame = z[9].clone()
    nan_frame[3] = float('nan')
    step = filt.update(nan_frame, 9 * DT)
    assert step.reason == 'rejected_nan' and torch.equal(filt.z, before)
    assert filt.predict(a[9]).reason == 'predicted' and torch.isfinite(filt.z).all()
    # A frame 3 steps ahead: the belief is advanced with the command in force (a[9]), then fused.
    prior = filt.z
    for _ in range(3):
        prior = predict(prior, a[9])
    step = filt.update(z[13], 13 * DT)
    assert step.reason == 'fused' and filt.stamp == pytest.approx(13 * DT)
    torch.testing.assert_close(filt.z, prior + 0.3 * (z[13] - prior))
    # Far ahead of the belief (> max_advance steps): start again from that frame.
    step = filt.update(z[30], 30 * DT)
    assert step.reason == 'reset_stale' and torch.equal(filt.z, z[30])
    with pytest.raises(ValueError, match='shape'):
        filt.update(torch.zeros(D + 1, dtype=torch.float64), 31 * DT)
    with pytest.raises(ValueError, match='NaN'):
        filt.predict(torch.tensor([float('nan'), 0.0]))


def test_model_nan_holds_the_belief():
    filt = BeliefFilter(BeliefConfig(gain=0.5), lambda z, a: z * float('nan'))
    filt.reset(torch.ones(3), 0.0)
    step = filt.predict(torch.zeros(1))
    assert step.reason == 'nan_prediction' and torch.equal(filt.z, torch.ones(3))


def _normal_errors(fitted, seed):
    _, z, a = simulate(300, seed=seed)
    _, steps = run_filter(BeliefFilter(BeliefConfig(gain=fitted.gain, dt=DT), predict), z, a)
    return [s.error for s in steps]


def test_surprise_flags_a_jump_and_stays_low_on_normal_data(fitted):
    monitor = SurpriseMonitor(SurpriseConfig(quantile=0.99, margin=1.5))
    scale, threshold = monitor.calibrate(_normal_errors(fitted, seed=7))
    assert scale > 0 and threshold > 1.0
    scores = [monitor.update(e) for e in _normal_errors(fitted, seed=8)]
    assert sum(s > threshold for s in scores) / len(scores) < 0.02
    x, z, a = simulate(100, seed=9, jump_at=60)
    _, steps = run_filter(BeliefFilter(BeliefConfig(gain=fitted.gain, dt=DT), predict,
                                       surprise=monitor), z, a)
    jump = [s.surprise for s in steps]
    assert jump[59] > 3 * threshold  # steps[k] is frame k + 1
    assert max(jump[:59]) < threshold


def test_running_surprise_warms_up_then_flags():
    monitor = SurpriseMonitor(SurpriseConfig(window=20, min_count=5, threshold=4.0))
    g = torch.Generator().manual_seed(0)
    errors = (0.1 + 0.02 * torch.rand(30, generator=g)).tolist()
    scores = [monitor.update(e) for e in errors]
    assert scores[:5] == [0.0] * 5 and max(scores[5:]) < 1.5
    assert monitor.update(1.0) > 4.0 and monitor.flagged
    assert monitor.update(0.1) < 1.5  # the median is not dragged up by one outlier
    with pytest.raises(ValueError, match='finite'):
        monitor.update(float('nan'))
    with pytest.raises(ValueError, match='at least'):
        monitor.calibrate([0.1, 0.2])


def test_surprise_channels_score_each_part_against_its_own_typical_error():
    # a 10-dim state: 8 visual dims with large usual errors, 2 measured ones with small errors;
    # a jump in one measured dim is lost in the RMS over all ten, not in its own channel
    g = torch.Generator().manual_seed(3)
    parts = {'visual': slice(0, 8), 'joints': slice(8, 10)}

    def errors(innovation, reading=None):
        e = {'all': float(innovation.pow(2).mean().sqrt()),
             **{k: float(innovation[s].pow(2).mean().sqrt()) for k, s in parts.items()}}
        return e if reading is None else {**e, 'reading': reading}

    def normal():
        return torch.cat([torch.randn(8, generator=g), 0.05 * torch.randn(2, generator=g)])

    calib = [errors(normal(), reading=0.1 + 0.01 * float(torch.rand(1, generator=g)))
             for _ in range(200)]
    jump = normal()
    jump[9] += 0.5  # ten times the joints' usual error
    plain = SurpriseMonitor(SurpriseConfig())
    plain.calibrate(calib)
    split = SurpriseMonitor(SurpriseConfig(channels=('visual', 'joints', 'reading')))
    _, threshold = split.calibrate(calib)
    assert set(split.scales) == {'visual', 'joints', 'reading'}
    assert plain.update(errors(jump, 0.1)) < plain.threshold
    assert split.update(errors(jump, 0.1)) > threshold
    assert split.channel_scores['joints'] == split.score
    assert split.update(errors(normal(), reading=0.5)) > threshold  # the camera disagrees
    assert split.update({'visual': 1.0}) >= 0  # a channel missing now and then is skipped
    with pytest.raises(ValueError, match='no error for any'):
        split.update({'all': 1.0})
    with pytest.raises(ValueError, match='unknown'):
        SurpriseConfig(channels=('pixels',))


def test_belief_filter_reports_an_error_per_part_and_the_reading():
    filt = BeliefFilter(BeliefConfig(gain=1.0, dt=DT), lambda z, a: z,
                        parts={'visual': slice(0, 2), 'joints': slice(2, 3)})
    filt.update(torch.zeros(3), 0.0)
    filt.predict(torch.zeros(1))
    step = filt.update(torch.tensor([0.0, 0.0, 3.0]), DT, reading=torch.tensor([4.0]))
    assert step.channels == pytest.approx({'all': 3 ** 0.5, 'visual': 0.0, 'joints': 3.0,
                                           'reading': 4.0})


def test_belief_resets_to_the_observation_on_divergence(fitted):
    monitor = SurpriseMonitor()
    monitor.calibrate(_normal_errors(fitted, seed=10))
    x, z, a = simulate(100, seed=11, jump_at=60)
    config = BeliefConfig(gain=fitted.gain, dt=DT, reset_threshold=monitor.threshold)
    resetting, steps = run_filter(BeliefFilter(config, predict, surprise=monitor), z, a)
    plain, _ = run_filter(BeliefFilter(BeliefConfig(gain=fitted.gain, dt=DT), predict), z, a)
    assert [i + 1 for i, s in enumerate(steps) if s.reason == 'reset'] == [60]
    after = slice(60, 66)
    assert rmse(resetting[after], x[after]) < 0.2  # back at the observation noise level
    assert rmse(plain[after], x[after]) > 1.0  # a constant-gain filter takes many steps


def test_gating_ignores_corrupt_frames_and_resets_on_lasting_change(fitted):
    monitor = SurpriseMonitor()
    monitor.calibrate(_normal_errors(fitted, seed=10))
    gate = BeliefConfig(gain=fitted.gain, dt=DT, gate_threshold=monitor.threshold,
                        gate_max_frames=4)
    # frames 40-42 corrupted (a camera glitch), the truth goes on undisturbed
    x, z, a = simulate(100, seed=12)
    bad = z.clone()
    bad[40:43] += 5.0
    gated, steps = run_filter(BeliefFilter(gate, predict, surprise=monitor), bad, a)
    plain, _ = run_filter(BeliefFilter(BeliefConfig(gain=fitted.gain, dt=DT), predict), bad, a)
    assert [i + 1 for i, s in enumerate(steps) if s.reason == 'gated'] == [40, 41, 42]
    glitch = slice(40, 46)
    assert rmse(gated[glitch], x[glitch]) < 0.2  # the model's prediction carried the belief
    assert rmse(plain[glitch], x[glitch]) > 1.0
    # every corrupted frame stays surprising (compared with the prediction, not a dragged belief)
    assert min(steps[i].surprise for i in (39, 40, 41)) > monitor.threshold
    # a lasting change: gated gate_max_frames times, then the belief resets to it
    x, z, a = simulate(100, seed=11, jump_at=60)
    held, steps = run_filter(BeliefFilter(gate, predict, surprise=monitor), z, a)
    reasons = [s.reason for s in steps[58:66]]
    assert reasons == ['fused', 'gated', 'gated', 'gated', 'gated', 'reset', 'fused', 'fused']
    after = slice(66, 70)
    assert rmse(held[after], x[after]) < 0.2


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match=r'gain\[1\]'):
        BeliefConfig(gain=(0.5, 1.5))
    with pytest.raises(ValueError, match='dt'):
        BeliefConfig(dt=0.0)
    with pytest.raises(ValueError, match='reset_threshold is set'):
        BeliefFilter(BeliefConfig(reset_threshold=3.0), predict)
    with pytest.raises(ValueError, match='gate_threshold is set'):
        BeliefFilter(BeliefConfig(gate_threshold=3.0), predict)
    with pytest.raises(ValueError, match='gate_max_frames'):
        BeliefConfig(gate_max_frames=-1)
    with pytest.raises(ValueError, match='statistic'):
        SurpriseConfig(statistic='mode')
    with pytest.raises(ValueError, match='at least 3 steps|T >= 3'):
        fit_gain(torch.zeros(2, D), torch.zeros(2, A), predict)
