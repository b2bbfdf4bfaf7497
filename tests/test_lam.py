"""Latent action model: causality in time, API shapes, metrics, inference leaves the codebook alone."""

import pytest
import torch

from playworld.errors import ConfigError
from playworld.models.lam import LAMConfig, LatentActionModel


def _lam(**kw) -> LatentActionModel:
    torch.manual_seed(0)
    cfg = LAMConfig(**{"height": 16, "width": 16, "patch_size": 4, "num_actions": 8, "dim": 32, "heads": 2,
                       "encoder_depth": 2, "decoder_depth": 2, **kw})
    return LatentActionModel(cfg)


def test_action_for_t_to_t_plus_1_depends_only_on_frames_up_to_t_plus_1():
    m = _lam().eval()
    video = torch.rand(2, 5, 16, 16, 3)
    enc = m.encode(video)
    assert enc.actions.shape == (2, 4) and enc.latents.shape == (2, 4, 16)
    t = 1  # transition 1 -> 2
    video2 = video.clone()
    video2[:, t + 2 :] = torch.rand_like(video2[:, t + 2 :])  # frames after t+1
    enc2 = m.encode(video2)
    torch.testing.assert_close(enc.latents[:, : t + 1], enc2.latents[:, : t + 1])
    assert not torch.allclose(enc.latents[:, t + 1 :], enc2.latents[:, t + 1 :])


def test_decoder_prediction_of_x_t_plus_1_sees_only_x_1_to_x_t_and_a_t():
    m = _lam().eval()
    video = torch.rand(1, 4, 16, 16, 3)
    patches = m.patchify(video)
    codes = torch.randn(1, 3, 16)
    pred = m.decode(patches[:, :-1], codes)
    context2, codes2 = patches[:, :-1].clone(), codes.clone()
    context2[:, 2] += 0.5  # x_3 only
    codes2[:, 2] += 1.0  # a_3 only
    pred2 = m.decode(context2, codes2)
    torch.testing.assert_close(pred[:, :2], pred2[:, :2])
    assert not torch.allclose(pred[:, 2], pred2[:, 2])


def test_loss_metrics_and_infer_actions_api():
    m = _lam().train()
    video = torch.rand(3, 4, 16, 16, 3)
    out = m.compute_loss(video)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    usage = torch.stack([out.metrics[f"action_usage/{k}"] for k in range(m.num_actions)])
    torch.testing.assert_close(usage.sum(), torch.tensor(1.0))
    assert {"mse", "psnr", "copy_psnr", "vq_loss", "action_entropy", "action_perplexity"} <= set(out.metrics)
    assert 0.0 <= float(out.metrics["action_entropy"]) <= torch.log(torch.tensor(8.0)) + 1e-5
    actions = m.infer_actions(video)
    assert actions.shape == (3, 3) and actions.dtype == torch.long
    assert int(actions.min()) >= 0 and int(actions.max()) < 8
    assert m.training  # infer_actions restores the mode


def test_infer_actions_never_updates_the_codebook():
    m = _lam().train()
    m.compute_loss(torch.rand(2, 3, 16, 16, 3))  # initialises the codebook from data
    before = {k: v.clone() for k, v in m.quantizer.state_dict().items()}
    m.infer_actions(torch.rand(2, 3, 16, 16, 3))
    after = m.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shape_and_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="patch_size 5"):
        LAMConfig(height=16, width=16, patch_size=5)
    with pytest.raises(ConfigError, match="num_actions"):
        LAMConfig(num_actions=1)
    m = _lam()
    with pytest.raises(ValueError, match="LAM expects video"):
        m.infer_actions(torch.rand(1, 3, 32, 32, 3))
    with pytest.raises(ValueError, match="at least 2 frames"):
        m.infer_actions(torch.rand(1, 1, 16, 16, 3))


def test_lam_learns_to_predict_the_next_frame_better_than_copying():
    """A short run on the sprite world: the action code carries information (PSNR above copy-last)."""
    from sprite_world import make_clips

    m = _lam(patch_size=8, num_actions=4, commitment=0.01, dim=64, heads=4)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for i in range(150):
        out = m.compute_loss(make_clips(32, 2, seed=i).video.float() / 255)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.metrics["psnr"]) > float(out.metrics["copy_psnr"]) + 0.5
