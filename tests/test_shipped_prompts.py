"""The start frames shipped with the CoinRun world say what they are: their manifest's description
names them and what their split labels mean, and each label is the split rule applied to its level."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import playworld
from playworld.data.format import read_manifest
from playworld.data.split import split_of

PROMPTS = Path(playworld.__file__).parent / "assets" / "coinrun" / "prompts"


def test_shipped_prompt_labels_match_their_description_and_the_split_rule():
    manifest = read_manifest(PROMPTS)
    description = manifest.source["description"]
    counts = Counter(e.split for e in manifest.episodes)
    assert len(manifest.episodes) == 24 and manifest.num_frames == 96
    assert "Not an evaluation set" in description and "24 CoinRun episodes" in description
    stated = {name: int(n) for n, name in re.findall(r"(\d+) (train|val|test)", description)}
    assert stated == dict(counts), (stated, counts)
    for e in manifest.episodes:
        assert e.split == split_of(manifest.split_rule, level_seed=e.level_seed, index=e.index, source=e.source)
        if e.split != "train":
            assert f"{e.split} (episode {e.index})" in description
