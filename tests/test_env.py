"""Gymnasium environments in a tiny random world: the checker passes, seeds fix episodes, prompts, rewards,
truncation, registration, and the batched vector variant with next-step autoreset."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from playworld.env import ENV_ID, LatentWorldEnv, make_env
from playworld.maskgit import SamplingConfig
from playworld.world import World, WorldConfig
from tiny_world import SIZE, save_tiny_run, tiny_models

from helpers import make_dataset

torch.set_num_threads(1)
PROMPTS = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


def _world(backend: str = "maskgit") -> World:
    return World(*tiny_models(backend=backend), WorldConfig(context_frames=4, decoder_context=4,
                                                            sampling=SamplingConfig(steps=1)))


@pytest.mark.parametrize("backend", ["maskgit", "flow"])
def test_env_passes_gymnasium_check_env(backend):
    env = gym.make(ENV_ID, run=_world(backend), prompts=PROMPTS, max_episode_steps=5, render_mode="rgb_array").unwrapped
    assert isinstance(env, LatentWorldEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    assert not [w for w in caught if "gymnasium" in str(w.filename)], [str(w.message) for w in caught]
    assert env.action_space == gym.spaces.Discrete(4)
    assert env.observation_space == gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)


@pytest.mark.parametrize("backend", ["maskgit", "flow"])
def test_seeded_episodes_repeat_and_truncate_with_the_user_reward(backend):
    calls = []

    def reward(obs, action, next_obs):
        calls.append(action)
        return float(action == 2)

    env = make_env(_world(backend), prompts=PROMPTS, max_episode_steps=4, reward_fn=reward)

    def episode(seed):
        obs, info = env.reset(seed=seed)
        out = [obs]
        for a in (2, 0, 2, 1):
            obs, r, term, trunc, _ = env.step(a)
            out.append(obs)
        return np.stack(out), info, r, trunc, term

    a, info, r, trunc, term = episode(7)
    b, *_ = episode(7)
    assert np.array_equal(a, b) and not np.array_equal(a, episode(8)[0])
    assert trunc and not term and r == 0.0 and calls[:4] == [2, 0, 2, 1]
    assert 0 <= info["prompt_index"] < 3


def test_reset_options_prompt_and_bad_inputs_name_the_problem():
    env = LatentWorldEnv(_world(), max_episode_steps=3)
    with pytest.raises(ValueError, match="no prompt: pass prompts="):
        env.reset(seed=0)
    obs, info = env.reset(seed=0, options={"prompt": PROMPTS[1]})
    assert obs.shape == (SIZE, SIZE, 3) and info["prompt_index"] == -1
    with pytest.raises(ValueError, match=r"options\['prompt'\] must be uint8"):
        env.reset(options={"prompt": PROMPTS[0].astype(np.float32)})
    with pytest.raises(ValueError, match=r"action 4 is not in Discrete\(4\)"):
        env.step(4)
    with pytest.raises(ValueError, match="prompts must be a dataset directory or uint8 frames"):
        LatentWorldEnv(_world(), np.zeros((2, 5), np.uint8))


def test_gymnasium_make_with_a_run_and_a_dataset(tmp_path):
    run = save_tiny_run(tmp_path / "run")
    data = make_dataset(tmp_path / "data", episodes=2, length=5, size=2 * SIZE)  # frames are fitted to the world
    env = gym.make(ENV_ID, run=str(run), prompts=str(data), max_episode_steps=2)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (SIZE, SIZE, 3)
    assert env.step(3)[0].shape == (SIZE, SIZE, 3)
    vec = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", run=str(run), prompts=str(data))
    assert vec.reset(seed=0)[0].shape == (2, SIZE, SIZE, 3)
    low = make_env(run, num_envs=2, prompts=str(data), precision="bf16")
    assert low.world.dtype == torch.bfloat16 and low.reset(seed=0)[0].shape == (2, SIZE, SIZE, 3)
    assert low.step(np.array([0, 3]))[0].dtype == np.uint8


def test_vector_env_steps_all_worlds_in_one_batch_and_autoresets():
    env = make_env(_world(), num_envs=3, prompts=PROMPTS, max_episode_steps=2)
    obs, info = env.reset(seed=3)
    assert obs.shape == (3, SIZE, SIZE, 3) and obs.dtype == np.uint8 and info["prompt_index"].shape == (3,)
    assert env.world.batch_size == 3
    obs1, r, term, trunc, _ = env.step(np.array([0, 1, 2]))
    assert not trunc.any() and r.shape == (3,)
    obs2, r, term, trunc, _ = env.step([3, 3, 3])
    assert trunc.all() and not term.any()
    reset_obs, r, term, trunc, _ = env.step([0, 0, 0])  # next-step autoreset: a fresh episode
    assert not trunc.any() and env._t == 0
    again, _ = env.reset(seed=3)
    assert np.array_equal(again, obs)
    with pytest.raises(ValueError, match="actions must be 3 integers"):
        env.step([0, 9, 0])
    per_env, _ = env.reset(seed=0, options={"prompt": PROMPTS})
    assert per_env.shape == (3, SIZE, SIZE, 3)
