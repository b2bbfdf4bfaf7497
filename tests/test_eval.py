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
from playworld.maskgit import PLAY_COPY_PENALTY, play_sampling
from sprite_oracle import OracleWorld

from helpers import make_dataset
from sprite_world import make_clips

torch.set_num_threads(1)
PERM = np.array([2, 0, 3, 1])  # true action a is latent PERM[a]


def _config(**kw) -> EvalConfig:
    # the sprite wraps around the frame, so motion is measured without the window (periodic frames);
    # its actions are uniformly random, so a true action held for 2 frames is its steady motion
    base = dict(split="train", episodes=12, batch=8, bootstrap=200, consistency_starts=8, memory_starts=8,
                progress=False, opposites="1:0,3:2", motion_window=False, real_hold=2, key_starts=4, key_steps=30)
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
    real = m["consistency"]["real"]  # the sprite world is no Procgen game: no real-game ceiling
    assert real["available"] is False and "cannot be replayed" in real["reason"] and real["overall"] is None


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
    # a key added to v2 later (the copy penalty of the sampling setting): files without it still read,
    # and when present it is checked
    assert m["speed"]["copy_penalty"] == PLAY_COPY_PENALTY  # eval defaults to play's setting
    older = copy.deepcopy(m)
    del older["speed"]["copy_penalty"]
    validate(older)
    older["speed"]["copy_penalty"] = "none"
    with pytest.raises(ConfigError, match=r"speed.copy_penalty: expected a finite number"):
        validate(older)


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
    with pytest.raises(ConfigError, match=r"eval.key_steps must be >= 30 \(the late window"):
        EvalConfig(key_steps=20)
    with pytest.raises(ConfigError, match="eval.motion_cutoff"):
        EvalConfig(motion_cutoff=-1.0)
    from playworld.maskgit import SamplingConfig, play_sampling
    from playworld.play.config import PlayConfig
    play = play_sampling()  # eval's default is what a player sees, and play's
    assert EvalConfig().sampling() == play == PlayConfig().sampling()
    assert EvalConfig(maskgit_steps=4, temperature=1.0, copy_penalty=0.5, action_guidance=2.0).sampling() == \
        SamplingConfig(steps=4, temperature=1.0, copy_penalty=0.5, action_guidance=2.0)
    for field, bad in (("temperature", -1.0), ("copy_penalty", float("inf")), ("action_guidance", 0.5)):
        for config, section in ((EvalConfig, "eval"), (PlayConfig, "play")):  # refused by their own names
            with pytest.raises(ConfigError, match=rf"^{section}\.{field} must be"):
                config(**{field: bad})
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


class CopyWorld(OracleWorld):
    """A world that returns its input unchanged, whatever the key: motion 0, liveness 0."""

    def step(self, actions):
        assert self.last is not None
        return self.last


@pytest.fixture(scope="module")
def copy_metrics(sprite):
    clips, root = sprite
    cfg = _config(episodes=8, action_clips=2)
    return evaluate(CopyWorld(clips.video, PERM), ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg).metrics


def test_a_perfect_world_keeps_all_motion_and_its_keys_stay_live(oracle_metrics):
    mo = oracle_metrics.metrics["motion"]
    for stage in ("tokenizer_kept", "dynamics_kept"):
        for axis in ("dy", "dx"):
            assert mo[stage]["slope"][axis]["mean"] == pytest.approx(1.0, abs=1e-3)
            assert mo[stage]["correlation"][axis]["mean"] == pytest.approx(1.0, abs=1e-3)
        assert mo[stage]["real_motion"] == pytest.approx(2.0, abs=1e-3)  # every step moves 2 px on one axis
    keys = mo["keys"]
    assert keys["real_available"] and keys["response_actions"] == [0, 1, 2, 3]
    for window in ("early", "late", "far"):
        assert keys["response"][window]["mean"] == pytest.approx(1.0, abs=1e-3)
        assert 0.8 < keys["liveness"][window]["mean"] < 1.25  # same motion; sprite colours differ by clip
    for entry in keys["per_action"]:  # latent l holds true action PERM^-1[l]: 2 px a step, as in the data
        true = int(np.argsort(PERM)[entry["latent"]])
        assert entry["true"] == true
        move = 2 * np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])[true]
        assert [entry["late"]["dy"]["mean"], entry["late"]["dx"]["mean"]] == pytest.approx(move, abs=1e-3)
        assert [entry["real"]["dy"]["mean"], entry["real"]["dx"]["mean"]] == pytest.approx(move, abs=1e-3)
    assert np.array(keys["curves"]["shift"]).shape == (4, 30, 2) and np.array(keys["curves"]["change"]).shape == (4, 30)


def test_a_world_that_returns_its_input_is_flagged_frozen(oracle_metrics, copy_metrics):
    mo = copy_metrics["motion"]
    assert mo["tokenizer_kept"]["slope"]["dx"]["mean"] == pytest.approx(1.0, abs=1e-3)  # the tokenizer is exact
    assert mo["dynamics_kept"]["slope"]["dx"]["mean"] == 0 and mo["dynamics_kept"]["slope"]["dy"]["mean"] == 0
    for window in ("early", "late", "far"):
        assert mo["keys"]["response"][window]["mean"] == 0 and mo["keys"]["liveness"][window]["mean"] == 0
        assert mo["keys"]["change"][window]["high"] == 0
    assert mo["realism"]["frechet"]["mean"] > 2 * oracle_metrics.metrics["motion"]["realism"]["frechet"]["mean"]
    head = copy_metrics["headline"]
    assert head["key_response_late"]["mean"] == 0 and head["liveness_late"]["mean"] == 0
    assert head["realism_frechet"]["better"] == "lower" and head["liveness_far"]["better"] == "near 1"


def test_pixel_change_is_kept_by_a_perfect_world_and_lost_by_one_that_returns_its_input(oracle_metrics,
                                                                                      copy_metrics):
    tok, dyn = oracle_metrics.metrics["tokenizer"], oracle_metrics.metrics["motion"]["dynamics_change"]
    assert tok["change_kept"]["mean"] == pytest.approx(1.0) and tok["moving_psnr"]["mean"] == PSNR_CAP
    assert dyn["change_kept"]["mean"] == pytest.approx(1.0) and dyn["moving_psnr"]["mean"] == PSNR_CAP
    assert dyn["copy_moving_psnr"]["mean"] < 20  # the moved sprite is where copying is wrong
    frozen = copy_metrics["motion"]["dynamics_change"]
    assert frozen["change_kept"]["mean"] == 0 and frozen["change_kept"]["high"] == 0
    assert frozen["moving_psnr"]["mean"] == pytest.approx(frozen["copy_moving_psnr"]["mean"])
    head = copy_metrics["headline"]
    assert head["dynamics_change_kept"]["better"] == "near 1" and head["dynamics_moving_psnr"]["better"] == "higher"
    assert head["tokenizer_change_kept"]["mean"] == pytest.approx(1.0)


def test_files_from_before_the_change_figures_still_validate(oracle_metrics):
    m = json.loads(json.dumps(oracle_metrics.metrics))
    del m["tokenizer"]["change_kept"], m["tokenizer"]["moving_psnr"], m["motion"]["dynamics_change"]
    m["headline"] = {k: v for k, v in m["headline"].items() if "change" not in k and "moving" not in k}
    validate(m)
    from playworld.eval.report import render_report

    assert "Change kept" not in render_report(m) and "Change kept" in render_report(oracle_metrics.metrics)


def test_version_1_files_are_still_read_and_compared(oracle_metrics, tmp_path):
    from playworld.eval.compare import compare

    m = json.loads(json.dumps(oracle_metrics.metrics))
    v1 = copy.deepcopy(m)
    v1["schema_version"] = 1
    del v1["motion"], v1["tokenizer"]["change_kept"], v1["tokenizer"]["moving_psnr"]
    v1["headline"] = {k: {f: x for f, x in v.items() if f != "replicates"} for k, v in v1["headline"].items()
                      if not any(w in k for w in ("motion", "key_", "liveness", "realism", "change", "moving"))}
    validate(v1)
    with pytest.raises(ConfigError, match=r"top level: missing keys \['motion'\]"):
        validate({**v1, "schema_version": 2})
    with pytest.raises(ConfigError, match=r"unknown keys \['motion'\]"):
        validate({**m, "schema_version": 1})
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps(v1))
    (tmp_path / "new" / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / "old", tmp_path / "new"])
    assert c.rows["liveness_late"][0] is None and c.rows["liveness_late"][1]["mean"] > 0.8


def test_config_from_recorded_settings_round_trips_and_reads_older_files_as_they_ran(oracle_metrics):
    settings = json.loads(json.dumps(oracle_metrics.metrics["settings"]))  # as metrics.json holds them
    cfg = EvalConfig.from_settings(settings)
    # decoding left to the world is recorded as what it played at (a world without a config: play's setting)
    assert cfg == _config().resolved(play_sampling()) and isinstance(cfg.context, tuple)
    assert (cfg.maskgit_steps, cfg.copy_penalty) == (play_sampling().steps, play_sampling().copy_penalty)
    assert EvalConfig.from_settings(settings, seed=5, progress=False).seed == 5
    older = {k: v for k, v in settings.items() if k not in ("copy_penalty", "action_guidance", "real_key_starts",
                                                             "progress", "gif_clips")}
    cfg = EvalConfig.from_settings(older)  # as evaluations ran before these fields existed
    assert (cfg.copy_penalty, cfg.action_guidance, cfg.real_key_starts) == (0.0, 1.0, 0)
    assert (cfg.progress, cfg.gif_clips) == (EvalConfig().progress, EvalConfig().gif_clips)
    with pytest.raises(ConfigError, match=r"run/metrics.json: settings lack \['episodes', 'seed'\]"):
        EvalConfig.from_settings({k: v for k, v in settings.items() if k not in ("seed", "episodes")},
                                 "run/metrics.json")
    with pytest.raises(ConfigError, match=r"settings \['warp'\] are unknown"):
        EvalConfig.from_settings({**settings, "warp": 9})
