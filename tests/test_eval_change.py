"""Change kept and moving PSNR (playworld.eval.change) on a fixed screen: a small sprite moves over a still
scene; an exact stage keeps all of its change, a still one none, half a change is half, a blur loses part of
it, and change in the wrong place counts for nothing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from playworld.eval.change import ChangeSums, change_kept, change_sums, moving_psnr


def _sprite_video(b: int = 4, t: int = 6, side: int = 32, step: int = 2) -> torch.Tensor:
    """(B, T+1, H, W, 3) in [0, 1]: a still scene (smooth blobs and fine texture), a 3x3 white sprite moving
    ``step`` px right a frame."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(side) / side, torch.arange(side) / side, indexing="ij")
    blobs = 0.35 + 0.3 * torch.sin(2 * torch.pi * (xx + 0.3 * yy)) * torch.cos(2 * torch.pi * 1.5 * yy)
    background = (blobs[None, None, :, :, None] + 0.05 * torch.rand(b, 1, side, side, 3, generator=g)).clamp(0, 0.8)
    video = background.expand(b, t + 1, side, side, 3).clone()
    for i in range(b):
        y = 4 + 5 * i
        for k in range(t + 1):
            x = 2 + step * k
            video[i, k, y:y + 3, x:x + 3] = 1.0
    return video


def _blur(video: torch.Tensor) -> torch.Tensor:
    b, t, h, w, c = video.shape
    x = video.permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2)


def _kept(real: torch.Tensor, model: torch.Tensor) -> tuple[float, float | None]:
    sums = change_sums(real[:, :-1], real[:, 1:], model[:, :-1], model[:, 1:])
    psnr = moving_psnr(sums, seed=0, resamples=100)
    return change_kept(sums, seed=0, resamples=100).mean, None if psnr is None else psnr.mean


def test_a_sprite_on_a_fixed_screen_is_kept_by_an_exact_stage_partly_by_a_blur_and_not_by_a_still_one():
    real = _sprite_video()
    exact, exact_psnr = _kept(real, real)
    still, still_psnr = _kept(real, real[:, :1].expand_as(real))
    assert exact == pytest.approx(1.0) and exact_psnr == pytest.approx(100.0)
    assert still == 0.0 and still_psnr < 15
    blurred, blurred_psnr = _kept(real, _blur(real))
    assert 0.2 < blurred < 0.9 and still_psnr < blurred_psnr < exact_psnr


def test_half_a_change_is_half_and_change_in_the_wrong_place_is_none():
    real = _sprite_video()
    half = real[:, :-1] + 0.5 * (real[:, 1:] - real[:, :-1])
    sums = change_sums(real[:, :-1], real[:, 1:], real[:, :-1], half)
    assert change_kept(sums, seed=0, resamples=50).mean == pytest.approx(0.5)
    elsewhere = torch.roll(real, shifts=12, dims=2)  # the same motion, 12 rows lower, on a shifted scene:
    shifted = elsewhere - elsewhere[:, :1] + real[:, :1]  # its change painted over the real still scene
    assert abs(_kept(real, shifted)[0]) < 0.05


def test_nothing_moving_gives_no_moving_psnr_and_intervals_resample_clips():
    still = torch.full((3, 5, 8, 8, 3), 0.5)
    sums = change_sums(still[:, :-1], still[:, 1:], still[:, :-1], still[:, 1:])
    assert moving_psnr(sums, seed=0, resamples=10) is None
    assert change_kept(sums, seed=0, resamples=10).mean == 0.0
    real = _sprite_video(b=6)
    noisy = real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
    sums = change_sums(real[:, :-1], real[:, 1:], noisy[:, :-1], noisy[:, 1:])
    est = change_kept(sums, seed=0, resamples=200)
    assert est.n == 6 and est.low <= est.mean <= est.high and len(est.replicates) == 200
    both = ChangeSums.cat([sums, sums])
    assert both.dot.shape == (12,) and change_kept(both, seed=0, resamples=10).mean == pytest.approx(est.mean)


def test_videos_of_different_shapes_are_refused():
    a = torch.zeros(2, 3, 8, 8, 3)
    with pytest.raises(ValueError, match="four"):
        change_sums(a, a, a, torch.zeros(2, 3, 8, 8, 1))
    with pytest.raises(ValueError, match="four"):
        change_sums(a[0], a[0], a[0], a[0])
    assert np.isfinite(change_sums(a, a, a, a).energy).all()
