"""Atomic writes: the file written gets the mode of any new file (0666 less the umask), not the 0600 of
the temporary file it is written as."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from playworld.io import atomic_write_text, current_umask
from playworld.train.checkpoint import save_release


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=["022", "002", "077"])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    # a replaced file too, and what a release writes
    atomic_write_text(tmp_path / "a.json", "[]\n")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    save_release(tmp_path / "rel", {"w": torch.zeros(2)}, {"kind": "lam", "model": {}})
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "rel" / name).stat().st_mode) == 0o666 & ~mask, name
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind
