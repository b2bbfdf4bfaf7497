"""`playworld eval` recovers known truths on the sprite world: a perfect (oracle) world gets the exact
PSNR, random actions score lower, the mapping finds the true permutation, consistency and memory are
perfect, and metrics.json validates (and refuses what is wrong)."""

import copy
import json

import numpy as np
import pytest
import torch

from playworld.data.loader import ClipDataset
from playworld.errors import ConfigError, TrainingError
from playworld.eval.config import EvalConfig
from playworld.eval.evaluate import evaluate
from playworld.eval.schema import validate
from playworld.eval.stats import PSNR_CAP
from sprite_oracle import OracleWorld

from helpers import make_dataset
from sprite_world import make_clips

torch.set_num_threads(1)
PERM = np.array([2, 0, 3, 1])  # true action a is latent PERM[a]


def _config(**kw) -> EvalConfig:
    base = dict(split="train", episodes=12, batch=8, bootstrap=200, consistency_starts=8, memory_starts=8,
                progress=False, opposites="1:0,3:2")
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sprite(tmp_path_factory):
    clips = make_clips(12, 40, seed=0)
    root = make_dataset(tmp_path_factory.mktemp("eval") / "sprites", videos=clips.video.numpy(),
                        actions=clips.actions.numpy())
    return clips, root


@pytest.fixture(scope="module")
def oracle_metrics(sprite):
    clips, root = sprite
    cfg = _config()
    out = evaluate(OracleWorld(clips.video, PERM), ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg,
                   run="oracle", data=str(root))
    return out


def test_a_perfect_world_gets_the_ground_truth_psnr_and_random_actions_score_lower(oracle_metrics):
    m = oracle_metrics.metrics
    assert m["tokenizer"]["psnr"]["mean"] == PSNR_CAP and m["tokenizer"]["ssim"]["mean"] == pytest.approx(1.0)
    for c in ("1", "4"):
        r = m["rollouts"]["contexts"][c]
        assert len(r["psnr"]["inferred"]) == 15
        assert all(e["mean"] == PSNR_CAP and e["low"] == PSNR_CAP for e in r["psnr"]["inferred"])
        for t in range(15):
            assert r["psnr"]["random"][t]["mean"] < PSNR_CAP - 20  # wrong 3 times in 4 from t = 1 on
            assert r["delta_psnr"][t]["low"] > 0
        assert r["psnr"]["copy_last"][0]["high"] < 30  # one step on the sprite has always moved
        # random actions drift further from the truth the longer they run
        assert r["psnr"]["random"][-1]["mean"] < r["psnr"]["random"][0]["mean"]


def test_the_mapping_finds_the_true_permutation_and_the_probe_and_nmi_are_exact(oracle_metrics):
    a = oracle_metrics.metrics["actions"]
    assert a["available"] and a["reason"] is None
    assert sorted(map(tuple, a["mapping"])) == sorted((int(PERM[t]), t) for t in range(4))
    assert a["mapping_accuracy"]["mean"] == 1.0 and a["nmi"]["mean"] == pytest.approx(1.0)
    assert a["probe_accuracy"]["mean"] == 1.0 and a["majority_accuracy"]["mean"] < 0.4
    conf = np.array(a["confusion"])
    assert conf.sum() == oracle_metrics.metrics["counts"]["action_transitions"] == 12 * 2 * 18
    assert (conf > 0).sum() == 4  # one cell per action: a permutation matrix of counts


def test_each_action_moves_the_same_way_everywhere_and_walks_return_exactly(oracle_metrics):
    m = oracle_metrics.metrics
    assert m["consistency"]["overall"]["mean"] > 0.99
    moves = np.array(m["consistency"]["mean_motion"])  # latent l moves by 3 steps x 2 px of true PERM^-1[l]
    expected = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])[np.argsort(PERM)] * 6
    np.testing.assert_allclose(moves, expected, atol=1e-3)
    mem = m["memory"]
    assert mem["model_return_psnr"]["mean"] == PSNR_CAP and len(mem["walks"]) == 4
    assert {(w["there"], w["back"]) for w in mem["walks"]} >= {(int(PERM[1]), int(PERM[0]))}
    assert mem["real"]["available"] is False and "cannot be replayed" in mem["real"]["reason"]


def test_without_given_opposites_the_walk_uses_measured_motion(sprite):
    clips, root = sprite
    cfg = _config(opposites="", episodes=4, action_clips=1)
    m = evaluate(OracleWorld(clips.video, PERM), ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg).metrics
    assert m["memory"]["pairs_from"].startswith("measured motion")
    pairs = {frozenset((w["there"], w["back"])) for w in m["memory"]["walks"]}
    assert pairs == {frozenset((int(PERM[0]), int(PERM[1]))), frozenset((int(PERM[2]), int(PERM[3])))}
    assert m["memory"]["model_return_psnr"]["mean"] == PSNR_CAP


def test_metrics_validate_and_the_validator_names_what_is_wrong(oracle_metrics):
    m = json.loads(json.dumps(oracle_metrics.metrics))
    validate(m)
    assert set(m["headline"]) >= {"tokenizer_psnr", "delta_psnr_t4", "mapping_accuracy", "ms_per_frame"}
    for path, value, message in [
        (("schema_version",), 99, "schema_version 99"),
        (("tokenizer", "psnr", "mean"), "high", r"tokenizer.psnr.mean: expected a finite number"),
        (("rollouts", "contexts", "1", "psnr", "inferred"), {}, r"inferred: expected a list"),
        (("speed", "ms_per_frame", "low"), 1e9, r"speed.ms_per_frame: interval"),
    ]:
        bad = copy.deepcopy(m)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ConfigError, match=message):
            validate(bad, "run/metrics.json")
    bad = copy.deepcopy(m)
    del bad["memory"]["k"]
    bad["memory"]["extra"] = 1
    with pytest.raises(ConfigError, match=r"run/metrics.json: memory: missing keys \['k'\], unknown keys \['extra'\]"):
        validate(bad, "run/metrics.json")


def test_a_collapsed_lam_fails_loudly_unless_allowed(sprite):
    clips, root = sprite
    world = OracleWorld(clips.video, PERM)
    world.lam.infer_actions = lambda video: torch.zeros(video.shape[0], video.shape[1] - 1, dtype=torch.long)
    cfg = _config(episodes=2, action_clips=1)
    ds = ClipDataset(root, clip_len=cfg.clip_len, split="train")
    with pytest.raises(TrainingError, match="only 1 of 4 latent actions"):
        evaluate(world, ds, cfg)
    m = evaluate(world, ds, _config(episodes=2, action_clips=1, allow_collapsed=True)).metrics
    assert any("only 1 of 4" in w for w in m["warnings"])


def test_config_and_data_errors_name_the_problem(sprite, tmp_path):
    with pytest.raises(ConfigError, match="eval.opposites: '7-1'"):
        EvalConfig(opposites="7-1")
    with pytest.raises(ConfigError, match="eval.context"):
        EvalConfig(context=(0,))
    clips, root = sprite
    cfg = _config(horizon=40)  # clips of 44 frames: longer than every episode
    from playworld.errors import DatasetError
    with pytest.raises(DatasetError, match=r"sprites: split 'train' has no episode of at least 44 frames"):
        evaluate(OracleWorld(clips.video, PERM), ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg)


def test_max_minutes_stops_taking_episodes_and_says_so(sprite):
    clips, root = sprite
    cfg = _config(batch=4, max_minutes=1e-9)  # spent after the first batch
    m = evaluate(OracleWorld(clips.video, PERM), ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg).metrics
    assert m["counts"] == {"episodes": 4, "rollout_clips": 4, "action_transitions": 4 * 2 * 18,
                           "truncated_by_time": True}
    assert m["rollouts"]["contexts"]["1"]["psnr"]["inferred"][0]["n"] == 4
    validate(json.loads(json.dumps(m)))
