"""Clips for training and evaluation: a uniform, resumable, rank-sharded stream of (B, T, H, W, C) batches.

Sampling contract (the trainer relies on it):
- valid clips are every start ``s`` of every episode of the split with ``s + (T - 1) * stride + 1 <= L``,
  so a clip never crosses an episode boundary; clip ``i`` is numbered episode by episode, start by start;
- epoch ``e`` visits ``perm = randperm(clips, generator=manual_seed(seed * 1_000_003 + e))``; global batch
  ``k`` is ``perm[k*B*W : (k+1)*B*W]`` and rank ``r`` takes every W-th clip of it from ``r``, so W ranks
  with batch B see exactly the clips of one process with batch B*W, and no clip twice; the incomplete last
  global batch is dropped;
- ``state_dict()`` is the position of the next batch handed to the caller (prefetched batches don't
  count), so a resumed loader continues with exactly the batch that would have come next.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.utils.data as tud

from playworld.data.format import Dataset, Episode
from playworld.errors import ConfigError, DatasetError

__all__ = ["Clip", "ClipDataset", "ClipLoader"]


class Clip(NamedTuple):
    """One clip; a NamedTuple so that torch's default collate batches it."""

    frames: torch.Tensor  # (T, H, W, C) uint8
    actions: torch.Tensor  # (T,) int64; actions[t] was taken at frames[t]; -1 where none were recorded
    episode: int  # index of the episode in the dataset
    start: int  # first frame of the clip within its episode


class ClipDataset(tud.Dataset):
    """Map-style dataset of every valid clip of a split: index -> :class:`Clip`.

    Args:
        dataset: a dataset directory or an open :class:`~playworld.data.format.Dataset`.
        clip_len: frames per clip, T.
        split: 'train', 'val', 'test', or None for all episodes.
        stride: step between the frames of a clip (2 = every other frame).
        drop_short: skip episodes shorter than a clip; if False such episodes raise ``DatasetError``.
    """

    def __init__(self, dataset: str | Path | Dataset, *, clip_len: int = 16, split: str | None = "train",
                 stride: int = 1, drop_short: bool = True) -> None:
        for name, value in (("clip_len", clip_len), ("stride", stride)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        self.dataset = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
        self.clip_len, self.stride, self.split = clip_len, stride, split
        self.span = (clip_len - 1) * stride + 1  # frames an episode needs per clip
        episodes = self.dataset.episodes(split)
        short = [e.index for e in episodes if e.length < self.span]
        if short and not drop_short:
            raise DatasetError(f"{self.dataset.root}: {len(short)} episode(s) of split {split!r} are shorter than "
                               f"a clip of {self.span} frames (first: {short[:5]}); pass drop_short=True to skip them")
        self.num_short = len(short)
        self.episodes: list[Episode] = [e for e in episodes if e.length >= self.span]
        counts = np.array([e.length - self.span + 1 for e in self.episodes], dtype=np.int64)
        self._ends = np.cumsum(counts)  # (E,) clip index one past each episode's last clip
        self._shard = np.array([e.shard for e in self.episodes], dtype=np.int64)
        self._offset = np.array([e.offset for e in self.episodes], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """indices (B,) -> (position in self.episodes (B,), start within the episode (B,))."""
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"clip index out of range [0, {len(self)}): {indices.min()}..{indices.max()}")
        pos = np.searchsorted(self._ends, indices, side="right")
        return pos, indices - np.where(pos > 0, self._ends[pos - 1], 0)

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset episode index, start frame) of clip ``index``."""
        pos, start = self._locate(np.array([index]))
        return self.episodes[int(pos[0])].index, int(start[0])

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.clip_len, *self.dataset.frame_shape)

    def get_batch(self, indices: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """Frames of clips ``indices``: (B, T, H, W, C) uint8, one copy out of the memmaps (into ``out``)."""
        pos, start = self._locate(np.asarray(indices, dtype=np.int64))
        # np.empty, not torch.empty: malloc reuses the freed block of the previous batch, torch's allocator
        # returns it to the OS and page-faults a fresh one every time (5x slower here).
        dst = np.empty(self.batch_shape(len(pos)), dtype=np.uint8) if out is None else out.numpy()
        for j, (shard, first) in enumerate(zip(self._shard[pos], self._offset[pos] + start)):
            dst[j] = self.dataset.shard_arrays(int(shard))[0][first:first + self.span:self.stride]
        return torch.from_numpy(dst) if out is None else out

    def clip_actions(self, index: int) -> np.ndarray:
        """Recorded actions of clip ``index``: (T,) int64, ``actions[t]`` taken at frame t; -1 if absent."""
        pos, start = self._locate(np.array([index]))
        ep, s = self.episodes[int(pos[0])], int(start[0])
        return np.asarray(self.dataset.actions(ep)[s:s + self.span:self.stride], dtype=np.int64)

    def __getitem__(self, index: int) -> Clip:
        episode, start = self.locate(index)
        return Clip(self.get_batch([index])[0], torch.from_numpy(self.clip_actions(index)), episode, start)


class _Batches(tud.Dataset):
    """Adapter for DataLoader(batch_size=None): the sampler yields a list of clip indices per batch."""

    def __init__(self, clips: ClipDataset) -> None:
        self.clips = clips

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        # Fill a shared-memory tensor directly, as torch's default collate does in workers: without it the
        # batch is copied once more on its way to the main process.
        nbytes = int(np.prod(self.clips.batch_shape(len(indices))))
        out = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
        return self.clips.get_batch(indices, out.view(self.clips.batch_shape(len(indices))))


def _worker_init(_: int) -> None:
    # A stop signal sent to the whole process group (``timeout``, Slurm's preemption, ``kill -- -PGID``)
    # is the trainer's to handle: it finishes its step and writes a checkpoint. A worker killed by it
    # would make PyTorch raise in the trainer instead, wherever it is. The trainer ends its workers
    # itself; a worker whose trainer died ends by PyTorch's parent watchdog.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    info = tud.get_worker_info()
    assert info is not None
    info.dataset.clips.dataset.close()  # memmaps are opened afresh (and lazily) in each worker


class _BatchSampler(tud.Sampler[list[int]]):
    """Endless clip-index lists of one rank, from batch ``batch`` of epoch ``epoch`` on."""

    def __init__(self, loader: ClipLoader, epoch: int, batch: int) -> None:
        self.loader, self.epoch, self.batch = loader, epoch, batch

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batch = self.epoch, self.batch
        while True:
            yield self.loader.batch_indices(epoch, batch)
            epoch, batch = self.loader._next(epoch, batch)


class ClipLoader:
    """Endless stream of training batches, (B, T, H, W, C) uint8 tensors; see the module docstring.

    Args:
        dataset_dir: a finished dataset directory.
        clip_len: T. batch_size: B, per rank. split: 'train', 'val' or 'test'.
        seed: permutation seed. rank, world_size: this process and the number of data-parallel processes.
        num_workers: DataLoader worker processes (0 = read in this process); the batches are identical.
        stride: step between the frames of a clip. drop_short: skip (True) or reject (False) short episodes.
    """

    def __init__(self, dataset_dir: str | Path, *, clip_len: int = 16, batch_size: int, split: str | None = "train",
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0, stride: int = 1,
                 drop_short: bool = True) -> None:
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                 ("num_workers", num_workers, 0), ("seed", seed, 0)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"ClipLoader: {name}={value!r} must be an integer >= {low}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"ClipLoader: rank={rank!r} must be in [0, world_size={world_size})")
        self.clips = ClipDataset(dataset_dir, clip_len=clip_len, split=split, stride=stride, drop_short=drop_short)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_workers = num_workers
        if self.batches_per_epoch == 0:
            raise DatasetError(f"{dataset_dir}: split {split!r} has {self.clips_per_epoch} clips of {clip_len} "
                               f"frames, fewer than one global batch of {batch_size} x {world_size} ranks")
        self._epoch, self._batch = 0, 0
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def clips_per_epoch(self) -> int:
        """Valid clips in the split (all ranks together), the size of each epoch's permutation."""
        return len(self.clips)

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank yields per epoch (the incomplete last global batch is dropped)."""
        return self.clips_per_epoch // (self.batch_size * self.world_size)

    def _next(self, epoch: int, batch: int) -> tuple[int, int]:
        return (epoch, batch + 1) if batch + 1 < self.batches_per_epoch else (epoch + 1, 0)

    def batch_indices(self, epoch: int, batch: int) -> list[int]:
        """Clip indices of this rank's batch ``batch`` of epoch ``epoch``: (B,)."""
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.clips_per_epoch, generator=gen))
        size = self.batch_size * self.world_size
        return self._perm[1][batch * size + self.rank:(batch + 1) * size:self.world_size].tolist()

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch to be yielded: {"epoch": e, "batch": k}."""
        return {"epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state`` (from :meth:`state_dict`); takes effect at the next ``iter()``."""
        if not isinstance(state, dict) or set(state) != {"epoch", "batch"}:
            raise ConfigError(f"ClipLoader state must be {{'epoch': int, 'batch': int}}, got {state!r}")
        epoch, batch = state["epoch"], state["batch"]
        if not (isinstance(epoch, int) and isinstance(batch, int) and epoch >= 0
                and 0 <= batch < self.batches_per_epoch):
            raise ConfigError(f"ClipLoader state {state!r} is out of range ({self.batches_per_epoch} batches "
                              "per epoch; did the dataset, split, clip_len, batch size or world size change?)")
        self._epoch, self._batch = epoch, batch

    def index_batches(self) -> Iterator[list[int]]:
        """Clip indices of this rank's batches forever, from :meth:`state_dict`'s position on; the position
        advances as each is yielded (for loaders that serve something other than pixels of these clips)."""
        epoch, batch = self._epoch, self._batch
        while True:
            indices = self.batch_indices(epoch, batch)
            epoch, batch = self._next(epoch, batch)
            self._epoch, self._batch = epoch, batch
            yield indices

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yields (B, T, H, W, C) uint8 batches forever, starting at :meth:`state_dict`'s position."""
        epoch, batch = self._epoch, self._batch
        if self.num_workers == 0:
            batches: Iterator[torch.Tensor] = (self.clips.get_batch(idx)
                                               for idx in _BatchSampler(self, epoch, batch))
        else:
            batches = iter(tud.DataLoader(_Batches(self.clips), batch_size=None, sampler=_BatchSampler(self, epoch, batch),
                                          num_workers=self.num_workers, worker_init_fn=_worker_init))
        for frames in batches:
            epoch, batch = self._next(epoch, batch)
            self._epoch, self._batch = epoch, batch
            yield frames
