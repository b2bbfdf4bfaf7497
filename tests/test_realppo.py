"""PPO in the real Procgen game and the agent behaviour policy: exact resume, held-out levels kept out of
training, evaluation in the real game, and collection with a trained policy (deterministic, follows it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from playworld.agents.pipeline import EvalConfig, eval_levels, evaluate
from playworld.agents.policy import PolicyConfig, PolicyNet, load_policy, save_policy
from playworld.agents.realppo import RealPPOConfig, policy_meta, train_real
from playworld.data.collect import CollectConfig, collect
from playworld.data.format import Dataset
from playworld.data.policies import NUM_ACTIONS
from playworld.errors import CheckpointError, ConfigError, DatasetError
from playworld.release import load_tensors

TINY = dict(game="starpilot", num_envs=3, rollout_steps=16, steps=96, epochs=1, minibatches=2, seed=3)
POLICY = PolicyConfig(num_actions=NUM_ACTIONS, context=2, channels=4, feature_dim=16, target="true")


def test_config_refuses_unbounded_levels_and_unknown_games():
    with pytest.raises(ConfigError, match="held-out"):
        RealPPOConfig(num_levels=0)
    with pytest.raises(ConfigError, match="not a Procgen game"):
        RealPPOConfig(game="pong")
    with pytest.raises(ConfigError, match="exceeds"):
        RealPPOConfig(start_level=2**31 - 10, num_levels=100)
    with pytest.raises(ConfigError, match="true actions"):
        train_real(RealPPOConfig(**TINY), PolicyConfig(num_actions=8, target="latent"), "/nonexistent")


def test_resume_continues_exactly(tmp_path):
    cfg = RealPPOConfig(**TINY)
    assert cfg.iterations == 2
    whole = train_real(cfg, POLICY, tmp_path / "whole", progress=False)
    first = train_real(cfg, POLICY, tmp_path / "split", progress=False, max_iterations=1)
    assert first.iterations_run == 1
    second = train_real(cfg, POLICY, tmp_path / "split", progress=False)
    assert second.iterations_run == 1
    a, b = load_tensors(tmp_path / "whole" / "policy.safetensors"), load_tensors(tmp_path / "split" / "policy.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.history == second.history  # same games, actions, episodes and losses
    assert sum(h["episodes"] for h in whole.history) >= 0
    # the games themselves were restored: the saved states match
    ga = load_tensors(tmp_path / "whole" / "resume" / "games.safetensors")
    gb = load_tensors(tmp_path / "split" / "resume" / "games.safetensors")
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    # another setting is refused, not silently mixed in
    with pytest.raises(CheckpointError, match="another ppo"):
        train_real(RealPPOConfig(**{**TINY, "lr": 1e-3}), POLICY, tmp_path / "split", progress=False)


def test_a_mismatched_games_file_is_refused(tmp_path):
    cfg = RealPPOConfig(**TINY)
    train_real(cfg, POLICY, tmp_path / "a", progress=False, max_iterations=1)
    (tmp_path / "a" / "resume" / "games.safetensors").unlink()
    with pytest.raises(CheckpointError, match="games.safetensors"):
        train_real(cfg, POLICY, tmp_path / "a", progress=False)


def test_agent_eval_plays_it_on_levels_outside_its_training_range(tmp_path):
    cfg = RealPPOConfig(**TINY)
    train_real(cfg, POLICY, tmp_path / "agent", progress=False, max_iterations=1)
    _, meta = load_policy(tmp_path / "agent")
    assert meta["kind"] == "ppo-real" and meta["train_level_range"] == [10_000, 110_000]
    levels = eval_levels(meta, 4)
    assert all(lvl < 10_000 for lvl in levels)
    with pytest.raises(DatasetError, match="training levels"):
        eval_levels(policy_meta(RealPPOConfig(**{**TINY, "start_level": 0})), 4)
    res = evaluate(tmp_path / "agent", EvalConfig(game="starpilot", episodes=2, max_steps=12), progress=False)
    assert set(res["rows"]) == {"random", "PPO in the real game"}
    assert res["rows"]["PPO in the real game"]["length"]["mean"] <= 12
    with pytest.raises(ConfigError, match="--game starpilot"):
        evaluate(tmp_path / "agent", EvalConfig(game="coinrun", episodes=2, max_steps=12), progress=False)


def _fixed_agent(out: Path, action: int, game: str = "starpilot") -> None:
    """A true-action policy that picks ``action`` with probability ~1 (zero head weights, a large bias)."""
    net = PolicyNet(POLICY)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(-30.0)
        net.head.bias[action] = 30.0
    save_policy(out, net, {"kind": "ppo-real", "game": game})


def test_collect_with_an_agent_follows_it_and_is_deterministic(tmp_path):
    _fixed_agent(tmp_path / "agent", 7)
    cfg = CollectConfig(episodes=3, game="starpilot", policy="agent", agent=str(tmp_path / "agent"), num_envs=2,
                        max_episode_frames=12, episodes_per_shard=2)
    collect(cfg, tmp_path / "a", progress=False)
    collect(cfg, tmp_path / "b", progress=False)
    ds = Dataset(tmp_path / "a")
    eps = ds.episodes()
    assert len(eps) == 3 and {e.policy for e in eps} == {"agent"}
    for e in eps:
        assert (np.asarray(ds.actions(e)) == 7).all()
    shards = sorted(p.name for p in (tmp_path / "a").rglob("*") if p.is_file())
    for name in shards:
        pa, pb = next((tmp_path / "a").rglob(name)), next((tmp_path / "b").rglob(name))
        if name == "manifest.json":  # the two runs may straddle a second: all but the write time must match
            ma, mb = json.loads(pa.read_text()), json.loads(pb.read_text())
            assert ma.pop("created_at") and mb.pop("created_at")
            assert ma == mb, name
        else:
            assert pa.read_bytes() == pb.read_bytes(), name
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["source"]["config"]["agent"] == str(
        tmp_path / "agent")


def test_collect_with_an_agent_samples_its_distribution(tmp_path):
    net = PolicyNet(POLICY)
    with torch.no_grad():  # actions 2 and 9 equally likely, nothing else
        net.head.weight.zero_()
        net.head.bias.fill_(-30.0)
        net.head.bias[[2, 9]] = 30.0
    save_policy(tmp_path / "agent", net, {"game": "starpilot"})
    cfg = CollectConfig(episodes=2, game="starpilot", policy="agent", agent=str(tmp_path / "agent"), num_envs=2,
                        max_episode_frames=60)
    collect(cfg, tmp_path / "d", progress=False)
    ds = Dataset(tmp_path / "d")
    acts = np.concatenate([np.asarray(ds.actions(e)) for e in ds.episodes()])
    assert set(acts.tolist()) == {2, 9} and 0.3 < (acts == 2).mean() < 0.7


def test_agent_policy_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="--agent"):
        CollectConfig(episodes=1, policy="agent")
    with pytest.raises(ConfigError, match="--agent"):
        CollectConfig(episodes=1, policy="random", agent="x")
    _fixed_agent(tmp_path / "sp", 7, game="starpilot")
    with pytest.raises(ConfigError, match="trained on starpilot"):
        collect(CollectConfig(episodes=1, game="bigfish", policy="agent", agent=str(tmp_path / "sp"),
                              max_episode_frames=4), tmp_path / "x", progress=False)
    latent = PolicyNet(PolicyConfig(num_actions=8, context=1, channels=4, feature_dim=8))
    save_policy(tmp_path / "latent", latent, {})
    with pytest.raises(ConfigError, match="true actions"):
        collect(CollectConfig(episodes=1, game="starpilot", policy="agent", agent=str(tmp_path / "latent"),
                              max_episode_frames=4), tmp_path / "y", progress=False)


def test_agent_eval_replays_an_agent_behaviour(tmp_path):
    from playworld.agents.bc import BCConfig
    from playworld.agents.pipeline import clone

    _fixed_agent(tmp_path / "expert", 7)
    data = tmp_path / "data"
    collect(CollectConfig(episodes=4, game="starpilot", policy="agent", agent=str(tmp_path / "expert"), num_envs=2,
                          max_episode_frames=8), data, progress=False)
    oracle = PolicyConfig(num_actions=NUM_ACTIONS, context=1, channels=4, feature_dim=8, target="true")
    clone(None, data, tmp_path / "oracle", oracle, BCConfig(steps=2, batch=4), progress=False)
    res = evaluate(tmp_path / "oracle", EvalConfig(game="starpilot", episodes=2, max_steps=10), progress=False)
    assert "behaviour (agent)" in res["rows"] and "oracle BC (every true label)" in res["rows"]
