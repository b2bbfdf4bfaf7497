"""Agents from latent actions: latent BC + decoding on a sprite world whose behaviour is known, the
decoder's label efficiency, resume, the real-game evaluator against a hand-run episode, and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from playworld.agents.bc import BCConfig, train_bc
from playworld.agents.decode import (
    ActionDecoder,
    DecoderConfig,
    decoder_accuracy,
    fit_decoder,
    name_table,
)
from playworld.agents.evaluate import AgentController, BehaviourController, RandomController, play_levels
from playworld.agents.pipeline import clone, decode
from playworld.agents.policy import PolicyConfig, PolicyNet, load_policy
from playworld.agents.transitions import read_transitions
from playworld.data.policies import ACTION_NAMES, make_policy
from sprite_oracle import OracleLAM

from helpers import make_dataset
from sprite_world import MOVES, render

SIZE, SPRITE, SPEED = 16, 4, 2
PERM = np.array([2, 0, 3, 1])  # latent = PERM[true]: the LAM's numbering is not the controller's


def circling(pos: np.ndarray) -> np.ndarray:
    """The known behaviour: (N, 2) top-left (y, x) -> action; clockwise round the quadrants
    (top-left: right, top-right: down, bottom-right: left, bottom-left: up)."""
    top, left = pos[:, 0] < SIZE // 2, pos[:, 1] < SIZE // 2
    return np.select([top & left, top & ~left, ~top & ~left], [3, 1, 2], default=0)


def circling_episodes(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """videos (n, length, 16, 16, 3) uint8 of the circling behaviour and its actions (n, length-1)."""
    rng = np.random.default_rng(seed)
    pos = SPEED * rng.integers(0, SIZE // SPEED, (n, 2))
    sprite = np.array([(240, 200, 40)] * n, dtype=np.uint8)
    bg = np.array([(20, 20, 60)] * n, dtype=np.uint8)
    frames, actions = [], []
    for _ in range(length):
        frames.append(render(pos, sprite, bg, SIZE, SPRITE))
        a = circling(pos)
        actions.append(a)
        pos = (pos + SPEED * MOVES[a]) % SIZE
    return np.stack(frames, 1), np.stack(actions[:-1], 1)


@pytest.fixture(scope="module")
def sprite_data(tmp_path_factory):
    videos, actions = circling_episodes(16, 16, seed=0)
    return make_dataset(tmp_path_factory.mktemp("sprite") / "data", videos=videos, actions=actions)


def labeller():
    return OracleLAM(PERM, SPEED).infer_actions


SMALL = dict(num_actions=4, context=1, channels=8, feature_dim=32)


def _behaviour_match(policy: PolicyNet, decoder: ActionDecoder | None) -> float:
    """Fraction of fresh circling frames where the agent's greedy action is the behaviour's."""
    videos, _ = circling_episodes(8, 12, seed=99)
    ctrl = AgentController(policy, decoder, seed=0, greedy=True)
    frames = torch.from_numpy(videos).flatten(0, 1).numpy()  # (F, H, W, 3)
    got = ctrl(frames, np.ones(len(frames), dtype=bool))
    # the behaviour's action at each frame, read back from the frame's sprite position
    wrapped = [np.argwhere(f[..., 0] == 240) for f in frames]
    pos = np.stack([_top_left(w) for w in wrapped])
    return float((got == circling(pos)).mean())


def _top_left(cells: np.ndarray) -> np.ndarray:
    """Top-left corner of a sprite that may wrap round the frame's edges."""
    out = []
    for axis in range(2):
        vals = set(cells[:, axis].tolist())
        out.append(next(v for v in sorted(vals) if (v - 1) % SIZE not in vals))
    return np.array(out)


def test_latent_bc_and_decode_recover_the_behaviour(sprite_data, tmp_path):
    cfg = BCConfig(steps=300, batch=64, lr=3e-3, checkpoint_every=1000)
    res = clone(None, sprite_data, tmp_path / "agent", PolicyConfig(**SMALL), cfg, labeller=labeller(),
                progress=False)
    assert res.accuracy > 0.9  # it clones the LAM's labels
    oracle = clone(None, sprite_data, tmp_path / "oracle", PolicyConfig(**SMALL, target="true"), cfg, progress=False)
    dec = decode(tmp_path / "agent", sprite_data, DecoderConfig(labels=50, steps=200), progress=False)
    assert dec.accuracy == 1.0  # the decoder learns PERM's inverse from 50 labels
    cv = json.loads((dec.path / "config.json").read_text())["cross_validation"]
    assert cv["majority"] == 1.0 and set(cv) == {"head", "majority"}
    policy, _ = load_policy(tmp_path / "agent")
    from playworld.agents.decode import load_decoder

    decoder, _ = load_decoder(tmp_path / "agent", 50, policy.config.feature_dim, 4)
    latent_match = _behaviour_match(policy, decoder)
    oracle_match = _behaviour_match(load_policy(tmp_path / "oracle")[0], None)
    assert latent_match > 0.9, latent_match
    assert oracle.accuracy > 0.9 and latent_match >= oracle_match - 0.05
    # without a decoder the latent numbering is wrong for the controller: decoding is what makes it act
    assert _behaviour_match(policy, ActionDecoder(table=torch.arange(4))) < 0.5


def test_decoder_learns_a_known_mapping_and_does_not_get_worse_with_more_labels(sprite_data):
    trans = read_transitions(sprite_data, labeller=labeller(), progress=False)
    torch.manual_seed(0)
    policy = PolicyNet(PolicyConfig(**SMALL)).eval()  # untrained features: the mapping lives in the latent
    accs = []
    for n in (2, 8, 64, 200):
        head = fit_decoder(policy, trans, 4, DecoderConfig(labels=n, steps=300))
        accs.append(decoder_accuracy(policy, ActionDecoder(head=head), trans))
    assert accs[0] < 0.9 and accs[-1] == 1.0, accs  # two labels cannot show four actions; 200 do
    assert all(b >= a - 0.02 for a, b in zip(accs, accs[1:])), accs


def test_name_mapping_reads_motion_names():
    table, how = name_table(5, 15, {0: "jump", 1: "right", 3: "fall", 4: "jump-left"}, ACTION_NAMES)
    assert [ACTION_NAMES[i] for i in table] == ["UP", "RIGHT", "NOOP", "DOWN", "LEFT+UP"] and "names" in how
    table, how = name_table(4, 15, None, ACTION_NAMES)
    assert table.tolist() == [0, 1, 2, 3] and "identity" in how


def test_bc_resumes_to_the_same_weights(sprite_data, tmp_path):
    trans = read_transitions(sprite_data, labeller=labeller(), progress=False)
    cfg = BCConfig(steps=10, batch=16, lr=1e-3, checkpoint_every=4)
    train_bc(trans, PolicyConfig(**SMALL), cfg, tmp_path / "whole", progress=False)
    part = train_bc(trans, PolicyConfig(**SMALL), cfg, tmp_path / "split", progress=False, max_steps=5)
    assert part.steps_run == 5 and not (tmp_path / "split" / "policy.safetensors").exists()
    rest = train_bc(trans, PolicyConfig(**SMALL), cfg, tmp_path / "split", progress=False)
    assert rest.steps_run == 5
    a, b = load_policy(tmp_path / "whole")[0].state_dict(), load_policy(tmp_path / "split")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_real_game_return_matches_a_hand_played_episode():
    from playworld.agents.evaluate import _make_env

    level, seed, max_steps = 7, 3, 300
    stats = play_levels(BehaviourController("scripted", "coinrun", 1, seed), "coinrun", [level],
                        max_steps=max_steps, seed=0)
    # the same scripted policy, its stream seeded alike, stepped by hand in the same level
    policy = make_policy("scripted", "coinrun", [np.random.SeedSequence(seed, spawn_key=(0,))])
    env = _make_env("coinrun", "hard", level, 0)
    ret, steps, first, success = 0.0, 0, np.ones(1, dtype=bool), False
    try:
        assert env.get_info()[0]["level_seed"] == level
        while steps < max_steps:
            env.act(policy(first))
            rew, _, first = env.observe()
            ret, steps = ret + float(rew[0]), steps + 1
            if first[0]:
                success = bool(env.get_info()[0]["prev_level_complete"])
                break
    finally:
        env.close()
    assert (stats.ret[0], stats.length[0], stats.success[0]) == (ret, steps, success)
    assert stats.ret[0] == (10.0 if stats.success[0] else 0.0)  # CoinRun pays 10 for the coin, nothing else
    rnd = play_levels(RandomController(0), "coinrun", [level, level + 1], max_steps=50)
    assert len(rnd.ret) == 2 and (rnd.length <= 50).all() and (rnd.truncated == (rnd.length == 50)).all()


def test_cli_round_trip(sprite_data, tmp_path, capsys):
    from playworld.cli import main
    from tiny_world import save_tiny_run

    run = save_tiny_run(tmp_path / "run")
    agent, oracle = tmp_path / "agent", tmp_path / "oracle"
    common = ["--data", str(sprite_data), "--steps", "3", "--no-progress", "--threads", "1", "--max-episodes", "10"]
    assert main(["agent", "bc", str(run), "--out", str(agent), *common]) == 0
    assert "latent labels' NMI with the recorded keys" in capsys.readouterr().out  # the data records its keys
    assert main(["agent", "bc", "--oracle", "--out", str(oracle), *common]) == 0
    assert "NMI" not in capsys.readouterr().out  # oracle BC reads the keys themselves
    for n in ("0", "8"):
        assert main(["agent", "decode", str(agent), "--data", str(sprite_data), "--labels", n, "--steps", "50",
                     "--no-progress"]) == 0
        assert "NMI with the recorded keys" in capsys.readouterr().out
    assert main(["agent", "eval", str(agent), "--oracle", str(oracle), "--episodes", "1", "--max-steps", "5",
                 "--threads", "1"]) == 0
    result = json.loads((agent / "eval.json").read_text())
    assert set(result["rows"]) == {"random", "oracle BC (every true label)", "latent BC, N=0", "latent BC, N=8"}
    assert all(r["length"]["mean"] <= 5 for r in result["rows"].values())
    assert "| latent BC, N=8 |" in (agent / "eval.md").read_text()
    assert main(["agent", "bc", "--out", str(tmp_path / "x"), *common]) == 2  # latent BC without a RUN
    # the labelled baseline: BC on the keys of an inverse dynamics model fit on N labels, played beside
    idm = tmp_path / "idm"
    assert main(["agent", "bc", "--idm", "8", "--idm-steps", "5", "--out", str(idm), *common]) == 0
    assert "inverse dynamics on 8 labels, train split: key accuracy" in capsys.readouterr().out
    assert main(["agent", "eval", str(agent), "--also", str(idm), "--episodes", "1", "--max-steps", "5",
                 "--threads", "1", "--no-baselines"]) == 0
    rows = json.loads((agent / "eval.json").read_text())["rows"]
    idm_nmi = load_policy(idm)[1]["label_nmi"]
    assert rows["IDM BC, N=8"]["label_nmi"] == idm_nmi and idm_nmi is not None  # each row says what it cloned
    assert rows["latent BC, N=8"]["label_nmi"] == load_policy(agent)[1]["label_nmi"]
    assert f"| {idm_nmi:.3f} |" in (agent / "eval.md").read_text()
    assert main(["agent", "eval", str(idm), "--also", str(agent), "--episodes", "1", "--threads", "1"]) == 2
    assert "true keys" in capsys.readouterr().err
    # two IDM agents of the same N (other label draws) get a row each, not one overwriting the other
    shutil.copytree(idm, tmp_path / "idm-draw1")
    assert main(["agent", "eval", str(agent), "--also", str(idm), "--also", str(tmp_path / "idm-draw1"),
                 "--episodes", "1", "--max-steps", "5", "--threads", "1", "--no-baselines"]) == 0
    rows = json.loads((agent / "eval.json").read_text())["rows"]
    assert {"IDM BC, N=8", "IDM BC, N=8 (idm-draw1)"} <= set(rows)
    assert main(["agent", "eval", str(agent), "--also", str(idm), "--also", str(idm), "--episodes", "1",
                 "--threads", "1"]) == 2
    assert "the same agent twice" in capsys.readouterr().err
    assert main(["agent", "bc", "--oracle", "--idm", "8", "--out", str(tmp_path / "y"), *common]) == 2


def test_errors_name_the_problem(sprite_data, tmp_path):
    from playworld.agents.pipeline import EvalConfig, eval_levels, evaluate
    from playworld.errors import CheckpointError, ConfigError, DatasetError

    cfg = BCConfig(steps=2, batch=4, checkpoint_every=1000)
    clone(None, sprite_data, tmp_path / "oracle", PolicyConfig(**SMALL, target="true"), cfg, progress=False)
    with pytest.raises(ConfigError, match="oracle BC"):
        decode(tmp_path / "oracle", sprite_data, DecoderConfig(labels=0), progress=False)
    clone(None, sprite_data, tmp_path / "agent", PolicyConfig(**SMALL), cfg, labeller=labeller(), progress=False)
    with pytest.raises(CheckpointError, match="no decoder"):
        evaluate(tmp_path / "agent", EvalConfig(episodes=1, max_steps=2), baselines=False, progress=False)
    with pytest.raises(ConfigError, match="more labelled transitions"):
        decode(tmp_path / "agent", sprite_data, DecoderConfig(labels=10**6), progress=False)
    with pytest.raises(CheckpointError, match="another policy"):  # resuming with another network is refused
        clone(None, sprite_data, tmp_path / "agent", PolicyConfig(**{**SMALL, "channels": 4}),
              BCConfig(steps=4, batch=4), labeller=labeller(), progress=False)
    held = eval_levels({"split_rule": {"by": "level", "val": 0.05, "test": 0.05}}, 4)
    assert len(held) == 4
    with pytest.raises(DatasetError, match="training levels"):
        eval_levels({"split_rule": {"by": "level", "val": 0.05, "test": 0.05}, "train_levels": [held[2]]}, 4)


def test_observation_windows_stop_at_the_episode_start(sprite_data):
    trans = read_transitions(sprite_data, progress=False)  # 16 episodes of 16 frames: 15 transitions each
    assert len(trans) == 16 * 15 and trans.latent.eq(-1).all() and trans.true.ge(0).all()
    idx = torch.tensor([15, 16, 17])  # episode 1's transitions 0, 1, 2 (its frames start at 16)
    obs = trans.observations(idx, context=3)  # (3, 3, H, W, 3)
    f = trans.frames
    assert torch.equal(obs[0], f[[16, 16, 16]]) and torch.equal(obs[1], f[[16, 16, 17]])
    assert torch.equal(obs[2], f[[16, 17, 18]])


def test_latent_labels_that_ignore_the_keys_are_flagged(sprite_data, tmp_path):
    from playworld.agents.pipeline import MIN_LABEL_NMI, label_warning

    cfg = BCConfig(steps=2, batch=8, checkpoint_every=1000)
    clone(None, sprite_data, tmp_path / "oracle-lam", PolicyConfig(**SMALL), cfg, labeller=labeller(), progress=False)
    informative = load_policy(tmp_path / "oracle-lam")[1]["label_nmi"]
    assert informative > 0.99 and label_warning(informative) is None  # a permutation of the keys: NMI 1

    gen = torch.Generator().manual_seed(0)

    def blind(video: torch.Tensor) -> torch.Tensor:  # labels from a stream that never looks at the keys
        return torch.randint(4, (video.shape[0], video.shape[1] - 1), generator=gen)

    clone(None, sprite_data, tmp_path / "blind-lam", PolicyConfig(**SMALL), cfg, labeller=blind, progress=False)
    ignored = load_policy(tmp_path / "blind-lam")[1]["label_nmi"]
    assert ignored < MIN_LABEL_NMI and "NMI" in label_warning(ignored)
    oracle = clone(None, sprite_data, tmp_path / "oracle-bc", PolicyConfig(**SMALL, target="true"), cfg,
                   progress=False)
    assert load_policy(oracle.out)[1]["label_nmi"] is None  # oracle BC reads the keys themselves


def test_idm_bc_clones_the_keys_an_inverse_dynamics_model_reads_from_a_few_labels(tmp_path):
    from playworld.agents.idm import IDMConfig
    from playworld.agents.pipeline import IDM_KEYS, clone_idm
    from playworld.errors import CheckpointError, ConfigError

    videos, actions = circling_episodes(20, 16, seed=1)
    data = make_dataset(tmp_path / "data", videos=videos, actions=actions, val=0.2)
    cfg = BCConfig(steps=300, batch=64, lr=3e-3, checkpoint_every=1000)
    keys = PolicyConfig(**{**SMALL, "target": "true"})
    clone_idm(data, tmp_path / "idm", keys, cfg, IDMConfig(labels=40, steps=300, lr=3e-3), progress=False)
    policy, meta = load_policy(tmp_path / "idm")
    assert meta["kind"] == "idm-bc" and meta["idm"]["config"]["labels"] == 40
    assert meta["idm"]["train"]["accuracy"] > 0.95 and meta["label_nmi"] > 0.9  # 40 labels show the 4 moves
    assert meta["idm"]["held_out"]["accuracy"] > 0.95 and meta["idm"]["held_out"]["transitions"] > 0
    assert _behaviour_match(policy, None) > 0.9  # and the clone of its keys acts as the behaviour does
    # two labels cannot show four keys
    clone_idm(data, tmp_path / "two", keys, BCConfig(steps=2, batch=4), IDMConfig(labels=2, steps=50), progress=False)
    assert load_policy(tmp_path / "two")[1]["idm"]["train"]["accuracy"] < 0.75
    # a resume reads the cached keys; other IDM settings are refused, not mixed
    cached = (tmp_path / "idm" / IDM_KEYS).stat().st_mtime_ns
    clone_idm(data, tmp_path / "idm", keys, cfg, IDMConfig(labels=40, steps=300, lr=3e-3), progress=False)
    assert (tmp_path / "idm" / IDM_KEYS).stat().st_mtime_ns == cached
    with pytest.raises(CheckpointError, match="other data or settings"):
        clone_idm(data, tmp_path / "idm", keys, cfg, IDMConfig(labels=41, steps=300, lr=3e-3), progress=False)
    with pytest.raises(ConfigError, match="keys"):  # a policy over latent actions cannot clone keys
        clone_idm(data, tmp_path / "x", PolicyConfig(**SMALL), cfg, IDMConfig(labels=4), progress=False)


def test_the_idm_and_the_decoder_read_the_same_labelled_transitions(sprite_data):
    from playworld.agents.decode import pick_labelled as decoder_labels
    from playworld.agents.transitions import pick_labelled
    from playworld.errors import ConfigError

    trans = read_transitions(sprite_data, progress=False)
    for n in (1, 20, 200):
        assert torch.equal(pick_labelled(trans.true, n, seed=3), decoder_labels(trans, n, seed=3))
    assert set(pick_labelled(trans.true, 20, 0).tolist()) < set(pick_labelled(trans.true, 50, 0).tolist())
    trans.true[::2] = -1  # unrecorded keys are never drawn
    assert bool((trans.true[pick_labelled(trans.true, 100, 0)] >= 0).all())
    with pytest.raises(ConfigError, match=r"\(120\)"):
        pick_labelled(trans.true, 121, 0)
