"""A few recorded actions beside the video: the labelled training stream of a LAM with ``label_weight`` > 0.

Nikulin et al. (2025, "Latent Action Learning Requires Supervision in the Presence of Distractors") find
that latent actions learned from video alone follow whatever changes most between frames, and that the
recorded actions of a few percent of the data are enough to draw them to what the agent did. Here a
fixed share of the training split's *episodes* (chosen by the run's seed, the same on every rank and on
resume) has its recorded actions read; every other clip trains the LAM as video alone (its actions -1).

``LabelledClipLoader`` wraps a :class:`~playworld.data.loader.ClipLoader` and yields
:class:`LabelledBatch` (video (B, T, H, W, C) uint8, actions (B, T) int64, -1 where not read) in the
wrapped loader's order, with its resumable position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from playworld.data.loader import ClipLoader
from playworld.errors import DatasetError

__all__ = ["LabelledBatch", "LabelledClipLoader", "labelled_episodes"]


class LabelledBatch(NamedTuple):
    """video (B, T, H, W, C): uint8 from the loader, float in [0, 1] once :meth:`to` has moved it;
    actions (B, T) int64, ``actions[:, t]`` taken at frame t, -1 where no recorded action is read."""

    video: torch.Tensor
    actions: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelledBatch:
        from playworld.models.base import to_unit

        video = self.video.to(device, non_blocking=non_blocking)
        return LabelledBatch(to_unit(video) if video.dtype == torch.uint8 else video,
                             self.actions.to(device, non_blocking=non_blocking))


def labelled_episodes(episodes: list[int], share: float, seed: int) -> set[int]:
    """The dataset episode indices (of ``episodes``, one split's) whose actions are read: ceil(share x n)
    of them, drawn by ``seed`` alone, so every rank and every resumption reads the same ones."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"label share must be in (0, 1], got {share}")
    n = math.ceil(share * len(episodes)) if episodes else 0
    order = np.random.default_rng(seed).permutation(len(episodes))
    return {episodes[i] for i in sorted(order[:n].tolist())}


class LabelledClipLoader:
    """``loader``'s batches with the recorded actions of a ``share`` of its split's episodes.

    Raises :class:`~playworld.errors.DatasetError` (naming the dataset) if the dataset recorded no actions,
    if none of the chosen episodes has them, or if its action space is not ``num_actions``.
    """

    def __init__(self, loader: ClipLoader, *, share: float, seed: int, num_actions: int) -> None:
        self.loader = loader
        clips = loader.clips
        dataset = clips.dataset
        where = dataset.root
        if dataset.num_actions is None:
            raise DatasetError(f"{where}: lam.label_weight > 0 reads recorded actions, but this dataset has none "
                               "(its manifest's num_actions is null): train the LAM on video alone (label_weight=0)")
        if dataset.num_actions != num_actions:
            raise DatasetError(f"{where}: the dataset's action space has {dataset.num_actions} actions, the LAM's "
                               f"label table {num_actions} (lam.label_actions)")
        has_actions = {e.index: e.has_actions for e in clips.episodes}  # the split's episodes long enough for a clip
        chosen = labelled_episodes(sorted(has_actions), share, seed)
        self.labelled = {e for e in chosen if has_actions[e]}
        if not self.labelled:
            raise DatasetError(f"{where}: none of the {len(chosen)} episodes chosen for labels (lam.label_share="
                               f"{share} of split {clips.split!r}) recorded actions")

    @property
    def clips(self) -> Any:
        return self.loader.clips

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def batch_actions(self, indices: list[int]) -> torch.Tensor:
        """Clip indices -> (B, T) int64 recorded actions, -1 for clips of episodes not chosen."""
        rows = []
        for i in indices:
            episode, _ = self.loader.clips.locate(i)
            if episode in self.labelled:
                rows.append(self.loader.clips.clip_actions(i))
            else:
                rows.append(np.full(self.loader.clips.clip_len, -1, dtype=np.int64))
        return torch.from_numpy(np.stack(rows))

    def __iter__(self) -> Iterator[LabelledBatch]:
        for indices in self.loader.index_batches():
            yield LabelledBatch(self.loader.clips.get_batch(indices), self.batch_actions(indices))
