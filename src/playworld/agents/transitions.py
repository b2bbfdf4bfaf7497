"""Transitions of a dataset for behaviour cloning: observation windows, latent and true action labels.

Transition t of an episode is frame t -> frame t+1; its observation is frames t-context+1 .. t (the
first frame repeated before an episode's start), its latent action the LAM's label of t -> t+1, and its
true action the one recorded at frame t (-1 where none was recorded). True actions are read for oracle BC
and for the decoder's N labelled transitions only; latent BC never sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from playworld.bars import progress_bar
from playworld.data.format import Dataset
from playworld.errors import ConfigError, DatasetError
from playworld.release import load_tensors, save_tensors

Labeller = Callable[[Tensor], Tensor]
"""video (1, T, H, W, C) float in [0, 1] -> (1, T-1) long latent actions (``lam.infer_actions``)."""


@dataclass
class Transitions:
    """frames (F, H, W, 3) uint8: every frame read; current (N,) the index in ``frames`` of each
    transition's frame t; first (N,) the index of its episode's first frame; latent (N,) long (-1 where not
    labelled); true (N,) long (-1 where not recorded); episode (N,) the dataset episode of each."""

    frames: Tensor
    current: Tensor
    first: Tensor
    latent: Tensor
    true: Tensor
    episode: Tensor

    def __len__(self) -> int:
        return len(self.current)

    def observations(self, index: Tensor, context: int) -> Tensor:
        """index (B,) -> (B, context, H, W, 3) uint8: frames t-context+1 .. t, clamped at the episode start."""
        back = torch.arange(context - 1, -1, -1)  # (context,): context-1 .. 0
        idx = torch.maximum(self.current[index, None] - back, self.first[index, None])  # (B, context)
        return self.frames[idx]

    def to_tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).contiguous() for k in ("frames", "current", "first", "latent", "true", "episode")}

    @classmethod
    def from_file(cls, path: Path) -> Transitions:
        t = load_tensors(path)
        missing = {"frames", "current", "first", "latent", "true", "episode"} - set(t)
        if missing:
            raise DatasetError(f"{path}: not a transitions file (missing {sorted(missing)}); delete it to relabel")
        return cls(**t)

    def save(self, path: Path) -> None:
        save_tensors(path, self.to_tensors())


def read_transitions(data: str | Path, *, split: str | None = "train", labeller: Labeller | None = None,
                     max_episodes: int | None = None, progress: bool = True) -> Transitions:
    """Every transition of ``split`` of dataset ``data``, latent-labelled by ``labeller`` if given."""
    ds = Dataset(data)
    episodes = [e for e in ds.episodes(split) if e.length >= 2][:max_episodes]
    if not episodes:
        raise DatasetError(f"{ds.root}: no episode of split {split!r} has 2 frames or more")
    frames, current, first, latent, true, owner = [], [], [], [], [], []
    offset = 0
    for ep in progress_bar(episodes, desc="label transitions", unit="episode", disable=not progress):
        video = torch.from_numpy(np.array(ds.frames(ep)))  # (L, H, W, 3) uint8
        n = len(video) - 1
        frames.append(video)
        current.append(offset + torch.arange(n))
        first.append(torch.full((n,), offset))
        true.append(torch.from_numpy(np.asarray(ds.actions(ep)[:n], dtype=np.int64)))
        owner.append(torch.full((n,), ep.index))
        if labeller is not None:
            with torch.no_grad():
                lat = labeller(video[None].float() / 255)  # (1, L-1)
            if lat.shape != (1, n):
                raise DatasetError(f"{ds.root}: episode {ep.index}: the labeller gave {tuple(lat.shape)} "
                                   f"latent actions for {n} transitions")
            latent.append(lat[0].long().cpu())
        else:
            latent.append(torch.full((n,), -1))
        offset += len(video)
    return Transitions(torch.cat(frames), torch.cat(current), torch.cat(first), torch.cat(latent),
                       torch.cat(true), torch.cat(owner))


def pick_labelled(true: Tensor, n: int, seed: int) -> Tensor:
    """true (N,) long (-1: no key recorded) -> indices (n,) of the labelled transitions: n drawn without
    replacement, by ``seed``, among those with a recorded key. The action decoder (``agent decode --labels
    N``) and the inverse dynamics baseline (``agent bc --idm N``) both draw with it over the same
    transitions, so with the same seed they read the same N, and a smaller N's are among a larger N's."""
    have = torch.nonzero(true >= 0).flatten()
    if len(have) < n:
        raise ConfigError(f"{n} asks for more labelled transitions than the data records keys for ({len(have)})")
    g = torch.Generator().manual_seed(seed)
    return have[torch.randperm(len(have), generator=g)[:n]]
