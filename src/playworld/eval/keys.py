"""Key response and liveness: every latent action held for many steps, against the real game.

From S real start frames each of the K latent actions is held for L steps (``control.press_each_action``).
Per step i (frame i-1 -> i) the world's motion is the global shift (dy, dx) and its liveness the mean
absolute pixel change (0-255). Windows of steps: early 2-8 (the first step leaves the start frame as the
world sees it), late 20-30, far = the last 10 of L (about 100). A world that works for a few steps and
then freezes keeps its early figures and loses its late ones.

Against the real game (:mod:`playworld.eval.realgame`), under the true action the best latent -> true
mapping gives each latent action:

- key response of action a in a window: the world's mean motion projected on the real motion,
  (m . r) / |r|^2 (1 = the real speed in the real direction, 0 = no motion or a perpendicular one),
  for actions whose real motion is at least ``MIN_REAL_MOTION`` px per frame;
- liveness: the world's pixel change over the real game's (1 = as lively, 0 = frozen). Change alone
  rewards flicker (noise changes pixels without moving the scene), so it is read beside key response.

Summaries average the actions; intervals resample start frames with the real figures held at their
point values (their own intervals, over episodes, are reported beside them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from playworld.eval.motion import MotionEstimator
from playworld.eval.realgame import RealMotion, pixel_change
from playworld.eval.stats import Estimate, bootstrap

EARLY = (2, 8)
LATE = (20, 30)
FAR_STEPS = 10
MIN_REAL_MOTION = 0.25  # px per frame: below this the real motion's direction is mostly noise


def windows(steps: int) -> dict[str, tuple[int, int]]:
    """Named windows of 1-based steps (inclusive) for a rollout of ``steps`` >= 30 steps."""
    if steps < LATE[1]:
        raise ValueError(f"held-key rollouts need >= {LATE[1]} steps, got {steps}")
    return {"early": EARLY, "late": LATE, "far": (steps - FAR_STEPS + 1, steps)}


@dataclass
class KeyCurves:
    """shift: (S, K, L, 2) per-step motion (dy, dx) px; change: (S, K, L) per-step pixel change."""

    shift: np.ndarray
    change: np.ndarray

    @classmethod
    def measure(cls, frames: Tensor, motion: MotionEstimator) -> KeyCurves:
        """frames uint8 (S, K, 1+L, H, W, C) from ``press_each_action``."""
        a, b = frames[:, :, :-1], frames[:, :, 1:]
        return cls(shift=motion(a, b).numpy(), change=pixel_change(a, b).numpy())

    def window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean over steps lo..hi (1-based, inclusive) -> shift (S, K, 2), change (S, K)."""
        return self.shift[:, :, lo - 1:hi].mean(2), self.change[:, :, lo - 1:hi].mean(2)


def response(shift: np.ndarray, real: np.ndarray) -> np.ndarray:
    """shift (..., 2) world motion, real (2,) real motion -> (...) projection ratio (m . r) / |r|^2."""
    return (shift * real).sum(-1) / float(np.square(real).sum())


@dataclass
class KeySummary:
    """Per window name: key response and liveness averaged over the actions that have a real reference
    (None where none has), the world's pixel change averaged over all actions, and the actions used."""

    response: dict[str, Estimate | None]
    liveness: dict[str, Estimate | None]
    change: dict[str, Estimate]
    response_actions: list[int]
    liveness_actions: list[int]


def summarise(curves: KeyCurves, real: dict[int, RealMotion], *, seed: int, resamples: int) -> KeySummary:
    """``real``: latent action -> the real game's motion under its mapped true action (may be empty)."""
    s, k, steps = curves.change.shape
    moving = sorted(a for a, r in real.items() if np.linalg.norm(r.vector) >= MIN_REAL_MOTION)
    lively = sorted(a for a, r in real.items() if r.change.mean > 0)
    starts = np.arange(s)
    out = KeySummary({}, {}, {}, moving, lively)
    for name, (lo, hi) in windows(steps).items():
        shift, change = curves.window(lo, hi)  # (S, K, 2), (S, K)

        def resp(sel: np.ndarray, shift=shift) -> float:
            m = shift[sel].mean(0)  # (K, 2)
            return float(np.mean([response(m[a], real[a].vector) for a in moving]))

        def live(sel: np.ndarray, change=change) -> float:
            c = change[sel].mean(0)  # (K,)
            return float(np.mean([c[a] / real[a].change.mean for a in lively]))

        out.response[name] = bootstrap(starts, seed=seed, resamples=resamples, statistic=resp) if moving else None
        out.liveness[name] = bootstrap(starts, seed=seed, resamples=resamples, statistic=live) if lively else None
        out.change[name] = bootstrap(change.mean(1), seed=seed, resamples=resamples)
    return out
