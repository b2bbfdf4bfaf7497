"""The real game's motion and pixel change under a held true action, from recorded episodes.

A transition t -> t+1 of a recorded episode counts as action a held when the true actions at frames
t-hold+1 .. t were all a (the agent has had time to reach the action's steady motion; CoinRun's agent
accelerates over a few frames). Its motion is the global shift between the two frames (the estimator
of :mod:`playworld.eval.motion`; the camera follows the agent, so the scene moves opposite to it) and
its pixel change the mean absolute difference of the two frames on the 0-255 scale. The true actions
are used here, for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from playworld.data.format import Dataset
from playworld.eval.motion import MotionEstimator
from playworld.eval.stats import Estimate, bootstrap


def pixel_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel difference of uint8 (or 0-255 float) frames (..., H, W, C) -> (...)."""
    return (b.float() - a.float()).abs().mean((-3, -2, -1))


def held_mask(actions: np.ndarray, hold: int) -> np.ndarray:
    """actions (L,) -> (L,) bool: True at t where actions[t-hold+1 .. t] are all equal (and recorded)."""
    actions = np.asarray(actions, dtype=np.int64)
    same = np.ones(len(actions), dtype=bool)
    for back in range(1, hold):
        prev = np.concatenate([np.full(back, -2), actions[:-back]])
        same &= prev == actions
    return same & (actions >= 0)


@dataclass
class HeldTransitions:
    """Real transitions under a held action: action (N,), shift (N, 2) (dy, dx) px, change (N,) 0-255,
    group (N,) the episode of each (the bootstrap unit); frames: (F, H, W, C) uint8, every frame of the
    episodes read (the real side of the realism figure), frame_episode (F,) the episode of each."""

    action: np.ndarray
    shift: np.ndarray
    change: np.ndarray
    group: np.ndarray
    frames: np.ndarray
    frame_episode: np.ndarray

    def reference(self, mapping: dict[int, int], *, seed: int, resamples: int) -> dict[int, RealMotion]:
        """latent -> the real motion of the true action ``mapping`` gives it (where there is enough of it)."""
        out = {}
        for latent, true in mapping.items():
            summary = self.summary(true, seed=seed, resamples=resamples)
            if summary is not None:
                out[latent] = summary
        return out

    def summary(self, action: int, *, seed: int, resamples: int, min_transitions: int = 8) -> RealMotion | None:
        """The steady motion and change of ``action``, or None with fewer than ``min_transitions``."""
        sel = self.action == action
        if sel.sum() < min_transitions:
            return None
        shift, change, group = self.shift[sel], self.change[sel], self.group[sel]
        ids = np.unique(group)
        members = [np.flatnonzero(group == g) for g in ids]

        def est(values: np.ndarray) -> Estimate:  # mean over transitions, resampling episodes
            return bootstrap(np.arange(len(ids)), seed=seed, resamples=resamples,
                             statistic=lambda s: float(values[np.concatenate([members[int(i)] for i in s])].mean()))

        return RealMotion(action=action, dy=est(shift[:, 0]), dx=est(shift[:, 1]), change=est(change),
                          transitions=int(sel.sum()), episodes=len(ids))


@dataclass(frozen=True)
class RealMotion:
    """One true action held in the real game: mean motion per frame (dy, dx) px and pixel change."""

    action: int
    dy: Estimate
    dx: Estimate
    change: Estimate
    transitions: int
    episodes: int

    @property
    def vector(self) -> np.ndarray:
        return np.array([self.dy.mean, self.dx.mean])

    def to_json(self, replicates: bool = False) -> dict:
        return {"action": self.action, "dy": self.dy.to_json(replicates), "dx": self.dx.to_json(replicates),
                "change": self.change.to_json(replicates), "transitions": self.transitions,
                "episodes": self.episodes}


def held_transitions(dataset: Dataset, episodes: list[int], hold: int, motion: MotionEstimator) -> HeldTransitions:
    """Read ``episodes`` (dataset episode indices) of ``dataset`` and keep their held-action transitions."""
    if hold < 1:
        raise ValueError(f"hold must be >= 1 frame, got {hold}")
    acts, shifts, changes, groups, frames, owner = [], [], [], [], [], []
    for g, ep in enumerate(episodes):
        video = torch.from_numpy(np.array(dataset.frames(ep)))  # (L, H, W, C) uint8
        actions = np.asarray(dataset.actions(ep), dtype=np.int64)[:-1]  # (L-1,): the action of t -> t+1
        frames.append(video.numpy())
        owner.append(np.full(len(video), g))
        keep = held_mask(actions, hold)
        if not keep.any():
            continue
        t = torch.from_numpy(np.flatnonzero(keep))
        a, b = video[t], video[t + 1]
        acts.append(actions[keep])
        shifts.append(motion(a, b).numpy())
        changes.append(pixel_change(a, b).numpy())
        groups.append(np.full(int(keep.sum()), g))
    if not frames:
        raise ValueError("held_transitions: no episodes given")
    if not acts:
        empty = np.zeros(0)
        return HeldTransitions(empty.astype(np.int64), np.zeros((0, 2)), empty, empty.astype(np.int64),
                               np.concatenate(frames), np.concatenate(owner))
    return HeldTransitions(np.concatenate(acts), np.concatenate(shifts), np.concatenate(changes),
                           np.concatenate(groups), np.concatenate(frames), np.concatenate(owner))
