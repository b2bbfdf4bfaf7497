"""Motion caused by a latent action, and how consistent it is (Genie's controllability, made local).

The motion between two frames is their global shift, found by phase correlation (Kuglin & Hines
1975): the normalised cross-power spectrum of the two frames is a plane wave whose inverse FFT peaks
at the shift; low-passed and windowed here (:func:`phase_correlation`) so that fine texture and static
artifacts do not outvote the scene. In CoinRun the camera follows the agent, so the global shift is
the agent's motion, opposite in sign.

Consistency of action a: the silhouette (Rousseeuw 1987) of the motions it caused from many start
frames, treating each action's motions as a cluster: s_i = (b_i - a_i) / max(a_i, b_i), where a_i is
the mean distance from motion i to the other motions of its own action and b_i the smallest mean
distance to another action's motions. Per action: the mean of s_i over its start frames; overall:
the mean over every motion. 1 = an action moves the world the same way from every start frame and
differently from every other action; 0 = indistinguishable; < 0 = more like another action than itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

LOWPASS_CYCLES = 8.0  # cycles per frame where the low-pass weight is e^-2 (see phase_correlation)


@dataclass(frozen=True)
class MotionEstimator:
    """How global motion is measured (:func:`phase_correlation`'s settings).

    cutoff: cycles per frame at which the Gaussian low-pass on the cross-power spectrum weighs e^-2
    (0 = no low-pass: the classic whitened estimator); window: Hann-window the frames first (for camera
    motion, where content enters at the edges; off for a world that wraps around, whose frames are
    periodic and need none)."""

    cutoff: float = LOWPASS_CYCLES
    window: bool = True

    def __post_init__(self) -> None:
        if not (self.cutoff >= 0 and math.isfinite(self.cutoff)):
            raise ValueError(f"motion cutoff must be a finite number >= 0 cycles per frame, got {self.cutoff}")

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return phase_correlation(a, b, cutoff=self.cutoff, window=self.window)


def _hann2d(h: int, w: int) -> Tensor:
    return torch.hann_window(h, periodic=False)[:, None] * torch.hann_window(w, periodic=False)[None, :]


def phase_correlation(a: Tensor, b: Tensor, *, cutoff: float = LOWPASS_CYCLES, window: bool = True) -> Tensor:
    """Global shift from frames a to b: (..., H, W, C) -> (..., 2) float (dy, dx) in pixels, such that
    b ~= roll(a, (dy, dx)).

    Whitening the cross-power spectrum gives every frequency the same vote, so fine texture and static
    high-frequency artifacts (a tokenizer's patch grid, dither) outvote the scene and pull the peak to
    zero shift. A Gaussian low-pass W(f) = exp(-2 (f / cutoff)^2) (f in cycles per frame, per axis scaled
    by that axis's length) on the whitened spectrum keeps the coarse structure that carries the motion
    (the remedy of Stone et al., "A fast direct Fourier-based algorithm for subpixel registration of
    images", IEEE TGRS 2001, which weighs out high frequencies). Its inverse FFT is a Gaussian peak
    (sigma = H / (2 pi cutoff / 2) px, 2.5 px for 64 px frames at cutoff 8), so the sub-pixel refinement
    fits a parabola to the log of the peak and its neighbours, exact for a Gaussian. ``window``
    multiplies mean-free frames by a Hann window so the wrap-around jump at the frame's edges (content
    entering on one side, leaving on the other) does not add a static peak at zero shift.
    ``cutoff=0, window=False`` is the classic estimator (Kuglin & Hines 1975)."""
    ga = a.float().mean(-1)
    gb = b.float().mean(-1)  # (..., H, W) grey
    h, w = ga.shape[-2:]
    ga, gb = ga - ga.mean((-2, -1), keepdim=True), gb - gb.mean((-2, -1), keepdim=True)
    if window:
        win = _hann2d(h, w).to(ga.device)
        ga, gb = ga * win, gb * win
    cross = torch.fft.fft2(gb) * torch.fft.fft2(ga).conj()
    cross = cross / cross.abs().clamp_min(1e-9)
    if cutoff > 0:
        fy = torch.fft.fftfreq(h, device=ga.device) * h  # cycles per frame
        fx = torch.fft.fftfreq(w, device=ga.device) * w
        cross = cross * torch.exp(-2 * (fy[:, None].square() + fx[None, :].square()) / cutoff**2)
    r = torch.fft.ifft2(cross).real  # (..., H, W)
    flat = r.flatten(-2).argmax(-1)
    iy, ix = flat // w, flat % w

    def refine(line: Tensor, i: Tensor, n: int) -> Tensor:  # line (..., n): peak through i-1, i, i+1
        left = line.gather(-1, ((i - 1) % n)[..., None])[..., 0]
        mid = line.gather(-1, i[..., None])[..., 0]
        right = line.gather(-1, ((i + 1) % n)[..., None])[..., 0]
        positive = (left > 0) & (mid > 0) & (right > 0)
        # a parabola through the logs (exact for a Gaussian peak) where all three are positive, else
        # through the values (the whitened peak is a sampled sinc, about a parabola near its top)
        ll, lm, lr = (torch.log(x.clamp_min(1e-30)) for x in (left, mid, right))
        left, mid, right = (torch.where(positive, lg, x) for lg, x in ((ll, left), (lm, mid), (lr, right)))
        denom = left - 2 * mid + right
        off = torch.where(denom.abs() > 1e-12, 0.5 * (left - right) / denom, torch.zeros_like(denom))
        return i.float() + off.clamp(-0.5, 0.5)

    row = r.gather(-2, iy[..., None, None].expand(*iy.shape, 1, w))[..., 0, :]  # (..., W)
    col = r.gather(-1, ix[..., None, None].expand(*ix.shape, h, 1))[..., 0]  # (..., H)
    dy, dx = refine(col, iy, h), refine(row, ix, w)
    dy = torch.where(dy > h / 2, dy - h, dy)  # wrap to (-H/2, H/2]
    dx = torch.where(dx > w / 2, dx - w, dx)
    return torch.stack([dy, dx], -1)


def silhouettes(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """points (N, D), labels (N,) -> silhouette s_i (N,); 0 for a label seen only once, or if only one
    label occurs (the silhouette is undefined there)."""
    points, labels = np.asarray(points, dtype=np.float64), np.asarray(labels)
    uniq = np.unique(labels)
    out = np.zeros(len(points))
    if len(uniq) < 2:
        return out
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))  # (N, N)
    member = labels[None, :] == uniq[:, None]  # (L, N)
    sums = member @ dist.T  # (L, N): summed distance from each point to each label's points
    counts = member.sum(1)[:, None]
    for i, lab in enumerate(labels):
        k = int(np.searchsorted(uniq, lab))
        if counts[k, 0] < 2:
            continue
        a = sums[k, i] / (counts[k, 0] - 1)
        others = np.delete(sums[:, i] / counts[:, 0], k)
        b = float(others.min())
        denom = max(a, b)
        out[i] = 0.0 if denom <= 1e-12 else (b - a) / denom
    return out


def opposite_pairs(mean_motion: np.ndarray, min_shift: float = 0.5) -> list[tuple[int, int]]:
    """From each action's mean motion (K, 2): pairs (a, b) of actions that move the world in most nearly
    opposite directions, strongest motion first, each action used once; only actions moving at least
    ``min_shift`` pixels, and only pairs pointing more than 120 degrees apart."""
    norms = np.linalg.norm(mean_motion, axis=1)
    left = [int(i) for i in np.argsort(-norms) if norms[i] >= min_shift]
    pairs = []
    while len(left) >= 2:
        a = left.pop(0)
        cos = [float(mean_motion[a] @ mean_motion[b] / (norms[a] * norms[b])) for b in left]
        j = int(np.argmin(cos))
        if cos[j] < -0.5:
            pairs.append((a, left.pop(j)))
    return pairs
