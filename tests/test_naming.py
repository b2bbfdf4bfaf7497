"""`playworld name-actions`: a world's latent actions named from its evaluation, by the true actions the
evaluation mapped them to, or by the scene's motion; written where play reads them, and never over a file
written by hand unless asked."""

import copy
import json

import numpy as np
import pytest
import torch

from playworld.cli import main
from playworld.data.loader import ClipDataset
from playworld.data.policies import ACTION_NAMES
from playworld.errors import ConfigError
from playworld.eval.config import EvalConfig
from playworld.eval.evaluate import evaluate
from playworld.play.actions import ActionName, load_action_names, save_action_names
from playworld.play.naming import motion_name, names_from_eval
from sprite_oracle import OracleWorld

from helpers import make_dataset
from sprite_world import make_clips

torch.set_num_threads(1)
PERM = np.array([2, 0, 3, 1])  # true action a is latent PERM[a]
SPRITE_NAMES = ("UP", "DOWN", "LEFT", "RIGHT")  # the sprite world's actions 0-3


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    clips = make_clips(12, 40, seed=0)
    root = make_dataset(tmp_path_factory.mktemp("naming") / "sprites", videos=clips.video.numpy(),
                        actions=clips.actions.numpy())
    cfg = EvalConfig(split="train", episodes=8, batch=8, bootstrap=50, consistency_starts=4, memory_starts=4,
                     progress=False, motion_window=False, real_hold=2, key_starts=4, key_steps=30, action_clips=4)
    return evaluate(OracleWorld(clips.video, PERM), ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg,
                    run="oracle", data=str(root)).metrics


def test_mapped_latent_actions_take_their_true_actions_names_and_keys(oracle):
    names = names_from_eval(oracle, SPRITE_NAMES)
    assert [a.latent for a in names] == [0, 1, 2, 3]
    for true, latent in enumerate(PERM):
        assert names[latent].name == SPRITE_NAMES[true].lower()
    keys = {a.name: a.key for a in names}
    assert keys == {"up": "ArrowUp", "down": "ArrowDown", "left": "ArrowLeft", "right": "ArrowRight"}


def test_without_true_actions_each_takes_the_direction_the_world_moved(oracle):
    names = names_from_eval(oracle, None)  # the sprite moves; the measured scene shift is the sprite's
    for true, latent in enumerate(PERM):
        assert names[latent].name == "scene-" + SPRITE_NAMES[true].lower()
        assert names[latent].key is None


def test_procgen_names_keep_the_games_letters_and_give_diagonals_free_letters(oracle):
    m = copy.deepcopy(oracle)
    idx = {n: i for i, n in enumerate(ACTION_NAMES)}
    m["actions"]["mapping"] = [[0, idx["RIGHT+UP"]], [1, idx["E"]], [2, idx["NOOP"]], [3, idx["LEFT+UP"]]]
    names = {a.latent: (a.name, a.key) for a in names_from_eval(m, ACTION_NAMES)}
    assert names[1] == ("e", "e") and names[2] == ("noop", " ") and names[3] == ("left+up", "q")
    assert names[0][0] == "right+up" and names[0][1] not in (None, "e", "q", " ")  # Procgen's own E came first


def test_motion_names_and_unmapped_latents():
    assert motion_name(0.0, -1.0, 1.0) == "scene-left"
    assert motion_name(1.0, 1.0, 1.0) == "scene-down-right"
    assert motion_name(-0.9, 0.1, 1.0) == "scene-up"
    assert motion_name(0.05, 0.05, 1.0) == "still"
    assert motion_name(0.0, 0.0, 0.0) == "still"
    m = {"actions": {"num_latent": 3, "mapping": [[0, 1]]},
         "motion": {"keys": {"per_action": [{"latent": a, "early": {"dy": {"mean": 0.0}, "dx": {"mean": dx}}}
                                            for a, dx in enumerate((0.0, 0.01, 0.02))]}}}
    names = names_from_eval(m, SPRITE_NAMES)  # latents 1 and 2 have no true action: both still, kept apart
    assert [a.name for a in names] == ["down", "still", "still-2"]
    m["motion"]["keys"]["per_action"][2]["early"]["dx"]["mean"] = -0.5
    assert [a.name for a in names_from_eval(m, None)] == ["still", "still-2", "scene-left"]
    with pytest.raises(ConfigError, match="names only"):
        names_from_eval({**m, "actions": {"num_latent": 3, "mapping": [[0, 9]]}}, SPRITE_NAMES)
    with pytest.raises(ConfigError, match="not a playworld evaluation"):
        names_from_eval({"actions": {}}, None)


def test_saving_names_refuses_what_loading_would(tmp_path):
    with pytest.raises(ConfigError, match="used more than once"):
        save_action_names(tmp_path, [ActionName(0, "a", "e"), ActionName(1, "b", "e")])
    with pytest.raises(ConfigError, match="not an action of this world"):
        save_action_names(tmp_path, [ActionName(4, "a")], num_actions=4)
    assert not (tmp_path / "action_names.json").exists()


def test_cli_writes_the_names_play_reads_and_keeps_a_hand_written_file(oracle, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "dynamics").mkdir(parents=True)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(oracle))
    assert main(["name-actions", str(tmp_path / "eval"), "--run", str(run), "--dry-run"]) == 0
    assert not (run / "action_names.json").exists()
    assert main(["name-actions", str(tmp_path / "eval"), "--run", str(run)]) == 0
    names = load_action_names(run, 4)  # the sprite dataset is not Procgen's: named by motion
    assert sorted(a.name for a in names) == ["scene-down", "scene-left", "scene-right", "scene-up"]
    save_action_names(run, [ActionName(0, "mine")])
    assert main(["name-actions", str(tmp_path / "eval"), "--run", str(run)]) == 2
    assert "exists" in capsys.readouterr().err
    assert [a.name for a in load_action_names(run, 4)] == ["mine"]
    assert main(["name-actions", str(tmp_path / "eval"), "--run", str(run), "--force"]) == 0
    assert len(load_action_names(run, 4)) == 4
    assert main(["name-actions", str(tmp_path / "eval"), "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a world run directory" in capsys.readouterr().err
