"""Token/action cache for dynamics training: each episode tokenized and labelled once, not every step.

The dynamics model learns on the tokens of a frozen tokenizer and the latent actions of a frozen LAM
(Genie, arXiv 2402.15391, sec. 2.3). Both are fixed for the whole run, so recomputing them on every
pixel batch (most of a CPU training step of the ``small`` preset) is waste: this module encodes every
episode of a split once, stores the result in the run directory, and serves clips of tokens and
actions with exactly the clip sampling, seeds and resume position of the pixel
:class:`~playworld.data.loader.ClipLoader` it wraps.

**How cached tokens relate to per-clip encoding.** Both frozen models are causal in time. On the fly,
a clip starting at episode frame s is encoded on its own, so its frame s+j sees only the j frames
before it in the clip. The cache encodes whole episodes with a sliding window of ``window`` frames
(the dynamics clip length): :meth:`VideoTokenizer.encode_step` with a KV cache of that many frames,
as play encodes and decodes, so in every encoder layer episode frame t attends to frames
max(0, t-window+1)..t, and through L layers frames up to L*(window-1) back reach it. Clips that start
at frame 0 of an episode (so every clip of an episode no longer than a clip) get exactly the tokens
of on-the-fly encoding, and with a one-layer encoder so does the last frame of every clip; elsewhere
a frame sees more past than it would on the fly, and the same amount wherever it sits in a clip, as a
frame deep in a play session does. The LAM reads transition t -> t+1 from exactly the frames
max(0, t+2-w)..t+1 (``infer_window`` w) in both cases (each window encoded on its own, as
``infer_actions`` does), so actions agree from the (w-1)-th transition of a clip on; the first w-2 of
a clip read a shorter window on the fly. Measured on CoinRun clips with the shipped models: see
docs/training.md.

Layout: ``RUN/token_cache/SPLIT.safetensors`` (``tokens`` (F, h, w) int16/int32 over the F frames of
the split's episodes in order, ``actions`` (F,) int16 with the action t -> t+1 at frame t and -1 at an
episode's last frame, ``offsets`` (E+1,) int64, ``episodes`` (E,) int64 dataset indices) and
``RUN/token_cache/SPLIT.json``, the manifest written last (the commit point): the keys the cache is
valid for (the sha256 of the tokenizer's and the LAM's weights, a hash of their configs, the
dataset's manifest, the split and the window) and the sha256 and size of the tensor file. A cache
whose keys differ is rebuilt with a message saying which; an unreadable, truncated or modified one is
named and rebuilt.

Shapes: B clips, T frames per clip, h x w token grid, S = h*w, E episodes, F frames of a split.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from playworld.bars import progress_bar
from playworld.data.loader import ClipLoader
from playworld.errors import CheckpointError, ConfigError
from playworld.io import atomic_write_text

__all__ = ["TokenBatch", "TokenCache", "TokenClipLoader", "cache_keys", "encode_episode_batch", "load_or_build"]

FORMAT = "playworld-token-cache"
VERSION = 1


class TokenBatch(NamedTuple):
    """A batch of dynamics inputs: tokens (B, T, S) long, actions (B, T-1) long. A NamedTuple so that
    DDP and torch.compile pass it through."""

    tokens: torch.Tensor
    actions: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenBatch:
        return TokenBatch(self.tokens.to(device, non_blocking=non_blocking),
                          self.actions.to(device, non_blocking=non_blocking))


@dataclass
class TokenCache:
    """One split's cached tokens and actions (see the module docstring for the layout)."""

    tokens: torch.Tensor  # (F, h, w) int16/int32
    actions: torch.Tensor  # (F,) int16, -1 at each episode's last frame
    offsets: torch.Tensor  # (E+1,) int64: episode i is frames offsets[i]:offsets[i+1]
    episodes: torch.Tensor  # (E,) int64 dataset episode indices

    def row_of(self) -> dict[int, int]:
        return {int(e): i for i, e in enumerate(self.episodes.tolist())}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens, "actions": self.actions, "offsets": self.offsets, "episodes": self.episodes}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def model_identity(model: nn.Module, weights_sha256: str | None) -> dict[str, str]:
    """What a cache built with ``model`` depends on: its weights (the sha256 of its release file, as
    its config.json "files" entry records it, or else a hash of its tensors) and its config."""
    from playworld.config import to_dict

    if weights_sha256 is None:
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        weights_sha256 = "tensors:" + h.hexdigest()
    config = getattr(model, "config", None)
    return {"weights": weights_sha256, "config": _digest(to_dict(config)) if config is not None else ""}


def cache_keys(*, tokenizer: dict[str, str], lam: dict[str, str], dataset_root: Path, split: str | None,
               window: int) -> dict[str, Any]:
    """The manifest keys a cache is valid for; a cache whose keys differ is rebuilt."""
    from playworld.release import sha256_file

    return {"format": FORMAT, "version": VERSION, "tokenizer": tokenizer, "lam": lam,
            "dataset_manifest_sha256": sha256_file(Path(dataset_root) / "manifest.json"),
            "split": split, "window": window}


@torch.no_grad()
def encode_episode_batch(video: torch.Tensor, tokenizer: nn.Module, lam: nn.Module, *, window: int,
                         chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """video (B, L, H, W, C) in [0, 1] -> tokens (B, L, h, w) long, actions (B, L-1) long.

    Frame t attends to frames max(0, t-window+1)..t in each encoder layer (``encode_step`` with a
    ``window``-frame KV cache, ``chunk`` frames at a time: any chunk gives the same tokens up to
    floating-point order);
    transition t -> t+1 is labelled by the LAM from frames max(0, t+2-w)..t+1 as ``infer_actions`` does.
    Both models are causal, so rows padded at the end (e.g. with their last frame) are exact before
    the padding.
    """
    length = video.shape[1]
    cache = tokenizer.new_cache(max_frames=window)  # type: ignore[operator]
    tokens = torch.cat([tokenizer.encode_step(video[:, s:s + chunk], cache).indices  # type: ignore[operator]
                        for s in range(0, length, chunk)], dim=1)  # (B, L, h, w)
    w = lam.config.infer_window  # type: ignore[union-attr]
    parts = []
    for s in range(0, length - 1, chunk):  # transitions [s, e) need frames a..e
        e = min(s + chunk, length - 1)
        a = max(0, s + 2 - w)
        parts.append(lam.infer_actions(video[:, a:e + 1])[:, s - a:])  # type: ignore[operator]
    actions = torch.cat(parts, dim=1) if parts else video.new_zeros(video.shape[0], 0, dtype=torch.long)
    return tokens, actions


def build_cache(loader: ClipLoader, tokenizer: nn.Module, lam: nn.Module, *, window: int, device: torch.device,
                batch_episodes: int = 4, chunk: int = 8, progress: bool = True) -> TokenCache:
    """Encode every episode of ``loader``'s split (longest first, ``batch_episodes`` at a time, each row
    padded to the batch's longest with its last frame) and gather the result in dataset order.

    4 episodes x 8 frames per step measured fastest per frame on a 2-core CPU (the small models' tensors
    then stay in cache; 8 x 16 was 1.3x slower)."""
    from playworld.models.base import to_unit

    dataset = loader.clips.dataset
    episodes = dataset.episodes(loader.clips.split)
    lengths = np.array([e.length for e in episodes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    code_dtype = torch.int16 if int(getattr(tokenizer, "num_codes", 1 << 15)) <= 32767 else torch.int32
    grid = tuple(tokenizer.grid)  # type: ignore[arg-type]
    tokens = torch.empty((int(offsets[-1]), *grid), dtype=code_dtype)
    actions = torch.full((int(offsets[-1]),), -1, dtype=torch.int16)
    order = np.argsort(-lengths, kind="stable")
    bar = progress_bar(total=int(offsets[-1]), desc=f"token cache {loader.clips.split}", unit="frame",
                       disable=not progress)
    try:
        for first in range(0, len(order), batch_episodes):
            rows = order[first:first + batch_episodes]
            longest = int(lengths[rows].max())
            frames = np.empty((len(rows), longest, *dataset.frame_shape), dtype=np.uint8)
            for j, i in enumerate(rows):
                ep = dataset.frames(episodes[i])  # (L_i, H, W, C)
                frames[j, :len(ep)] = ep
                frames[j, len(ep):] = ep[-1]
            video = to_unit(torch.from_numpy(frames).to(device))
            tok, act = encode_episode_batch(video, tokenizer, lam, window=window, chunk=chunk)
            for j, i in enumerate(rows):
                n, o = int(lengths[i]), int(offsets[i])
                tokens[o:o + n] = tok[j, :n].to("cpu", code_dtype)
                actions[o:o + n - 1] = act[j, :n - 1].to("cpu", torch.int16)
            bar.update(int(lengths[rows].sum()))
    finally:
        bar.close()
    return TokenCache(tokens=tokens, actions=actions, offsets=torch.from_numpy(offsets),
                      episodes=torch.tensor([e.index for e in episodes], dtype=torch.int64))


def _read(directory: Path, split: str, keys: dict[str, Any]) -> tuple[TokenCache | None, str]:
    """The cache of ``split`` if it is valid for ``keys``, else (None, why not) ("" if there is none)."""
    from playworld.io import read_json
    from playworld.release import load_tensors, sha256_file

    manifest_path, path = directory / f"{split}.json", directory / f"{split}.safetensors"
    if not manifest_path.exists():
        return None, ""
    try:
        manifest = read_json(manifest_path, CheckpointError, "token cache manifest")
    except CheckpointError as e:
        return None, str(e)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("keys"), dict):
        return None, f"{manifest_path}: not a token cache manifest"
    saved = manifest["keys"]
    changed = sorted(k for k in set(saved) | set(keys) if saved.get(k) != keys.get(k))
    if changed:
        return None, (f"{path} was built for another " + ", ".join(changed) + " ("
                      + "; ".join(f"{k}: {saved.get(k)!r} vs now {keys.get(k)!r}" for k in changed) + ")")
    record = manifest.get("file", {})
    if not path.is_file():
        return None, f"{path}: missing (its manifest {manifest_path.name} is there)"
    if path.stat().st_size != record.get("bytes"):
        return None, f"{path}: {path.stat().st_size} bytes, its manifest records {record.get('bytes')} (truncated?)"
    if sha256_file(path) != record.get("sha256"):
        return None, f"{path}: sha256 differs from its manifest (file corrupt or modified)"
    try:
        t = load_tensors(path)
        cache = TokenCache(tokens=t["tokens"], actions=t["actions"], offsets=t["offsets"], episodes=t["episodes"])
    except (CheckpointError, KeyError) as e:
        return None, f"{path}: unreadable token cache ({e})"
    frames = int(cache.offsets[-1]) if len(cache.offsets) else -1
    if cache.tokens.shape[0] != frames or cache.actions.shape != (frames,) or \
            len(cache.episodes) + 1 != len(cache.offsets):
        return None, f"{path}: inconsistent shapes (tokens {tuple(cache.tokens.shape)}, offsets {len(cache.offsets)})"
    return cache, ""


def load_or_build(directory: Path, loader: ClipLoader, tokenizer: nn.Module, lam: nn.Module, *,
                  keys: dict[str, Any], window: int, device: torch.device, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> TokenCache:
    """The valid cache of ``loader``'s split in ``directory``, built (and written atomically) if there is
    none, if its ``keys`` differ, or if its file is bad; each reason is reported through ``log``."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    split = loader.clips.split or "all"
    directory = Path(directory)
    cache, why = _read(directory, split, keys)
    if cache is not None:
        return cache
    say(f"token cache: {why}; rebuilding" if why else
        f"token cache: encoding the {split} split once with the frozen tokenizer and LAM -> {directory}")
    cache = build_cache(loader, tokenizer, lam, window=window, device=device, progress=progress)
    from playworld.release import file_record, save_tensors

    path = directory / f"{split}.safetensors"
    save_tensors(path, cache.tensors())
    atomic_write_text(directory / f"{split}.json",
                      json.dumps({"keys": keys, "file": file_record(path)}, indent=2, sort_keys=True))
    return cache


class TokenClipLoader:
    """Endless :class:`TokenBatch` es of a cached split, clip for clip those that ``loader`` (a
    :class:`ClipLoader`) would yield as pixels: same permutation, ranks, epochs and resume position
    (``state_dict``/``load_state_dict`` are the wrapped loader's)."""

    def __init__(self, loader: ClipLoader, cache: TokenCache) -> None:
        if loader.clips.stride != 1:
            raise ConfigError(f"the token cache serves clips of consecutive frames, not stride {loader.clips.stride}")
        self.loader, self.cache = loader, cache
        row_of = cache.row_of()
        missing = [e.index for e in loader.clips.episodes if e.index not in row_of]
        if missing:
            raise CheckpointError(f"token cache lacks {len(missing)} episode(s) of split {loader.clips.split!r} "
                                  f"(first: {missing[:5]})")
        self._start = np.array([int(cache.offsets[row_of[e.index]]) for e in loader.clips.episodes], dtype=np.int64)
        self._tokens = cache.tokens.flatten(1)  # (F, S)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def get_batch(self, indices: list[int]) -> TokenBatch:
        """Tokens and actions of clips ``indices`` (clip indices of the wrapped loader's ClipDataset)."""
        pos, start = self.loader.clips._locate(np.asarray(indices, dtype=np.int64))
        t = self.loader.clips.clip_len
        frames = torch.from_numpy(self._start[pos] + start)[:, None] + torch.arange(t)  # (B, T)
        return TokenBatch(self._tokens[frames].long(), self.cache.actions[frames[:, :-1]].long())

    def __iter__(self) -> Iterator[TokenBatch]:
        for indices in self.loader.index_batches():
            yield self.get_batch(indices)
