"""Tiny datasets made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from playworld.data.format import DatasetWriter, EpisodeData
from playworld.data.split import SplitRule


def make_dataset(out: Path, *, episodes: int = 6, length: int = 12, size: int = 16, seed: int = 0,
                 videos: np.ndarray | None = None, actions: np.ndarray | None = None,
                 val: float = 0.0, test: float = 0.0) -> Path:
    """Write a dataset of moving-square episodes (or of the given ``videos`` (N, T, H, W, 3) uint8 and
    ``actions`` (N, T-1)) split by episode, and return its directory."""
    rng = np.random.default_rng(seed)
    if videos is None:
        videos = np.zeros((episodes, length, size, size, 3), dtype=np.uint8)
        for i in range(episodes):
            videos[i, ..., 2] = 40 + 20 * i
            y, x = rng.integers(0, size - 4, size=2)
            for t in range(length):
                xt = (x + t) % (size - 4)
                videos[i, t, y : y + 4, xt : xt + 4] = (250, 200, 30)
    n, t = videos.shape[:2]
    writer = DatasetWriter(out, frame_shape=tuple(videos.shape[2:]), num_actions=None if actions is None else 4,
                           source={"kind": "test"}, rule=SplitRule(by="episode", val=val, test=test))
    for i in range(n):
        acts = None
        if actions is not None:
            acts = np.concatenate([actions[i], [0]]).astype(np.int64)  # action taken at each frame
        writer.add(EpisodeData(videos[i], acts, None, level_seed=None, source=f"toy{i}"))
    writer.finalize()
    return out
