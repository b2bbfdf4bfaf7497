"""Inspect a finished dataset: ``verify`` re-checks every checksum, shape and index entry; ``summarize``
gives the counts `playworld data info` prints."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from playworld.bars import progress_bar
from playworld.data.format import MANIFEST, NO_ACTION, Dataset, Episode
from playworld.data.policies import ACTION_NAMES
from playworld.data.split import SPLITS, split_of
from playworld.errors import ConfigError, DatasetError

__all__ = ["verify_dataset", "DatasetSummary", "summarize", "format_summary"]


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_dataset(root: str | Path, *, progress: bool = False) -> list[str]:
    """Every problem found, each as ``"<file>: <what is wrong>"``; an empty list means the dataset is sound.

    Checks: the manifest parses and its index is consistent; every shard file exists with the recorded size
    and sha256 and holds the expected shape and dtype; the episodes of each shard tile it exactly; actions
    are in range where recorded and -1 where not; each episode's split follows the stored rule.
    """
    root = Path(root)
    try:
        ds = Dataset(root)
    except DatasetError as e:
        return [str(e)]
    manifest, problems = ds.manifest, []
    where = root / MANIFEST
    intact: set[int] = set()  # shards whose three files passed
    for shard in manifest.shards:
        before = len(problems)
        for f in progress_bar(list(shard.files().values()), desc=f"verify shard {shard.index}",
                              disable=not progress, leave=False):
            path = root / f.path
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            if (size := path.stat().st_size) != f.bytes:
                problems.append(f"{path}: {size} bytes, the manifest records {f.bytes} (truncated or replaced)")
            elif (digest := _sha256(path)) != f.sha256:
                problems.append(f"{path}: sha256 {digest[:16]}... does not match the manifest's {f.sha256[:16]}... "
                                "(the file is corrupt)")
        if len(problems) == before:
            try:
                ds.shard_arrays(shard.index)
                intact.add(shard.index)
            except DatasetError as e:
                problems.append(str(e))
    by_shard: dict[int, list[Episode]] = {}
    for ep in manifest.episodes:
        by_shard.setdefault(ep.shard, []).append(ep)
    for shard in manifest.shards:
        end = 0
        for ep in sorted(by_shard.get(shard.index, []), key=lambda e: e.offset):
            if ep.offset != end:
                kind = "overlaps the previous episode" if ep.offset < end else f"leaves frames [{end}, {ep.offset}) unused"
                problems.append(f"{where}: episodes[{ep.index}] in shard {shard.index} {kind}")
            end = max(end, ep.offset + ep.length)
        if end != shard.num_frames:
            problems.append(f"{where}: episodes of shard {shard.index} cover {end} of its {shard.num_frames} frames")
    for ep in manifest.episodes:
        if ep.shard in intact:
            actions = np.asarray(ds.actions(ep))
            if ep.has_actions and (actions.min() < 0 or actions.max() >= (manifest.num_actions or 0)):
                problems.append(f"{root / manifest.shards[ep.shard].actions.path}: episode {ep.index} has actions "
                                f"outside [0, {manifest.num_actions})")
            if not ep.has_actions and (actions != NO_ACTION).any():
                problems.append(f"{root / manifest.shards[ep.shard].actions.path}: episode {ep.index} is marked "
                                f"without actions but holds values other than {NO_ACTION}")
        try:
            expected = split_of(manifest.split_rule, level_seed=ep.level_seed, index=ep.index, source=ep.source)
        except ConfigError as e:
            problems.append(f"{where}: {e}")
            continue
        if ep.split != expected:
            problems.append(f"{where}: episodes[{ep.index}] is in {ep.split!r} but the split rule "
                            f"{dataclasses.asdict(manifest.split_rule)} puts it in {expected!r}")
    return problems


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    path: Path
    episodes: int
    frames: int
    splits: dict[str, tuple[int, int]]  # split -> (episodes, frames)
    frame_shape: tuple[int, int, int]
    has_actions: bool
    num_actions: int | None
    action_histogram: tuple[int, ...] | None  # count of each recorded action
    source: str
    bytes_on_disk: int
    levels: int  # distinct level seeds
    success_rate: float | None  # over episodes that ended on their own (not truncated)
    truncated: int
    policies: dict[str, int]


def _describe_source(source: dict) -> str:
    cfg = source.get("config", {})
    if source.get("kind") == "procgen":
        return (f"procgen {source.get('game')} (policy {cfg.get('policy')}, {cfg.get('distribution_mode')}, "
                f"seed {cfg.get('seed')})")
    if source.get("kind") == "ingest":
        return f"ingest of {len(source.get('files', []))} file(s) at {cfg.get('fps')} fps"
    return str(source.get("kind", "unknown"))


def summarize(root: str | Path) -> DatasetSummary:
    """Counts of a dataset; reads the manifest and the (small) action arrays only."""
    ds = Dataset(root)
    m = ds.manifest
    splits = {s: (sum(1 for e in m.episodes if e.split == s), sum(e.length for e in m.episodes if e.split == s))
              for s in SPLITS}
    histogram = None
    if m.has_actions and m.num_actions:
        counts = np.zeros(m.num_actions, dtype=np.int64)
        for shard in m.shards:
            actions = ds.shard_arrays(shard.index)[1]
            counts += np.bincount(actions[actions >= 0], minlength=m.num_actions)[:m.num_actions]
        histogram = tuple(int(c) for c in counts)
    ended = [e for e in m.episodes if e.success is not None]
    return DatasetSummary(
        path=Path(root), episodes=len(m.episodes), frames=m.num_frames, splits=splits, frame_shape=m.frame_shape,
        has_actions=m.has_actions, num_actions=m.num_actions, action_histogram=histogram,
        source=_describe_source(m.source),
        bytes_on_disk=sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()),
        levels=len({e.level_seed for e in m.episodes if e.level_seed is not None}),
        success_rate=sum(e.success for e in ended) / len(ended) if ended else None,
        truncated=sum(e.truncated for e in m.episodes),
        policies=dict(Counter(e.policy for e in m.episodes if e.policy is not None)))


def format_summary(s: DatasetSummary) -> str:
    lines = [
        f"dataset      {s.path}",
        f"source       {s.source}",
        f"episodes     {s.episodes} ({s.frames} frames, mean length {s.frames / max(s.episodes, 1):.1f}, "
        f"{s.truncated} truncated)",
        "splits       " + ", ".join(f"{k} {e} ep / {f} frames" for k, (e, f) in s.splits.items()),
        f"frame shape  {tuple(s.frame_shape)} uint8",
        f"levels       {s.levels} distinct level seeds" if s.levels else "levels       none recorded",
        f"actions      {'yes' if s.has_actions else 'no'}" + (f" ({s.num_actions} actions)" if s.num_actions else ""),
    ]
    if s.success_rate is not None:
        lines.append(f"success      {100 * s.success_rate:.1f}% of episodes that ended")
    if s.policies:
        lines.append("policies     " + ", ".join(f"{k} {v}" for k, v in sorted(s.policies.items())))
    if s.action_histogram:
        total = max(sum(s.action_histogram), 1)
        names = ACTION_NAMES if s.num_actions == len(ACTION_NAMES) else [str(i) for i in range(len(s.action_histogram))]
        lines.append("action histogram:")
        lines += [f"  {i:2d} {name:<10} {c:>10d} {100 * c / total:5.1f}%"
                  for i, (name, c) in enumerate(zip(names, s.action_histogram))]
    lines.append(f"size on disk {s.bytes_on_disk / 2**20:.1f} MiB")
    return "\n".join(lines)
