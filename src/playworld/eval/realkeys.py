"""Key response from real starts: the world and the real game holding the same key from the same frames.

The key response of :mod:`playworld.eval.keys` compares the world's motion from dataset start frames with
the real game's steady motion under a held key, averaged over recorded episodes. The two start from
different states, and a mean over steps hides what a player sees step by step: a jump is an arc whose
motion averages to about zero, and a key held into a wall stops moving the real scene. Here both sides
start from the same settled frames of the evaluated levels (:func:`playworld.eval.envwalk.procgen_hold`):
the real game holds each latent action's mapped true key, the world holds the latent action with the real
idle frames as its prompt, and the world's motion at every step is set against the real game's at the same
step from the same frame. A hold that ends the real episode (the agent died or finished) counts only its
steps before the end, on both sides.

Per window (early 2-8, late 20-30; 1-based steps, inclusive), over every start s, key a and alive step i,
with m and r the world's and the real game's motion (dy, dx) at that step:

- key response = sum m . r / sum |r|^2 (where the real scene moved at least 0.25 px per step, root mean
  square; a fixed screen's global motion is the estimator's noise): the slope of the world's motion on the game's, through the origin
  (1 = the game's speed in the game's direction at each step, 0 = unrelated or still, above 1 faster);
- agreement = sum m . r / sqrt(sum |m|^2 sum |r|^2), the cosine of the two motion series: 1 = the world
  moves exactly when, where and (up to scale) as much as the game does; a world that drifts while the game
  stands still, or rises steadily where the game jumps and falls, loses agreement that its slope keeps;
- liveness = sum of the world's pixel change / sum of the game's (0-255 mean absolute change per step);
- displacement = sum D_w . D_r / sum |D_r|^2 over every start and key, with D_w and D_r the world's and the
  game's net scene shift over the window's alive steps: the same slope on where the scene ends up, whatever
  the step at which it moved. Late in a hold the world and the game have left the same frame 20 steps
  before, so a world that runs into the wall two steps after the game, or jumps a step late, loses the
  step-by-step key response it deserves; its displacement keeps what matches (1 = the scene went as far in
  the game's direction, 0 = unrelated or still). It gives no credit to motion the game's net shift does
  not have (a jump arc that ends where it began counts as little in both).

The 95% intervals resample start frames (world and real together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from playworld.eval.keys import EARLY, LATE, MIN_REAL_MOTION
from playworld.eval.stats import Estimate, bootstrap

WINDOWS = {"early": EARLY, "late": LATE}
STEPS = LATE[1]
"""Steps each key is held: the late window's end (a longer hold ends most real CoinRun episodes)."""
def moves(real_sq: float, steps: float) -> bool:
    """Whether the real scene moved in a window: root mean square motion per alive step of at least
    :data:`playworld.eval.keys.MIN_REAL_MOTION` px (below it, on a fixed screen, the estimator's own noise
    would be the reference)."""
    return steps > 0 and real_sq / steps >= MIN_REAL_MOTION ** 2


@dataclass
class PairedHolds:
    """Both sides of the holds, per start s, key a and step i (frame i-1 -> i): world_shift / real_shift
    (S, K, L, 2) motion (dy, dx) px, world_change / real_change (S, K, L) pixel change 0-255, alive (S, K, L)
    the real step is inside its first episode."""

    world_shift: np.ndarray
    world_change: np.ndarray
    real_shift: np.ndarray
    real_change: np.ndarray
    alive: np.ndarray

    def __post_init__(self) -> None:
        s, k, steps = self.alive.shape
        for name in ("world_shift", "real_shift"):
            if getattr(self, name).shape != (s, k, steps, 2):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, alive {self.alive.shape}")
        for name in ("world_change", "real_change"):
            if getattr(self, name).shape != (s, k, steps):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, alive {self.alive.shape}")

    def window(self, lo: int, hi: int) -> WindowSums:
        """Sums over the alive steps lo..hi (1-based, inclusive), per start and key."""
        live = self.alive[:, :, lo - 1:hi].astype(np.float64)  # (S, K, w)
        m, r = self.world_shift[:, :, lo - 1:hi], self.real_shift[:, :, lo - 1:hi]  # (S, K, w, 2)
        return WindowSums(
            steps=live.sum(2),
            cross=((m * r).sum(-1) * live).sum(2), world_sq=(np.square(m).sum(-1) * live).sum(2),
            real_sq=(np.square(r).sum(-1) * live).sum(2),
            world_shift=(m * live[..., None]).sum(2), real_shift=(r * live[..., None]).sum(2),
            world_change=(self.world_change[:, :, lo - 1:hi] * live).sum(2),
            real_change=(self.real_change[:, :, lo - 1:hi] * live).sum(2))


@dataclass
class WindowSums:
    """Per start and key (S, K): alive steps; sums of m . r, |m|^2, |r|^2; the motions' sums (S, K, 2);
    the pixel changes' sums."""

    steps: np.ndarray
    cross: np.ndarray
    world_sq: np.ndarray
    real_sq: np.ndarray
    world_shift: np.ndarray
    real_shift: np.ndarray
    world_change: np.ndarray
    real_change: np.ndarray

    def response(self, sel: np.ndarray) -> float:
        den = self.real_sq[sel].sum()
        return float(self.cross[sel].sum() / den) if den > 0 else float("nan")

    def agreement(self, sel: np.ndarray) -> float:
        den = np.sqrt(self.real_sq[sel].sum() * self.world_sq[sel].sum())
        return float(self.cross[sel].sum() / den) if den > 0 else 0.0

    def liveness(self, sel: np.ndarray) -> float:
        den = self.real_change[sel].sum()
        return float(self.world_change[sel].sum() / den) if den > 0 else float("nan")

    def displacement(self, sel: np.ndarray) -> float:
        w, r = self.world_shift[sel], self.real_shift[sel]  # (n, K, 2) net shifts over the window
        den = np.square(r).sum()
        return float((w * r).sum() / den) if den > 0 else float("nan")

    def per_action(self) -> dict[str, list]:
        """Per key over every start: its response (None where the real scene stood still), both sides' mean
        motion and change per alive step, and the alive steps counted."""
        n = np.maximum(self.steps.sum(0), 1.0)  # (K,)
        response = [float(c / q) if moves(q, n) else None
                    for c, q, n in zip(self.cross.sum(0), self.real_sq.sum(0), self.steps.sum(0))]

        def rounded(x: np.ndarray) -> list:
            return np.round(x, 4).tolist()

        return {"response": [None if v is None else round(v, 4) for v in response],
                "world_shift": rounded(self.world_shift.sum(0) / n[:, None]),
                "real_shift": rounded(self.real_shift.sum(0) / n[:, None]),
                "world_change": rounded(self.world_change.sum(0) / n), "real_change": rounded(self.real_change.sum(0) / n),
                "alive_steps": self.steps.sum(0).astype(int).tolist()}


def step_curves(holds: PairedHolds) -> dict[str, list]:
    """Per key and step, both sides' mean over the starts whose real episode was alive then (0 where none
    was): world_shift, real_shift (K, L, 2), world_change, real_change (K, L), as lists (4 decimals)."""
    live = holds.alive.astype(np.float64)  # (S, K, L)
    n = np.maximum(live.sum(0), 1.0)  # (K, L)
    out = {}
    for name in ("world_shift", "real_shift"):
        out[name] = (getattr(holds, name) * live[..., None]).sum(0) / n[..., None]
    for name in ("world_change", "real_change"):
        out[name] = (getattr(holds, name) * live).sum(0) / n
    return {k: np.round(v, 4).tolist() for k, v in out.items()}


@dataclass
class RealStartSummary:
    """Per window: key response, agreement, liveness and displacement (None where the real game gives
    nothing to compare with), and per key the figures over every start."""

    response: dict[str, Estimate | None]
    agreement: dict[str, Estimate | None]
    liveness: dict[str, Estimate | None]
    per_action: dict[str, dict[str, list]]
    displacement: dict[str, Estimate | None]


def summarise_paired(holds: PairedHolds, *, seed: int, resamples: int) -> RealStartSummary:
    """Key response, agreement, liveness and displacement per window, paired start by start; see the module
    docstring."""
    starts = np.arange(holds.alive.shape[0])
    out = RealStartSummary({}, {}, {}, {}, {})
    for name, (lo, hi) in WINDOWS.items():
        sums = holds.window(lo, hi)
        moved, changed = moves(sums.real_sq.sum(), sums.steps.sum()), sums.real_change.sum() > 0
        out.response[name] = _finite(bootstrap(starts, seed=seed, resamples=resamples, statistic=sums.response)) \
            if moved else None
        out.agreement[name] = bootstrap(starts, seed=seed, resamples=resamples, statistic=sums.agreement) \
            if moved else None
        out.liveness[name] = _finite(bootstrap(starts, seed=seed, resamples=resamples, statistic=sums.liveness)) \
            if changed else None
        out.displacement[name] = _finite(bootstrap(starts, seed=seed, resamples=resamples,
                                                   statistic=sums.displacement)) if moved else None
        out.per_action[name] = sums.per_action()
    return out


def _finite(e: Estimate) -> Estimate | None:
    """A resample can draw only starts where the real scene stood still (NaN); such an estimate is dropped."""
    return e if all(np.isfinite(v) for v in (e.mean, e.low, e.high)) else None


CONTRAST_SIGMA = 2.0
"""Gaussian blur (px) of the key contrasts: a sprite a pixel or two off its real place still counts (the
tokenizer's patches are 4 px; finer detail is its noise)."""


@dataclass
class ContrastSums:
    """Per start (S,) over a window's steps where every key's real episode was alive: sum <C_w, C_r>,
    sum |C_w|^2, sum |C_r|^2 of the key contrasts, and the steps counted."""

    cross: np.ndarray
    world_sq: np.ndarray
    real_sq: np.ndarray
    steps: np.ndarray

    def agreement(self, sel: np.ndarray) -> float:
        den = np.sqrt(self.world_sq[sel].sum() * self.real_sq[sel].sum())
        return float(self.cross[sel].sum() / den) if den > 0 else 0.0

    def ratio(self, sel: np.ndarray) -> float:
        den = self.real_sq[sel].sum()
        return float(np.sqrt(self.world_sq[sel].sum() / den)) if den > 0 else float("nan")


def key_contrasts(frames: torch.Tensor, sigma: float = CONTRAST_SIGMA) -> torch.Tensor:
    """frames uint8 (S, K, T, H, W, C) -> (S, K, T, H, W) float: each key's frame minus the mean over keys of
    the same start and step (what that key does that the others do not), grey, Gaussian-blurred."""
    grey = frames.float().mean(-1) / 255.0  # (S, K, T, H, W)
    contrast = grey - grey.mean(1, keepdim=True)
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    flat = contrast.reshape(-1, 1, *contrast.shape[-2:])  # (N, 1, H, W)
    flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (radius, radius, 0, 0), mode="replicate"),
                                      g.view(1, 1, 1, -1))
    flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (0, 0, radius, radius), mode="replicate"),
                                      g.view(1, 1, -1, 1))
    return flat.view(contrast.shape)


def contrast_sums(world: torch.Tensor, real: torch.Tensor, alive: np.ndarray, lo: int, hi: int) -> ContrastSums:
    """world, real uint8 (S, K, 1+L, H, W, C) from the same starts; alive (S, K, L) -> the sums over frames
    lo..hi (1-based steps, inclusive) where every key's real episode was still alive."""
    cw, cr = key_contrasts(world[:, :, lo:hi + 1]), key_contrasts(real[:, :, lo:hi + 1])  # (S, K, w, H, W)
    live = torch.from_numpy(alive[:, :, lo - 1:hi].all(1)).float()  # (S, w)

    def total(x: torch.Tensor) -> np.ndarray:
        return (x.sum((1, 3, 4)) * live).sum(1).double().numpy()  # (S,)

    return ContrastSums(cross=total(cw * cr), world_sq=total(cw * cw), real_sq=total(cr * cr),
                        steps=live.sum(1).numpy())


def summarise_contrast(world: torch.Tensor, real: torch.Tensor, alive: np.ndarray, *, seed: int,
                       resamples: int) -> dict[str, dict[str, Estimate | None]]:
    """Per window: ``agreement``, the cosine of the world's key contrasts with the game's (1 = the keys change
    the same places in the same way, 0 = unrelated or no difference between keys), and ``ratio``, the size of
    the world's contrasts over the game's (1 = the keys matter as much as in the game, 0 = not at all)."""
    starts = np.arange(alive.shape[0])
    out: dict[str, dict[str, Estimate | None]] = {"agreement": {}, "ratio": {}}
    for name, (lo, hi) in WINDOWS.items():
        sums = contrast_sums(world, real, alive, lo, hi)
        differ = sums.real_sq.sum() > 0
        out["agreement"][name] = bootstrap(starts, seed=seed, resamples=resamples, statistic=sums.agreement) \
            if differ else None
        out["ratio"][name] = _finite(bootstrap(starts, seed=seed, resamples=resamples, statistic=sums.ratio)) \
            if differ else None
    return out
