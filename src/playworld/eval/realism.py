"""Realism of generated frames: a Fréchet distance between generated and real frames on a fixed,
hand-crafted feature set.

FID (Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS 2017) fits a Gaussian to each set's Inception features and reports
|mu_r - mu_g|^2 + tr(C_r + C_g - 2 (C_r C_g)^(1/2)). No pretrained Inception can be downloaded here,
and features of the world's own tokenizer would grade the world with its own eyes (a frame the
tokenizer cannot tell from a real one scores real, whatever a player sees). So the features are a
fixed, documented set that sees what goes wrong in a long rollout:

- colour: an 8-bin histogram per RGB channel (24), and each channel's mean and standard deviation (6);
- sharpness: mean absolute horizontal and vertical grey gradients at full and half resolution (4) and
  the mean absolute Laplacian (1): blur lowers them, noise and flicker raise them;
- layout: the mean grey of a 4 x 4 grid of cells (16): where things are.

Each feature is standardised by the mean and standard deviation of both sets pooled, so that no unit
dominates (0 = identical Gaussians). Not by the real set's alone: a colour bin that no real frame of
the sample uses (CoinRun's backgrounds change with the level) would be divided by ~0 and decide the
distance. A frozen world (one frame repeated) has no spread and scores the real set's whole variance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from playworld.eval.stats import Estimate, bootstrap

FEATURES = 51


def frame_features(frames: np.ndarray | torch.Tensor, batch: int = 1024) -> np.ndarray:
    """uint8 frames (N, H, W, 3), H and W divisible by 4 -> (N, FEATURES) float64."""
    frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 4 or frames.shape[2] % 4:
        raise ValueError(f"frame_features: expected uint8 (N, H, W, 3) with H, W divisible by 4, "
                         f"got {tuple(frames.shape)}")
    return np.concatenate([_features(frames[s:s + batch]) for s in range(0, len(frames), batch)])


def _features(frames: torch.Tensor) -> np.ndarray:
    x = rearrange(frames.float() / 255, "n h w c -> n c h w")  # (N, 3, H, W) in [0, 1]
    n = x.shape[0]
    bins = (x * 8).long().clamp(0, 7)  # (N, 3, H, W)
    hist = F.one_hot(bins, 8).float().mean((2, 3)).reshape(n, 24)  # share of pixels per bin and channel
    stats = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)  # (N, 6)
    grey = x.mean(1, keepdim=True)  # (N, 1, H, W)
    half = F.avg_pool2d(grey, 2)
    grads = [g.diff(dim=d).abs().mean((1, 2, 3)) for g in (grey, half) for d in (2, 3)]  # 4 x (N,)
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None]
    laplacian = F.conv2d(grey, lap).abs().mean((1, 2, 3))
    layout = reduce(grey, "n 1 (a h) (b w) -> n (a b)", "mean", a=4, b=4)  # (N, 16)
    return torch.cat([hist, stats, torch.stack([*grads, laplacian], 1), layout], 1).double().numpy()


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet(real: np.ndarray, generated: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to features (N, D) and (M, D), each feature in units of
    the pooled standard deviation of both sets. Both need at least 2 rows."""
    if len(real) < 2 or len(generated) < 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"frechet: need >= 2 rows of the same width, got {real.shape} and {generated.shape}")
    pooled = np.concatenate([real, generated])
    mu, sd = pooled.mean(0), pooled.std(0)
    sd = np.where(sd > 1e-9, sd, 1.0)  # a feature constant in both sets adds nothing either way
    r, g = (real - mu) / sd, (generated - mu) / sd
    mr, mg = r.mean(0), g.mean(0)
    cr, cg = np.cov(r, rowvar=False), np.cov(g, rowvar=False)
    root = _sqrtm_psd(cr)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cg @ root), 0, None)).sum()  # tr (C_r C_g)^(1/2)
    return float(np.square(mr - mg).sum() + np.trace(cr) + np.trace(cg) - 2 * cross)


def realism(real: np.ndarray, generated: np.ndarray, *, seed: int, resamples: int) -> Estimate:
    """Fréchet distance of generated frames (S, N, H, W, 3) uint8, grouped by start frame, from real
    frames (M, H, W, 3) uint8; the interval resamples start frames (the real set held fixed)."""
    s = generated.shape[0]
    feats = frame_features(generated.reshape(-1, *generated.shape[-3:])).reshape(s, -1, FEATURES)
    ref = frame_features(real)
    return bootstrap(np.arange(s), seed=seed, resamples=resamples, bias_correct=True,
                     statistic=lambda sel: frechet(ref, feats[sel].reshape(-1, FEATURES)))


def real_floor(real: np.ndarray, owner: np.ndarray) -> float | None:
    """The distance between the frames of even and odd episodes (``owner`` (M,) episode of each frame):
    what two real samples of this size score. None with fewer than 2 episodes."""
    ids = np.unique(owner)
    if len(ids) < 2:
        return None
    feats = frame_features(real)
    even = np.isin(owner, ids[::2])
    return frechet(feats[even], feats[~even])
