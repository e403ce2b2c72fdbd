"""World model core: API contracts, regularisers, metrics, config validation, golden outputs.

Golden files (test/golden/tiny_model/ and test/golden/tiny_outputs.npz) hold a tiny model with
fixed weights and its outputs on fixed inputs. Regenerate them, only after an intended change
of the model's computation, with::

    .venv/bin/python test/test_model.py --regenerate-golden
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import rig_brightness_heat_maps
from ami_ros.model import ConfigError, ModelConfig, WorldModel, load_checkpoint, save_checkpoint
from ami_ros.model.config import (CNNConfig, PredictorConfig, ProbeSpec, RunConfig, ViTConfig,
                                  from_dict, load_run_config)
from ami_ros.model.losses import effective_rank, info_nce, latent_variance, sigreg, vicreg
from ami_ros.model.probes import angle_error

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / 'golden'


def tiny_config(**kw) -> ModelConfig:
    base = dict(image_size=16, latent_dim=8, action_dim=2, cnn=CNNConfig(channels=(4, 8)),
                predictor=PredictorConfig(history=2, action_history=1, hidden=16, layers=1),
                probe_hidden=8)
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **kw) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(tiny_config(**kw))
    model.set_action_stats([0.1, -0.2], [0.5, 2.0])
    model.set_probes([ProbeSpec('ee_position', 3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.1)),
                      ProbeSpec('block_yaw', 1, angle=True)])
    return model.eval()


# ------------------------------------------------------------------------------------ API
def test_encode_accepts_uint8_hwc_and_float_chw_alike():
    model = tiny_model()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    z_u8 = model.encode(torch.from_numpy(img))
    z_f = model.encode(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0)
    assert z_u8.shape == (3, 8)
    torch.testing.assert_close(z_u8, z_f, rtol=0, atol=1e-6)
    # numpy input and other sizes are accepted (resized inside the model)
    assert model.encode(rng.integers(0, 256, size=(2, 40, 24, 3), dtype=np.uint8)).shape == (2, 8)


@pytest.mark.parametrize('bad, match', [
    (torch.zeros(16, 16, 3, dtype=torch.uint8), '4-D'),
    (torch.zeros(1, 16, 16, 4, dtype=torch.uint8), 'RGB'),
    (torch.zeros(1, 16, 16, 3), r'\(B, 3, H, W\)'),
    (torch.zeros(1, 3, 16, 16, dtype=torch.int32), 'uint8 or float'),
])
def test_encode_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_model().encode(bad)


def test_one_image_encodes_the_same_alone_and_in_a_batch():
    """GroupNorm, not BatchNorm: a frame's latent must not depend on its batch."""
    model = tiny_model()
    img = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    torch.testing.assert_close(model.encode(img)[2:3], model.encode(img[2:3]), rtol=0,
                               atol=1e-6)


def test_rollout_equals_repeated_predict_and_broadcasts():
    torch.manual_seed(1)
    model = tiny_model(predictor=PredictorConfig(history=3, action_history=2, hidden=16,
                                                 layers=2))
    z_hist = torch.randn(4, 3, 8)
    actions = torch.randn(4, 5, 2)
    past = torch.randn(4, 1, 2)
    out = model.rollout(z_hist, actions, past_actions=past)
    assert out.shape == (4, 5, 8)
    # the same by hand, one predict() per step
    zs = z_hist.clone()
    a_all = torch.cat([past, actions], dim=1)
    for h in range(5):
        z_next = model.predict(zs[:, -3:], a_all[:, h:h + 2])
        torch.testing.assert_close(out[:, h], z_next, rtol=0, atol=1e-6)
        zs = torch.cat([zs, z_next[:, None]], dim=1)
    # one belief, many plans: a batch of 1 broadcasts over the actions' batch
    many = model.rollout(z_hist[:1], actions, past_actions=past[:1])
    torch.testing.assert_close(many[0], out[0], rtol=0, atol=1e-6)
    assert many.shape == (4, 5, 8)
    # a shorter history is padded with its oldest latent
    short = model.rollout(z_hist[:, -1:], actions[:, :2])
    padded = model.rollout(z_hist[:, -1:].expand(-1, 3, -1), actions[:, :2])
    torch.testing.assert_close(short, padded, rtol=0, atol=0)
    with pytest.raises(ValueError, match='actions must be'):
        model.rollout(z_hist, torch.randn(4, 5, 3))
    with pytest.raises(ValueError, match='z_hist must be'):
        model.rollout(torch.randn(4, 8), actions)


def test_predictor_without_layernorm_round_trips(tmp_path):
    """predictor.norm: false has no LayerNorm weights, and checkpoints keep the choice."""
    model = tiny_model(predictor=PredictorConfig(history=2, hidden=16, layers=2, norm=False))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.predictor.modules())
    with_norm = tiny_model()
    assert any(isinstance(m, torch.nn.LayerNorm) for m in with_norm.predictor.modules())
    save_checkpoint(model, tmp_path / 'ck')
    loaded = load_checkpoint(tmp_path / 'ck')
    assert loaded.config.predictor.norm is False
    z, a = torch.randn(3, 2, 8), torch.randn(3, 4, 2)
    torch.testing.assert_close(loaded.rollout(z, a), model.rollout(z, a))


def test_actions_are_normalised_inside_the_model():
    model = tiny_model()
    z = torch.randn(2, 2, 8)
    a = torch.randn(2, 3, 2)
    out1 = model.rollout(z, a)
    model.set_action_stats([0.0, 0.0], [1.0, 1.0])
    out2 = model.rollout(z, (a - torch.tensor([0.1, -0.2])) / torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out1, out2, rtol=0, atol=1e-5)


def test_vit_encoder_gives_tokens_and_latents_and_trains():
    torch.manual_seed(0)
    model = WorldModel(tiny_config(encoder='vit', vit=ViTConfig(patch_size=4, dim=16, depth=2,
                                                                heads=2)))
    img = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    assert model.encode_tokens(img).shape == (3, 16, 16)      # 4x4 patches of width 16
    z = model.encode(img)
    assert z.shape == (3, 8)
    z.square().mean().backward()
    assert model.encoder.patch.weight.grad is not None
    assert WorldModel(tiny_config()).encode_tokens(img).shape == (3, 16, 8)  # CNN: 4x4 map, 8 ch


def test_keypoint_encoder_latent_is_image_positions_and_round_trips(tmp_path):
    """encoder: keypoints -> the latent is K (x, y) image positions in [-scale, scale]."""
    from ami_ros.model.config import KeypointEncoderConfig

    torch.manual_seed(0)
    model = WorldModel(tiny_config(encoder='keypoints', latent_dim=8,
                                   keypoints=KeypointEncoderConfig(channels=(8, 8), scale=3.0)))
    img = torch.zeros((2, 16, 16, 3), dtype=torch.uint8)
    img[0, 2:5, 2:5] = 255                                    # a bright patch top left ...
    img[1, 11:14, 11:14] = 255                                # ... and bottom right
    z = model.encode(img)
    assert z.shape == (2, 8) and bool((z.abs() <= 3.0).all())
    assert model.encode_tokens(img).shape[-1] == 4            # heat maps as tokens
    # heat maps that peak on the bright patch put every keypoint there
    with torch.no_grad():
        conv = model.encoder.points.conv
        for layer in conv:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
                layer.bias.zero_()
        conv[0].weight[:, :3, 2, 2] = 1.0                     # brightness, centre tap
        conv[2].weight[:, :, 1, 1] = torch.eye(8)
        conv[-1].weight[:, 0, 0, 0] = 50.0
    z = model.encode(img)
    x, y = z[:, :4], z[:, 4:]
    assert bool((x[0] < -0.5).all() and (y[0] < -0.5).all())  # top left: negative x, y
    assert bool((x[1] > 0.5).all() and (y[1] > 0.5).all())
    save_checkpoint(model, tmp_path / 'kp')
    again = load_checkpoint(tmp_path / 'kp')
    torch.testing.assert_close(again.encode(img), z)
    with pytest.raises(ConfigError, match='even'):
        tiny_config(encoder='keypoints', latent_dim=7)


def test_keypoints_on_a_subtracted_background_find_what_moves(tmp_path):
    """keypoints.background: a static bright patch is subtracted away; a moving one is found."""
    from ami_ros.model.config import KeypointEncoderConfig
    from ami_ros.train.trainer import background_frames
    from ami_ros.train.synthetic import make_dot_episodes

    torch.manual_seed(0)
    model = WorldModel(tiny_config(encoder='keypoints', latent_dim=8, keypoints=(
        KeypointEncoderConfig(channels=(8, 8), scale=3.0, background=True))))
    frames = np.zeros((9, 16, 16, 3), dtype=np.uint8)
    frames[:, 2:5, 2:5] = 255                                 # static, top left
    for i in range(9):                                        # moving, along the bottom row
        frames[i, 12:16, i:i + 4] = 255
    model.encoder.set_background(model.preprocess(frames))   # the median: the static patch
    rig_brightness_heat_maps(model.encoder, 50.0)            # heat maps = brightness
    z = model.encode(frames[[0, 8]])
    assert bool((z[:, 4:] > 0.5).all())                       # every keypoint low: the mover
    assert bool((z[1, :4] > z[0, :4] + 0.5).all())            # and it follows it right
    save_checkpoint(model, tmp_path / 'bg')                  # the background is in the file
    torch.testing.assert_close(load_checkpoint(tmp_path / 'bg').encode(frames[[0, 8]]), z)
    eps = make_dot_episodes(3, length=10, image_size=16)
    assert background_frames(eps, 8, count=7)[0].shape == (7, 8, 8, 3)


def test_foreground_keypoints_lie_on_what_differs_from_the_background():
    """keypoints.foreground: whatever the weights, every keypoint is a mean of foreground pixels."""
    from ami_ros.model.config import KeypointEncoderConfig

    torch.manual_seed(0)
    model = WorldModel(tiny_config(encoder='keypoints', latent_dim=16, keypoints=(
        KeypointEncoderConfig(channels=(8, 8), scale=1.0, background=True, foreground=True))))
    model.encoder.set_background(model.preprocess(np.zeros((1, 16, 16, 3), np.uint8)))
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    frames[0, 8:12, 0:4] = 200                                # one object, bottom left cells
    with torch.no_grad():
        z = model.encode(frames)
    # pixel positions linspace(-1, 1, 16): the object spans x -1..-0.6, y 0.07..0.47
    assert bool((z[0, :8] >= -1.0).all() and (z[0, :8] <= -0.6).all())
    assert bool((z[0, 8:] >= 1 / 15).all() and (z[0, 8:] <= 7 / 15).all())
    torch.testing.assert_close(z[1], torch.zeros(16))         # nothing there: uniform, centre
    from ami_ros.model.config import ConfigError
    with pytest.raises(ConfigError, match='foreground'):
        KeypointEncoderConfig(foreground=True)


def test_image_moments_latent_says_where_an_object_is_and_which_way_it_points(tmp_path):
    """keypoints.moments: a fixed map from the foreground to 9 standardised moments."""
    from ami_ros.model.config import ConfigError, KeypointEncoderConfig

    model = WorldModel(tiny_config(encoder='keypoints', latent_dim=9, keypoints=(
        KeypointEncoderConfig(background=True, moments=True))))
    assert not list(model.encoder.parameters())              # nothing to learn
    x0 = model.preprocess(np.zeros((1, 16, 16, 3), np.uint8))
    model.encoder.set_background(x0)

    def l_shape(dx: int, flip: bool = False) -> np.ndarray:  # an L: a bar and a foot
        f = np.zeros((16, 16, 3), dtype=np.uint8)
        f[4:12, 4 + dx] = 200
        f[11, 4 + dx:8 + dx] = 200
        return f[::-1, ::-1].copy() if flip else f
    frames = np.stack([l_shape(0), l_shape(3), l_shape(0, flip=True)])
    with torch.no_grad():
        raw = model.encoder.raw_moments(model.preprocess(frames) - x0)
    g = 2 / 15                                                # one pixel in -1..1 coordinates
    assert float(raw[1, 0] - raw[0, 0]) == pytest.approx(3 * g, abs=1e-5)  # centroid x
    torch.testing.assert_close(raw[1, 1:], raw[0, 1:])       # the rest: no change
    torch.testing.assert_close(raw[2, 2:5], raw[0, 2:5])     # order 2 cannot tell a half turn
    torch.testing.assert_close(raw[2, 5:], -raw[0, 5:])      # order 3 can
    assert float(raw[0, 5:].abs().max()) > 1e-3
    model.encoder.set_moment_stats(model.preprocess(frames))  # standardised over these frames
    with torch.no_grad():
        z = model.encode(frames)
    assert z.shape == (3, 9)
    torch.testing.assert_close(z.mean(0)[:2], torch.zeros(2), atol=1e-5, rtol=0)
    save_checkpoint(model, tmp_path / 'm')                    # statistics are in the file
    torch.testing.assert_close(load_checkpoint(tmp_path / 'm').encode(frames), z)
    with pytest.raises(ValueError, match='no heat maps'):
        model.encode_tokens(frames)
    with pytest.raises(ConfigError, match='must be 9'):
        tiny_config(encoder='keypoints', latent_dim=8,
                    keypoints=KeypointEncoderConfig(background=True, moments=True))
    with pytest.raises(ConfigError, match='moments'):
        KeypointEncoderConfig(moments=True)


def _t_shape(size: int, x: float, y: float, angle: float) -> np.ndarray:
    """A T (bar 4 x 1, stem 1 x 4 units of size/16 pixels) at (x, y) px, turned by ``angle``."""
    u = (np.arange(size) + 0.5)[None, :] - x
    v = (np.arange(size) + 0.5)[:, None] - y
    c, s = math.cos(angle), math.sin(angle)
    a, b = (c * u + s * v) * 16 / size, (c * v - s * u) * 16 / size  # the T's own frame
    bar = (np.abs(a) <= 2) & (b >= -2) & (b <= -1)
    stem = (np.abs(a) <= 0.5) & (b >= -1) & (b <= 2)
    inside = bar | stem
    f = np.zeros((size, size, 3), np.uint8)
    f[inside] = 200
    return f


def test_pose_latent_reads_where_a_t_is_and_which_way_it_faces():
    """keypoints.pose: the centroid and a heading that turns with the object, a full turn."""
    from ami_ros.model.config import KeypointEncoderConfig

    model = WorldModel(tiny_config(image_size=64, encoder='keypoints', latent_dim=4, keypoints=(
        KeypointEncoderConfig(background=True, moments=True, pose=True, scale=4.0))))
    model.encoder.set_background(model.preprocess(np.zeros((1, 64, 64, 3), np.uint8)))
    angles = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    frames = np.stack([_t_shape(64, 30 + 4 * np.cos(a), 34, a) for a in angles])
    # the T's centroid: 9/14 of a unit (4 px) from (x, y) towards the bar, turned by the angle
    b = -9 / 14 * 4
    expected = np.stack([30 + 4 * np.cos(angles) - b * np.sin(angles), 34 + b * np.cos(angles)],
                        -1)
    with torch.no_grad():
        z = model.encode(frames).numpy()
    assert z.shape == (12, 4)
    np.testing.assert_allclose(np.hypot(z[:, 2], z[:, 3]), 1.0, atol=1e-3)
    heading = np.arctan2(z[:, 3], z[:, 2])
    turned = (heading - heading[0] - angles + math.pi) % (2 * math.pi) - math.pi
    assert np.abs(turned).max() < 0.08                        # each turn read, no half turns
    centre = (z[:, :2] / 4 + 1) / 2 * 64                      # back to pixels
    np.testing.assert_allclose(centre, expected, atol=0.3)
    # a disc has no heading: it fades to nothing rather than point anywhere
    g = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5))
    disc = np.where((g < 9)[..., None], 200, 0).astype(np.uint8).repeat(3, -1)
    with torch.no_grad():
        assert float(model.encode(disc[None])[0, 2:].norm()) < 0.05
    with pytest.raises(ConfigError, match='must be 4'):
        tiny_config(encoder='keypoints', latent_dim=9, keypoints=KeypointEncoderConfig(
            background=True, moments=True, pose=True))
    with pytest.raises(ConfigError, match='needs moments'):
        KeypointEncoderConfig(background=True, pose=True)


def test_object_frame_predictor_moves_with_the_scene():
    """predictor.object_frame: shift and turn the scene, and the prediction turns alike.

    SE(2) equivariance: the object, robot and commands shifted and turned; headings stay unit
    vectors.
    """
    from ami_ros.model.predictor import ObjectFramePredictor, _turn

    torch.manual_seed(0)
    p = ObjectFramePredictor(3, 2, 32, 2, norm=False, scale=4.0)
    nn_init = torch.nn.init.normal_
    nn_init(p.out.weight, std=0.3)                            # a function that moves things

    def pose(xy, th):
        return torch.cat([4 * xy, torch.cos(th)[..., None], torch.sin(th)[..., None]], -1)

    xy, th = torch.rand(6, 3, 2) - 0.5, torch.rand(6, 3) * 6
    robot, commands = torch.rand(6, 3, 2) - 0.5, torch.rand(6, 2, 2) - 0.5
    out = p(pose(xy, th), robot, commands)
    assert float((out[..., :2] / 4 - xy[:, -1]).norm(dim=-1).min()) > 1e-3  # it moved
    np.testing.assert_allclose(out[..., 2:].norm(dim=-1).detach().numpy(), 1.0, atol=1e-6)
    a, t = torch.tensor(0.7), torch.tensor([0.1, -0.2])

    def move(v):  # turn by a, then shift by t
        return _turn(v, torch.cos(a), -torch.sin(a)) + t
    out2 = p(pose(move(xy), th + a), move(robot), move(commands))
    expected = torch.cat([4 * move(out[..., :2] / 4),
                          _turn(out[..., 2:], torch.cos(a), -torch.sin(a))], -1)
    torch.testing.assert_close(out2, expected, atol=1e-5, rtol=0)
    # in a model: the robot placed by the self mask's map, a rollout of the right shape
    from ami_ros.model.config import KeypointEncoderConfig, ProprioConfig
    keypoints = KeypointEncoderConfig(background=True, moments=True, pose=True, scale=4.0,
                                      self_mask=(2.0, 0.0, 0.0, 0.0, 2.0, 0.0),
                                      self_mask_radius=0.1)
    predictor = PredictorConfig(history=3, action_history=2, hidden=16, layers=1,
                                object_frame=True)
    proprio = ProprioConfig(enabled=True, ee_dim=0, reader_channels=(4, 4, 4, 4),
                            reader_keypoints=4)
    cfg = tiny_config(image_size=16, encoder='keypoints', latent_dim=4, keypoints=keypoints,
                      predictor=predictor, proprio=proprio)
    model = WorldModel(cfg)
    model.set_action_stats([0.25, 0.25], [0.1, 0.1])
    z = torch.cat([pose(xy, th), torch.rand(6, 3, 2)], -1)
    assert model.rollout(z, torch.rand(6, 5, 2) * 0.5).shape == (6, 5, 6)
    with pytest.raises(ConfigError, match='object_frame'):
        tiny_config(predictor=PredictorConfig(object_frame=True))


def test_probe_outputs_physical_units_and_angles_wrap():
    model = tiny_model()
    out = model.probe(torch.randn(5, 8))
    assert set(out) == {'ee_position', 'block_yaw'}
    assert out['ee_position'].shape == (5, 3) and out['block_yaw'].shape == (5, 1)
    assert bool((out['block_yaw'].abs() <= math.pi).all())
    head = model.probes['block_yaw']
    y = torch.tensor([[3.1], [-3.1], [0.5]])
    torch.testing.assert_close(angle_error(torch.atan2(*head.encode_target(y).chunk(2, -1)[::-1]),
                                           y), torch.zeros(3, 1), atol=1e-6, rtol=0)
    assert float(angle_error(torch.tensor(3.1), torch.tensor(-3.1))) == pytest.approx(
        2 * math.pi - 6.2, abs=1e-5)
    ee = model.probes['ee_position']
    y = torch.tensor([[0.3, -0.1, 0.35]])
    torch.testing.assert_close(ee.encode_target(y) * ee.std + ee.mean, y)


# ------------------------------------------------------------------------------------ losses
def test_sigreg_small_for_gaussian_large_for_collapse_and_scale():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(1024, 16, generator=g)
    stat_gauss = float(sigreg(gauss, generator=torch.Generator().manual_seed(1)))
    collapsed = gauss[:, :1].expand(-1, 16) * 0.01
    stat_collapsed = float(sigreg(collapsed, generator=torch.Generator().manual_seed(1)))
    stat_scaled = float(sigreg(gauss * 3, generator=torch.Generator().manual_seed(1)))
    stat_shift = float(sigreg(gauss + 2, generator=torch.Generator().manual_seed(1)))
    assert stat_gauss < 0.05 * stat_collapsed
    assert stat_gauss < 0.1 * stat_scaled and stat_gauss < 0.1 * stat_shift


def test_sigreg_gradient_spreads_collapsed_latents():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(512, 1, generator=g) @ torch.randn(1, 8, generator=g)
         + 0.01 * torch.randn(512, 8, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    before = effective_rank(z)
    for step in range(150):
        loss = sigreg(z, 64, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 1.5
    assert effective_rank(z) > 6.5


def test_vicreg_terms():
    g = torch.Generator().manual_seed(0)
    white = torch.randn(4096, 8, generator=g) * 1.5
    assert float(vicreg(white)) < 0.02
    small = white * 0.1
    assert float(vicreg(small, 1.0, 0.0)) == pytest.approx(1 - 0.15, abs=0.02)
    corr = torch.randn(4096, 1, generator=g).expand(-1, 8) * 2.0
    assert float(vicreg(corr, 0.0, 1.0)) > 10.0


def test_info_nce_picks_each_prediction_out_of_the_batch():
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(64, 8, generator=g) * 3.0
    assert float(info_nce(targets, targets)) < 0.01  # each its own, far from the others
    same = torch.zeros(64, 8)
    assert float(info_nce(same, same)) == pytest.approx(math.log(64), rel=1e-5)  # chance
    shuffled = targets[torch.randperm(64, generator=g)]
    assert float(info_nce(shuffled, targets)) > math.log(64)  # worse than chance
    pred = torch.zeros(64, 8, requires_grad=True)
    info_nce(pred, targets).backward()
    assert float(pred.grad.norm()) > 0  # predictions are pulled to their own targets
    # groups: a prediction's own group is not its negatives
    assert float(info_nce(same, same, groups=torch.zeros(64))) == pytest.approx(0.0, abs=1e-6)
    pairs = torch.arange(32).repeat_interleave(2)          # 32 groups of 2 equal rows
    assert float(info_nce(same, same, groups=pairs)) == pytest.approx(math.log(63), rel=1e-5)


def test_effective_rank_and_variance():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20000, 10, generator=g)
    assert effective_rank(iso) == pytest.approx(10, abs=0.1)
    line = torch.randn(500, 1, generator=g) * torch.arange(1, 11).float()
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.ones(50, 4)) == 0.0
    assert latent_variance(iso) == pytest.approx(10, rel=0.03)


# ------------------------------------------------------------------------------------ config
def test_config_errors_name_the_field_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r'train\.batch_sze: unknown field.*did you mean '
                                          r'train\.batch_size'):
        from_dict(RunConfig, {'train': {'batch_sze': 4}})
    with pytest.raises(ConfigError, match=r'train\.batch_size must be an integer'):
        from_dict(RunConfig, {'train': {'batch_size': 'big'}})
    with pytest.raises(ConfigError, match=r'train\.lr must be in'):
        from_dict(RunConfig, {'train': {'lr': 5.0}})
    with pytest.raises(ConfigError, match=r"loss\.regularizer must be 'sigreg' or 'vicreg'"):
        from_dict(RunConfig, {'loss': {'regularizer': 'barlow'}})
    with pytest.raises(ConfigError, match=r'model\.image_size .*divisible'):
        from_dict(RunConfig, {'model': {'image_size': 40}})
    with pytest.raises(ConfigError, match=r'predictor\.action_history'):
        from_dict(RunConfig, {'model': {'predictor': {'history': 2, 'action_history': 3}}})
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model:\n  latent_dims: 3\n')
    with pytest.raises(ConfigError, match=rf'{bad}: model\.latent_dims: unknown field'):
        load_run_config(bad)
    bad.write_text('- a list\n')
    with pytest.raises(ConfigError, match=f'{bad}: top level must be a mapping'):
        load_run_config(bad)
    with pytest.raises(ConfigError, match='config file not found'):
        load_run_config(tmp_path / 'missing.yaml')


@pytest.mark.parametrize('name', ['train_arm_reach.yaml', 'train_pusht.yaml'])
def test_shipped_training_configs_load(name):
    cfg = load_run_config(REPO / 'config' / name)
    assert cfg.model.encoder in ('cnn', 'vit')
    assert cfg.loss.horizon >= 5


# ------------------------------------------------------------------------------------ golden
def golden_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12345)
    return {'images': rng.integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8),
            'actions': rng.normal(size=(4, 6, 2)).astype(np.float32)}


def golden_outputs(model: WorldModel) -> dict[str, np.ndarray]:
    inp = golden_inputs()
    with torch.no_grad():
        z = model.encode(torch.from_numpy(inp['images']))
        z_hist = torch.stack([z, z.roll(1, dims=0)], dim=1)                 # (4, 2, 8)
        roll = model.rollout(z_hist, torch.from_numpy(inp['actions']))
        probes = model.probe(roll)
    return {'latents': z.numpy(), 'rollout': roll.numpy(),
            'probe_ee_position': probes['ee_position'].numpy(),
            'probe_block_yaw': probes['block_yaw'].numpy()}


def regenerate_golden() -> None:
    model = tiny_model(seed=0)
    save_checkpoint(model, GOLDEN / 'tiny_model', training={'note': 'golden test model'})
    np.savez(GOLDEN / 'tiny_outputs.npz', **golden_outputs(load_checkpoint(GOLDEN / 'tiny_model')))
    print(f'wrote {GOLDEN}/tiny_model and tiny_outputs.npz')


def test_golden_outputs():
    """Stored tiny model + fixed inputs give the stored outputs.

    Catches silent changes of the computation or of the checkpoint format. Regenerate: see the
    module docstring.
    """
    model = load_checkpoint(GOLDEN / 'tiny_model')
    expected = np.load(GOLDEN / 'tiny_outputs.npz')
    got = golden_outputs(model)
    assert set(got) == set(expected.files)
    for key, value in got.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


if __name__ == '__main__':
    if '--regenerate-golden' in sys.argv:
        regenerate_golden()
    else:
        print(__doc__)
