"""Train/val/test splits by a stable hash of the level seed (held-out levels) or of the episode.

The assignment of one key never depends on the rest of the dataset, so a level is in the same split in
every dataset collected with the same rule, and adding episodes never moves old ones between splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

from playworld.config import field
from playworld.errors import ConfigError

SPLITS = ("train", "val", "test")

__all__ = ["SPLITS", "SplitRule", "split_of"]


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """How episodes are assigned to train/val/test. Stored in the manifest; `playworld data split` changes it."""

    by: Literal["level", "episode"] = field(
        "level", help="'level': hash of the level seed (held-out levels); 'episode': hash of source and index")
    val: float = field(0.05, help="fraction of levels/episodes in the validation split")
    test: float = field(0.05, help="fraction of levels/episodes in the test split")

    def __post_init__(self) -> None:
        if self.by not in ("level", "episode"):
            raise ConfigError(f"split rule: by={self.by!r} must be 'level' or 'episode'")
        for name in ("val", "test"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"split rule: {name}={value} must be in [0, 1)")
        if self.val + self.test >= 1.0:
            raise ConfigError(f"split rule: val + test = {self.val + self.test} leaves nothing to train on")


def _unit_interval(key: str) -> float:
    """A stable pseudo-uniform number in [0, 1) from ``key`` (sha256, identical on every machine)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def split_of(rule: SplitRule, *, level_seed: int | None, index: int, source: str) -> str:
    """The split of one episode under ``rule``: 'train', 'val' or 'test'.

    By level, the key is the level seed alone, so every episode of a level shares its split. By episode,
    the key is ``source#index``. Episodes without a level seed (ingested video) cannot be split by level.
    """
    if rule.by == "level":
        if level_seed is None:
            raise ConfigError(f"episode {index} ({source}) has no level seed; split it with --by episode")
        u = _unit_interval(f"level:{level_seed}")
    else:
        u = _unit_interval(f"episode:{source}#{index}")
    if u < rule.test:
        return "test"
    if u < rule.test + rule.val:
        return "val"
    return "train"
