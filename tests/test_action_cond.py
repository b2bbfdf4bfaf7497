"""dynamics.action_cond: 'adaln' (per-block action modulation that starts as the plain model and can be added to a
trained model through train.init_from) and 'token' (the action as one more token of its frame); both stay causal
and cacheable and learn an action-decided toy."""

import dataclasses

import pytest
import torch

from playworld.errors import CheckpointError, ConfigError
from playworld.models.dynamics import DynamicsConfig, DynamicsModel
from playworld.release import check_state_dict

V, A = 16, 4


def _model(action_cond: str = "input", seed: int = 0, **kw) -> DynamicsModel:
    torch.manual_seed(seed)
    cfg = DynamicsConfig(vocab_size=V, num_actions=A, token_height=2, token_width=3, dim=32, depth=2, heads=2,
                         action_cond=action_cond, **kw)
    return DynamicsModel(cfg).eval()


def _perturb(m: DynamicsModel) -> None:
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.2)


def test_adaln_starts_as_the_plain_model_it_is_loaded_from():
    plain, mod = _model("input"), _model("adaln", seed=3)
    optional = mod.init_from_optional()
    assert optional == set(mod.state_dict()) - set(plain.state_dict())
    assert len(optional) == 1 + 2 * len(mod.transformer.blocks)  # the embedding, each block's weight and bias
    check_state_dict(mod, plain.state_dict(), "plain", optional)
    mod.load_state_dict(plain.state_dict(), strict=False)
    tokens, actions = torch.randint(0, V, (2, 4, 6)), torch.randint(0, A, (2, 3))
    torch.testing.assert_close(mod(tokens, mod.frame_actions(actions)), plain(tokens, plain.frame_actions(actions)),
                               rtol=0, atol=0)
    _perturb(mod)  # once the modulation moves, the action reaches every block
    assert not torch.allclose(mod(tokens, mod.frame_actions(actions)), plain(tokens, plain.frame_actions(actions)))
    with pytest.raises(CheckpointError, match=r"plain: .*missing 1 tensor\(s\), e.g. \['head.bias'\]"):
        check_state_dict(mod, {k: v for k, v in plain.state_dict().items() if k != "head.bias"}, "plain", optional)
    assert _model("input").init_from_optional() == set()


@pytest.mark.parametrize("action_cond", ["adaln", "token"])
def test_action_cond_is_causal_conditions_the_frame_its_action_leads_to_and_caches_exactly(action_cond):
    m = _model(action_cond)
    _perturb(m)
    tokens, actions = torch.randint(0, V, (2, 5, 6)), torch.randint(0, A, (2, 4))
    fa = m.frame_actions(actions)
    full = m(tokens, fa)
    changed = actions.clone()
    changed[:, 2] = (changed[:, 2] + 1) % A  # leads to frame 3 (0-based)
    other = m(tokens, m.frame_actions(changed))
    torch.testing.assert_close(other[:, :3], full[:, :3])
    assert not torch.allclose(other[:, 3], full[:, 3])
    cache = m.new_cache(8)
    prev = None
    for t in range(5):  # one frame at a time against the committed past, as play steps
        step = m(tokens[:, t : t + 1], fa[:, t : t + 1], cache=cache, commit=False, prev=prev)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
        m.commit(tokens[:, t : t + 1], fa[:, t : t + 1], cache, prev=prev)
        prev = tokens[:, t]


@pytest.mark.parametrize("action_cond", ["adaln", "token"])
def test_action_cond_learns_a_world_where_the_action_alone_decides_the_next_frame(action_cond):
    # next frame = previous frame shifted by the action (mod V) at every place: without the action the
    # target is a guess among 4
    m = _model(action_cond).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.randint(0, V, (n, 1, 6), generator=g)
        actions = torch.randint(0, A, (n, 2), generator=g)
        frames = [first]
        for j in range(2):
            frames.append((frames[-1] + 1 + actions[:, j, None, None]) % V)
        return torch.cat(frames, 1), actions

    for _ in range(250):
        tokens, actions = batch(32)
        loss = m.compute_loss_tokens(tokens, actions).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    tokens, actions = batch(64)
    clip = torch.cat([tokens[:, :1], torch.full_like(tokens[:, 1:2], m.mask_id)], 1)
    with torch.no_grad():
        pred = m(clip, m.frame_actions(actions[:, :1]))[:, 1].argmax(-1)
    assert (pred == tokens[:, 1]).float().mean() > 0.9


def test_action_cond_is_validated():
    with pytest.raises(ConfigError, match="action_cond must be 'input', 'adaln' or 'token', got 'film'"):
        DynamicsConfig(action_cond="film")
    for cond in ("adaln", "token"):
        with pytest.raises(ConfigError, match=f"{cond}.*MaskGIT"):
            DynamicsConfig(action_cond=cond, backend="flow")


def test_action_token_is_one_more_place_of_each_frame_and_replaces_the_added_embedding():
    plain, tok = _model("input"), _model("token")
    assert set(tok.state_dict()) == set(plain.state_dict())  # the same tensors, one more spatial place
    assert tok.transformer.num_spatial == plain.transformer.num_spatial + 1 == 7
    assert tok.new_cache(4).num_spatial == 7
    tokens, actions = torch.randint(0, V, (2, 3, 6)), torch.randint(0, A, (2, 2))
    fa = tok.frame_actions(actions)
    x = tok.embed(tokens, fa)  # (B, T, S + 1, D): the tokens' own embeddings, then the action's
    torch.testing.assert_close(x[:, :, -1], tok.action_emb(fa))
    torch.testing.assert_close(x[:, :, :-1], tok.embed(tokens, torch.zeros_like(fa))[:, :, :-1])
    assert tok(tokens, fa).shape == (2, 3, 6, V)
    # the action token is not rotated by the spatial RoPE: its place carries no grid position
    assert torch.equal(tok.transformer.rope_s_cos[-1], torch.ones_like(tok.transformer.rope_s_cos[-1]))
    assert torch.equal(tok.transformer.rope_s_sin[-1], torch.zeros_like(tok.transformer.rope_s_sin[-1]))


def test_init_from_adds_the_modulation_to_a_trained_dynamics_model(tmp_path):
    from safetensors.torch import load_file

    from playworld.train import Trainer
    from tiny_world import save_tiny_run, tiny_dynamics_finetune

    from helpers import make_dataset

    world = save_tiny_run(tmp_path / "world")
    data = make_dataset(tmp_path / "ds", episodes=4, length=8, size=16)
    base = tiny_dynamics_finetune(world, data, log_every=1, val_every=0, ckpt_every=2)
    saved = load_file(str(world / "dynamics" / "model.safetensors"))
    adaln = dataclasses.replace(base, model=dataclasses.replace(base.model, action_cond="adaln"))
    trainer = Trainer(adaln, tmp_path / "run", progress=False)
    started = trainer.release.state_dict()
    assert all(torch.equal(started[k], saved[k]) for k in saved)
    assert all(not started[k].any() for k in started if "modulation" in k)
    result = trainer.fit()
    assert result.step == 2
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert any(trained[k].any() for k in trained if "modulation" in k)  # the new parameters train
    # the other way round (an adaln source into a plain model) is still refused, naming the file
    with pytest.raises(CheckpointError, match=r"model.safetensors: .*unexpected"):
        Trainer(dataclasses.replace(base, train=dataclasses.replace(base.train, init_from=str(tmp_path / "run"))),
                tmp_path / "back", progress=False)
