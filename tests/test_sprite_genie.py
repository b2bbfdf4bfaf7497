"""Genie end to end on the synthetic sprite world, where the true actions are known.

One LAM is trained (about 40 s on CPU) and shared by the tests: its latent actions must identify the
4 true actions on held-out clips (best one-to-one mapping >= 90%), and a dynamics model trained on
those latent actions (never the true ones) must predict the next frame better than copying the last.
"""

import math

import pytest
import torch
from einops import rearrange

from playworld.maskgit import SamplingConfig
from playworld.models.dynamics import DynamicsConfig, DynamicsModel
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.world import World, WorldConfig

from sprite_world import PatchTokenizer, best_mapping_accuracy, make_clips


@pytest.fixture(scope="module")
def lam() -> LatentActionModel:
    torch.manual_seed(0)
    m = LatentActionModel(LAMConfig(height=16, width=16, patch_size=4, num_actions=4, dim=64, heads=4,
                                    encoder_depth=2, decoder_depth=1, head_depth=2, kernel_radius=3,
                                    kernel_padding="circular"))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
    for i in range(450):
        out = m.compute_loss(make_clips(32, 2, seed=i + 1).video.float() / 255)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    m.final_metrics = {k: float(v) for k, v in out.metrics.items()}
    return m.eval()


def test_latent_actions_identify_the_true_actions_on_held_out_clips(lam):
    test = make_clips(512, 3, seed=10_000)  # held out; 2 transitions per clip
    pred = lam.infer_actions(test.video.float() / 255)
    assert best_mapping_accuracy(pred, test.actions, 4) >= 0.9
    assert lam.final_metrics["encoder_psnr"] > lam.final_metrics["copy_psnr"] + 5.0


def test_dynamics_on_latent_actions_beats_copy_last(lam):
    torch.manual_seed(0)
    train = make_clips(64, 2, seed=1)
    tok = PatchTokenizer(train.video)
    dyn = DynamicsModel(DynamicsConfig(vocab_size=tok.num_codes, num_actions=4, token_height=4, token_width=4,
                                       dim=64, depth=2, heads=4))
    opt = torch.optim.AdamW(dyn.parameters(), lr=2e-3, weight_decay=0.0)
    for i in range(600):
        video = make_clips(32, 2, seed=50_000 + i).video.float() / 255
        with torch.no_grad():
            tokens = rearrange(tok.encode(video).indices, "b t h w -> b t (h w)")
            actions = lam.infer_actions(video)  # latent, not true, actions
        out = dyn.compute_loss_tokens(tokens, actions)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    test = make_clips(256, 2, seed=20_000)
    video = test.video.float() / 255
    world = World(tok, lam, dyn.eval(), WorldConfig(sampling=SamplingConfig(steps=2, temperature=0.0)))
    world.reset(test.video[:, :1], seed=0)
    pred = world.step(lam.infer_actions(video)[:, 0]).float() / 255  # action inferred from the true pair
    psnr = -10 * math.log10(float((pred - video[:, 1]).square().mean()))
    copy = -10 * math.log10(float((video[:, 0] - video[:, 1]).square().mean()))
    assert psnr > copy + 3.0, (psnr, copy)
