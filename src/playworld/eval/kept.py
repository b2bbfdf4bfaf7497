"""How much of the real motion a stage of the world keeps: its shifts regressed on the real ones.

For transitions i with real shift r_i and a stage's shift m_i on one axis (the tokenizer's
reconstructions of the same two frames, or the world's teacher-forced prediction of the second from
the first), the figure is the least-squares slope through the origin, kept = sum m_i r_i / sum r_i^2
(1 = every pixel of motion kept, 0 = a static picture, > 1 = exaggerated), next to the Pearson
correlation of m and r (does the stage move the right way at all). Transitions are resampled by their
group (episode), since the transitions of one clip are not independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from playworld.eval.stats import Estimate, bootstrap

AXES = ("dy", "dx")


def slope(model: np.ndarray, real: np.ndarray) -> float:
    """Least-squares slope through the origin of ``model`` (N,) on ``real`` (N,); 0 without motion."""
    den = float(np.square(real).sum())
    return float((model * real).sum() / den) if den > 1e-12 else 0.0


def correlation(model: np.ndarray, real: np.ndarray) -> float:
    """Pearson correlation of ``model`` and ``real`` (N,); 0 where either is constant."""
    m, r = model - model.mean(), real - real.mean()
    den = float(np.sqrt(np.square(m).sum() * np.square(r).sum()))
    return float((m * r).sum() / den) if den > 1e-12 else 0.0


@dataclass(frozen=True)
class MotionKept:
    """Per axis (dy, dx): the slope of the stage's shift on the real shift and their correlation; the
    mean absolute real shift per transition (how much motion there was to keep); transitions used."""

    slope: dict[str, Estimate]
    correlation: dict[str, Estimate]
    real_motion: float
    transitions: int

    def to_json(self, replicates: bool = False) -> dict:
        return {"slope": {k: e.to_json(replicates) for k, e in self.slope.items()},
                "correlation": {k: e.to_json(replicates) for k, e in self.correlation.items()},
                "real_motion": self.real_motion, "transitions": self.transitions}


def motion_kept(model: np.ndarray, real: np.ndarray, groups: np.ndarray, *, seed: int,
                resamples: int) -> MotionKept:
    """model, real: (N, 2) shifts (dy, dx) of the same N transitions; groups: (N,) independent unit of
    each (episode) -> :class:`MotionKept` with cluster-bootstrap intervals."""
    model, real, groups = np.asarray(model, np.float64), np.asarray(real, np.float64), np.asarray(groups)
    if model.shape != real.shape or model.ndim != 2 or model.shape[1] != 2 or len(groups) != len(real):
        raise ValueError(f"motion_kept: model {model.shape}, real {real.shape} and groups {groups.shape} must be "
                         "(N, 2), (N, 2) and (N,)")
    if not len(real):
        raise ValueError("motion_kept: no transitions")
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]

    def per_axis(stat, axis: int) -> Estimate:
        def on(sel: np.ndarray) -> float:
            rows = np.concatenate([members[int(i)] for i in sel])
            return stat(model[rows, axis], real[rows, axis])

        return bootstrap(np.arange(len(ids)), seed=seed, resamples=resamples, statistic=on)

    return MotionKept(slope={a: per_axis(slope, i) for i, a in enumerate(AXES)},
                      correlation={a: per_axis(correlation, i) for i, a in enumerate(AXES)},
                      real_motion=float(np.abs(real).sum(1).mean()), transitions=len(real))
