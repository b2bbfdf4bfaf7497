"""Building blocks of `playworld eval`: intervals, PSNR/SSIM, the assignment, NMI, the probe, phase
correlation, silhouettes, and the LAM's probe features."""

import io
import itertools

import numpy as np
import pytest
import torch

from playworld.errors import ConfigError
from playworld.eval.actions import assignment, best_mapping, confusion, key_classes, linear_probe, nmi
from playworld.eval.motion import opposite_pairs, phase_correlation, silhouettes
from playworld.eval.stats import PSNR_CAP, bootstrap, paired_difference, psnr, ssim
from playworld.models.lam import LAMConfig, LatentActionModel

torch.set_num_threads(1)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = bootstrap(rng.normal(1.0, 1.0, 20), seed=0), bootstrap(rng.normal(1.0, 1.0, 2000), seed=0)
    assert small.low < small.mean < small.high and large.low < 1.0 < large.high
    assert large.high - large.low < (small.high - small.low) / 4
    assert bootstrap(np.array([3.0]), seed=0) == bootstrap(np.array([3.0]), seed=1)  # nothing to resample
    x = rng.normal(size=50)
    assert bootstrap(x, seed=5) == bootstrap(x, seed=5)  # seeded: reruns give the same interval
    with pytest.raises(ValueError, match="empty"):
        bootstrap(np.array([]), seed=0)


def test_paired_bootstrap_separates_a_shift_that_the_two_intervals_hide():
    rng = np.random.default_rng(1)
    units = rng.normal(0.0, 3.0, 40)  # hard and easy units: a wide spread both worlds share
    a = bootstrap(units, seed=3)
    b = bootstrap(units + 0.2 + rng.normal(0.0, 0.05, 40), seed=3)  # a little better on every unit
    assert b.low < a.high  # unpaired, the intervals overlap
    assert np.percentile(a.replicates, [2.5, 97.5]) == pytest.approx([a.low, a.high])
    d = paired_difference(a.to_json(replicates=True), b.to_json(replicates=True))
    assert d.mean == pytest.approx(b.mean - a.mean) and 0.15 < d.low < d.mean < d.high < 0.25
    same = paired_difference(a.to_json(replicates=True), a.to_json(replicates=True))
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    # a statistic whose resamples go both ways unit by unit is not separated
    mixed = bootstrap(units + 0.2 * np.where(np.arange(40) % 2, 5.0, -3.0), seed=3)
    m = paired_difference(a.to_json(replicates=True), mixed.to_json(replicates=True))
    assert m.low < 0 < m.high
    # bias-corrected plug-in statistics keep replicates shifted like their interval
    nmi_like = bootstrap(units, seed=3, statistic=lambda v: float(np.unique(np.round(v)).size), bias_correct=True)
    assert np.percentile(nmi_like.replicates, [2.5, 97.5]) == pytest.approx([nmi_like.low, nmi_like.high])
    # not pairable: no replicates (one unit, or an older file), or other resampling
    assert paired_difference(a.to_json(), b.to_json(replicates=True)) is None
    assert paired_difference(bootstrap(np.array([1.0]), seed=0).to_json(replicates=True),
                             bootstrap(np.array([2.0]), seed=0).to_json(replicates=True)) is None
    assert paired_difference(a.to_json(replicates=True),
                             bootstrap(units[:30], seed=3).to_json(replicates=True)) is None
    assert "replicates" not in a.to_json()  # only when asked


def test_psnr_and_ssim_of_identical_and_degraded_frames():
    x = torch.rand(2, 3, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert torch.all(psnr(x, x) == PSNR_CAP) and torch.allclose(ssim(x, x), torch.ones(2, 3))
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    noisier = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.all(psnr(noisy, x) > psnr(noisier, x)) and torch.all(ssim(noisy, x) > ssim(noisier, x))
    torch.testing.assert_close(psnr(torch.zeros(4, 4, 3), torch.full((4, 4, 3), 0.1)), torch.tensor(20.0))
    with pytest.raises(ValueError, match="too small"):
        ssim(torch.rand(2, 2, 3), torch.rand(2, 2, 3))


def test_assignment_is_optimal_against_brute_force_on_rectangular_matrices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r, c = map(int, rng.integers(1, 6, 2))
        score = rng.integers(0, 20, (r, c))
        pairs = assignment(score)
        assert len(pairs) == min(r, c)
        assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == min(r, c)
        if r <= c:
            best = max(sum(score[i, p[i]] for i in range(r)) for p in itertools.permutations(range(c), r))
        else:
            best = max(sum(score[p[j], j] for j in range(c)) for p in itertools.permutations(range(r), c))
        assert sum(score[a, b] for a, b in pairs) == best


def test_best_mapping_finds_a_permutation_and_nmi_is_one_for_relabelled_actions():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 400)
    perm = np.array([2, 0, 3, 1])  # true action a is latent perm[a]
    conf = confusion(perm[true], true, 4, 4)
    mapping, acc = best_mapping(conf)
    assert acc == 1.0 and mapping == {int(perm[a]): a for a in range(4)}
    assert nmi(conf) == pytest.approx(1.0)
    independent = confusion(rng.integers(0, 4, 4000), true.repeat(10), 4, 4)
    assert nmi(independent) < 0.01 and best_mapping(independent)[1] < 0.35
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        confusion(np.array([4]), np.array([0]), 4, 4)


def test_linear_probe_reads_a_linearly_coded_label_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    groups = np.arange(600) // 20
    coded = np.eye(3)[labels] @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(600, 8))
    good = linear_probe(coded, labels, groups, 3, seed=0)
    noise = linear_probe(rng.normal(size=(600, 8)), labels, groups, 3, seed=0)
    assert good.correct.mean() > 0.98 and noise.correct.mean() < 0.5
    assert len(np.unique(good.groups)) == 15  # scored on the held-out half of the 30 episodes
    assert 0.2 < good.majority < 0.5


@pytest.mark.parametrize("shift", [(3, -5), (-2, 0), (0, 7)])
def test_phase_correlation_recovers_a_wrapped_shift(shift):
    x = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    est = phase_correlation(x, torch.roll(x, shifts=shift, dims=(1, 2)), window=False)  # periodic: no window
    torch.testing.assert_close(est, torch.tensor([shift, shift], dtype=torch.float32), atol=0.05, rtol=0)


def test_silhouettes_and_opposites_of_consistent_and_inconsistent_actions():
    rng = np.random.default_rng(0)
    means = np.array([[-2.0, 0], [2, 0], [0, -2], [0, 2]])
    labels = np.repeat(np.arange(4), 30)
    tight = silhouettes(means[labels] + 0.1 * rng.normal(size=(120, 2)), labels)
    loose = silhouettes(rng.normal(size=(120, 2)), labels)
    assert tight.mean() > 0.9 and abs(loose.mean()) < 0.2
    assert sorted(map(sorted, opposite_pairs(means))) == [[0, 1], [2, 3]]
    assert opposite_pairs(np.array([[1.0, 0], [0, 1.0]])) == []  # orthogonal: nothing undoes anything


def test_lam_features_are_the_state_its_actions_are_read_from():
    torch.manual_seed(0)
    lam = LatentActionModel(LAMConfig(height=16, width=16, patch_size=8, num_actions=4, dim=32, heads=2,
                                      encoder_depth=1, decoder_depth=1, infer_window=3))
    video = torch.rand(2, 6, 16, 16, 3)  # longer than infer_window: windowed encoding
    feats = lam.features(video)
    assert feats.shape == (2, 5, 32)
    with torch.no_grad():
        assert torch.equal(lam.to_logits(feats).argmax(-1), lam.infer_actions(video))


def test_procgen_walk_starts_from_its_prompt_and_replays_identically():
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    from playworld.eval.envwalk import default_opposites, procgen_walk

    source = {"kind": "procgen", "game": "coinrun", "config": {"distribution_mode": "hard"}}
    assert default_opposites(source) == ((7, 1),) and default_opposites({"kind": "ingest"}) is None
    a = procgen_walk(source, [3, 11], there=7, back=1, k=4, context=4)
    b = procgen_walk(source, [3, 11], there=7, back=1, k=4, context=4)
    assert a.prompts.shape == (2, 4, 64, 64, 3) and a.frames.shape == (2, 3, 64, 64, 3)
    assert np.array_equal(a.prompts[:, -1], a.frames[:, 0])  # the model starts where the game does
    assert np.array_equal(a.frames, b.frames)  # a level replays exactly
    assert not np.array_equal(a.frames[:, 1], a.frames[:, 0])  # walking right moved the view


def test_procgen_press_starts_every_key_from_one_frame_and_keys_that_act_alike_score_alike():
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    from playworld.eval.control import action_motion
    from playworld.eval.envwalk import key_classes, procgen_press
    from playworld.eval.motion import silhouettes

    source = {"kind": "procgen", "game": "coinrun", "config": {"distribution_mode": "hard"}}
    keys = [7, 5, 4, 9]  # RIGHT, UP (jump), NOOP and a fire key (which CoinRun ignores); LEFT at a level's
    # start walks into the wall
    a = procgen_press(source, [3, 11, 20], keys, steps=3, context=2)
    b = procgen_press(source, [3, 11, 20], keys, steps=3, context=2)
    s = len(a.level_seeds)
    assert s >= 2 and a.prompts.shape == (s, 2, 64, 64, 3) and a.frames.shape == (s, 4, 4, 64, 64, 3)
    assert np.array_equal(a.frames, b.frames)  # a level replays exactly
    for k in range(4):  # every key starts where the prompt ends
        assert np.array_equal(a.frames[:, k, 0], a.prompts[:, -1])
    assert np.array_equal(a.frames[:, 2], a.frames[:, 3])  # NOOP and the fire key do the same thing
    assert key_classes(a.frames) == [0, 1, 2, 2]  # ... so they form one class
    motion = action_motion(torch.from_numpy(a.frames))  # (S, K, 2)
    assert (motion[:, 0, 1] < -0.5).all() and (motion[:, 1, 0] > 0.3).all()  # the scene moves against the agent
    sil = silhouettes(motion.reshape(-1, 2), np.tile(np.arange(4), s)).reshape(s, 4)
    assert sil[:, 0].mean() > 0.1 and sil[:, 2:].max() <= 1e-6  # twins are indistinguishable: never above 0
    with pytest.raises(ValueError, match="at least one action"):
        procgen_press(source, [3], [], steps=3, context=2)


def test_procgen_hold_keeps_a_level_whose_episode_ends_and_marks_the_steps_after_the_end():
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    from playworld.eval.envwalk import procgen_hold, procgen_play, procgen_press

    source = {"kind": "procgen", "game": "coinrun", "config": {"distribution_mode": "hard"}}
    # level 30: holding RIGHT+UP (8) ends the episode at step 28; RIGHT (7) does not within 30 steps
    h = procgen_hold(source, [30, 3], [7, 8], steps=30, context=2)
    assert h.level_seeds == [30, 3] and h.frames.shape == (2, 2, 31, 64, 64, 3) and h.alive.shape == (2, 2, 30)
    assert h.alive[1].all() and h.alive[0, 0].all()
    assert h.alive[0, 1].sum() == 28 and not h.alive[0, 1, 28:].any()  # alive until it ended, never again
    pressed = procgen_press(source, [30, 3], [7, 8], steps=30, context=2)
    assert pressed.level_seeds == [3]  # the presses drop the level the hold keeps
    short = procgen_press(source, [30, 3], [7, 8], steps=5, context=2)
    assert np.array_equal(short.frames, h.frames[:, :, :6]) and np.array_equal(short.prompts, h.prompts)
    with pytest.raises(ValueError, match="at least one action"):
        procgen_hold(source, [3], [], steps=3, context=2)
    tapped = procgen_play(source, [3], np.array([[8], [4], [4]]), context=2)  # a jump pressed once, then NOOP
    assert np.array_equal(tapped.frames[:, 0, :2], h.frames[1:, 1, :2])  # its first step is the held jump's
    with pytest.raises(ValueError, match=r"\(steps, K\) schedule"):
        procgen_play(source, [3], np.array([8, 4]), context=2)


def test_psnr_of_mean_mse_is_not_decided_by_exact_frames():
    import numpy as np

    from playworld.eval.stats import psnr_of_mean_mse

    per_clip = np.array([100.0, 10.0])  # one exact copy (capped) and one poor frame
    assert abs(psnr_of_mean_mse(per_clip) - (-10 * np.log10((1e-10 + 0.1) / 2))) < 1e-9
    assert psnr_of_mean_mse(per_clip) < per_clip.mean() - 40  # the mean of PSNRs says 55 dB
    assert abs(psnr_of_mean_mse(np.array([20.0, 20.0])) - 20.0) < 1e-9


def test_bias_corrected_interval_holds_a_plug_in_statistic_that_resampling_inflates():
    # NMI of two independent labellings: resampling groups repeats rows, which reads as shared information, so
    # every resample's NMI exceeds the sample's and the plain percentile interval lies wholly above its point
    rng = np.random.default_rng(0)
    latent, true = rng.integers(0, 8, (40, 6)), rng.integers(0, 15, (40, 6))  # 40 episodes x 6 transitions

    def stat(sel: np.ndarray) -> float:
        return nmi(confusion(latent[sel].ravel(), true[sel].ravel(), 8, 15))

    plain = bootstrap(np.arange(40), seed=0, statistic=stat)
    fixed = bootstrap(np.arange(40), seed=0, statistic=stat, bias_correct=True)
    assert plain.mean == fixed.mean and plain.low > plain.mean  # the symptom
    assert fixed.low < fixed.mean < fixed.high
    assert fixed.high - fixed.low == pytest.approx(plain.high - plain.low)  # shifted, not widened
    x = rng.normal(size=200)  # the mean is unbiased: the shift is only the resamples' noise
    a, b = bootstrap(x, seed=1), bootstrap(x, seed=1, bias_correct=True)
    assert abs(a.low - b.low) < 0.01 and abs(a.high - b.high) < 0.01


class _FrozenWorld:
    """An EvalWorld stub that shows its prompt's last frame for ever: no key moves it."""

    num_actions = 4

    def reset(self, prompt: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        self.frame = prompt[:, -1].clone()  # (B, H, W, C) uint8
        return self.frame

    def step(self, actions: torch.Tensor) -> torch.Tensor:
        return self.frame


def _frozen_evaluation(tmp_path, **settings):
    """An Evaluation of :class:`_FrozenWorld` on a few random CoinRun episodes collected into ``tmp_path``,
    its episodes chosen as `run` would (``settings``: EvalConfig fields beside the small defaults here)."""
    from playworld.data.collect import CollectConfig, collect
    from playworld.data.loader import ClipDataset
    from playworld.eval.clips import choose_clips
    from playworld.eval.config import EvalConfig
    from playworld.eval.evaluate import Evaluation

    collect(CollectConfig(episodes=6, policy="random", num_envs=2, max_episode_frames=24, episodes_per_shard=6,
                          seed=0), tmp_path / "data", progress=False)
    cfg = EvalConfig(episodes=4, split="train", progress=False, bootstrap=200, **settings)
    ev = Evaluation(_FrozenWorld(), ClipDataset(tmp_path / "data", clip_len=cfg.clip_len, split="train"), cfg)
    ev.chosen = choose_clips(ev.clips, cfg.episodes, cfg.action_clips, cfg.seed)
    ev.done = len(ev.chosen.rollout)
    return ev


def test_real_consistency_presses_the_mapped_keys_on_the_evaluated_levels(tmp_path):
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    from playworld.eval.config import EvalConfig

    ev = _frozen_evaluation(tmp_path, consistency_starts=3)
    ev.mapping = {0: 7, 1: 5, 2: 4, 3: 9}  # RIGHT, UP, NOOP and a fire key CoinRun ignores
    real = ev.real_consistency()
    assert real["available"] and real["reason"] is None and 1 <= real["levels"] <= 3
    assert real["true_actions"] == [7, 5, 4, 9] and real["classes"] == [0, 1, 2, 2]
    assert real["model_overall"]["mean"] == 0.0 and real["model_class_overall"]["mean"] == 0.0  # frozen: no motion
    assert real["class_overall"]["mean"] > real["overall"]["mean"]  # the NOOP twins no longer count against it
    ev.mapping = {0: 7, 1: 5}
    assert "only 2 of the 4" in ev.real_consistency()["reason"]
    ev.cfg = EvalConfig(episodes=4, split="train", real_env=False, progress=False)
    assert ev.real_consistency()["reason"] == "turned off (--no-real-env)"


def test_real_start_key_response_holds_the_mapped_keys_from_the_evaluated_levels(tmp_path):
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    from playworld.eval.config import EvalConfig

    ev = _frozen_evaluation(tmp_path, real_key_starts=3)
    ev.mapping = {0: 7, 1: 5, 2: 4, 3: 1}  # RIGHT, UP (jump), NOOP, LEFT
    part = ev.real_keys_part()
    assert part["available"] and part["reason"] is None and 1 <= part["levels"] <= 3 and part["steps"] == 30
    assert part["true_actions"] == [7, 5, 4, 1] and 0 < part["alive_share"] <= 1
    # RIGHT and the jump move the real scene early (later RIGHT may stand at a wall); NOOP never does
    early = part["per_action"]["early"]
    assert early["response"][0] == 0.0 and early["response"][1] == 0.0 and early["response"][2] is None
    assert np.asarray(early["real_shift"])[0, 1] < -0.25  # right: the scene moves left
    for w in ("early", "late"):  # a frozen world: no motion along the game's, no pixel change
        assert part["response"][w]["mean"] == 0.0 and part["agreement"][w]["mean"] == 0.0
        assert part["liveness"][w]["mean"] == 0.0 and part["displacement"][w]["mean"] == 0.0
        assert np.asarray(part["per_action"][w]["real_shift"]).shape == (4, 2)
        assert part["per_action"][w]["world_change"] == [0.0] * 4
    for w in ("early", "late"):  # a frozen world's keys all give the same frame: no contrast between them
        assert part["contrast"]["agreement"][w]["mean"] == 0.0 and part["contrast"]["ratio"][w]["mean"] == 0.0
    curves = part["curves"]
    assert np.asarray(curves["real_shift"]).shape == (4, 30, 2) and np.asarray(curves["world_change"]).shape == (4, 30)
    assert np.asarray(curves["real_shift"])[0, 2:8, 1].mean() < -0.25  # the real game's right, step by step
    from PIL import Image

    from playworld.eval.report import _real_start_parts, real_start_plot
    m = {"motion": {"keys": {"real_starts": part, "windows": {"early": [2, 8], "late": [20, 30]}}}}
    assert Image.open(io.BytesIO(real_start_plot(m))).size[0] > 500
    html = "".join(_real_start_parts(m["motion"]["keys"], m))
    assert "key contrast agreement" in html and html.count("<tr>") == 3 and "data:image/png;base64," in html
    ev.mapping = {0: 7, 1: 5}
    assert "only 2 of the 4" in ev.real_keys_part()["reason"]
    ev.cfg = EvalConfig(episodes=4, split="train", real_key_starts=0, progress=False)
    assert ev.real_keys_part()["reason"] == "turned off (--real-key-starts 0)"
    with pytest.raises(ConfigError, match="real_key_starts must be >= 0"):
        EvalConfig(real_key_starts=-1)


def test_key_classes_merge_keys_a_game_cannot_tell_apart_and_refuse_bad_specs():
    coinrun = "0=1,3=4,6=7,9=4,10=4,11=4,12=4,13=4,14=4"
    kept, classes = key_classes(coinrun, 15)
    assert kept == [1, 2, 4, 5, 7, 8]
    assert classes.tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5, 2, 2, 2, 2, 2, 2]
    kept, classes = key_classes("", 3)
    assert kept == [0, 1, 2] and classes.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="'3-4' is not KEY=KEY"):
        key_classes("3-4", 15)
    with pytest.raises(ValueError, match=r"keys \[15\] are not in the 15"):
        key_classes("15=4", 15)
