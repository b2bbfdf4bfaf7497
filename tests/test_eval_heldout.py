"""`playworld eval` without RUN or --data: the shipped world, and held-out episodes found or collected
(playworld.eval.heldout)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import playworld.api
from playworld.api import DEFAULT_RUN
from playworld.cli import main
from playworld.config import to_dict
from playworld.data.format import read_manifest
from playworld.data.split import SplitRule, split_of
from playworld.errors import ConfigError, DatasetError
from playworld.eval.heldout import cache_root, collect_heldout, held_out_levels, plan_heldout
from playworld.train.checkpoint import save_release
from tiny_world import tiny_models

from helpers import make_dataset


def _run(out: Path, data: str | None = None) -> Path:
    """A tiny random world whose config.json records ``data`` as its training data, as `train` writes."""
    for kind, model in zip(("tokenizer", "lam", "dynamics"), tiny_models()):
        config = {"kind": kind, "model": to_dict(model.config)}
        if data is not None:
            config["data"] = {"path": data}
        save_release(out / kind, model.state_dict(), config)
    return out


def _with_procgen_prompts(run: Path) -> Path:
    shutil.copytree(DEFAULT_RUN / "prompts", run / "prompts")
    return run


def test_cache_root_follows_playworld_cache_then_xdg(tmp_path):
    assert cache_root({"PLAYWORLD_CACHE": str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "c"
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "playworld"
    assert cache_root({}) == Path.home() / ".cache" / "playworld"


def test_held_out_levels_are_the_first_test_split_levels():
    rule = SplitRule()
    levels = held_out_levels(rule, 5, start=100)
    assert len(levels) == 5 and levels == tuple(sorted(levels)) and levels[0] >= 100
    assert all(split_of(rule, level_seed=s, index=0, source="") == "test" for s in levels)
    skipped = set(range(100, levels[-1])) - set(levels)
    assert skipped and all(split_of(rule, level_seed=s, index=0, source="") != "test" for s in skipped)
    with pytest.raises(ConfigError, match="by='level'"):
        held_out_levels(SplitRule(by="episode"), 2)


def test_a_run_whose_training_data_is_here_is_evaluated_on_it(tmp_path):
    data = make_dataset(tmp_path / "data")
    plan = plan_heldout(_run(tmp_path / "run", str(data)), cache=tmp_path / "cache")
    assert plan.kind == "dataset" and plan.data == data
    said: list[str] = []
    assert collect_heldout(plan, log=said.append) == data
    assert "the run's training data" in said[0]


def test_without_data_or_a_known_game_the_error_says_to_pass_data(tmp_path):
    with pytest.raises(ConfigError, match=r"records no training data.*pass --data DIR"):
        plan_heldout(_run(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"data/gone\) is not here.*pass --data DIR"):
        plan_heldout(_run(tmp_path / "b", "data/gone"))
    run = _with_procgen_prompts(_run(tmp_path / "c", "data/gone"))
    with pytest.raises(ConfigError, match=r"needs procgen \(pip install procgen\), or pass --data DIR"):
        plan_heldout(run, procgen_available=False)


def test_a_procgen_world_plans_held_out_levels_in_a_cache_keyed_by_what_is_played(tmp_path):
    run = _with_procgen_prompts(_run(tmp_path / "run"))
    plan = plan_heldout(run, episodes=4, frames=30, cache=tmp_path / "cache", procgen_available=True)
    assert plan.kind == "collect" and plan.collect.game == "coinrun" and plan.collect.max_episode_frames == 30
    assert plan.data.parent == tmp_path / "cache" / "heldout" and plan.levels == held_out_levels(SplitRule(), 4)
    assert plan_heldout(run, episodes=4, frames=30, cache=tmp_path / "cache", procgen_available=True) == plan
    other = plan_heldout(run, episodes=4, frames=40, cache=tmp_path / "cache", procgen_available=True)
    assert other.data != plan.data


def test_held_out_procgen_episodes_are_collected_once_then_reused(tmp_path):
    pytest.importorskip("procgen", reason="procgen-mirror is not installed (dev extra)")
    run = _with_procgen_prompts(_run(tmp_path / "run"))
    plan = plan_heldout(run, episodes=2, frames=20, cache=tmp_path / "cache")
    said: list[str] = []
    data = collect_heldout(plan, log=said.append)
    m = read_manifest(data)
    assert [e.level_seed for e in m.episodes] == list(plan.levels)
    assert all(e.split == "test" and e.length <= 20 for e in m.episodes)
    assert m.source["kind"] == "procgen" and m.source["game"] == "coinrun"
    assert "collecting 2 real coinrun episodes" in said[0]
    assert not any(p.name.endswith(".partial") for p in data.parent.iterdir())
    stamp = (data / "manifest.json").stat().st_mtime_ns
    assert collect_heldout(plan, log=said.append) == data and "cached" in said[1]
    assert (data / "manifest.json").stat().st_mtime_ns == stamp
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["source"]["game"] = "ninja"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="delete it to collect again"):
        collect_heldout(plan)


def test_eval_with_neither_run_nor_data_uses_the_default_world_and_its_data(tmp_path, monkeypatch, capsys):
    """Without RUN: the default world (here a tiny stand-in for the shipped one); without --data: the
    training data its config records; output in ./eval/NAME, not inside the installed package."""
    data = make_dataset(tmp_path / "data")
    monkeypatch.setattr(playworld.api, "DEFAULT_RUN", _run(tmp_path / "shipped", str(data)))
    monkeypatch.chdir(tmp_path)
    flags = ["--split", "train", "--episodes", "2", "--horizon", "3", "--context", "1", "--action-clips", "1",
             "--consistency-starts", "2", "--memory-starts", "2", "--grid-starts", "2", "--grid-steps", "2",
             "--key-starts", "1", "--key-steps", "30", "--speed-frames", "2", "--bootstrap", "20",
             "--allow-collapsed", "--no-progress", "--threads", "1"]
    assert main(["eval", *flags]) == 0
    out = capsys.readouterr().out
    assert "no --data given; using the run's training data" in out
    metrics = json.loads((tmp_path / "eval" / "shipped" / "metrics.json").read_text())
    assert metrics["counts"]["episodes"] == 2
    assert not (tmp_path / "shipped" / "eval").exists()
