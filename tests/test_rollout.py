"""Rollouts: the Python function is seeded and exact; the CLI writes a video that decodes, and bad input
gets an error naming it."""

import numpy as np
import pytest
import torch
from PIL import Image

from playworld.cli import main
from playworld.maskgit import SamplingConfig
from playworld.play.actions import ActionName, parse_action_string, save_action_names
from playworld.play.rollout import rollout
from playworld.world import World, WorldConfig
from tiny_world import SIZE, decode_video, save_tiny_run, tiny_models

from helpers import make_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_tiny_run(tmp_path_factory.mktemp("run"))


def test_rollout_is_seeded_and_has_one_frame_per_action():
    world = World(*tiny_models(), WorldConfig(sampling=SamplingConfig(steps=2)))
    prompt = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    a = rollout(world, prompt, [0, 1, 2, 3], seed=5)
    assert a.shape == (5, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, rollout(world, prompt, [0, 1, 2, 3], seed=5))
    assert not np.array_equal(a, rollout(world, prompt, [0, 1, 2, 3], seed=6))


def test_action_strings_are_one_based_or_named():
    names = [ActionName(2, "right", "ArrowRight"), ActionName(0, "jump")]
    assert parse_action_string("1,2 4", 4) == [0, 1, 3]
    assert parse_action_string("right,Jump,1", 4, names) == [2, 0, 0]
    with pytest.raises(ValueError, match=r"action 2 \('5'\) is out of range 1..4"):
        parse_action_string("1,5", 4)
    with pytest.raises(ValueError, match="neither a number"):
        parse_action_string("left", 4, names)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_rollout_cli_writes_a_readable_video_from_a_picture(run_dir, tmp_path, suffix, capsys):
    picture = tmp_path / "start.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / f"clip{suffix}"
    assert main(["rollout", str(run_dir), "--image", str(picture), "--actions", "1,2,3,4,4",
                 "--out", str(out), "--steps", "1", "--scale", "2"]) == 0
    frames = decode_video(out)
    assert frames.shape == (6, 2 * SIZE, 2 * SIZE, 3)
    assert "6 frames" in capsys.readouterr().out


def test_rollout_cli_from_a_dataset_frame_with_named_actions(run_dir, tmp_path):
    data = make_dataset(tmp_path / "data", episodes=2, length=8, size=SIZE)
    save_action_names(run_dir, [ActionName(1, "right", "ArrowRight")])
    try:
        out = tmp_path / "clip.gif"
        assert main(["rollout", str(run_dir), "--prompt", str(data), "--episode", "1", "--frame", "5",
                     "--prompt-frames", "3", "--actions", "right,right,1", "--out", str(out), "--steps", "1",
                     "--scale", "1"]) == 0
        assert decode_video(out).shape == (4, SIZE, SIZE, 3)
    finally:
        (run_dir / "action_names.json").unlink()


@pytest.mark.parametrize("args, message", [
    (["--actions", "1,9"], "out of range 1..4"),
    (["--out", "clip.avi"], "use a .mp4 or .gif"),
    (["--prompt", "not-a-picture.png"], "not-a-picture.png: cannot read"),
    (["--prompt", "garbage.png"], "garbage.png: not a readable picture"),
])
def test_rollout_cli_errors_name_the_problem(run_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    base = {"--prompt": "ok.png", "--actions": "1", "--out": "clip.gif"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["rollout", str(run_dir), *[x for kv in base.items() for x in kv], "--steps", "1"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_rollout_cli_defaults_to_the_shipped_world_and_its_start_frames(run_dir, tmp_path, capsys):
    out = tmp_path / "shipped.gif"
    assert main(["rollout", "--actions", "1,2", "--out", str(out), "--scale", "1"]) == 0
    assert decode_video(out).shape[1:] == (64, 64, 3)  # the shipped CoinRun world's frames
    assert "assets/coinrun/prompts" in capsys.readouterr().out
    # a run that ships no start frames says what to pass
    assert main(["rollout", str(run_dir), "--actions", "1", "--out", str(tmp_path / "c.gif"), "--steps", "1"]) == 2
    assert "no --prompt given" in capsys.readouterr().err
