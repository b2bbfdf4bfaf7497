"""Dynamics model and MaskGIT decoding: causality, masking, frozen trainer, schedule, determinism."""

import pytest
import torch

from playworld.errors import ConfigError
from playworld.maskgit import PLAY_COPY_PENALTY, SamplingConfig, masked_counts, maskgit_decode, play_sampling
from playworld.models.dynamics import DynamicsConfig, DynamicsModel, DynamicsTrainer
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer


def _cfg(**kw) -> DynamicsConfig:
    return DynamicsConfig(**{"dim": 32, "depth": 2, "heads": 2, **kw})


def _dynamics(**kw) -> DynamicsModel:
    torch.manual_seed(0)
    cfg = _cfg(vocab_size=32, num_actions=4, token_height=2, token_width=3, **kw)
    return DynamicsModel(cfg).eval()


def test_changing_frame_t_plus_1_or_its_action_leaves_logits_up_to_t_unchanged():
    m = _dynamics()
    tokens = torch.randint(0, 32, (2, 5, 6))
    actions = torch.randint(0, 4, (2, 4))
    logits = m(tokens, m.frame_actions(actions))
    t = 2
    tokens2, actions2 = tokens.clone(), actions.clone()
    tokens2[:, t + 1 :] = torch.randint(0, 32, tokens2[:, t + 1 :].shape)
    actions2[:, t:] = (actions2[:, t:] + 1) % 4  # a_t leads to frame t+1
    logits2 = m(tokens2, m.frame_actions(actions2))
    torch.testing.assert_close(logits[:, : t + 1], logits2[:, : t + 1])
    assert not torch.allclose(logits[:, t + 1 :], logits2[:, t + 1 :])


def test_action_conditions_the_frame_it_leads_to():
    m = _dynamics()
    tokens = torch.randint(0, 32, (1, 3, 6))
    a = torch.tensor([[0, 1]])
    b = torch.tensor([[0, 2]])
    la, lb = m(tokens, m.frame_actions(a)), m(tokens, m.frame_actions(b))
    torch.testing.assert_close(la[:, :2], lb[:, :2])
    assert not torch.allclose(la[:, 2], lb[:, 2])


def test_training_mask_keeps_the_first_frame_and_rates_in_range():
    m = _dynamics()
    tokens = torch.randint(0, 32, (64, 4, 6))
    g = torch.Generator().manual_seed(0)
    batch = m.random_mask(tokens, g)
    assert not batch.mask[:, 0].any()
    rate = batch.mask[:, 1:].float().mean()
    assert 0.6 < rate < 0.9  # E = 0.75
    assert (batch.inputs[batch.mask] == m.mask_id).all()
    assert torch.equal(batch.inputs[~batch.mask], tokens[~batch.mask])
    out = m.compute_loss_tokens(tokens, torch.randint(0, 4, (64, 3)))
    assert torch.isfinite(out.loss) and {"ce", "accuracy", "mask_rate"} <= set(out.metrics)
    out.loss.backward()


def test_clean_prefix_leaves_a_random_number_of_leading_frames_whole_in_training_only():
    m = _dynamics(clean_prefix=True, mask_rate_min=0.95).train()  # a masked frame has a [MASK] (6 tokens)
    tokens = torch.randint(0, 32, (256, 5, 6))
    batch = m.random_mask(tokens, torch.Generator().manual_seed(0))
    masked_frames = batch.mask.any(-1)  # (B, T)
    first_masked = torch.where(masked_frames.any(1), masked_frames.float().argmax(1), torch.tensor(5))
    # everything before the first masked frame is whole, and every frame after it is masked (rate >= 0.5)
    after = torch.arange(5)[None] >= first_masked[:, None]
    assert torch.equal(masked_frames, after)
    assert set(first_masked.tolist()) == {1, 2, 3, 4}  # c ~ U{1..T-1}
    out = m.compute_loss_tokens(tokens[:8], torch.randint(0, 4, (8, 4)))
    assert torch.isfinite(out.loss)
    m.eval()  # validation keeps Genie's masking: only frame 1 is whole
    batch = m.random_mask(tokens, torch.Generator().manual_seed(0))
    assert batch.mask[:, 1:].any(-1).all() and not batch.mask[:, 0].any()


def test_context_noise_corrupts_only_visible_inputs_at_a_bounded_rate():
    tokens = torch.randint(0, 32, (256, 4, 6))
    g = torch.Generator().manual_seed(0)
    clean = _dynamics()
    batch = clean.random_mask(tokens, g)
    assert torch.equal(clean.corrupt(batch, g), batch.inputs)  # off by default
    noisy = _dynamics(context_noise=0.5)
    assert torch.equal(noisy.corrupt(batch, g), batch.inputs)  # eval mode: validation sees clean inputs
    noisy.train()
    out = noisy.corrupt(batch, g)
    assert (out[batch.mask] == noisy.mask_id).all()  # [MASK] positions untouched
    changed = (out != batch.inputs)[~batch.mask].float().mean()
    # E[changed] = E[r] * (1 - 1/V) = 0.25 * 31/32 over 256 clips
    assert 0.18 < changed < 0.31, changed
    assert int(out[~batch.mask].max()) < noisy.config.vocab_size  # noise is real token ids
    with pytest.raises(ConfigError, match="context_noise"):
        DynamicsConfig(context_noise=1.0)


def test_free_run_decodes_each_frame_from_its_own_past_at_play_setting():
    m = _dynamics()
    tokens = torch.randint(0, 32, (3, 5, 6))
    fa = m.frame_actions(torch.randint(0, 4, (3, 4)))
    out = m.free_run(tokens, fa, 2)
    assert torch.equal(out[:, 0], tokens[:, 0]) and torch.equal(out[:, 3:], tokens[:, 3:])
    expected = tokens[:, :1].clone()
    for j in (1, 2):  # greedy, with the previous frame's token lowered by play's copy penalty
        clip = torch.cat([expected, torch.full_like(tokens[:, :1], m.mask_id)], dim=1)
        logits = m(clip, fa[:, : j + 1])[:, j].scatter_add(-1, expected[:, -1:].mT, torch.full((3, 6, 1), -2.0))
        expected = torch.cat([expected, logits.argmax(-1)[:, None]], dim=1)
    torch.testing.assert_close(out[:, :3], expected)
    assert not torch.equal(out[:, 1:3], tokens[:, 1:3])
    with pytest.raises(ValueError, match="free_run"):
        m.free_run(tokens, fa, 5)


def test_self_forcing_replaces_the_early_frames_in_training_only():
    tokens = torch.randint(0, 32, (4, 5, 6))
    other = tokens.clone()
    other[:, 1] = (other[:, 1] + 1) % 32  # frame 2 is always among the model's own when self-forcing
    actions = torch.randint(0, 4, (4, 4))

    def losses(m):
        out = []
        for x in (tokens, other):
            torch.manual_seed(3)
            out.append(m.compute_loss_tokens(x, actions))
        return out

    a, b = losses(_dynamics(self_forcing=1.0).train())
    assert a.loss.item() == b.loss.item()  # neither the input nor the target of frame 2 is the real one
    assert 0 < a.metrics["self_forced"] < 1
    a, b = losses(_dynamics(self_forcing=0.0).train())
    assert a.loss.item() != b.loss.item()
    a, b = losses(_dynamics(self_forcing=1.0).eval())  # validation: the real frames, as before
    assert a.loss.item() != b.loss.item() and "self_forced" not in a.metrics
    m = _dynamics(self_forcing=1.0).train()
    torch.manual_seed(0)
    out = m.compute_loss_tokens(tokens, actions)
    out.loss.backward()
    assert m.head.weight.grad is not None and torch.isfinite(m.head.weight.grad).all()
    with pytest.raises(ConfigError, match="self_forcing"):
        DynamicsConfig(self_forcing=1.5)
    with pytest.raises(ConfigError, match="self_forcing"):
        DynamicsConfig(self_forcing=0.5, backend="flow")


def test_change_weight_weights_the_tokens_that_moved_in_training_only():
    # Frames where only some places change: the loss equals the hand-weighted mean of the per-token losses.
    tokens = torch.randint(0, 32, (3, 4, 6))
    tokens[:, 2, :3] = tokens[:, 1, :3]  # frame 3 keeps half its places
    actions = torch.randint(0, 4, (3, 3))

    def run(m):
        torch.manual_seed(5)
        return m.compute_loss_tokens(tokens, actions)

    plain, weighted = run(_dynamics().train()), run(_dynamics(change_weight=3.0).train())
    assert plain.metrics["ce"] == weighted.metrics["ce"] and plain.loss == plain.metrics["ce"]
    assert 0 < float(weighted.metrics["changed_share"]) < 1
    # recompute the weighted loss from the same mask
    m = _dynamics(change_weight=3.0).train()
    torch.manual_seed(5)
    batch = m.random_mask(tokens)
    logits = m(m.corrupt(batch), m.frame_actions(actions))
    per = torch.nn.functional.cross_entropy(logits[batch.mask].float(), tokens[batch.mask], reduction="none")
    moved = torch.cat([torch.zeros_like(tokens[:, :1], dtype=torch.bool), tokens[:, 1:] != tokens[:, :-1]], 1)
    w = 1 + 3.0 * moved[batch.mask].float()
    torch.testing.assert_close(weighted.loss, (w * per).sum() / w.sum())
    torch.testing.assert_close(weighted.metrics["ce_changed"], per[moved[batch.mask]].mean())
    assert weighted.loss != weighted.metrics["ce"]
    evaluated = run(_dynamics(change_weight=3.0).eval())  # validation stays the plain cross-entropy
    assert evaluated.loss == evaluated.metrics["ce"]
    with pytest.raises(ConfigError, match="change_weight"):
        DynamicsConfig(change_weight=-1.0)
    with pytest.raises(ConfigError, match="change_weight"):
        DynamicsConfig(change_weight=1.0, backend="flow")


def test_config_and_shape_errors_name_the_value():
    with pytest.raises(ConfigError, match="mask rates"):
        DynamicsConfig(mask_rate_min=0.0)
    m = _dynamics()
    with pytest.raises(ValueError, match="actions must be"):
        m.compute_loss_tokens(torch.randint(0, 32, (2, 4, 6)), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="expects tokens"):
        m(torch.randint(0, 32, (2, 4, 5)), torch.zeros(2, 4, dtype=torch.long))


def _tiny_tokenizer_and_lam() -> tuple[VideoTokenizer, LatentActionModel]:
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(image_size=16, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2,
                                         num_codes=32, code_dim=8))
    lam = LatentActionModel(LAMConfig(height=16, width=16, patch_size=8, num_actions=4, dim=32, heads=2,
                                      encoder_depth=1, decoder_depth=1))
    return tok, lam


def test_trainer_freezes_tokenizer_and_lam_and_trains_only_dynamics():
    tok, lam = _tiny_tokenizer_and_lam()
    before = {k: v.clone() for k, v in {**tok.state_dict(), **lam.state_dict()}.items()}
    cfg = _cfg(vocab_size=32, num_actions=4, token_height=4, token_width=4)
    trainer = DynamicsTrainer(cfg, tokenizer=tok, lam=lam).train()
    assert not tok.training and not lam.training and trainer.dynamics.training
    assert all(not p.requires_grad for p in [*tok.parameters(), *lam.parameters()])
    assert {id(p) for p in trainer.trainable_module.parameters()} == {
        id(p) for p in trainer.parameters() if p.requires_grad}
    opt = torch.optim.AdamW(trainer.trainable_module.parameters(), lr=1e-3, weight_decay=0.1)
    out = trainer.compute_loss(torch.rand(2, 3, 16, 16, 3))
    out.loss.backward()
    opt.step()
    after = {**tok.state_dict(), **lam.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # codebooks (EMA buffers) too


def test_trainer_rejects_mismatched_models():
    tok, lam = _tiny_tokenizer_and_lam()
    with pytest.raises(ConfigError, match="vocab_size"):
        DynamicsTrainer(_cfg(vocab_size=64, num_actions=4, token_height=4, token_width=4),
                        tokenizer=tok, lam=lam)
    with pytest.raises(ConfigError, match="num_actions"):
        DynamicsTrainer(_cfg(vocab_size=32, num_actions=8, token_height=4, token_width=4),
                        tokenizer=tok, lam=lam)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25])
def test_mask_schedule_reveals_everything_and_decreases(steps):
    counts = masked_counts(256, steps)
    assert counts[-1] == 0 and len(counts) == steps
    assert all(a > b for a, b in zip([256, *counts], counts))
    assert masked_counts(3, 25)[-1] == 0 and len(masked_counts(3, 25)) == 3  # clipped to S


def test_maskgit_calls_and_keeps_revealed_tokens():
    vocab, s = 10, 12
    table = torch.randn(s, vocab)
    seen = []

    def logits_fn(tokens):
        seen.append(tokens.clone())
        return table.expand(tokens.shape[0], s, vocab)

    cfg = SamplingConfig(steps=4, temperature=0.0, choice_temperature=0.0)
    out = maskgit_decode(logits_fn, 2, s, vocab, cfg)
    assert len(seen) == 4 and (seen[0] == vocab).all()
    assert torch.equal(out, table.argmax(-1).expand(2, s))  # greedy = argmax
    for prev, nxt in zip(seen, seen[1:]):  # once revealed, a token never changes
        kept = prev != vocab
        assert torch.equal(nxt[kept], prev[kept])
        assert (nxt != vocab).sum() > (prev != vocab).sum()


def test_maskgit_is_deterministic_for_a_seed_and_top_k_restricts():
    vocab, s = 50, 16
    logits = torch.randn(3, s, vocab)

    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return maskgit_decode(lambda t: logits, 3, s, vocab, SamplingConfig(steps=4, temperature=2.0, **kw), g)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    top = logits.topk(3, dim=-1).indices
    out = run(5, top_k=3)
    assert (out[..., None] == top).any(-1).all()


def test_sampling_config_validates():
    with pytest.raises(ConfigError, match="steps"):
        SamplingConfig(steps=0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=-1.0)



def test_copy_penalty_turns_a_narrow_copy_mode_into_change_and_needs_prev():
    s, vocab = 6, 5
    prev = torch.tensor([[0, 1, 2, 3, 4, 0]])
    # every place prefers its previous token by a margin of 0.5 over the token one above it
    logits = torch.zeros(1, s, vocab)
    logits.scatter_(-1, prev[..., None], 1.0)
    logits.scatter_(-1, ((prev + 1) % vocab)[..., None], 0.5)
    greedy = SamplingConfig(steps=1, temperature=0.0)
    assert torch.equal(maskgit_decode(lambda t: logits, 1, s, vocab, greedy, prev=prev), prev)
    weak = SamplingConfig(steps=1, temperature=0.0, copy_penalty=0.25)
    assert torch.equal(maskgit_decode(lambda t: logits, 1, s, vocab, weak, prev=prev), prev)  # margin 0.5 holds
    strong = SamplingConfig(steps=2, temperature=0.0, copy_penalty=1.0)
    assert torch.equal(maskgit_decode(lambda t: logits, 1, s, vocab, strong, prev=prev), (prev + 1) % vocab)
    with pytest.raises(ValueError, match="copy_penalty needs prev"):
        maskgit_decode(lambda t: logits, 1, s, vocab, strong)
    with pytest.raises(ConfigError, match="copy_penalty"):
        SamplingConfig(copy_penalty=-1.0)
    with pytest.raises(ConfigError, match="copy_penalty"):
        SamplingConfig(copy_penalty=float("nan"))


def test_self_forcing_rollouts_decode_at_their_own_copy_penalty():
    tokens = torch.randint(0, 32, (4, 5, 6))
    actions = torch.randint(0, 4, (4, 4))
    seen = []

    def run(**kw):
        m = _dynamics(self_forcing=1.0, **kw).train()
        free_run = m.free_run

        def spy(tokens, fa, frames, sampling=None):
            seen.append(sampling.copy_penalty)
            return free_run(tokens, fa, frames, sampling)

        m.free_run = spy
        torch.manual_seed(3)
        return m.compute_loss_tokens(tokens, actions).loss.item()

    run()
    zero, strong = run(self_forcing_copy_penalty=0.0), run(self_forcing_copy_penalty=50.0)
    assert seen == [PLAY_COPY_PENALTY, 0.0, 50.0]
    assert zero != strong  # a penalty that forbids copying gives the model another past to learn from
    assert _dynamics().forcing_sampling() == play_sampling()
    with pytest.raises(ConfigError, match="self_forcing_copy_penalty"):
        DynamicsConfig(self_forcing_copy_penalty=-1.0)


def test_self_forcing_starts_at_its_share_of_the_run():
    tokens = torch.randint(0, 32, (4, 5, 6))
    actions = torch.randint(0, 4, (4, 4))
    m = _dynamics(self_forcing=1.0, self_forcing_start=0.5).train()
    forced = []
    for step in range(10):
        m.set_progress(step, 10)
        torch.manual_seed(step)
        forced.append(m.compute_loss_tokens(tokens, actions).metrics["self_forced"].item())
    assert forced[:5] == [0.0] * 5  # real frames only in the first half of the run
    assert all(f > 0 for f in forced[5:])  # the model's own frames in every batch after it
    with pytest.raises(ConfigError, match="self_forcing_start"):
        DynamicsConfig(self_forcing=1.0, self_forcing_start=1.0)



def test_action_guidance_moves_log_probs_away_from_the_mean_over_actions():
    m = _dynamics()
    tokens = torch.randint(0, 32, (2, 2, 6))
    cache = m.new_cache(4)
    fa = m.frame_actions(torch.tensor([[1], [3]]))  # (B, 2): no action, then the pressed one
    m.commit(tokens[:, :1], fa[:, :1], cache)
    frame, prev = torch.full((2, 6), m.mask_id), tokens[:, 0]
    plain = m.step_logits(frame, fa[:, 1:], cache, prev)
    torch.testing.assert_close(plain, m(torch.stack([tokens[:, 0], frame], 1), fa, prev=None)[:, 1].float(),
                               rtol=1e-4, atol=1e-4)  # the cached pass is the full pass
    lp = {k: m.step_logits(frame, torch.full_like(fa[:, 1:], k), cache, prev).log_softmax(-1) for k in range(4)}
    mean = sum(lp.values()) / 4
    guided = m.step_logits(frame, fa[:, 1:], cache, prev, action_guidance=3.0)
    for row, k in enumerate((1, 3)):
        torch.testing.assert_close(guided[row], lp[k][row] + 2.0 * (lp[k][row] - mean[row]))
    caches = [m.new_cache(4), m.new_cache(4)]  # two worlds stepped together (World.step_many): as each alone
    for row, c in enumerate(caches):
        m.commit(tokens[row:row + 1, :1], fa[row:row + 1, :1], c)
    torch.testing.assert_close(m.step_logits(frame, fa[:, 1:], caches, prev, action_guidance=3.0), guided)
    assert cache.next_pos.tolist() == [1, 1]  # the guided passes committed nothing
    # a model that ignores its actions is left as it is
    with torch.no_grad():
        m.action_emb.weight[:4] = m.action_emb.weight[0]
    cache = m.new_cache(4)
    m.commit(tokens[:, :1], fa[:, :1], cache)
    torch.testing.assert_close(m.step_logits(frame, fa[:, 1:], cache, prev, 3.0),
                               m.step_logits(frame, fa[:, 1:], cache, prev).log_softmax(-1))
    from playworld.eval.config import EvalConfig
    from playworld.play.config import PlayConfig

    for bad in (0.5, float("inf"), float("nan")):
        for config in (SamplingConfig, EvalConfig, PlayConfig):
            with pytest.raises(ConfigError, match="action_guidance"):
                config(action_guidance=bad)


def test_action_dropout_trains_without_the_action_and_guidance_then_asks_the_no_action_id():
    m = _dynamics(action_dropout=0.9999).train()  # nearly every frame's action dropped
    tokens = torch.randint(0, 32, (2, 4, 6))
    a1, a2 = torch.zeros(2, 3, dtype=torch.long), torch.full((2, 3), 3)

    def loss(actions: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same masks and drops
        return m.compute_loss_tokens(tokens, actions).loss

    assert torch.equal(loss(a1), loss(a2))  # training: the actions never reach the model
    m.eval()
    assert not torch.equal(loss(a1), loss(a2))  # evaluation: they do
    cache = m.new_cache(4)
    fa = m.frame_actions(torch.tensor([[1], [3]]))
    m.commit(tokens[:, :1], fa[:, :1], cache)
    frame, prev = torch.full((2, 6), m.mask_id), tokens[:, 0]
    lp = m.step_logits(frame, fa[:, 1:], cache, prev).log_softmax(-1)
    free = m.step_logits(frame, torch.full_like(fa[:, 1:], m.no_action_id), cache, prev).log_softmax(-1)
    torch.testing.assert_close(m.step_logits(frame, fa[:, 1:], cache, prev, 2.5), lp + 1.5 * (lp - free))
    with pytest.raises(ConfigError, match="action_dropout"):
        _cfg(action_dropout=1.0)
