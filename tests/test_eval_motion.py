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
