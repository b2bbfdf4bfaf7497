"""Play-time precision: bf16 dynamics and decoder stay close to fp32; attention math stays fp32."""

import pytest
import torch

from playworld.config import to_dict
from playworld.errors import ConfigError
from playworld.maskgit import SamplingConfig
from playworld.precision import cast_for_play, resolve_precision
from playworld.train.checkpoint import save_release
from playworld.world import World, WorldConfig
from tiny_world import SIZE, tiny_models

torch.set_num_threads(1)


def test_resolve_precision_names_the_bad_value_and_auto_picks_a_dtype():
    assert resolve_precision("fp32") is torch.float32 and resolve_precision("bf16") is torch.bfloat16
    assert resolve_precision("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError, match="'fp16'"):
        resolve_precision("fp16")


def test_bf16_decoder_decodes_close_to_fp32_and_leaves_the_encoder_alone():
    tok, _, _ = tiny_models()
    video = torch.rand(2, 3, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    indices = tok.encode(video).indices
    ref = tok.decode(indices)
    tok.cast_decoder(torch.bfloat16)
    assert tok.decoder.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert tok.encoder.blocks[0].mlp.fc1.weight.dtype == torch.float32
    assert torch.equal(tok.encode(video).indices, indices)
    got = tok.decode(indices)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got - ref).abs().mean() < 0.02


def test_bf16_dynamics_logits_track_fp32_and_its_cache_holds_fp32_keys():
    tok, lam, dyn = tiny_models()
    tokens = torch.randint(0, 32, (2, 3, 16), generator=torch.Generator().manual_seed(1))
    actions = dyn.frame_actions(torch.tensor([[0, 2], [1, 3]]))
    with torch.inference_mode():
        ref = dyn(tokens, actions)
        cast_for_play(tok, dyn, torch.bfloat16)
        got = dyn(tokens, actions).float()
        cache = dyn.new_cache(4)
        dyn.commit(tokens, actions, cache)
    corr = torch.corrcoef(torch.stack([ref.flatten(), got.flatten()]))[0, 1]
    assert corr > 0.999, corr
    assert all(layer.k.dtype == torch.float32 for layer in cache.layers)


def test_a_bf16_world_loads_steps_and_stays_near_the_fp32_one(tmp_path):
    for kind, model in zip(("tokenizer", "lam", "dynamics"), tiny_models()):
        save_release(tmp_path / kind, model.state_dict(), {"kind": kind, "model": to_dict(model.config)})
    cfg = WorldConfig(sampling=SamplingConfig(steps=1, temperature=0.0))
    ref, low = World.load(tmp_path, cfg), World.load(tmp_path, cfg, precision="bf16")
    assert ref.dtype == torch.float32 and low.dtype == torch.bfloat16
    assert next(low.lam.parameters()).dtype == torch.float32
    prompt = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    first_ref, first_low = ref.reset(prompt, seed=0), low.reset(prompt, seed=0)  # same tokens, bf16 decoder
    assert (first_ref.float() - first_low.float()).abs().mean() < 0.5  # of 255 levels
    diffs = []
    for a in (0, 1, 2, 3):
        x, y = ref.step(a), low.step(a)
        assert y.shape == x.shape and y.dtype == torch.uint8
        diffs.append((x.float() - y.float()).abs().mean().item())
    assert max(diffs) < 3.0, diffs  # the same tokens up to a rare argmax flip (one flip moves ~1.5 levels)
