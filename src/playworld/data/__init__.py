"""Datasets of episodes: Procgen collection, video ingest, the on-disk format, splits and the clip loader.

The names below are imported on first use (PEP 562), so that `playworld collect`/`ingest`/`data` do not
pay for importing torch, which only the loader needs. See docs/data.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playworld.data.format import Dataset, Episode, Manifest
    from playworld.data.loader import Clip, ClipDataset, ClipLoader
    from playworld.data.split import SplitRule

_EXPORTS = {
    "Dataset": "format", "Episode": "format", "Manifest": "format", "SplitRule": "split",
    "Clip": "loader", "ClipDataset": "loader", "ClipLoader": "loader",
}
__all__ = ["Clip", "ClipDataset", "ClipLoader", "Dataset", "Episode", "Manifest", "SplitRule"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'playworld.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"playworld.data.{_EXPORTS[name]}"), name)
