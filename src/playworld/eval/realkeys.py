"""Key response from real starts: the world and the real game holding the same key from the same frames.

The key response of :mod:`playworld.eval.keys` compares the world's motion from dataset start frames with
the real game's steady motion under a held key, averaged over recorded episodes. The two start from
different states: a start frame caught mid-jump falls in the world whatever key is held, while the
reference holds the key from wherever the agent happened to be. Here both sides start from the same
settled frames of the evaluated levels (:func:`playworld.eval.envwalk.procgen_hold`): the real game holds
each latent action's mapped true key, the world holds the latent action from the real idle frames as its
prompt, and each start is a paired unit. A hold that ends the real episode (the agent died or finished)
counts only its steps before the end, on both sides.

Per window (early 2-8, late 20-30; 1-based steps, inclusive), over the keys whose real motion is at least
:data:`playworld.eval.keys.MIN_REAL_MOTION` px per frame:

- key response = sum_a m_a . r_a / sum_a |r_a|^2, with m_a and r_a the world's and the real game's mean
  motion (dy, dx) under key a over the same starts and steps: 1 = the real speed in the real direction,
  0 = no motion along it, above 1 = faster. Pooled over keys (weighted by how far the real key moves the
  scene) rather than an average of per-key ratios, which one slow key divides into a large number;
- liveness = sum_a c_a(world) / sum_a c_a(real), the world's mean pixel change over the real game's.

The 95% intervals resample start frames (world and real together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from playworld.eval.keys import EARLY, LATE, MIN_REAL_MOTION
from playworld.eval.stats import Estimate, bootstrap

WINDOWS = {"early": EARLY, "late": LATE}
STEPS = LATE[1]
"""Steps each key is held: the late window's end (a longer hold ends most real CoinRun episodes)."""


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
        """Sums over the alive steps lo..hi (1-based, inclusive) of both sides, per start and key."""
        live = self.alive[:, :, lo - 1:hi].astype(np.float64)  # (S, K, w)
        return WindowSums(
            steps=live.sum(2),
            world_shift=(self.world_shift[:, :, lo - 1:hi] * live[..., None]).sum(2),
            real_shift=(self.real_shift[:, :, lo - 1:hi] * live[..., None]).sum(2),
            world_change=(self.world_change[:, :, lo - 1:hi] * live).sum(2),
            real_change=(self.real_change[:, :, lo - 1:hi] * live).sum(2))


@dataclass
class WindowSums:
    """steps (S, K) alive steps counted; *_shift (S, K, 2) and *_change (S, K) their sums."""

    steps: np.ndarray
    world_shift: np.ndarray
    real_shift: np.ndarray
    world_change: np.ndarray
    real_change: np.ndarray

    def means(self, sel: np.ndarray) -> dict[str, np.ndarray]:
        """Per key, means over the alive steps of the starts ``sel`` (indices, repeats allowed): world_shift,
        real_shift (K, 2), world_change, real_change (K,); NaN for a key with no alive step there."""
        n = self.steps[sel].sum(0)  # (K,)
        d = np.where(n > 0, n, np.nan)
        return {"world_shift": self.world_shift[sel].sum(0) / d[:, None],
                "real_shift": self.real_shift[sel].sum(0) / d[:, None],
                "world_change": self.world_change[sel].sum(0) / d, "real_change": self.real_change[sel].sum(0) / d}


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


def pooled_response(world: np.ndarray, real: np.ndarray) -> float:
    """world, real (K, 2) mean motion per key -> sum_a world_a . real_a / sum_a |real_a|^2 (NaN keys skipped)."""
    ok = np.isfinite(world).all(1) & np.isfinite(real).all(1)
    den = float(np.square(real[ok]).sum())
    return float((world[ok] * real[ok]).sum() / den) if den > 0 else float("nan")


def pooled_liveness(world: np.ndarray, real: np.ndarray) -> float:
    """world, real (K,) mean pixel change per key -> sum world / sum real over the keys both have."""
    ok = np.isfinite(world) & np.isfinite(real)
    den = float(real[ok].sum())
    return float(world[ok].sum() / den) if den > 0 else float("nan")


@dataclass
class RealStartSummary:
    """Per window: key response and liveness (None where no key qualifies), the keys each used, and per key
    the means over every start (world / real motion and change, alive steps counted)."""

    response: dict[str, Estimate | None]
    liveness: dict[str, Estimate | None]
    response_actions: dict[str, list[int]]
    liveness_actions: dict[str, list[int]]
    per_action: dict[str, dict[str, list]]


def summarise_paired(holds: PairedHolds, *, seed: int, resamples: int) -> RealStartSummary:
    """Key response and liveness per window, paired start by start; see the module docstring."""
    s = holds.alive.shape[0]
    starts = np.arange(s)
    out = RealStartSummary({}, {}, {}, {}, {})
    for name, (lo, hi) in WINDOWS.items():
        sums = holds.window(lo, hi)
        full = sums.means(starts)
        moving = [int(a) for a in np.flatnonzero(np.linalg.norm(np.nan_to_num(full["real_shift"]), axis=1)
                                                 >= MIN_REAL_MOTION)]
        lively = [int(a) for a in np.flatnonzero(np.nan_to_num(full["real_change"]) > 0)]

        def resp(sel: np.ndarray, sums=sums, keys=moving) -> float:
            m = sums.means(sel)
            return pooled_response(m["world_shift"][keys], m["real_shift"][keys])

        def live(sel: np.ndarray, sums=sums, keys=lively) -> float:
            m = sums.means(sel)
            return pooled_liveness(m["world_change"][keys], m["real_change"][keys])

        out.response[name] = _finite(bootstrap(starts, seed=seed, resamples=resamples, statistic=resp)) if moving else None
        out.liveness[name] = _finite(bootstrap(starts, seed=seed, resamples=resamples, statistic=live)) if lively else None
        out.response_actions[name], out.liveness_actions[name] = moving, lively
        out.per_action[name] = {k: np.round(np.nan_to_num(v, nan=0.0), 4).tolist() for k, v in full.items()}
        out.per_action[name]["alive_steps"] = sums.steps.sum(0).astype(int).tolist()
    return out


def _finite(e: Estimate) -> Estimate | None:
    """A resample can leave every selected key without an alive step (NaN); such an estimate is dropped."""
    values = (e.mean, e.low, e.high)
    return e if all(np.isfinite(v) for v in values) else None
