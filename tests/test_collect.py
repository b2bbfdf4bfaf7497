"""Procgen collection: determinism, interrupt + resume == uninterrupted byte for byte, refusal of changed
arguments, policies, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from playworld.cli import main
from playworld.data.collect import CollectConfig, collect, format_policy_report, policy_report
from playworld.data.format import MANIFEST, Dataset, partial_dir
from playworld.data.policies import (
    ALL_ACTIONS,
    NUM_ACTIONS,
    RIGHT,
    RIGHT_UP,
    SlotRng,
    StickyRandom,
    make_policy,
)
from playworld.data.verify import verify_dataset
from playworld.errors import ConfigError, DatasetError

# 3 units (5 + 5 + 2 episodes) on 4 slots; 40-frame truncation keeps it fast.
CFG = CollectConfig(episodes=12, policy="mix", num_envs=4, max_episode_frames=40, episodes_per_shard=5, seed=3)


def files(root: Path) -> dict[str, bytes]:
    """Every file of a dataset; the manifest without its timestamp."""
    out = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = json.loads(out.pop(MANIFEST))
    manifest.pop("created_at")
    return {**out, MANIFEST: json.dumps(manifest).encode()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    result = collect(CFG, out, progress=False)
    assert result.status == "complete" and result.episodes == 12 and result.units_total == 3
    return out


def test_collect_then_verify(reference: Path) -> None:
    assert verify_dataset(reference) == []
    ds = Dataset(reference)
    eps = ds.episodes()
    assert len(eps) == 12 and [e.shard for e in eps] == [0] * 5 + [1] * 5 + [2] * 2
    assert ds.frame_shape == (64, 64, 3) and ds.num_actions == NUM_ACTIONS
    assert all(e.has_actions and isinstance(e.level_seed, int) and 2 <= e.length <= 40 for e in eps)
    assert all(e.truncated == (e.success is None) for e in eps)
    assert {e.policy for e in eps} <= {"random", "scripted"}
    assert ds.manifest.split_rule.by == "level" and ds.manifest.source["config"]["seed"] == 3
    for e in eps:
        actions, frames = np.asarray(ds.actions(e)), np.asarray(ds.frames(e))
        assert actions.min() >= 0 and actions.max() < NUM_ACTIONS
        assert frames.std() > 0, "frames should show a game, not a blank screen"


def test_same_seed_is_byte_identical_and_other_seed_differs(reference: Path, tmp_path: Path) -> None:
    collect(CFG, tmp_path / "again", progress=False)
    assert files(tmp_path / "again") == files(reference)
    collect(dataclasses.replace(CFG, seed=4, episodes=5), tmp_path / "other", progress=False)
    assert files(tmp_path / "other")["shards/00000.frames.npy"] != files(reference)["shards/00000.frames.npy"]


def test_interrupted_then_resumed_equals_uninterrupted(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = collect(CFG, out, progress=False, max_units=1)
    assert first.status == "interrupted" and first.units_done == 1
    assert not out.exists() and (partial_dir(out) / "units" / "00000.json").exists()

    def hard_stop(unit: int) -> None:
        raise KeyboardInterrupt(f"simulated kill after unit {unit}")

    with pytest.raises(KeyboardInterrupt):
        collect(CFG, out, progress=False, on_unit_done=hard_stop)
    assert not out.exists() and (partial_dir(out) / "units" / "00001.json").exists()
    (partial_dir(out) / "shards" / "00002.frames.npy").write_bytes(b"half-written leftover of a killed run")
    done = collect(CFG, out, progress=False)
    assert done.status == "complete" and done.episodes == 2
    assert files(out) == files(reference)
    assert not partial_dir(out).exists() and not (out / "units").exists()


def test_changed_arguments_are_refused(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    collect(CFG, out, progress=False, max_units=1)
    with pytest.raises(DatasetError, match="other arguments \\(seed: 3 -> 9\\).*same arguments to resume"):
        collect(dataclasses.replace(CFG, seed=9), out, progress=False)
    assert collect(CFG, reference, progress=False).status == "already complete"
    with pytest.raises(DatasetError, match="other settings \\(episodes: 12 -> 13\\)"):
        collect(dataclasses.replace(CFG, episodes=13), reference, progress=False)


def test_dataset_recorded_before_the_plan_settings_is_still_complete(reference: Path, tmp_path: Path) -> None:
    # A dataset written before the lookahead policy existed has no plan_* keys; re-running its command finds it done.
    old = tmp_path / "old"
    shutil.copytree(reference, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["source"]["config"] = {k: v for k, v in manifest["source"]["config"].items() if not k.startswith("plan_")}
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert collect(CFG, old, progress=False).status == "already complete"
    with pytest.raises(DatasetError, match="plan_hold: 4 -> 2"):
        collect(dataclasses.replace(CFG, plan_hold=2), old, progress=False)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"game": "pong"}, "game='pong'"),
    ({"distribution_mode": "memory"}, "not supported by coinrun"),
    ({"episodes": 0}, "episodes=0"),
    ({"max_episode_frames": 1}, "max_episode_frames=1"),
    ({"sticky_prob": 1.0}, "sticky_prob=1.0"),
    ({"distribution_mode": "exploration", "num_levels": 5}, "exploration"),
])
def test_config_validation_names_the_value(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        CollectConfig(episodes=kwargs.pop("episodes", 1), **kwargs)


def seeds(n: int, base: int = 0) -> list[np.random.SeedSequence]:
    return [np.random.SeedSequence(base, spawn_key=(s,)) for s in range(n)]


def test_policy_slots_are_independent() -> None:
    """Slot 0's actions depend on its own seed only, not on how many slots run beside it."""
    for name in ("random", "scripted", "mix"):
        small, big = make_policy(name, "coinrun", seeds(2)), make_policy(name, "coinrun", seeds(5))
        first2, first5 = np.ones(2, bool), np.ones(5, bool)
        for t in range(300):
            a2, a5 = small(first2), big(first5)
            assert a2[0] == a5[0] and a2[1] == a5[1], (name, t)
            first2, first5 = np.zeros(2, bool), np.zeros(5, bool)


def test_policy_action_statistics() -> None:
    n, steps = 64, 400
    sticky = StickyRandom(SlotRng(seeds(n), 2), p=0.75)
    acts = np.stack([sticky(np.full(n, t == 0)) for t in range(steps)])  # (steps, n)
    assert np.mean(acts[1:] == acts[:-1]) == pytest.approx(0.75 + 0.25 / NUM_ACTIONS, abs=0.02)
    assert set(np.unique(acts)) == set(ALL_ACTIONS)
    scripted = make_policy("scripted", "coinrun", seeds(n))
    acts = np.stack([scripted(np.full(n, t == 0)) for t in range(steps)])
    assert np.mean(acts == RIGHT) == pytest.approx(0.5 + 0.2 / NUM_ACTIONS, abs=0.05)
    assert np.mean(acts == RIGHT_UP) == pytest.approx(0.3 + 0.2 / NUM_ACTIONS, abs=0.05)
    explorer = make_policy("scripted", "maze", seeds(n))
    acts = np.stack([explorer(np.full(n, t == 0)) for t in range(steps)])
    assert np.mean(acts[1:] == acts[:-1]) > 0.85, "the explorer holds directions for long stretches"


def test_policy_report_measures_each_policy() -> None:
    cfg = CollectConfig(episodes=4, num_envs=4, max_episode_frames=30, episodes_per_shard=4)
    stats = policy_report(cfg, ("random", "scripted"), progress=False)
    assert [s.policy for s in stats] == ["random", "scripted"]
    for s in stats:
        assert s.episodes == 4 and 4 <= s.mean_length <= 30 and 5 < s.copy_last_psnr < 60
        assert sum(s.action_freq) == pytest.approx(1.0)
    assert stats[1].action_freq[RIGHT] > stats[0].action_freq[RIGHT]
    assert "| scripted | 4 |" in format_policy_report(stats)


def test_cli_collect_info_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "cli")
    args = ["collect", "procgen", "--game", "ninja", "--episodes", "3", "--num-envs", "2",
            "--max-episode-frames", "20", "--policy", "scripted", "--out", out, "--no-progress"]
    assert main(args) == 0
    assert "complete, 3 episodes" in capsys.readouterr().out
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["data", "info", out]) == 0
    assert "procgen ninja (policy scripted" in capsys.readouterr().out
    assert main(["data", "verify", out, "--no-progress"]) == 0
    assert main(["collect", "procgen", "--episodes", "3", "--game", "pong", "--out", out]) == 2
    assert "game='pong'" in capsys.readouterr().err
    assert main(["collect", "procgen", "--episodes", "3"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
