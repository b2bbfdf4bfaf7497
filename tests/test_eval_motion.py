"""The motion estimator recovers known shifts of textured frames: sub-pixel, both signs, both axes,
with and without static artifacts that stay put while the scene moves (where the classic whitened
estimator reads no motion at all)."""

import numpy as np
import pytest
import torch

from playworld.eval.motion import MotionEstimator, phase_correlation
from textures import fourier_shift, shifted_pair, texture

torch.set_num_threads(1)
SHIFTS = [(0.3, -1.7), (-2.45, 0.8), (1.0, 0.0), (0.0, -0.6), (-0.5, -0.5), (3.2, 2.5)]


def _pairs(static: bool, seeds=range(4)):
    pairs = [shifted_pair(dy, dx, seed=s, static=static) for s in seeds for dy, dx in SHIFTS]
    a, b = map(torch.stack, zip(*pairs))
    return a, b, torch.tensor([sh for _ in seeds for sh in SHIFTS], dtype=torch.float32)


@pytest.mark.parametrize("static", [False, True])
def test_low_passed_estimator_recovers_sub_pixel_camera_shifts(static):
    a, b, truth = _pairs(static)
    err = (phase_correlation(a, b) - truth).abs()  # (N, 2)
    # content enters at the edges, so not exact: a few hundredths of a pixel, a tenth with static overlays
    assert err.mean() < (0.15 if static else 0.06) and err.max() < (0.4 if static else 0.2)
    # the slope of estimated on true shift, per axis, is the figure eval reports as "motion kept"
    est = phase_correlation(a, b).numpy()
    for axis in (0, 1):
        slope = np.polyfit(truth[:, axis].numpy(), est[:, axis], 1)[0]
        assert abs(slope - 1) < (0.1 if static else 0.03)


def test_the_classic_whitened_estimator_is_fooled_by_static_artifacts():
    a, b, truth = _pairs(static=True)
    classic = phase_correlation(a, b, cutoff=0, window=False)
    assert (classic - truth).abs().mean() > 0.5  # often locked on the artifacts: zero shift
    assert (classic.abs() < 0.05).float().mean() > 0.3
    kept = [np.polyfit(truth[:, ax].numpy(), classic[:, ax].numpy(), 1)[0] for ax in (0, 1)]
    assert max(kept) < 0.6  # under 60% of the motion "kept" by frames that kept all of it
    clean_a, clean_b, _ = _pairs(static=False)
    assert (phase_correlation(clean_a, clean_b, cutoff=0, window=False) - truth).abs().mean() < 0.2


@pytest.mark.parametrize("dy,dx", [(0.25, -3.5), (-1.75, 0.0), (0.0, 2.4)])
def test_periodic_shifts_are_exact_without_the_window(dy, dx):
    img = texture(64, seed=3)
    est = phase_correlation(img, fourier_shift(img, dy, dx), window=False)
    torch.testing.assert_close(est, torch.tensor([dy, dx]), atol=0.01, rtol=0)


def test_estimator_settings_are_validated_and_callable():
    a, b = shifted_pair(1.5, -0.5)
    torch.testing.assert_close(MotionEstimator()(a, b), phase_correlation(a, b))
    with pytest.raises(ValueError, match="cutoff"):
        MotionEstimator(cutoff=-1.0)


def test_real_coinrun_frames_shifted_by_known_amounts():
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    from procgen import ProcgenGym3Env

    env = ProcgenGym3Env(num=1, env_name="coinrun", start_level=7, num_levels=1, distribution_mode="hard")
    for _ in range(6):
        env.act(np.array([4]))
    frame = torch.from_numpy(env.observe()[1]["rgb"][0].copy()).float()  # (64, 64, 3)
    env.close()
    canvas = torch.nn.functional.pad(frame.permute(2, 0, 1), (16, 16, 16, 16), mode="reflect").permute(1, 2, 0)
    for dy, dx in SHIFTS:
        a, b = canvas[16:80, 16:80], fourier_shift(canvas, dy, dx)[16:80, 16:80]
        est = phase_correlation(a, b)
        assert (est - torch.tensor([dy, dx])).abs().max() < 0.2, (dy, dx, est)


def test_motion_kept_is_the_slope_through_the_origin_with_its_correlation():
    from playworld.eval.kept import motion_kept

    rng = np.random.default_rng(0)
    real = rng.normal(0, 1.5, (400, 2))
    groups = np.repeat(np.arange(40), 10)
    half = motion_kept(0.5 * real + rng.normal(0, 0.05, real.shape), real, groups, seed=0, resamples=200)
    assert half.slope["dx"].low < 0.5 < half.slope["dx"].high and abs(half.slope["dy"].mean - 0.5) < 0.02
    assert half.correlation["dx"].mean > 0.98 and half.transitions == 400
    static = motion_kept(np.zeros_like(real), real, groups, seed=0, resamples=50)
    assert static.slope["dx"].mean == 0 and static.correlation["dy"].mean == 0
    noise = motion_kept(rng.normal(0, 1.5, real.shape), real, groups, seed=0, resamples=200)
    assert abs(noise.slope["dx"].mean) < 0.15 and noise.correlation["dx"].low < 0 < noise.correlation["dx"].high
    with pytest.raises(ValueError, match="must be"):
        motion_kept(real[:, :1], real, groups, seed=0, resamples=10)


def test_held_actions_and_key_response_of_a_known_motion():
    from playworld.eval.keys import KeyCurves, response, summarise
    from playworld.eval.realgame import RealMotion, held_mask
    from playworld.eval.stats import Estimate

    assert held_mask(np.array([1, 1, 1, 2, 2, -1, -1, 3]), 2).tolist() == [0, 1, 1, 0, 1, 0, 0, 0]
    assert response(np.array([[-0.5, 0.0], [0.0, 1.0]]), np.array([-1.0, 0.0])).tolist() == [0.5, 0.0]
    one = Estimate(1.0, 1.0, 1.0, 5)
    real = {0: RealMotion(3, Estimate(-1.0, -1.0, -1.0, 5), Estimate(0.0, 0.0, 0.0, 5), Estimate(4.0, 4, 4, 5), 20, 5),
            1: RealMotion(7, Estimate(0.0, 0, 0, 5), Estimate(0.02, 0, 0.05, 5), one, 20, 5)}  # 1: too slow to count
    steps = np.arange(1, 31)
    shift = np.zeros((3, 2, 30, 2))
    shift[:, 0, :, 0] = np.where(steps <= 10, -1.0, -0.1)  # action 0 moves as in the game, then nearly stops
    change = np.zeros((3, 2, 30))
    change[:, 0] = np.where(steps <= 10, 4.0, 0.4)
    s = summarise(KeyCurves(shift, change), real, seed=0, resamples=50)
    assert s.response_actions == [0] and s.liveness_actions == [0, 1]
    assert s.response["early"].mean == pytest.approx(1.0) and s.response["late"].mean == pytest.approx(0.1)
    assert s.liveness["early"].mean == pytest.approx(0.5)  # action 1 is frozen: mean of 1.0 and 0.0
    assert s.liveness["far"].mean == pytest.approx(0.05)


def test_key_response_from_real_starts_follows_the_game_step_by_step_and_counts_only_steps_it_lived():
    from playworld.eval.realkeys import PairedHolds, summarise_paired

    rng = np.random.default_rng(0)
    s, k, steps = 6, 3, 30
    t = np.arange(steps)
    real_shift = np.zeros((s, k, steps, 2))
    real_shift[:, 0, :, 1] = -0.5 + 0.1 * rng.normal(size=(s, steps))  # right: the scene moves left
    real_shift[:, 1, :, 0] = 3.0 * np.cos(2 * np.pi * t / 16)  # a jump: up, then down, again and again
    real_change = 5.0 + rng.random((s, k, steps))
    real_change[:, 2] = 0.0  # a key that does nothing
    alive = np.ones((s, k, steps), dtype=bool)

    def summary(world_shift, world_change=real_change, live=alive):
        return summarise_paired(PairedHolds(world_shift, world_change, real_shift, real_change, live),
                                seed=0, resamples=200)

    same = summary(real_shift.copy())  # the real game itself
    for w in ("early", "late"):
        for fig in (same.response, same.agreement, same.liveness):
            assert fig[w].mean == pytest.approx(1.0) and fig[w].low == pytest.approx(1.0)
    assert same.per_action["late"]["response"][:2] == pytest.approx([1.0, 1.0])
    assert same.per_action["late"]["response"][2] is None  # the real scene stood still: nothing to follow
    fast = summary(2 * real_shift)  # twice the speed, in step
    assert fast.response["early"].mean == pytest.approx(2.0) and fast.agreement["early"].mean == pytest.approx(1.0)
    frozen = summary(np.zeros_like(real_shift), np.zeros_like(real_change))
    assert frozen.response["late"].mean == 0.0 and frozen.agreement["late"].mean == 0.0
    assert frozen.liveness["late"].mean == 0.0
    # a jump that rises at its mean speed instead of making the arc: no credit for the average
    rises = real_shift.copy()
    rises[:, 1, :, 0] = real_shift[:, 1, :, 0].mean()
    rises[:, 0] = 0.0
    assert abs(summary(rises).response["late"].mean) < 0.1
    # the world drifts where the game's key does nothing: the slope cannot see it, the agreement can
    drift = real_shift.copy()
    drift[:, 2, :, 0] = 2.0
    d = summary(drift)
    assert d.response["early"].mean == pytest.approx(1.0) and d.agreement["early"].mean < 0.8
    # the world keeps moving early and stops late
    stops = real_shift.copy()
    stops[:, :, 10:] = 0.0
    late = summary(stops)
    assert late.response["early"].mean == pytest.approx(1.0) and late.response["late"].mean == 0.0
    # the real agent dies at step 12 on start 0 under key 0: the world's steps after that are not counted
    dead = alive.copy()
    dead[0, 0, 11:] = False
    wild = real_shift.copy()
    wild[0, 0, 11:] = 50.0  # what the world does after the real episode ended
    kept = summary(wild, live=dead)
    assert kept.response["late"].mean == pytest.approx(1.0) and kept.agreement["late"].mean == pytest.approx(1.0)
    assert kept.per_action["late"]["alive_steps"][0] == 5 * 11
    # the world runs right as the game does but three steps late: the step-by-step slope loses what it
    # matches, the net displacement over the window keeps it
    bursts = np.zeros_like(real_shift)
    bursts[:, 0, 20:24, 1] = -2.0  # the game's scene scrolls for four steps late in the hold, then stops
    late3 = np.zeros_like(real_shift)
    late3[:, 0, 23:27, 1] = -2.0
    lag = summarise_paired(PairedHolds(late3, real_change, bursts, real_change, alive), seed=0, resamples=50)
    assert lag.response["late"].mean == pytest.approx(0.25) and lag.displacement["late"].mean == pytest.approx(1.0)
    for w in ("early", "late"):
        assert same.displacement[w].mean == pytest.approx(1.0)
    assert frozen.displacement["late"].mean == 0.0 and fast.displacement["early"].mean == pytest.approx(2.0)
    backwards = summarise_paired(PairedHolds(-late3, real_change, bursts, real_change, alive), seed=0, resamples=50)
    assert backwards.displacement["late"].mean == pytest.approx(-1.0)  # the scene goes the other way
    # a fixed screen: the real scene's global motion is the estimator's noise, nothing to follow
    still = summarise_paired(PairedHolds(real_shift, real_change, 0.05 * rng.normal(size=real_shift.shape),
                                         real_change, alive), seed=0, resamples=50)
    assert still.response["early"] is None and still.agreement["late"] is None and still.displacement["late"] is None
    assert still.per_action["early"]["response"] == [None] * 3 and still.liveness["late"].mean == pytest.approx(1.0)
    with pytest.raises(ValueError, match="real_shift has shape"):
        PairedHolds(real_shift, real_change, real_shift[:, :, :5], real_change, alive)


def test_key_contrast_sees_a_small_sprite_that_the_keys_move_on_a_fixed_screen():
    from playworld.eval.realkeys import summarise_contrast

    rng = np.random.default_rng(1)
    s, k, steps, size = 4, 3, 30, 48
    moves = np.array([(0, 1), (0, -1), (0, 0)])  # right, left, nothing: a 3-px sprite, 1 px per step

    def video(keys_move: bool, noise: float = 0.0) -> torch.Tensor:
        frames = np.full((s, k, 1 + steps, size, size, 3), 40, dtype=np.float64)
        frames[..., 1] += 30 * rng.random((s, 1, 1, size, size))  # a still background texture, per start
        for a in range(k):
            for t in range(1 + steps):
                y, x = 20, 22 + (moves[a] * t)[1] * keys_move
                frames[:, a, t, y:y + 3, x:x + 3] = 230
        frames += noise * rng.normal(size=frames.shape)
        return torch.from_numpy(np.clip(frames, 0, 255).astype(np.uint8))

    real, alive = video(True), np.ones((s, k, steps), dtype=bool)
    same = summarise_contrast(real, real, alive, seed=0, resamples=100)
    assert same["agreement"]["early"].mean == pytest.approx(1.0) and same["ratio"]["late"].mean == pytest.approx(1.0)
    noisy = summarise_contrast(video(True, noise=8.0), real, alive, seed=0, resamples=100)
    assert noisy["agreement"]["early"].mean > 0.5  # pixel noise does not hide the sprite's moves
    ignored = summarise_contrast(video(False), real, alive, seed=0, resamples=100)  # the keys do nothing
    assert ignored["agreement"]["early"].mean == 0.0 and ignored["ratio"]["late"].mean == 0.0
    swapped = summarise_contrast(video(True)[:, [1, 0, 2]], real, alive, seed=0, resamples=100)  # left is right
    assert swapped["agreement"]["late"].mean < 0.3  # what the others share still agrees; the moves do not
    flicker = summarise_contrast(video(False, noise=30.0), real, alive, seed=0, resamples=100)
    assert abs(flicker["agreement"]["late"].mean) < 0.1  # keys that differ by noise: no agreement
    dead = alive.copy()
    dead[:, 0, 5:] = False  # the real episodes under key 0 ended: no step of the late window counts
    assert summarise_contrast(real, real, dead, seed=0, resamples=50)["agreement"]["late"] is None


def test_realism_ranks_noise_blur_and_frozen_frames_worse_than_real_ones():
    from playworld.eval.realism import FEATURES, frame_features, frechet

    def frames(seeds):  # textured frames with the scene moving: the "real game"
        out = [shifted_pair(float(s % 5) - 2, float(s % 3) - 1, seed=int(s))[i] for s in seeds for i in (0, 1)]
        return torch.stack(out).round().clamp(0, 255).to(torch.uint8)

    real, other = frames(range(0, 150)), frames(range(150, 300))
    f_real = frame_features(real)
    assert f_real.shape == (300, FEATURES)
    gen = torch.Generator().manual_seed(0)
    noisy = (other.float() + 30 * torch.randn(other.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    blurred = torch.nn.functional.avg_pool2d(other.permute(0, 3, 1, 2).float(), 5, 1, 2).permute(0, 2, 3, 1)
    frozen = other[:1].expand_as(other)
    base = frechet(f_real, frame_features(other))
    for name, bad in (("noise", noisy), ("blur", blurred.to(torch.uint8)), ("frozen", frozen)):
        assert frechet(f_real, frame_features(bad)) > 3 * base, name
    with pytest.raises(ValueError, match="divisible by 4"):
        frame_features(np.zeros((2, 10, 10, 3), np.uint8))
