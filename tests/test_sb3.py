"""Stable-Baselines3 on the batched world: the adapter's same-step autoreset and terminal observations,
SB3's own env checker, and PPO("CnnPolicy") learning on a tiny random world without any user adapter."""

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_checker import check_env  # noqa: E402
from stable_baselines3.common.vec_env import VecEnv, VecMonitor  # noqa: E402

from playworld.env import LatentWorldVectorEnv, sb3_vec_env  # noqa: E402
from playworld.maskgit import SamplingConfig  # noqa: E402
from playworld.models.dynamics import DynamicsConfig, DynamicsModel  # noqa: E402
from playworld.models.lam import LAMConfig, LatentActionModel  # noqa: E402
from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer  # noqa: E402
from playworld.world import World, WorldConfig  # noqa: E402
from tiny_world import SIZE, tiny_models  # noqa: E402

torch.set_num_threads(1)
CNN_SIZE = 40  # SB3's NatureCNN (8/4, 4/2, 3/1 convolutions) needs frames of at least 36 x 36


def _world(size: int = SIZE) -> World:
    cfg = WorldConfig(context_frames=2, decoder_context=2, sampling=SamplingConfig(steps=1))
    if size == SIZE:
        return World(*tiny_models(), cfg)
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(image_size=size, patch=8, dim=16, enc_depth=1, dec_depth=1, heads=2,
                                         num_codes=16, code_dim=4))
    lam = LatentActionModel(LAMConfig(height=size, width=size, patch_size=8, num_actions=3, dim=16, heads=2,
                                      encoder_depth=1, decoder_depth=1))
    dyn = DynamicsModel(DynamicsConfig(vocab_size=16, num_actions=3, token_height=size // 8, token_width=size // 8,
                                       dim=16, depth=1, heads=2))
    return World(tok, lam, dyn, cfg)


def _prompts(size: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_adapter_restarts_in_the_same_step_and_keeps_the_terminal_frame():
    env = sb3_vec_env(_world(), num_envs=3, prompts=_prompts(SIZE), max_episode_steps=2)
    assert isinstance(env, VecEnv) and env.num_envs == 3 and env.render_mode is None
    assert env.observation_space.shape == (SIZE, SIZE, 3) and env.action_space.n == 4
    # the same world under Gymnasium's next-step autoreset, stepped by hand, is the reference
    ref = LatentWorldVectorEnv(_world(), 3, _prompts(SIZE), max_episode_steps=2)
    ref_first, ref_info = ref.reset(seed=5)
    ref_mid = ref.step(np.array([0, 1, 2]))[0]
    ref_last, _, _, ref_trunc, _ = ref.step(np.array([3, 3, 3]))
    ref_restart, *_ = ref.step(np.zeros(3, np.int64))  # Gymnasium: the reset comes one call later
    assert ref_trunc.all()

    env.seed(5)
    first = env.reset()
    assert first.dtype == np.uint8 and np.array_equal(first, ref_first)
    assert [i["prompt_index"] for i in env.reset_infos] == ref_info["prompt_index"].tolist()
    obs, rewards, dones, infos = env.step(np.array([0, 1, 2]))
    assert np.array_equal(obs, ref_mid) and not dones.any() and rewards.dtype == np.float32
    assert all("terminal_observation" not in i for i in infos)
    obs, rewards, dones, infos = env.step(np.array([3, 3, 3]))  # SB3: the reset comes in the ending step
    assert dones.all() and len(infos) == 3
    for i in range(3):
        assert np.array_equal(infos[i]["terminal_observation"], ref_last[i])
        assert infos[i]["TimeLimit.truncated"] is True
    assert np.array_equal(obs, ref_restart) and not np.array_equal(obs, ref_last)
    obs, _, dones, _ = env.step(np.zeros(3, np.int64))
    assert not dones.any()  # the step counter restarted with the episode


def test_adapter_attributes_options_and_bad_inputs():
    venv = LatentWorldVectorEnv(_world(), 2, _prompts(SIZE), max_episode_steps=3, render_mode="rgb_array")
    env = sb3_vec_env(venv)
    assert env.render_mode == "rgb_array" and env.get_attr("max_episode_steps") == [3, 3]
    assert env.env_is_wrapped(VecMonitor) == [False, False]
    env.set_attr("max_episode_steps", 1)
    assert venv.max_episode_steps == 1
    with pytest.raises(ValueError, match="set_attr.*for some worlds only"):
        env.set_attr("max_episode_steps", 2, indices=[0])
    env.set_options({"prompt": _prompts(SIZE, 1)[0]})
    obs = env.reset()
    assert env.reset_infos[0]["prompt_index"] == -1 and np.array_equal(obs[0], obs[1])  # both from the one prompt
    assert len(env.get_images()) == 2 and env.render().ndim == 3  # tiled by SB3
    assert env.env_method("render")[0][1].shape == (SIZE, SIZE, 3)
    env.set_options([{"prompt": _prompts(SIZE, 1)[0]}, {}])
    with pytest.raises(ValueError, match="set_options for every env or none"):
        env.reset()
    with pytest.raises(ValueError, match="wraps a LatentWorldVectorEnv"):
        from playworld.sb3 import SB3VecEnv
        SB3VecEnv(object())
    with pytest.raises(ValueError, match="an environment and options for a new one"):
        sb3_vec_env(venv, max_episode_steps=4)


def test_ppo_cnn_policy_trains_on_the_batched_world():
    env = VecMonitor(sb3_vec_env(_world(CNN_SIZE), num_envs=2, prompts=_prompts(CNN_SIZE), max_episode_steps=8,
                                 reward_fn=lambda obs, action, next_obs: float(action == 1)))
    assert env.reset().shape == (2, CNN_SIZE, CNN_SIZE, 3)
    model = PPO("CnnPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))  # it did update
    # episodes of 8 steps, reward 1 per action 1: VecMonitor saw whole episodes through the autoreset
    lengths = [ep["l"] for ep in model.ep_info_buffer]
    assert lengths and set(lengths) == {8} and all(0 <= ep["r"] <= 8 for ep in model.ep_info_buffer)
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (2,)


def test_sb3_env_checker_passes_on_one_world_env():
    from playworld.env import LatentWorldEnv

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at 40 x 40 frames SB3 has nothing to warn about for CnnPolicy
        check_env(LatentWorldEnv(_world(CNN_SIZE), _prompts(CNN_SIZE), max_episode_steps=3), warn=True)
