"""Motion caused by a latent action, and how consistent it is (Genie's controllability, made local).

The motion between two frames is their global shift, found by phase correlation (Kuglin & Hines
1975): the normalised cross-power spectrum of the two frames is a plane wave whose inverse FFT peaks
at the shift. In CoinRun the camera follows the agent, so the global shift is the agent's motion.

Consistency of action a: the silhouette (Rousseeuw 1987) of the motions it caused from many start
frames, treating each action's motions as a cluster: s_i = (b_i - a_i) / max(a_i, b_i), where a_i is
the mean distance from motion i to the other motions of its own action and b_i the smallest mean
distance to another action's motions. Per action: the mean of s_i over its start frames; overall:
the mean over every motion. 1 = an action moves the world the same way from every start frame and
differently from every other action; 0 = indistinguishable; < 0 = more like another action than itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def phase_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Global shift from frames a to b: (..., H, W, C) -> (..., 2) float (dy, dx) in pixels, such that
    b ~= roll(a, (dy, dx)). Integer peak refined to sub-pixel by a parabola through its neighbours."""
    ga = a.float().mean(-1)
    gb = b.float().mean(-1)  # (..., H, W) grey
    ga, gb = ga - ga.mean((-2, -1), keepdim=True), gb - gb.mean((-2, -1), keepdim=True)
    cross = torch.fft.fft2(gb) * torch.fft.fft2(ga).conj()
    r = torch.fft.ifft2(cross / cross.abs().clamp_min(1e-9)).real  # (..., H, W)
    h, w = r.shape[-2:]
    flat = r.flatten(-2).argmax(-1)
    iy, ix = flat // w, flat % w

    def refine(line: Tensor, i: Tensor, n: int) -> Tensor:  # line (..., n): parabola through i-1, i, i+1
        left = line.gather(-1, ((i - 1) % n)[..., None])[..., 0]
        mid = line.gather(-1, i[..., None])[..., 0]
        right = line.gather(-1, ((i + 1) % n)[..., None])[..., 0]
        denom = left - 2 * mid + right
        off = torch.where(denom.abs() > 1e-9, 0.5 * (left - right) / denom, torch.zeros_like(denom))
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
