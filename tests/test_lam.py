"""Latent action model: causality, API shapes, metrics, restarts, and learning the true actions of a toy world."""

import math

import pytest
import torch
import torch.nn.functional as F

from playworld.errors import ConfigError, TrainingError
from playworld.models.lam import (
    MAX_CARRY,
    MIN_ENCODER_PERPLEXITY,
    ActionUsage,
    LAMConfig,
    LatentActionModel,
    balanced_assignment,
    check_action_usage,
    shift_frames,
)


def _lam(**kw) -> LatentActionModel:
    torch.manual_seed(0)
    cfg = LAMConfig(**{"height": 16, "width": 16, "patch_size": 4, "num_actions": 8, "dim": 32, "heads": 2,
                       "encoder_depth": 2, "decoder_depth": 2, "kernel_radius": 2, **kw})
    return LatentActionModel(cfg)


def test_action_for_t_to_t_plus_1_depends_only_on_frames_up_to_t_plus_1():
    m = _lam().eval()
    video = torch.rand(2, 5, 16, 16, 3)
    enc = m.encode(video)
    assert enc.logits.shape == (2, 4, 8) and enc.actions.shape == (2, 4)
    t = 1  # transition 1 -> 2
    video2 = video.clone()
    video2[:, t + 2 :] = torch.rand_like(video2[:, t + 2 :])  # frames after t+1
    enc2 = m.encode(video2)
    torch.testing.assert_close(enc.logits[:, : t + 1], enc2.logits[:, : t + 1])
    assert not torch.allclose(enc.logits[:, t + 1 :], enc2.logits[:, t + 1 :])


def test_decoder_prediction_of_x_t_plus_1_sees_only_x_1_to_x_t_and_a_t():
    m = _lam().eval()
    patches = m.patchify(torch.rand(1, 4, 16, 16, 3))
    actions = torch.tensor([[0, 3, 5]])
    pred = m.decode(patches[:, :-1], actions)
    context2, actions2 = patches[:, :-1].clone(), actions.clone()
    context2[:, 2] += 0.5  # x_3 only
    actions2[:, 2] = 6  # a_3 only
    pred2 = m.decode(context2, actions2)
    torch.testing.assert_close(pred[:, :2], pred2[:, :2])
    assert not torch.allclose(pred[:, 2], pred2[:, 2])
    # decode with given actions == the matching slice of decode_all
    every = m.decode_all(patches[:, :-1])  # (B, T-1, K, S, P)
    torch.testing.assert_close(pred, every[0, torch.arange(3), actions[0]][None])


def test_untrained_kernels_start_near_the_identity_so_the_prior_is_copy_last():
    m = _lam()
    with torch.no_grad():
        m.dec_out.weight.zero_()
        m.dec_out.bias.zero_()
        m.kernels.zero_()
        m.kernels[:, 2, 2] = 1.0
    video = torch.rand(2, 3, 16, 16, 3)
    pred = m.predict(video, torch.zeros(2, 2, dtype=torch.long))
    torch.testing.assert_close(pred, video[:, :-1])


def test_kernel_gate_moves_only_where_it_opens_and_starts_open():
    m = _lam(kernel_gate=True)
    assert m.gate is not None and _lam().gate is None
    with torch.no_grad():
        m.dec_out.weight.zero_()
        m.dec_out.bias.zero_()
        m.kernels.zero_()
        m.kernels[:, 2, 3] = 1.0  # every action: shift the picture one pixel left
    video = torch.rand(1, 2, 16, 16, 3)
    shifted = torch.cat([video[:, :1, :, 1:], video[:, :1, :, -1:]], dim=3)  # replicate padding at the edge
    actions = torch.zeros(1, 1, dtype=torch.long)
    opened = m.predict(video, actions)  # untrained gate: sigmoid(3) = 0.95 open everywhere
    torch.testing.assert_close(opened, (video[:, :1] + 0.9526 * (shifted - video[:, :1])).clamp(0, 1),
                               atol=1e-3, rtol=0)
    # a trunk reading that opens the gate on patch 0 only: the shift happens there and nowhere else
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.weight[:, 0] = 60.0
        m.gate.bias.fill_(-30.0)
    context = m.patchify(video)[:, :1]  # (1, 1, S, P)
    h = torch.zeros(1, 1, m.config.num_patches, m.config.dim)
    h[:, :, 0, 0] = 1.0  # patch 0: 60 - 30 = +30 (open); elsewhere -30 (closed)
    prior = m._kernel_prior(context, h)[:, :, 0]  # action 0: (1, 1, S, P)
    moved = m.patchify(torch.cat([shifted, shifted], dim=1))[:, :1]
    torch.testing.assert_close(prior[:, :, 0], moved[:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(prior[:, :, 1:], context[:, :, 1:], atol=1e-6, rtol=0)


def test_winner_by_prior_picks_the_action_whose_kernel_explains_the_motion():
    video = torch.rand(2, 3, 16, 16, 3)
    video[:, 1] = torch.cat([video[:, 0, :, 1:], video[:, 0, :, -1:]], dim=2)  # shifted one pixel left
    video[:, 2] = torch.cat([video[:, 1, :, 1:], video[:, 1, :, -1:]], dim=2)
    for winner_by, expect_all_three in (("prior", True), ("prediction", False)):
        m = _lam(winner_by=winner_by).train()
        with torch.no_grad():
            m.kernels.zero_()
            m.kernels[:, 2, 2] = 1.0  # every action copies x_t ...
            m.kernels[3, 2, 2], m.kernels[3, 2, 3] = 0.0, 1.0  # ... but action 3 shifts it left
            m.dec_out.weight.normal_(0.0, 1.0)  # and a loud, action-dependent correction on top
            m.action_emb.weight.normal_(0.0, 3.0)
        before = m.usage.clone()
        m.compute_loss(video).loss.backward()
        won = (m.usage - before * 0.95) / 0.05  # this step's share of transitions per action
        assert (abs(float(won[3]) - 1.0) < 1e-4) == expect_all_three, (winner_by, won)
    with pytest.raises(ConfigError, match="winner_by"):
        LAMConfig(winner_by="encoder")


def test_loss_metrics_and_infer_actions_api():
    m = _lam().train()
    video = torch.rand(3, 4, 16, 16, 3)
    out = m.compute_loss(video)
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.kernels.grad is not None and m.to_logits.weight.grad is not None
    usage = torch.stack([out.metrics[f"decoder_share/{k}"] for k in range(m.num_actions)])
    torch.testing.assert_close(usage.sum(), torch.tensor(1.0))
    assert {"mse", "psnr", "encoder_psnr", "copy_psnr", "encoder_agreement", "encoder_batch_perplexity",
            "decoder_batch_entropy", "decoder_batch_perplexity"} <= set(out.metrics)
    assert float(out.metrics["psnr"]) >= float(out.metrics["encoder_psnr"]) - 1e-4  # the winner is the best
    assert 0.0 <= float(out.metrics["decoder_batch_entropy"]) <= torch.log(torch.tensor(8.0)) + 1e-5
    assert 1.0 - 1e-5 <= float(out.metrics["encoder_batch_perplexity"]) <= 8.0 + 1e-5
    actions = m.infer_actions(video)
    assert actions.shape == (3, 3) and actions.dtype == torch.long
    assert int(actions.min()) >= 0 and int(actions.max()) < 8
    assert m.training  # infer_actions restores the mode


def test_infer_actions_changes_no_state():
    m = _lam().train()
    m.compute_loss(torch.rand(2, 3, 16, 16, 3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.infer_actions(torch.rand(2, 3, 16, 16, 3))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dead_action_restarts_as_a_copy_of_the_most_used_one():
    m = _lam(num_actions=4).train()
    with torch.no_grad():
        m.usage.copy_(torch.tensor([0.7, 0.001, 0.2, 0.099]))
    m.compute_loss(torch.rand(2, 3, 16, 16, 3))
    torch.testing.assert_close(m.kernels[1], m.kernels[0], atol=0.01, rtol=0)
    assert not torch.equal(m.kernels[1], m.kernels[0])  # perturbed, so the two can split
    assert not torch.allclose(m.kernels[3], m.kernels[0], atol=0.01)  # a live action is left alone


def test_collapsed_actions_are_reported():
    check_action_usage(torch.tensor([0, 1, 2, 3, 3]), 8, "run x")
    with pytest.raises(TrainingError, match="run x: only 2 of 8"):
        check_action_usage(torch.tensor([0, 1, 1, 0]), 8, "run x")


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_eval_check_and_training_collapse_rule_agree(k):
    # eval's check on inferred actions and the training check on held-out usage give one verdict
    for used in range(1, k + 1):
        counts = [10.0] * used + [0.0] * (k - used)
        trained = _usage(counts).collapse() is not None  # even counts: the perplexity is `used`
        try:
            check_action_usage(torch.arange(used), k, "run x")
            refused = False
        except TrainingError:
            refused = True
        assert refused == trained, (k, used)


def _usage(encoder_counts: list[float], decoder_counts: list[float] | None = None, agreed: float = 0.0) -> ActionUsage:
    enc = torch.tensor(encoder_counts, dtype=torch.float32)
    dec = torch.tensor(decoder_counts, dtype=torch.float32) if decoder_counts is not None else enc.clone()
    return ActionUsage(enc, dec, torch.tensor(agreed))


def test_action_usage_collapse_rules():
    assert _usage([10.0] * 8).collapse() is None and _usage([10.0] * 8).warning() is None
    assert _usage([5, 5, 5, 5, 0, 0, 0, 0]).collapse() is None  # half the actions, evenly: healthy
    assert "fewer than 4 of 8" in _usage([5, 5, 5, 0, 0, 0, 0, 0]).collapse()
    assert "fewer than 2 of 2" in _usage([9, 0]).collapse()  # two actions: both must occur
    lopsided = _usage([97, 1, 1, 1, 0, 0, 0, 0])  # 4 of 8 used, but one takes 97%
    assert lopsided.encoder_perplexity < MIN_ENCODER_PERPLEXITY
    assert "perplexity under" in lopsided.collapse()
    waiting = _usage([90] + [10 / 7] * 7)  # the player mostly waits: still healthy
    assert waiting.encoder_perplexity > MIN_ENCODER_PERPLEXITY and waiting.collapse() is None
    both = _usage([6, 2, 0, 0, 0, 0, 0, 0], [1] * 8, agreed=2) + _usage([0, 0, 0, 0, 0, 0, 0, 8], [1] * 8, agreed=1)
    assert both.transitions == 16 and both.encoder_used == 3 and both.agreement == pytest.approx(3 / 16)
    m = both.metrics()
    assert m["actions/encoder_used"] == 3 and m["actions/decoder_used"] == 8 and m["actions/encoder_collapsed"] == 1
    assert m["actions/decoder_perplexity"] == pytest.approx(8.0)
    assert "the encoder uses 3 of 8 actions" in both.warning() and "18.8% of 16 transitions" in both.warning()


def test_held_out_stats_count_the_encoder_not_the_decoder():
    """An encoder that always gives action 3 is collapsed however many actions the decoder's winners use."""
    m = _lam(num_actions=4).eval()
    with torch.no_grad():
        m.to_logits.weight.zero_()
        m.to_logits.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    video = torch.rand(3, 4, 16, 16, 3)
    stats = m.held_out_stats(video)
    assert stats.encoder_counts.tolist() == [0.0, 0.0, 0.0, 9.0] and stats.transitions == 9
    patches = m.patchify(video)
    winners = (m.decode_all(patches[:, :-1]) - patches[:, 1:, None]).square().mean(dim=(-1, -2)).argmin(-1)
    torch.testing.assert_close(stats.decoder_counts, torch.bincount(winners.flatten(), minlength=4).float())
    assert float(stats.agreed) == float((winners == 3).sum())
    assert stats.collapse() is not None and "uses 1 of 4 actions" in stats.warning()
    assert not m.training  # no state changed
    m.train()
    m.held_out_stats(video)
    assert m.training


def test_shape_and_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="patch_size 5"):
        LAMConfig(height=16, width=16, patch_size=5)
    with pytest.raises(ConfigError, match="num_actions"):
        LAMConfig(num_actions=1)
    with pytest.raises(ConfigError, match="kernel_padding"):
        LAMConfig(kernel_padding="zeros")
    m = _lam()
    with pytest.raises(ValueError, match="LAM expects video"):
        m.infer_actions(torch.rand(1, 3, 32, 32, 3))
    with pytest.raises(ValueError, match="at least 2 frames"):
        m.infer_actions(torch.rand(1, 1, 16, 16, 3))


def test_infer_actions_reads_each_transition_from_a_bounded_window():
    m = _lam(infer_window=3).eval()
    video = torch.rand(2, 7, 16, 16, 3)
    actions = m.infer_actions(video)
    assert actions.shape == (2, 6)
    for t in range(6):  # transition t -> t+1 from frames max(0, t-1)..t+1
        start = max(0, t + 2 - 3)
        expected = m.encode(video[:, start : t + 2]).actions[:, -1]
        assert torch.equal(actions[:, t], expected)


def test_soft_decoder_term_gives_the_encoder_a_reconstruction_gradient():
    video = torch.rand(2, 4, 16, 16, 3)
    grads = {}
    for soft in (0.0, 1.0):
        m = _lam(encoder_weight=0.0, soft_decoder_weight=soft).train()
        m.compute_loss(video).loss.backward()
        grads[soft] = m.to_logits.weight.grad
    assert grads[0.0] is None or float(grads[0.0].abs().sum()) == 0.0  # the encoder learns only from a*
    assert float(grads[1.0].abs().sum()) > 0.0


def test_marginal_entropy_term_is_the_normalised_entropy_of_the_batch_mean():
    video = torch.rand(2, 4, 16, 16, 3)
    base = _lam().train()
    with_term = _lam(marginal_entropy_weight=0.5).train()
    with_term.load_state_dict(base.state_dict())
    torch.manual_seed(0)
    plain = base.compute_loss(video).loss
    torch.manual_seed(0)
    bonus = with_term.compute_loss(video).loss
    probs = torch.softmax(base.encode(video).logits, -1).mean(dim=(0, 1))
    entropy = -(probs * probs.log()).sum() / torch.log(torch.tensor(8.0))
    torch.testing.assert_close(plain - bonus, 0.5 * entropy, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="marginal_entropy_weight must be >= 0"):
        LAMConfig(marginal_entropy_weight=-1.0)


def test_balanced_assignment_spreads_a_near_tie_over_every_action_and_keeps_clear_winners():
    torch.manual_seed(0)
    n, k = 64, 8
    # every transition slightly prefers action 0 (a tie up to noise) and the encoder is undecided:
    # argmin collapses onto action 0, the balanced assignment gives every action about n/k
    err = 1.0 + 1e-4 * torch.rand(n, k)
    err[:, 0] -= 1e-4
    assert torch.unique(err.argmin(-1)).tolist() == [0]
    counts = torch.bincount(balanced_assignment(err, torch.zeros(n, k), 0.01), minlength=k)
    assert int(counts.min()) >= n // k - 3 and int(counts.max()) <= n // k + 3, counts
    # clear, already balanced winners are kept
    truth = torch.arange(n) % k
    err = 1.0 + 0.1 * torch.rand(n, k) + 0.2 * (1 - torch.nn.functional.one_hot(truth, k).float())
    assert torch.equal(balanced_assignment(err, torch.zeros(n, k), 0.01), truth)
    # among near-ties the encoder's belief decides, so a* is what the encoder can learn to predict
    err = 1.0 + 1e-4 * torch.rand(n, k)
    logits = 4.0 * torch.nn.functional.one_hot(truth, k).float()
    assert torch.equal(balanced_assignment(err, logits, 0.01), truth)
    # shapes: (B, T-1, K) -> (B, T-1)
    assert balanced_assignment(torch.rand(4, 3, k), torch.zeros(4, 3, k), 0.01).shape == (4, 3)


def test_balanced_assignment_trains_and_rejects_bad_settings():
    m = _lam(assign="balanced").train()
    out = m.compute_loss(torch.rand(4, 4, 16, 16, 3))
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.to_logits.weight.grad is not None
    assert float(out.metrics["decoder_batch_perplexity"]) > 4.0  # 12 transitions spread over the 8 actions
    with pytest.raises(ConfigError, match="lam.assign must be"):
        LAMConfig(assign="greedy")
    with pytest.raises(ConfigError, match="assign_temperature"):
        LAMConfig(assign_temperature=0.0)


def test_change_focus_lets_the_moving_patch_pick_the_action():
    m = _lam(pick_focus="change")
    video = torch.rand(1, 2, 16, 16, 3).expand(1, 2, 16, 16, 3).clone()
    video[:, 1] = video[:, 0]
    video[:, 1, :4, :4] = 1.0 - video[:, 0, :4, :4]  # only the first patch changes (a sprite on a still screen)
    patches = m.patchify(video)
    s = patches.shape[2]
    sq = torch.full((1, 1, 8, s), 0.10)
    sq[0, 0, 0, 0] = 0.0  # action 0 explains the moving patch ...
    sq[0, 0, 1, 1:] = 0.09  # ... action 1 is slightly better over the 15 still patches
    assert int(sq.mean(-1).argmin(-1)) == 1  # the whole frame's error lets the background decide
    assert int(m._pick_error(sq, patches).argmin(-1)) == 0
    still = torch.rand(1, 2, 16, 16, 3)
    still[:, 1] = still[:, 0]  # nothing moves: every patch weighs the same, as the whole frame's error
    torch.testing.assert_close(m._pick_error(sq, m.patchify(still)), sq.mean(-1))
    with pytest.raises(ConfigError, match="pick_focus"):
        LAMConfig(pick_focus="edges")


def test_presets_pick_balanced_while_a_run_saved_before_the_option_resumes_as_argmin():
    from playworld.presets import build_run_config
    from playworld.train.engine import config_defaults, config_differences

    cfg = build_run_config("lam", "tiny")
    assert cfg.model.assign == "balanced" and cfg.model.assign_temperature == 0.1
    saved = cfg.to_dict()
    del saved["model"]["assign"], saved["model"]["assign_temperature"]  # written before the option existed
    diffs = config_differences(saved, cfg.to_dict(), config_defaults(cfg))
    assert any(d.startswith("model.assign:") and "'argmin'" in d for d in diffs), diffs  # refused, not relabelled


def test_shift_frames_moves_content_by_sub_pixel_shifts_and_zero_is_exact():
    img = torch.zeros(2, 1, 8, 8)
    img[:, 0, 3, 3] = 1.0
    out = shift_frames(img, torch.tensor([[2.0, -1.0], [0.5, 0.0]]))
    assert out[0, 0].nonzero().tolist() == [[5, 2]]  # content at (y, x) lands at (y + dy, x + dx)
    torch.testing.assert_close(out[1, 0, 3:5, 3], torch.tensor([0.5, 0.5]))  # half a pixel: split in two
    torch.testing.assert_close(shift_frames(img, torch.zeros(2, 2)), img)


def test_carried_shift_starts_still_and_keeps_the_decoder_causal():
    m = _lam(carry_weight=1.0).eval()
    assert _lam().carry is None
    video = torch.rand(2, 4, 16, 16, 3)
    torch.testing.assert_close(m.past_shift(video), torch.zeros(2, 3, 2))  # untrained: the past carries nothing
    with torch.no_grad():
        one_px = MAX_CARRY * math.atanh(1.0 / MAX_CARRY)  # the shift is bounded by a tanh
        m.carry.bias.copy_(torch.tensor([one_px, 0.0]))  # a carried shift of 1 px down on every frame
        m.kernels.zero_()
        m.kernels[:, 2, 2] = 1.0
        m.dec_out.weight.zero_()
        m.dec_out.bias.zero_()
    pred = m.predict(video, torch.zeros(2, 3, dtype=torch.long))
    moved = shift_frames(video[:, :-1].flatten(0, 1).permute(0, 3, 1, 2), torch.tensor([[1.0, 0.0]]).expand(6, 2))
    torch.testing.assert_close(pred.flatten(0, 1), moved.permute(0, 2, 3, 1).clamp(0, 1))
    # prediction of x_{t+1} still reads only x_1..x_t and a_t
    patches = m.patchify(video)
    context2 = patches[:, :-1].clone()
    context2[:, 2] += 0.5
    a = torch.zeros(2, 3, dtype=torch.long)
    pred1, pred2 = m.decode(patches[:, :-1], a), m.decode(context2, a)
    torch.testing.assert_close(pred1[:, :2], pred2[:, :2])
    assert not torch.allclose(pred1[:, 2], pred2[:, 2])
    out = m.train().compute_loss(video)
    assert "carry_psnr" in out.metrics and "carry_psnr" not in _lam().compute_loss(video).metrics
    with pytest.raises(ValueError, match="carry_weight"):
        _lam().past_shift(video)
    with pytest.raises(ConfigError, match="carry_weight"):
        LAMConfig(carry_weight=-1.0)


def _moving_texture(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips (n, 4, 32, 32, 3) of a smooth random texture moving by a constant whole-pixel velocity per clip,
    and that velocity (n, 2) (dy, dx) in [-2, 2]: the motion under way, which the past predicts exactly."""
    g = torch.Generator().manual_seed(seed)
    big = F.interpolate(torch.rand(n, 3, 24, 24, generator=g), size=(96, 96), mode="bilinear", align_corners=False)
    v = torch.randint(-2, 3, (n, 2), generator=g)
    frames = [torch.stack([big[i, :, 16 - v[i, 0] * t:48 - v[i, 0] * t, 16 - v[i, 1] * t:48 - v[i, 1] * t]
                           for i in range(n)]) for t in range(4)]
    return torch.stack(frames, 1).permute(0, 1, 3, 4, 2).contiguous(), v.float()


def test_last_step_carry_starts_as_constant_velocity():
    m = LatentActionModel(LAMConfig(height=32, width=32, patch_size=4, dim=32, encoder_depth=1, decoder_depth=1,
                                    head_depth=1, heads=2, num_actions=2, kernel_radius=2, carry_weight=1.0,
                                    carry_from="last_step"))
    video, v = _moving_texture(8, seed=3)
    shift = m.past_shift(video)  # (B, 3, 2): untrained, the measured last step alone
    torch.testing.assert_close(shift[:, 0], torch.zeros(8, 2))  # nothing before x_1
    assert (shift[:, 1:] - v[:, None]).abs().max() < 0.35  # phase correlation on 32-px frames: within 15%
    with pytest.raises(ConfigError, match="carry_from"):
        LAMConfig(carry_from="guess")


def test_carried_shift_learns_the_motion_under_way_from_the_past():
    torch.manual_seed(0)
    m = LatentActionModel(LAMConfig(height=32, width=32, patch_size=4, dim=32, encoder_depth=1, decoder_depth=1,
                                    head_depth=1, heads=2, num_actions=2, kernel_radius=2, carry_weight=1.0))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(300):
        video, _ = _moving_texture(16, seed=step)
        loss = m.compute_loss(video).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    video, v = _moving_texture(64, seed=10_000)
    err = (m.past_shift(video)[:, -1] - v).abs().mean()  # the last transition: two frames of motion seen
    assert err < 0.5 * v.abs().mean(), (float(err), float(v.abs().mean()))
