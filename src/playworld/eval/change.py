"""How much of the real frame-to-frame change a stage of the world keeps, pixel by pixel: motion figures
that need no moving camera.

:mod:`playworld.eval.kept` measures motion as one global shift per transition, which is what a scrolling
platformer's camera makes. On a fixed screen (bigfish, leaper, maze, heist) the scene does not shift while
sprites of a few pixels move, several of them each its own way; one shift per frame pair follows whichever
content dominates the spectrum and cannot say how much of each sprite's change a stage keeps. Here the
change itself is compared. For the real frames x_{t-1}, x_t and a stage's frames m_{t-1}, m_t (the tokenizer's
reconstructions of both; or, teacher-forced, the real x_{t-1} and the world's prediction of x_t from it):

- **change kept** = sum <m_t - m_{t-1}, x_t - x_{t-1}> / sum |x_t - x_{t-1}|^2 over pixels and channels:
  the least-squares slope through the origin of the stage's change on the real change. 1 = every changed
  pixel changes as in the game; 0 = a static picture (or change in the wrong places); > 1 = exaggerated.
- **moving PSNR**: the PSNR of m_t against x_t on the pixels the game changed (any channel by more than
  ``threshold``), where a tokenizer that blurs a small sprite or a world that leaves it behind loses, and
  which a frame-wide PSNR dominated by still background hides.

Both are ratios of sums over a clip's pixels; clips are the units resampled for intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from playworld.eval.stats import Estimate, bootstrap
from playworld.models.base import psnr_from_mse

MOVING_THRESHOLD = 0.1
"""A pixel is moving where some channel of the real frame changed by more than this (in [0, 1] units;
about 25 of 255): above the tokenizer's and the video codec's noise on still background."""


@dataclass(frozen=True)
class ChangeSums:
    """Per clip (B,): sum of the stage's change times the real change (``dot``), sum of the real change
    squared (``energy``), squared error of the stage's frame on the moving pixels (``moving_se``, summed over
    channels) and the number of moving pixel values (``moving_n``, pixels x channels)."""

    dot: np.ndarray
    energy: np.ndarray
    moving_se: np.ndarray
    moving_n: np.ndarray

    @staticmethod
    def cat(parts: list[ChangeSums]) -> ChangeSums:
        return ChangeSums(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("dot", "energy", "moving_se", "moving_n")))


def moving_mask(real_prev: Tensor, real_next: Tensor, threshold: float = MOVING_THRESHOLD) -> Tensor:
    """(..., H, W, C) frames before and after -> bool (..., H, W, C): True at every channel of a pixel where
    some channel changed by more than ``threshold``."""
    return ((real_next - real_prev).abs().amax(-1, keepdim=True) > threshold).expand_as(real_next)


@torch.no_grad()
def change_terms(real_prev: Tensor, real_next: Tensor, model_prev: Tensor, model_next: Tensor,
                 threshold: float = MOVING_THRESHOLD) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Four (B, T, H, W, C) float videos in [0, 1]: the real frames before and after each of T transitions
    and a stage's frames at the same times -> per clip (B,) float64, summed over its transitions: the dot
    product of the stage's change with the real change, the real change's energy, the squared error of the
    stage's frame on the moving pixels, and the number of moving pixel values (pixels x channels)."""
    shapes = {tuple(x.shape) for x in (real_prev, real_next, model_prev, model_next)}
    if len(shapes) != 1 or real_prev.dim() != 5:
        raise ValueError(f"change figures need four (B, T, H, W, C) videos of one shape, got {sorted(shapes)}")
    real_d = (real_next - real_prev).double()
    model_d = (model_next - model_prev).double()
    moving = moving_mask(real_prev, real_next, threshold)  # (B, T, H, W, C)
    err = (model_next - real_next).double().square()
    dims = (1, 2, 3, 4)
    return ((model_d * real_d).sum(dims), real_d.square().sum(dims), (err * moving).sum(dims),
            moving.sum(dims).double())


def change_sums(real_prev: Tensor, real_next: Tensor, model_prev: Tensor, model_next: Tensor,
                threshold: float = MOVING_THRESHOLD) -> ChangeSums:
    """:func:`change_terms` as a :class:`ChangeSums` of numpy arrays, for :func:`change_kept` and
    :func:`moving_psnr`."""
    terms = change_terms(real_prev, real_next, model_prev, model_next, threshold)
    return ChangeSums(*(t.cpu().numpy() for t in terms))


def batch_change(real: Tensor, model: Tensor) -> tuple[Tensor, Tensor]:
    """A training batch's figures, pooled over it: real and model videos (B, T, H, W, C) in [0, 1] -> 0-dim
    (change kept, mean squared error on moving pixels); the error is over every pixel where nothing in the
    batch moved (a still batch)."""
    dot, energy, se, n = change_terms(real[:, :-1], real[:, 1:], model[:, :-1], model[:, 1:])
    kept = dot.sum() / energy.sum() if energy.sum() > 1e-12 else energy.new_zeros(())
    mse = se.sum() / n.sum() if n.sum() > 0 else (model - real).double().square().mean()
    return kept.float(), mse.float()


def change_kept(sums: ChangeSums, *, seed: int, resamples: int) -> Estimate:
    """The change-kept slope over every clip, with a clip-bootstrap interval (0 where nothing changed)."""
    rows = np.stack([sums.dot, sums.energy], 1)

    def slope(v: np.ndarray) -> float:
        return float(v[:, 0].sum() / v[:, 1].sum()) if v[:, 1].sum() > 1e-12 else 0.0

    return bootstrap(rows, seed=seed, resamples=resamples, statistic=slope)


def moving_psnr(sums: ChangeSums, *, seed: int, resamples: int) -> Estimate | None:
    """PSNR of the pooled squared error on moving pixels over the clips where something moved, with a
    bootstrap interval over those clips (the real frames choose them, so two stages evaluated on the same
    clips resample the same ones); None where nothing moved by more than the threshold."""
    rows = np.stack([sums.moving_se, sums.moving_n], 1)[sums.moving_n > 0]
    if not len(rows):
        return None

    def pooled(v: np.ndarray) -> float:
        return float(psnr_from_mse(torch.tensor(v[:, 0].sum() / v[:, 1].sum())))

    return bootstrap(rows, seed=seed, resamples=resamples, statistic=pooled)
