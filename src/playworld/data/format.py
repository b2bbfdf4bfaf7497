"""On-disk dataset format: ``manifest.json`` plus memory-mapped ``.npy`` shards.

Layout of a dataset directory ``DIR``::

    DIR/manifest.json                schema, counts, checksums of every shard file, episode index, split rule
    DIR/shards/00000.frames.npy      (N, H, W, 3) uint8
    DIR/shards/00000.actions.npy     (N,) int16; -1 where no action was recorded (ingested video)
    DIR/shards/00000.rewards.npy     (N,) float32

Every episode is a contiguous run ``[offset, offset + length)`` of one shard, so a clip is a slice of a
memmap and a dataset larger than RAM streams from disk. ``actions[t]`` is the action taken at
``frames[t]`` and ``rewards[t]`` the reward it earned; ``frames[t + 1]`` is its outcome.

A dataset is built in the sibling ``DIR/../.DIR.partial`` and renamed into place only when complete; each
file is written with :mod:`playworld.io`'s atomic helpers, so nothing is ever half-written.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from playworld.config import from_dict, to_dict
from playworld.data.split import SPLITS, SplitRule, split_of
from playworld.errors import ConfigError, DatasetError
from playworld.io import atomic_write, atomic_write_text, replace_dir

__all__ = ["SCHEMA_VERSION", "MANIFEST", "NO_ACTION", "FileEntry", "ShardEntry", "Episode", "EpisodeData",
           "Manifest", "DatasetWriter", "episode_from_json", "Dataset", "partial_dir", "read_manifest", "write_manifest",
           "set_split"]

SCHEMA_VERSION = 1
FORMAT_NAME = "playworld-dataset"
MANIFEST = "manifest.json"
NO_ACTION = -1
FRAME_DTYPE, ACTION_DTYPE, REWARD_DTYPE = np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.float32)


def partial_dir(out: Path) -> Path:
    """The temporary sibling in which ``out`` is built: ``parent/.name.partial``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One shard file: its path relative to the dataset directory, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """The three aligned arrays of one shard, each ``num_frames`` long."""

    index: int
    num_frames: int
    frames: FileEntry
    actions: FileEntry
    rewards: FileEntry

    def files(self) -> dict[str, FileEntry]:
        return {"frames": self.frames, "actions": self.actions, "rewards": self.rewards}


@dataclasses.dataclass(frozen=True)
class Episode:
    """Index entry of one episode: frames ``[offset, offset + length)`` of shard ``shard``."""

    index: int
    length: int
    level_seed: int | None
    source: str
    has_actions: bool
    split: str
    shard: int
    offset: int
    success: bool | None = None  # reached the goal (Procgen prev_level_complete); None if unknown/truncated
    truncated: bool = False  # cut at --max-episode-frames
    policy: str | None = None  # behaviour policy that played it (collection only)


_EPISODE_TYPES: dict[str, tuple[type, ...]] = {
    "index": (int,), "length": (int,), "level_seed": (int, type(None)), "source": (str,),
    "has_actions": (bool,), "split": (str,), "shard": (int,), "offset": (int,),
    "success": (bool, type(None)), "truncated": (bool,), "policy": (str, type(None)),
}
_EPISODE_REQUIRED = {f.name for f in dataclasses.fields(Episode) if f.default is dataclasses.MISSING}


def episode_from_json(d: Any, where: str) -> Episode:
    """Strict, fast parse of one index row (datasets hold up to millions of them)."""
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: expected an object, got {type(d).__name__}")
    unknown, missing = set(d) - set(_EPISODE_TYPES), _EPISODE_REQUIRED - set(d)
    if unknown or missing:
        raise DatasetError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    for key, value in d.items():
        types = _EPISODE_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise DatasetError(f"{where}.{key}: {value!r} is not of type {'/'.join(t.__name__ for t in types)}")
    return Episode(**d)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Parsed ``manifest.json``. ``source`` records where the data came from (kind and full config)."""

    frame_shape: tuple[int, int, int]
    num_actions: int | None
    source: dict[str, Any]
    split_rule: SplitRule
    shards: tuple[ShardEntry, ...]
    episodes: tuple[Episode, ...]
    created_at: str | None = None  # informational; never part of a checksum

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    @property
    def has_actions(self) -> bool:
        return any(e.has_actions for e in self.episodes)

    def to_json(self) -> str:
        head = {
            "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "frame_shape": list(self.frame_shape),
            "frame_dtype": FRAME_DTYPE.name, "action_dtype": ACTION_DTYPE.name, "reward_dtype": REWARD_DTYPE.name,
            "num_actions": self.num_actions, "num_episodes": len(self.episodes), "num_frames": self.num_frames,
            "has_actions": self.has_actions, "created_at": self.created_at, "source": self.source,
            "split_rule": to_dict(self.split_rule), "shards": [to_dict(s) for s in self.shards],
        }
        text = json.dumps(head, indent=2)[:-2]  # drop the closing "\n}" to append the index, one row a line
        rows = ",\n    ".join(json.dumps(dataclasses.asdict(e)) for e in self.episodes)
        return f'{text},\n  "episodes": [\n    {rows}\n  ]\n}}\n'

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Validate and parse a manifest object; every error names ``where`` (the file) and the key."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise DatasetError(f"{where}: not a playworld dataset manifest (missing \"format\": \"{FORMAT_NAME}\")")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(f"{where}: schema_version {data.get('schema_version')!r} is not supported "
                               f"(this playworld reads version {SCHEMA_VERSION})")
        expected = {"frame_dtype": FRAME_DTYPE.name, "action_dtype": ACTION_DTYPE.name,
                    "reward_dtype": REWARD_DTYPE.name}
        for key, value in expected.items():
            if data.get(key) != value:
                raise DatasetError(f"{where}: {key} is {data.get(key)!r}, expected {value!r}")
        missing = {"frame_shape", "num_actions", "source", "split_rule", "shards", "episodes"} - set(data)
        if missing:
            raise DatasetError(f"{where}: missing keys {sorted(missing)}")
        shape = data["frame_shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int and v > 0 for v in shape)
                and shape[2] == 3):
            raise DatasetError(f"{where}: frame_shape {shape!r} is not [H, W, 3]")
        num_actions = data["num_actions"]
        if num_actions is not None and (type(num_actions) is not int or num_actions <= 0):
            raise DatasetError(f"{where}: num_actions {num_actions!r} is not a positive integer or null")
        if not isinstance(data["source"], dict) or not isinstance(data["shards"], list) \
                or not isinstance(data["episodes"], list):
            raise DatasetError(f"{where}: source must be an object, shards and episodes lists")
        try:
            rule = from_dict(SplitRule, data["split_rule"], where="split_rule")
            shards = tuple(from_dict(ShardEntry, s, where=f"shards[{i}]") for i, s in enumerate(data["shards"]))
        except ConfigError as e:
            raise DatasetError(f"{where}: {e}") from e
        episodes = tuple(episode_from_json(e, f"{where}: episodes[{i}]") for i, e in enumerate(data["episodes"]))
        manifest = cls(tuple(shape), num_actions, data["source"], rule, shards, episodes, data.get("created_at"))
        manifest._check_index(where, data)
        return manifest

    def _check_index(self, where: str, data: dict[str, Any]) -> None:
        """Cross-check counts, shard numbering and that each episode lies inside its shard."""
        for i, shard in enumerate(self.shards):
            if shard.index != i:
                raise DatasetError(f"{where}: shards[{i}].index is {shard.index}, expected {i}")
        for i, ep in enumerate(self.episodes):
            at = f"{where}: episodes[{i}]"
            if ep.index != i:
                raise DatasetError(f"{at}.index is {ep.index}, expected {i}")
            if ep.split not in SPLITS:
                raise DatasetError(f"{at}.split {ep.split!r} is not one of {list(SPLITS)}")
            if not 0 <= ep.shard < len(self.shards):
                raise DatasetError(f"{at}.shard {ep.shard} does not exist ({len(self.shards)} shards)")
            if ep.length < 1 or ep.offset < 0 or ep.offset + ep.length > self.shards[ep.shard].num_frames:
                raise DatasetError(f"{at}: frames [{ep.offset}, {ep.offset + ep.length}) lie outside shard "
                                   f"{ep.shard} ({self.shards[ep.shard].num_frames} frames)")
            if ep.has_actions and self.num_actions is None:
                raise DatasetError(f"{at} has actions but the manifest's num_actions is null")
        for key, value in (("num_episodes", len(self.episodes)), ("num_frames", self.num_frames)):
            if data.get(key) != value:
                raise DatasetError(f"{where}: {key} is {data.get(key)!r} but the episode index gives {value}")


def read_manifest(root: Path) -> Manifest:
    """Read and validate ``root/manifest.json`` (errors name the file)."""
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        hint = f" (an unfinished build is in {partial_dir(root)})" if partial_dir(root).exists() else ""
        raise DatasetError(f"{path}: no manifest; {root} is not a finished playworld dataset{hint}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot read manifest ({e})") from e
    return Manifest.from_json(data, str(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    atomic_write_text(Path(root) / MANIFEST, manifest.to_json())


def set_split(root: Path, rule: SplitRule) -> Manifest:
    """Reassign every episode of the dataset at ``root`` under ``rule`` and rewrite its manifest atomically."""
    manifest = read_manifest(root)
    try:
        episodes = tuple(dataclasses.replace(e, split=split_of(rule, level_seed=e.level_seed, index=e.index,
                                                                source=e.source)) for e in manifest.episodes)
    except ConfigError as e:
        raise ConfigError(f"{Path(root) / MANIFEST}: {e}") from e
    manifest = dataclasses.replace(manifest, split_rule=rule, episodes=episodes)
    write_manifest(root, manifest)
    return manifest


@dataclasses.dataclass
class EpisodeData:
    """One episode in memory, before it is written. Shapes: frames (L, H, W, 3) uint8, actions (L,) int or
    None (no actions recorded), rewards (L,) float32 or None (no rewards, stored as 0)."""

    frames: np.ndarray
    actions: np.ndarray | None
    rewards: np.ndarray | None
    level_seed: int | None
    source: str
    success: bool | None = None
    truncated: bool = False
    policy: str | None = None


def _write_npy(root: Path, rel: str, shape: tuple[int, ...], dtype: np.dtype,
               blocks: Iterable[np.ndarray]) -> FileEntry:
    """Stream ``blocks`` (C-order, concatenated along axis 0) into one .npy file, hashing as it writes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    digest = hashlib.sha256()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            for chunk in (header.getvalue(), *(np.ascontiguousarray(b, dtype).reshape(-1) for b in blocks)):
                digest.update(chunk)
                fh.write(chunk)

    path = root / rel
    atomic_write(path, write)
    return FileEntry(rel, path.stat().st_size, digest.hexdigest())


class DatasetWriter:
    """Builds a dataset in ``.DIR.partial``; :meth:`finalize` writes the manifest and renames it to ``DIR``.

    Either :meth:`add` episodes (a shard is written whenever ``shard_frames`` are buffered), or write
    whole shards with :meth:`write_shard`, which keeps no state, and pass every shard and row to
    :meth:`finalize` (collection does this, as it resumes unit by unit).
    """

    def __init__(self, out: Path, *, frame_shape: tuple[int, int, int], num_actions: int | None,
                 source: dict[str, Any], rule: SplitRule, shard_frames: int = 8192) -> None:
        self.out, self.partial = Path(out), partial_dir(out)
        self.frame_shape, self.num_actions, self.source, self.rule = tuple(frame_shape), num_actions, source, rule
        self.shard_frames = shard_frames
        self.shards: list[ShardEntry] = []
        self.rows: list[Episode] = []
        self._pending: list[EpisodeData] = []
        self.partial.mkdir(parents=True, exist_ok=True)

    def add(self, episode: EpisodeData) -> None:
        """Buffer one episode; write a shard once ``shard_frames`` frames are buffered."""
        self._pending.append(episode)
        if sum(len(e.frames) for e in self._pending) >= self.shard_frames:
            self.flush()

    def flush(self) -> None:
        """Write the buffered episodes (if any) as the next shard."""
        if self._pending:
            shard, rows = self.write_shard(len(self.shards), self._pending, first_index=len(self.rows))
            self.shards.append(shard)
            self.rows.extend(rows)
            self._pending = []

    def write_shard(self, index: int, data: Sequence[EpisodeData], *, first_index: int
                    ) -> tuple[ShardEntry, list[Episode]]:
        """Write ``data`` as shard ``index``; returns its entry and index rows numbered from ``first_index``."""
        if not data:
            raise ValueError(f"shard {index}: no episodes to write")
        for i, ep in enumerate(data):
            n = len(ep.frames)
            if ep.frames.shape != (n, *self.frame_shape) or ep.frames.dtype != FRAME_DTYPE or n == 0:
                raise DatasetError(f"episode {first_index + i} from {ep.source}: frames {ep.frames.shape} "
                                   f"{ep.frames.dtype}, expected (L>0, {', '.join(map(str, self.frame_shape))}) uint8")
            for name, arr in (("actions", ep.actions), ("rewards", ep.rewards)):
                if arr is not None and arr.shape != (n,):
                    raise DatasetError(f"episode {first_index + i} from {ep.source}: {name} {arr.shape}, expected ({n},)")
            if ep.actions is not None and self.num_actions is not None and \
                    (ep.actions.min() < 0 or ep.actions.max() >= self.num_actions):
                raise DatasetError(f"episode {first_index + i}: actions outside [0, {self.num_actions})")
        total = sum(len(ep.frames) for ep in data)
        stem = f"shards/{index:05d}"
        frames = _write_npy(self.partial, f"{stem}.frames.npy", (total, *self.frame_shape), FRAME_DTYPE,
                            (ep.frames for ep in data))
        actions = _write_npy(self.partial, f"{stem}.actions.npy", (total,), ACTION_DTYPE, (
            np.full(len(ep.frames), NO_ACTION) if ep.actions is None else ep.actions for ep in data))
        rewards = _write_npy(self.partial, f"{stem}.rewards.npy", (total,), REWARD_DTYPE, (
            np.zeros(len(ep.frames)) if ep.rewards is None else ep.rewards for ep in data))
        shard = ShardEntry(index, total, frames, actions, rewards)
        rows, offset = [], 0
        for i, ep in enumerate(data):
            k = first_index + i
            rows.append(Episode(
                index=k, length=len(ep.frames), level_seed=ep.level_seed, source=ep.source,
                has_actions=ep.actions is not None, shard=index, offset=offset,
                split=split_of(self.rule, level_seed=ep.level_seed, index=k, source=ep.source),
                success=ep.success, truncated=ep.truncated, policy=ep.policy))
            offset += len(ep.frames)
        return shard, rows

    def finalize(self, shards: Sequence[ShardEntry] | None = None, episodes: Sequence[Episode] | None = None, *,
                 scratch: Sequence[str] = ()) -> Manifest:
        """Write the manifest of ``shards``/``episodes`` (default: those :meth:`add` wrote), rename
        ``.DIR.partial`` to ``DIR``, then delete the ``scratch`` paths from it."""
        if shards is None or episodes is None:
            self.flush()
            shards, episodes = self.shards, self.rows
        created_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        manifest = Manifest(self.frame_shape, self.num_actions, self.source, self.rule,  # type: ignore[arg-type]
                            tuple(shards), tuple(episodes), created_at)
        manifest = Manifest.from_json(json.loads(manifest.to_json()), str(self.partial / MANIFEST))  # self-check
        write_manifest(self.partial, manifest)
        replace_dir(self.partial, self.out)
        for rel in scratch:
            target = self.out / rel
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        return manifest

    def abort(self) -> None:
        """Delete the partial directory (for builds that cannot resume, such as ingest)."""
        shutil.rmtree(self.partial, ignore_errors=True)


class Dataset:
    """A finished dataset, read through memmaps opened lazily (and again in each DataLoader worker).

    >>> ds = Dataset("data/coinrun")
    >>> ep = ds.episodes("train")[0]
    >>> ds.frames(ep).shape        # (L, 64, 64, 3) uint8 memmap view
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.manifest.episodes)

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened after a process boundary
        return {**self.__dict__, "_arrays": {}}

    def close(self) -> None:
        """Drop the open memmaps; they reopen lazily on the next read."""
        self._arrays = {}

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.manifest.frame_shape

    @property
    def num_actions(self) -> int | None:
        return self.manifest.num_actions

    def episodes(self, split: str | None = None) -> list[Episode]:
        """Index rows of all episodes, or of one split ('train', 'val', 'test')."""
        if split is None:
            return list(self.manifest.episodes)
        if split not in SPLITS:
            raise ConfigError(f"split {split!r} is not one of {list(SPLITS)}")
        return [e for e in self.manifest.episodes if e.split == split]

    def _episode(self, ep: Episode | int) -> Episode:
        return self.manifest.episodes[ep] if isinstance(ep, int) else ep

    def shard_arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Memmaps (frames (N,H,W,3) uint8, actions (N,) int16, rewards (N,) float32) of one shard."""
        arrays = self._arrays.get(shard)
        if arrays is None:
            entry = self.manifest.shards[shard]
            expected = {"frames": ((entry.num_frames, *self.frame_shape), FRAME_DTYPE),
                        "actions": ((entry.num_frames,), ACTION_DTYPE), "rewards": ((entry.num_frames,), REWARD_DTYPE)}
            loaded = []
            for name, f in entry.files().items():
                path = self.root / f.path
                try:
                    arr = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise DatasetError(f"{path}: cannot open shard file ({e})") from e
                shape, dtype = expected[name]
                if arr.shape != shape or arr.dtype != dtype:
                    raise DatasetError(f"{path}: holds {arr.shape} {arr.dtype}, the manifest expects {shape} {dtype}")
                loaded.append(arr)
            arrays = self._arrays[shard] = (loaded[0], loaded[1], loaded[2])
        return arrays

    def frames(self, ep: Episode | int) -> np.ndarray:
        """Frames of one episode: a (L, H, W, 3) uint8 memmap view (no copy)."""
        e = self._episode(ep)
        return self.shard_arrays(e.shard)[0][e.offset:e.offset + e.length]

    def actions(self, ep: Episode | int) -> np.ndarray:
        """Actions of one episode: (L,) int16, -1 where none were recorded."""
        e = self._episode(ep)
        return self.shard_arrays(e.shard)[1][e.offset:e.offset + e.length]

    def rewards(self, ep: Episode | int) -> np.ndarray:
        """Rewards of one episode: (L,) float32."""
        e = self._episode(ep)
        return self.shard_arrays(e.shard)[2][e.offset:e.offset + e.length]
