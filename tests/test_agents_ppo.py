"""PPO inside a learned world: it learns a reward whose best latent action is known, resumes exactly, the
reward head learns a toy reward, the CLI trains, resumes and evaluates (real game and in-world), and bad
inputs are refused with errors that name them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from playworld.agents.policy import PolicyConfig
from playworld.agents.ppo import PPOConfig, policy_actor, random_actor, train_ppo
from playworld.agents.reward import (
    RewardHeadConfig,
    batched,
    load_reward_head,
    read_reward_pairs,
    train_reward_head,
)
from playworld.data.format import DatasetWriter, EpisodeData
from playworld.data.split import SplitRule
from playworld.env import LatentWorldVectorEnv
from playworld.errors import CheckpointError, ConfigError, DatasetError
from playworld.maskgit import SamplingConfig
from playworld.world import World, WorldConfig
from tiny_world import NUM_ACTIONS, SIZE, save_tiny_run, tiny_models

torch.set_num_threads(1)
BEST = 2  # the latent action the toy reward pays for
SMALL = PolicyConfig(num_actions=NUM_ACTIONS, context=1, channels=4, feature_dim=16)


def pays_for_best(obs: np.ndarray, action: int, next_obs: np.ndarray) -> float:
    return float(action == BEST)


def _env(num_envs: int = 4, steps: int = 4) -> LatentWorldVectorEnv:
    world = World(*tiny_models(), WorldConfig(context_frames=2, decoder_context=2, sampling=SamplingConfig(steps=1)))
    prompts = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    return LatentWorldVectorEnv(world, num_envs, prompts, max_episode_steps=steps)


def test_ppo_learns_the_rewarded_latent_action(tmp_path):
    from playworld.agents.inworld import in_world_returns

    cfg = PPOConfig(steps=4 * 4 * 12, num_envs=4, episode_steps=4, lr=1e-2, minibatches=2, seed=0)
    env = _env()
    reward = batched(pays_for_best)
    res = train_ppo(env, reward, SMALL, cfg, tmp_path / "ppo", progress=False)
    rets = [h["return"] for h in res.history]
    assert len(rets) == 12 and rets[0] < 2.5  # ~1 of 4 steps paid at the start (uniform over 4 actions)
    assert np.mean(rets[-3:]) > np.mean(rets[:3]) + 1.0, rets
    policy = res.net.policy
    greedy = in_world_returns(env, reward, cfg, 1, policy_actor(policy, greedy=True), 8, seed=1)
    rand = in_world_returns(env, reward, cfg, 1, random_actor(NUM_ACTIONS), 8, seed=1)
    assert (greedy == cfg.episode_steps).all() and rand.mean() < 3  # the optimum, every episode


def test_interrupted_and_resumed_run_equals_a_straight_run(tmp_path):
    cfg = PPOConfig(steps=4 * 4 * 3, num_envs=4, episode_steps=4, lr=1e-2, minibatches=2, seed=3)
    reward = batched(pays_for_best)
    straight = train_ppo(_env(), reward, SMALL, cfg, tmp_path / "a", progress=False)
    first = train_ppo(_env(), reward, SMALL, cfg, tmp_path / "b", progress=False, max_iterations=1)
    assert first.iterations_run == 1 and len(first.history) == 1
    resumed = train_ppo(_env(), reward, SMALL, cfg, tmp_path / "b", progress=False)  # a fresh process would do this
    assert resumed.iterations_run == 2 and resumed.history == straight.history
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a different network is refused rather than silently restarted
    with pytest.raises(CheckpointError, match="another policy"):
        train_ppo(_env(), reward, PolicyConfig(num_actions=NUM_ACTIONS, context=1, channels=8, feature_dim=16), cfg,
                  tmp_path / "b", progress=False)


def _reward_dataset(out, episodes: int = 24, length: int = 10, seed: int = 0):
    """Random dark frames; a frame turns white now and then, and the transition into it pays 3."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(out, frame_shape=(SIZE, SIZE, 3), num_actions=None, source={"kind": "test"},
                           rule=SplitRule(by="episode", val=0.2, test=0.0))
    for i in range(episodes):
        frames = rng.integers(0, 100, (length, SIZE, SIZE, 3), dtype=np.uint8)
        white = rng.random(length) < 0.1
        white[0] = False
        white[-1] = i % 3 == 0  # the last frame's reward has no outcome frame: credited to the step into it
        frames[white] = 255
        rewards = np.zeros(length, np.float32)
        rewards[:-1][white[1:]] = 3.0  # reward[t] is earned by the step t -> t+1
        if white[-1]:
            rewards[-2], rewards[-1] = 0.0, 3.0
        writer.add(EpisodeData(frames, None, rewards, level_seed=None, source=f"toy{i}"))
    writer.finalize()
    return out


def test_reward_head_learns_a_toy_reward(tmp_path):
    data = _reward_dataset(tmp_path / "data")
    pairs = read_reward_pairs(data, progress=False)
    white_next = pairs.frames[pairs.index + 1].float().mean((1, 2, 3)) == 255
    assert torch.equal(pairs.reward > 0, white_next) and 0 < int(white_next.sum()) < len(white_next) // 4
    res = train_reward_head(data, tmp_path / "head", RewardHeadConfig(channels=4, steps=150, lr=3e-3),
                            progress=False)
    assert res.scale == 3.0 and res.accuracy["split"] == "val"
    assert res.accuracy["positives"] == 1.0 and res.accuracy["negatives"] > 0.95, res.accuracy
    head = load_reward_head(tmp_path / "head")  # the saved head gives the same rewards
    dark = np.full((2, SIZE, SIZE, 3), 40, np.uint8)
    white = np.full((2, SIZE, SIZE, 3), 255, np.uint8)
    r_white, r_dark = head(dark, np.zeros(2, np.int64), white), head(dark, np.zeros(2, np.int64), dark)
    assert (r_white > 2.5).all() and (r_dark < 0.5).all()
    with pytest.raises(ConfigError, match="trained on"):
        head(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(1, np.int64), np.zeros((1, 8, 8, 3), np.uint8))


def test_cli_trains_resumes_and_evaluates(tmp_path):
    from playworld.cli import main

    from helpers import make_dataset

    run = save_tiny_run(tmp_path / "run")
    videos = np.random.default_rng(0).integers(0, 256, (6, 8, SIZE, SIZE, 3), dtype=np.uint8)
    data = make_dataset(tmp_path / "data", videos=videos, actions=np.zeros((6, 7), np.int64))
    (tmp_path / "rewards.py").write_text("def reward(obs, action, next_obs):\n    return float(action == 2)\n")
    out = tmp_path / "ppo"
    args = ["agent", "train-in-world", str(run), "--data", str(data), "--out", str(out), "--reward-fn",
            f"{tmp_path / 'rewards.py'}:reward", "--steps", "32", "--num-envs", "2", "--episode-steps", "4",
            "--channels", "4", "--no-progress", "--threads", "1"]
    assert main(args) == 0
    meta = json.loads((out / "policy.json").read_text())
    assert meta["kind"] == "ppo-in-world" and meta["env_steps"] == 32 and meta["reward"]["kind"] == "function"
    weights = (out / "policy.safetensors").read_bytes()
    assert main(args) == 0 and (out / "policy.safetensors").read_bytes() == weights  # done: nothing re-run
    logs = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [8, 16, 24, 32] and all("return" in r for r in logs)
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.zip"))  # safetensors + JSON only
    # the real game, through a latent-BC agent's decoder (N = 0: by names, identity without names)
    agent = tmp_path / "agent"
    assert main(["agent", "bc", str(run), "--data", str(data), "--out", str(agent), "--steps", "2", "--channels",
                 "4", "--no-progress", "--threads", "1"]) == 0
    assert main(["agent", "decode", str(agent), "--data", str(data), "--labels", "0", "--no-progress"]) == 0
    assert main(["agent", "eval", str(out), "--episodes", "1", "--max-steps", "4", "--in-world-episodes", "2"]) == 2
    assert main(["agent", "eval", str(out), "--decoder", str(agent), "--episodes", "1", "--max-steps", "4",
                 "--in-world-episodes", "2", "--threads", "1"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result["rows"]) == {"random", "random latent, N=0", "latent BC, N=0", "in-world PPO, N=0"}
    assert result["rows"]["random"]["in_world_returns"] == result["rows"]["random latent, N=0"]["in_world_returns"]
    for r in result["rows"].values():
        assert r["length"]["mean"] <= 4 and len(r["in_world_returns"]) == 2
        assert r["gap"] == pytest.approx(r["in_world"]["mean"] - r["return"]["mean"])
    assert "| in-world PPO, N=0 |" in (out / "eval.md").read_text()


def test_bad_inputs_name_the_problem(tmp_path):
    from playworld.agents.inworld import train_in_world
    from playworld.agents.reward import load_reward_fn

    from helpers import make_dataset

    cfg = PPOConfig(steps=8, num_envs=2, episode_steps=4, minibatches=2)
    with pytest.raises(CheckpointError, match="no such run directory"):
        train_in_world(tmp_path / "missing", tmp_path / "o", cfg, reward_fn="math:cos", progress=False)
    run = save_tiny_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="expected module:function"):
        load_reward_fn("no_colon")
    with pytest.raises(ConfigError, match="cannot import"):
        load_reward_fn("no_such_module_xyz:reward")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_reward_fn("math:nope")
    with pytest.raises(ConfigError, match="not found"):
        load_reward_fn(f"{tmp_path / 'absent.py'}:reward")
    with pytest.raises(ConfigError, match="no reward: give --data"):
        train_in_world(run, tmp_path / "o", cfg, progress=False)
    data = make_dataset(tmp_path / "data", episodes=3, length=6)  # records no reward
    with pytest.raises(DatasetError, match="no transition of the train split has a reward"):
        train_in_world(run, tmp_path / "o", cfg, data=data, progress=False)
    from playworld.agents.policy import PolicyNet, save_policy

    save_policy(tmp_path / "oracle", PolicyNet(PolicyConfig(num_actions=15, channels=4, target="true")), {})
    with pytest.raises(ConfigError, match="chooses true actions"):
        train_in_world(run, tmp_path / "o", cfg, reward_fn="math:cos", init=tmp_path / "oracle", progress=False)
    with pytest.raises(ConfigError, match="returned"):  # a reward function that gives NaN
        batched(lambda o, a, n: float("nan"))(np.zeros((1, 2, 2, 3)), np.zeros(1, np.int64), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ConfigError, match="minibatches"):
        PPOConfig(num_envs=1, episode_steps=2, minibatches=4)


def test_episodes_end_at_the_first_reward_and_gae_stops_there():
    from playworld.agents.ppo import Rollout, advantages, play

    env = _env(num_envs=2, steps=3)
    ro = play(env, batched(pays_for_best), 3, seed=0, context=1, actor=lambda h, g: torch.full((len(h),), BEST),
              end_on_reward=True)
    assert ro.returns().tolist() == [1.0, 1.0]  # paid every step, but the episode ended at the first pay
    assert ro.alive[:, 0].tolist() == [True, False, False] and ro.done[:, 0].tolist() == [True, False, False]
    zeros = torch.zeros(3, 1)
    hand = Rollout(obs=torch.zeros(3, 1), actions=zeros.long(), logp=zeros, values=zeros,
                   rewards=torch.tensor([[0.0], [1.0], [5.0]]), done=torch.tensor([[False], [True], [False]]),
                   alive=torch.tensor([[True], [True], [False]]), last_value=torch.tensor([7.0]))
    adv, ret = advantages(hand, gamma=0.9, lam=0.5)
    # after the terminal step nothing flows back (the 5 and the bootstrap value 7 are after the end)
    assert torch.allclose(adv[:2, 0], torch.tensor([0.9 * 0.5, 1.0])) and torch.equal(ret, adv)
