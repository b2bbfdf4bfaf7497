"""One-pass dynamics (``dynamics.one_pass``): the pass that predicts a frame is the frame's state, so play
writes the cache while sampling; training and play compute the same numbers; a world takes one
transformer pass per step instead of two; the model learns a toy rule and rolls it out."""

import pytest
import torch

from playworld.errors import ConfigError
from playworld.maskgit import SamplingConfig
from playworld.models.dynamics import DynamicsConfig, DynamicsModel
from playworld.world import World, WorldConfig
from tiny_world import tiny_models


def _model(one_pass: bool = True, **kw) -> DynamicsModel:
    torch.manual_seed(0)
    return DynamicsModel(DynamicsConfig(vocab_size=32, num_actions=4, token_height=2, token_width=3, dim=32,
                                        depth=2, heads=2, one_pass=one_pass, **kw)).eval()


def test_cached_play_steps_give_the_training_pass_logits_and_write_the_cache():
    m = _model()
    tokens, actions = torch.randint(0, 32, (2, 5, 6)), torch.randint(0, 4, (2, 4))
    fa = m.frame_actions(actions)  # (B, T)
    full = m(tokens[:, 1:], fa[:, 1:], prev=tokens[:, 0])  # (B, 4, S, V): frames 2..5 as training sees them
    masked = torch.full((2, 6), m.mask_id)
    cache = m.new_cache(8)
    m.commit(tokens[:, :1], fa[:, :1], cache)  # frame 1 alone is only the next one's prev: nothing written
    assert cache.frames == 0
    for j in range(1, 5):
        step = m.step_logits(masked, fa[:, j:j + 1], cache, tokens[:, j - 1], commit=True)
        torch.testing.assert_close(step, full[:, j - 1], atol=1e-5, rtol=1e-4)
        assert cache.frames == j
    # a prompt of 3 frames committed at once (World.reset) leaves the same past as stepping through it
    cache = m.new_cache(8)
    m.commit(tokens[:, :3], fa[:, :3], cache)
    assert cache.frames == 2
    torch.testing.assert_close(m.step_logits(masked, fa[:, 3:4], cache, tokens[:, 2]), full[:, 2],
                               atol=1e-5, rtol=1e-4)
    # the frame's own ids never enter: only as the next frame's prev
    other = tokens.clone()
    other[:, -1] = torch.randint(0, 32, (2, 6))
    torch.testing.assert_close(m(other[:, 1:], fa[:, 1:], prev=other[:, 0]), full)
    with pytest.raises(ValueError, match="one_pass"):
        _model(one_pass=False).step_logits(masked, fa[:, 1:2], m.new_cache(4), tokens[:, 0], commit=True)


def _world(one_pass: bool) -> World:
    tok, lam, dyn = tiny_models()
    dyn.config.one_pass = one_pass
    return World(tok, lam, dyn, WorldConfig(context_frames=8, decoder_context=8))


def _counting(counts: dict, key: str, fn):
    def wrapped(*args, **kwargs):
        counts[key] += 1
        return fn(*args, **kwargs)
    return wrapped


def test_a_world_takes_one_transformer_pass_per_step_and_replays_exactly(monkeypatch):
    prompt = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)  # two prompt frames
    calls = {}
    for one_pass in (False, True):
        w = _world(one_pass)
        tr = w.dynamics.transformer
        counts = {"forward": 0, "commit": 0}
        monkeypatch.setattr(tr, "forward", _counting(counts, "forward", tr.forward))
        monkeypatch.setattr(tr, "commit_frames", _counting(counts, "commit", tr.commit_frames))
        w.reset(prompt, seed=3)
        counts.update(forward=0, commit=0)
        for i in range(5):
            w.step(i % 4)
        calls[one_pass] = dict(counts)
        # MaskGIT caches both prompt frames and 5 steps; one_pass has no state for the first prompt frame
        assert w.cache_frames()[0] == (6 if one_pass else 7)
    assert calls[False] == {"forward": 5, "commit": 5}
    assert calls[True] == {"forward": 5, "commit": 0}
    # nothing to defer: the frame is written by the pass that made it
    World.step_many([w], [1], defer_commit=True)
    assert not w.uncommitted and w.cache_frames()[0] == 7
    # a snapshot replays bit for bit
    snap = w.snapshot()
    a = [w.step(i % 4) for i in range(3)]
    w.restore(snap)
    assert all(torch.equal(x, w.step(i % 4)) for i, x in enumerate(a))


def test_one_pass_learns_a_toy_rule_and_rolls_it_out():
    """next token = (token + action) mod V at every place: learned from the previous frame alone."""
    torch.manual_seed(0)
    m = DynamicsModel(DynamicsConfig(vocab_size=16, num_actions=4, token_height=2, token_width=3, dim=48, depth=2,
                                     heads=2, one_pass=True, self_forcing=0.5))

    def clips(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.randint(0, 16, (n, 1, 6))
        actions = torch.randint(0, 4, (n, 3))
        frames = [first[:, 0]]
        for t in range(3):
            frames.append((frames[-1] + actions[:, t:t + 1]) % 16)
        return torch.stack(frames, 1), actions

    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    first_acc = None
    for _ in range(400):
        tokens, actions = clips(32)
        out = m.compute_loss_tokens(tokens, actions)
        first_acc = first_acc if first_acc is not None else float(out.metrics["accuracy"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    m.eval()
    tokens, actions = clips(64)
    out = m.compute_loss_tokens(tokens, actions)
    assert first_acc < 0.3 and float(out.metrics["accuracy"]) > 0.95
    assert float(out.metrics["mask_rate"]) == pytest.approx(3 / 4)  # frames 2..4 of 4, none of frame 1
    greedy = SamplingConfig(steps=1, temperature=0.0)
    rolled = m.free_run(tokens, m.frame_actions(actions), 3, greedy)
    assert (rolled[:, 1:] == tokens[:, 1:]).float().mean() > 0.9


def test_one_pass_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="one_pass"):
        DynamicsConfig(one_pass=True, prev_frame_input=False)
    with pytest.raises(ConfigError, match="one_pass"):
        DynamicsConfig(one_pass=True, context_noise=0.1)
    with pytest.raises(ConfigError, match="one_pass"):
        DynamicsConfig(one_pass=True, backend="flow")
    m = _model()
    tokens = torch.randint(0, 32, (1, 3, 6))
    with pytest.raises(ConfigError, match="1 MaskGIT step"):
        m.free_run(tokens, m.frame_actions(torch.zeros(1, 2, dtype=torch.long)), 2, SamplingConfig(steps=4))
    tok, lam, dyn = tiny_models()
    dyn.config.one_pass = True
    with pytest.raises(ConfigError, match="1 MaskGIT step"):  # refused when the world is built, not mid-play
        World(tok, lam, dyn, WorldConfig(sampling=SamplingConfig(steps=4)))
    # the same parameters as a model trained without it: train.init_from fine-tunes one into the other
    assert set(_model(one_pass=False).state_dict()) == set(m.state_dict())


def test_init_from_a_one_pass_release_without_one_pass_says_so(tmp_path, capsys):
    import dataclasses
    import json

    from playworld.train import Trainer
    from tiny_world import save_tiny_run, tiny_dynamics_finetune

    from helpers import make_dataset

    world = save_tiny_run(tmp_path / "world")
    config_file = world / "dynamics" / "config.json"
    data = make_dataset(tmp_path / "ds", episodes=4, length=8, size=16)
    base = tiny_dynamics_finetune(world, data, val_every=0)
    one_pass = dataclasses.replace(base, model=dataclasses.replace(base.model, one_pass=True))
    Trainer(one_pass, tmp_path / "a", progress=False)  # a MaskGIT source fine-tuned into one pass: as meant
    assert "one_pass" not in capsys.readouterr().err
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "model": {**saved["model"], "one_pass": True}}))
    Trainer(one_pass, tmp_path / "b", progress=False)  # one pass kept: nothing to say
    assert "one_pass" not in capsys.readouterr().err
    Trainer(base, tmp_path / "c", progress=False)  # loads (same parameters) but says what it becomes
    err = capsys.readouterr().err
    assert f"train.init_from {world / 'dynamics'}: a one_pass model" in err and "model.one_pass=true" in err
