"""A world's own play setting (RUN/play_setting.json): validated, read by every way of playing a world, and
overridden by what a caller sets explicitly."""

import json

import pytest

from playworld import make_env
from playworld.config import to_dict
from playworld.errors import ConfigError
from playworld.eval.config import EvalConfig
from playworld.maskgit import SamplingConfig, play_sampling
from playworld.play.config import PlayConfig
from playworld.play_setting import FILENAME, read_play_setting, save_play_setting, world_sampling
from playworld.world import World, WorldConfig
from tiny_world import save_tiny_run, tiny_models


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = save_tiny_run(tmp_path_factory.mktemp("world"))
    save_play_setting(root, note="chosen on this world's eval", copy_penalty=3.5, steps=2)
    return root


def test_missing_file_means_plays_global_setting(tmp_path):
    assert read_play_setting(tmp_path) == {} and read_play_setting(None) == {}
    assert world_sampling(tmp_path) == play_sampling()


def test_the_file_sets_its_fields_over_plays_and_overrides_win(run):
    assert json.loads((run / FILENAME).read_text())["note"] == "chosen on this world's eval"
    s = world_sampling(run)
    assert (s.copy_penalty, s.steps) == (3.5, 2)
    assert (s.temperature, s.action_guidance) == (play_sampling().temperature, play_sampling().action_guidance)
    o = world_sampling(run, copy_penalty=0.0, steps=None)  # None: not given
    assert (o.copy_penalty, o.steps) == (0.0, 2)


@pytest.mark.parametrize("data, message", [
    ([1], "expected a JSON object"),
    ({"copy_penalty": 3}, "'format' must be 'playworld-play-setting'"),
    ({"format": "playworld-play-setting", "top_k": 5}, r"unknown field\(s\) \['top_k'\]"),
    ({"format": "playworld-play-setting", "steps": 1.5}, "'steps' must be an integer"),
    ({"format": "playworld-play-setting", "steps": True}, "'steps' must be an integer"),
    ({"format": "playworld-play-setting", "copy_penalty": "3"}, "'copy_penalty' must be a finite number"),
    ({"format": "playworld-play-setting", "copy_penalty": -1.0}, "copy_penalty must be a finite number >= 0"),
    ({"format": "playworld-play-setting", "steps": 0}, "steps must be >= 1"),
    ({"format": "playworld-play-setting", "note": 3}, "'note' must be a string"),
])
def test_a_bad_file_is_refused_naming_it_and_the_field(tmp_path, data, message):
    (tmp_path / FILENAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as e:
        read_play_setting(tmp_path)
    assert str(tmp_path / FILENAME) in str(e.value)


def test_not_json_is_refused_naming_the_file(tmp_path):
    (tmp_path / FILENAME).write_text("{copy_penalty: 3")
    with pytest.raises(ConfigError, match="not valid JSON"):
        world_sampling(tmp_path)


def test_save_refuses_what_reading_would_and_leaves_no_file(tmp_path):
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        save_play_setting(tmp_path, steps=0)
    assert not (tmp_path / FILENAME).exists()


def test_world_load_and_the_env_play_at_the_worlds_setting_unless_told_otherwise(run):
    assert World.load(run).config.sampling == world_sampling(run)
    # a config that leaves sampling unset keeps the world's setting; its other fields apply
    w = World.load(run, WorldConfig(context_frames=4))
    assert w.config.sampling.copy_penalty == 3.5 and w.config.context_frames == 4
    explicit = SamplingConfig(steps=1, temperature=0.0, copy_penalty=1.0)
    assert World.load(run, WorldConfig(sampling=explicit)).config.sampling == explicit
    env = make_env(run, prompts=None)
    assert env.unwrapped.world.config.sampling.copy_penalty == 3.5
    # a world built from models in memory has no run: play's global setting
    assert World.from_models(*tiny_models()).config.sampling == play_sampling()


def test_play_and_eval_configs_start_from_the_worlds_setting(run):
    assert PlayConfig().sampling(run).copy_penalty == 3.5
    assert PlayConfig(copy_penalty=1.0).sampling(run).copy_penalty == 1.0
    assert PlayConfig().sampling() == play_sampling()
    assert EvalConfig().sampling(run).steps == 2
    assert EvalConfig(maskgit_steps=1).sampling(run).steps == 1
    resolved = EvalConfig().resolved(world_sampling(run))  # what metrics.json records
    assert (resolved.maskgit_steps, resolved.copy_penalty) == (2, 3.5)
    with pytest.raises(ConfigError, match="play.copy_penalty"):
        PlayConfig(copy_penalty=-1.0)


def test_the_play_server_plays_the_worlds_setting(run, tmp_path):
    from playworld.play.server import PlayServer

    server = PlayServer(tiny_models(), PlayConfig(context_frames=4), run_dir=run)
    assert server.world_config.sampling == world_sampling(run)
    server = PlayServer(tiny_models(), PlayConfig(context_frames=4, steps=1), run_dir=run)
    assert (server.world_config.sampling.steps, server.world_config.sampling.copy_penalty) == (1, 3.5)


def test_the_command_shows_sets_adopts_an_evaluation_and_clears(tmp_path, capsys, monkeypatch):
    from playworld.cli import main

    run = save_tiny_run(tmp_path / "w")
    assert main(["play-setting", str(run)]) == 0
    assert "no play_setting.json" in capsys.readouterr().out
    assert main(["play-setting", str(run), "--copy-penalty", "3", "--note", "livelier"]) == 0
    assert world_sampling(run).copy_penalty == 3.0
    assert main(["play-setting", str(run), "--steps", "2"]) == 0  # the other fields and the note are kept
    data = json.loads((run / FILENAME).read_text())
    assert (data["copy_penalty"], data["steps"], data["note"]) == (3.0, 2, "livelier")
    assert "copy penalty 3" in capsys.readouterr().out
    # the setting an evaluation measured, as its metrics.json records it (the loader stubbed: a real one
    # needs a whole evaluation)
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    settings = to_dict(EvalConfig(maskgit_steps=1, temperature=0.0, copy_penalty=2.5, action_guidance=1.0))
    monkeypatch.setattr("playworld.eval.schema.load_metrics", lambda p: {"settings": settings, "run": "elsewhere"})
    assert main(["play-setting", str(run), "--from-eval", str(ev)]) == 0
    s = world_sampling(run)
    assert (s.steps, s.copy_penalty) == (1, 2.5)
    assert "(of elsewhere)" in json.loads((run / FILENAME).read_text())["note"]
    assert main(["play-setting", str(run), "--copy-penalty", "-1"]) == 2  # refused, the file unchanged
    assert world_sampling(run).copy_penalty == 2.5
    assert main(["play-setting", str(run), "--clear"]) == 0
    assert not (run / FILENAME).exists() and world_sampling(run) == play_sampling()
    assert main(["play-setting", str(tmp_path)]) == 2  # not a world


def test_default_play_setting_is_written_for_one_pass_worlds_only_and_never_over_a_chosen_one(tmp_path):
    from playworld.models.dynamics import DynamicsConfig
    from playworld.play_setting import ONE_PASS_COPY_PENALTY, default_play_setting

    two_pass, one_pass = DynamicsConfig(), DynamicsConfig(one_pass=True)
    assert default_play_setting(tmp_path / "a", two_pass) is None and not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    assert default_play_setting(tmp_path / "b", one_pass) == tmp_path / "b" / FILENAME
    assert read_play_setting(tmp_path / "b") == {"copy_penalty": ONE_PASS_COPY_PENALTY}
    save_play_setting(tmp_path / "b", copy_penalty=1.5)
    assert default_play_setting(tmp_path / "b", one_pass) is None
    assert read_play_setting(tmp_path / "b") == {"copy_penalty": 1.5}
