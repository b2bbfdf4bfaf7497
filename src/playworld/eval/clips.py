"""Which clips an evaluation reads: a seeded choice of held-out episodes, one rollout clip each, and
a few non-overlapping clips per episode for the latent-vs-true action figures.

The bootstrap treats episodes as the independent units (clips of one episode share a level), so
every figure is resampled over episodes, never over frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from playworld.data.loader import ClipDataset
from playworld.errors import DatasetError


@dataclass
class EvalClips:
    """rollout: (N,) clip index per chosen episode; action: (M,) clip indices for action figures, with
    ``action_group`` (M,) the position (0..N-1) of each one's episode in ``rollout``."""

    rollout: np.ndarray
    action: np.ndarray
    action_group: np.ndarray


def choose_clips(clips: ClipDataset, episodes: int, action_clips: int, seed: int) -> EvalClips:
    """Pick ``episodes`` episodes of ``clips`` at random (all if fewer) and their clips."""
    counts = np.array([e.length - clips.span + 1 for e in clips.episodes], dtype=np.int64)
    if len(counts) == 0:
        raise DatasetError(f"{clips.dataset.root}: split {clips.split!r} has no episode of at least "
                           f"{clips.span} frames ({clips.num_short} shorter ones); evaluate on another split "
                           f"or with a shorter --horizon")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # clip index of each episode's first clip
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(counts), size=min(episodes, len(counts)), replace=False))
    rollout, action, group = [], [], []
    for g, p in enumerate(chosen):
        windows = np.arange(0, counts[p], clips.clip_len)  # non-overlapping starts
        starts = rng.choice(windows, size=min(action_clips, len(windows)), replace=False)
        starts = starts + rng.integers(0, min(clips.clip_len, counts[p] - starts.max()))  # not always at 0
        rollout.append(first[p] + starts[0])
        action.extend(first[p] + starts)
        group.extend([g] * len(starts))
    return EvalClips(np.array(rollout), np.array(action), np.array(group))
