"""Dataset format: write/read round trip, atomic build, verify naming what is wrong, splits, info/verify CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from playworld.cli import main
from playworld.data.format import (
    MANIFEST,
    Dataset,
    DatasetWriter,
    EpisodeData,
    partial_dir,
    read_manifest,
    set_split,
)
from playworld.data.split import SplitRule, split_of
from playworld.data.verify import summarize, verify_dataset
from playworld.errors import ConfigError, DatasetError

SHAPE = (8, 8, 3)


def synthetic(out: Path, lengths: list[int], *, levels: list[int | None] | None = None, actions: bool = True,
              shard_frames: int = 50, rule: SplitRule | None = None) -> list[EpisodeData]:
    """Episode i: red = i, green = frame index, actions = (i + t) % 15, rewards = t / 10."""
    writer = DatasetWriter(out, frame_shape=SHAPE, num_actions=15 if actions else None, source={"kind": "test"},
                           rule=rule or SplitRule(by="level" if levels else "episode"), shard_frames=shard_frames)
    data = []
    for i, n in enumerate(lengths):
        frames = np.zeros((n, *SHAPE), dtype=np.uint8)
        frames[..., 0], frames[..., 1] = i, np.arange(n)[:, None, None]
        ep = EpisodeData(frames, (i + np.arange(n)) % 15 if actions else None, np.arange(n, dtype=np.float32) / 10,
                         level_seed=None if levels is None else levels[i], source=f"ep{i}.mp4", success=i % 2 == 0)
        writer.add(ep)
        data.append(ep)
    assert not out.exists(), "nothing is visible at DIR before finalize"
    writer.finalize()
    assert not partial_dir(out).exists()
    return data


def test_round_trip_memmapped(tmp_path: Path) -> None:
    lengths = [20, 7, 33, 1, 40]
    data = synthetic(tmp_path / "ds", lengths, levels=[5, 6, 5, 7, 8])
    ds = Dataset(tmp_path / "ds")
    assert len(ds) == 5 and ds.frame_shape == SHAPE and ds.num_actions == 15
    assert len(ds.manifest.shards) > 1, "small shard_frames should make several shards"
    for ep, src in zip(ds.episodes(), data):
        assert ep.length == len(src.frames) and ep.has_actions and ep.source == src.source
        frames = ds.frames(ep)
        assert isinstance(frames.base, np.memmap) or isinstance(frames, np.memmap)
        np.testing.assert_array_equal(frames, src.frames)
        np.testing.assert_array_equal(ds.actions(ep), src.actions)
        np.testing.assert_array_equal(ds.rewards(ep), src.rewards)
    assert sum(len(ds.episodes(s)) for s in ("train", "val", "test")) == 5
    with pytest.raises(ConfigError, match="'dev'"):
        ds.episodes("dev")
    assert verify_dataset(tmp_path / "ds") == []


def test_episode_without_actions_stores_minus_one(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [5, 6], actions=False)
    ds = Dataset(tmp_path / "ds")
    assert not ds.manifest.has_actions and ds.num_actions is None
    assert (np.asarray(ds.actions(1)) == -1).all()


def test_corrupt_shard_byte_is_named(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [20, 30, 25])
    shard = tmp_path / "ds" / read_manifest(tmp_path / "ds").shards[1].frames.path
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = verify_dataset(tmp_path / "ds")
    assert len(problems) == 1 and str(shard) in problems[0] and "sha256" in problems[0]
    assert main(["data", "verify", str(tmp_path / "ds"), "--no-progress"]) == 1


def test_truncated_and_missing_files_are_named(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [20, 30, 25])
    m = read_manifest(tmp_path / "ds")
    rewards = tmp_path / "ds" / m.shards[0].rewards.path
    rewards.write_bytes(rewards.read_bytes()[:-4])
    (tmp_path / "ds" / m.shards[1].actions.path).unlink()
    problems = verify_dataset(tmp_path / "ds")
    assert any(str(rewards) in p and "bytes" in p for p in problems)
    assert any(m.shards[1].actions.path in p and "missing" in p for p in problems)


def test_bad_manifest_errors_name_file_and_key(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [20, 30])
    path = tmp_path / "ds" / MANIFEST
    good = json.loads(path.read_text())
    cases = [
        (lambda d: d["episodes"][1].update(length=999), "episodes\\[1\\]: frames .* lie outside shard"),
        (lambda d: d["episodes"][0].update(level_seed="x"), "episodes\\[0\\].level_seed"),
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d.update(frame_shape=[8, 8]), "frame_shape"),
        (lambda d: d.update(num_frames=1), "num_frames"),
        (lambda d: d["split_rule"].update(val=2.0), "val=2.0"),
    ]
    for edit, pattern in cases:
        data = json.loads(json.dumps(good))
        edit(data)
        path.write_text(json.dumps(data))
        with pytest.raises(DatasetError, match=pattern) as info:
            Dataset(tmp_path / "ds")
        assert str(path) in str(info.value)
        assert verify_dataset(tmp_path / "ds") and str(path) in verify_dataset(tmp_path / "ds")[0]
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read manifest"):
        Dataset(tmp_path / "ds")


def test_not_a_dataset_and_partial_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no manifest"):
        Dataset(tmp_path)
    partial_dir(tmp_path / "ds").mkdir()
    with pytest.raises(DatasetError, match="unfinished build"):
        Dataset(tmp_path / "ds")


def test_writer_rejects_wrong_shapes(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds", frame_shape=SHAPE, num_actions=15, source={}, rule=SplitRule())
    bad = EpisodeData(np.zeros((4, 8, 9, 3), np.uint8), None, None, level_seed=1, source="x")
    with pytest.raises(DatasetError, match="frames \\(4, 8, 9, 3\\)"):
        writer.write_shard(0, [bad], first_index=0)
    bad = EpisodeData(np.zeros((4, *SHAPE), np.uint8), np.full(4, 15), None, level_seed=1, source="x")
    with pytest.raises(DatasetError, match="actions outside"):
        writer.write_shard(0, [bad], first_index=0)


def test_split_by_level_holds_levels_out_and_is_stable(tmp_path: Path) -> None:
    levels = [i % 40 for i in range(200)]
    synthetic(tmp_path / "ds", [3] * 200, levels=levels, rule=SplitRule(by="level", val=0.2, test=0.2))
    eps = Dataset(tmp_path / "ds").episodes()
    by_level: dict[int | None, set[str]] = {}
    for e in eps:
        by_level.setdefault(e.level_seed, set()).add(e.split)
    assert all(len(s) == 1 for s in by_level.values()), "a level must never be in two splits"
    assert {e.split for e in eps} == {"train", "val", "test"}
    m = set_split(tmp_path / "ds", SplitRule(by="episode", val=0.3, test=0.1))
    assert read_manifest(tmp_path / "ds") == m and m.split_rule.by == "episode"
    assert verify_dataset(tmp_path / "ds") == []
    assert main(["data", "split", str(tmp_path / "ds"), "--by", "level", "--val", "0.2", "--test", "0.2"]) == 0
    assert [e.split for e in Dataset(tmp_path / "ds").episodes()] == [e.split for e in eps]
    assert split_of(SplitRule(), level_seed=123, index=0, source="a") == \
        split_of(SplitRule(), level_seed=123, index=99, source="b")


def test_split_by_level_needs_level_seeds(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [3, 3])
    with pytest.raises(ConfigError, match="no level seed"):
        set_split(tmp_path / "ds", SplitRule(by="level"))
    with pytest.raises(ConfigError, match="val \\+ test"):
        SplitRule(val=0.5, test=0.5)


def test_tampered_split_is_reported(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [3] * 10)
    path = tmp_path / "ds" / MANIFEST
    data = json.loads(path.read_text())
    data["episodes"][4]["split"] = "test" if data["episodes"][4]["split"] != "test" else "train"
    path.write_text(json.dumps(data))
    problems = verify_dataset(tmp_path / "ds")
    assert len(problems) == 1 and "episodes[4]" in problems[0] and "split rule" in problems[0]


def test_summary_and_info_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic(tmp_path / "ds", [10, 20, 30], levels=[1, 2, 2])
    s = summarize(tmp_path / "ds")
    assert (s.episodes, s.frames, s.levels, s.has_actions) == (3, 60, 2, True)
    assert s.action_histogram is not None and sum(s.action_histogram) == 60
    assert sum(e for e, _ in s.splits.values()) == 3 and s.success_rate == pytest.approx(2 / 3)
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "episodes     3 (60 frames" in out and "action histogram" in out and "size on disk" in out
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "no manifest" in capsys.readouterr().err
