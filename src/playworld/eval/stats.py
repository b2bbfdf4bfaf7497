"""Figures with 95% bootstrap intervals, and the image metrics they are made of (PSNR, SSIM).

Every figure in an evaluation is an :class:`Estimate`: the statistic on the whole sample and a
percentile bootstrap interval from resampling the independent units (clips from different episodes,
start frames) with replacement. The resampling generator is seeded, so a rerun gives the same interval.

SSIM: Wang et al., "Image quality assessment: from error visibility to structural similarity",
IEEE TIP 2004 (Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from playworld.models.base import psnr_from_mse

PSNR_CAP = 100.0  # dB: the PSNR of an exact frame (psnr_from_mse clamps the mse at 1e-10)


@dataclass(frozen=True)
class Estimate:
    """A statistic with its (1 - alpha) bootstrap interval over ``n`` independent units.

    ``replicates``: the statistic on each bootstrap resample (shifted like the interval where the bootstrap
    was bias-corrected), whose percentiles are ``low`` and ``high``. The resamples depend only on the seed,
    their count and ``n``, so two evaluations of the same units with the same seed resample them alike: the
    difference of their replicates is a paired bootstrap of the difference of the two statistics
    (:func:`paired_difference`)."""

    mean: float
    low: float
    high: float
    n: int
    replicates: tuple[float, ...] = field(default=(), compare=False, repr=False)

    def to_json(self, replicates: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}
        if replicates and self.replicates:
            out["replicates"] = [float(f"{r:.6g}") for r in self.replicates]
        return out

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(values: np.ndarray, *, seed: int, resamples: int = 1000, alpha: float = 0.05,
              statistic: Callable[[np.ndarray], float] | None = None, bias_correct: bool = False) -> Estimate:
    """Percentile bootstrap of ``statistic`` (default: the mean over axis 0) of ``values`` (N, ...),
    resampling its N rows. With one row the interval is the point itself (nothing to resample).

    ``bias_correct``: shift the interval by the bootstrap's estimate of the statistic's bias (the mean of
    the resampled statistics less the point; Efron & Tibshirani 1993, sec. 10.2), for plug-in statistics
    that a resample with repeated rows moves one way: mutual information rises (repeats look like
    structure), a Fréchet distance and a count of distinct codes shift. Uncorrected, such an interval can
    lie wholly beside its own point (an NMI of 0.144 read as [0.150, 0.243])."""
    values = np.asarray(values)
    n = len(values)
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    stat = statistic or (lambda v: float(np.mean(v)))
    point = float(stat(values))
    if n == 1:
        return Estimate(point, point, point, 1)
    rng = np.random.default_rng(seed)
    boot = np.array([stat(values[rng.integers(0, n, n)]) for _ in range(resamples)], dtype=np.float64)
    low, high = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    if bias_correct:
        bias = float(boot.mean()) - point
        low, high, boot = low - bias, high - bias, boot - bias
    return Estimate(point, float(low), float(high), n, tuple(boot.tolist()))


def paired_difference(a: dict[str, Any], b: dict[str, Any], alpha: float = 0.05) -> Estimate | None:
    """b - a for two estimates (metrics.json dicts) of the same statistic on the same units, resampled alike
    (the same seed, count of resamples and ``n``): the point difference and the percentile interval of the
    differences of their replicates, a paired bootstrap. The pairing removes what the units share (a hard
    start frame is hard for both worlds), so it separates worlds whose own intervals overlap. None when
    either lacks replicates or they were not resampled alike."""
    ra, rb = a.get("replicates"), b.get("replicates")
    if not ra or not rb or len(ra) != len(rb) or a["n"] != b["n"]:
        return None
    diff = np.asarray(rb, dtype=np.float64) - np.asarray(ra, dtype=np.float64)
    low, high = np.percentile(diff, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Estimate(float(b["mean"] - a["mean"]), float(low), float(high), int(a["n"]))


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame PSNR in dB of frames in [0, 1]: (..., H, W, C) -> (...), capped at PSNR_CAP."""
    return psnr_from_mse((pred.float() - target.float()).square().mean(dim=(-3, -2, -1)))


def psnr_of_mean_mse(per_clip_psnr: np.ndarray) -> float:
    """PSNR (dB) of the mean squared error behind per-clip PSNRs (N,): -10 log10(mean_i 10^(-p_i / 10))."""
    mse = np.power(10.0, -np.asarray(per_clip_psnr, dtype=np.float64) / 10.0)
    return float(-10.0 * np.log10(mse.mean()))


def _gaussian_window(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-frame SSIM of frames in [0, 1]: (..., H, W, C) -> (...), averaged over channels and the
    valid window positions. The window shrinks (odd, >= 3) to fit frames smaller than 11 pixels."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    lead = pred.shape[:-3]
    h, w, c = pred.shape[-3:]
    size = min(window, h - (1 - h % 2), w - (1 - w % 2))
    if size < 3:
        raise ValueError(f"ssim: frames of {h}x{w} pixels are too small for a 3x3 window")
    kernel = _gaussian_window(size, sigma * size / window).to(pred.device)[None, None].repeat(c, 1, 1, 1)
    x = rearrange(pred.float().reshape(-1, h, w, c), "n h w c -> n c h w")
    y = rearrange(target.float().reshape(-1, h, w, c), "n h w c -> n c h w")

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(lead)
