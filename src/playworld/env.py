"""Gymnasium environments inside a learned world: agents act with latent actions, observe generated frames.

``LatentWorldEnv``: one world, ``Discrete(num_actions)`` actions, ``Box(0, 255, (H, W, C), uint8)``
observations. ``LatentWorldVectorEnv``: N worlds stepped in one batched ``World.step`` (one forward
pass for all), for agents that train on batches. Prompts come from a dataset directory, from given
frames, or from ``reset(options={"prompt": frame})``. A world has no reward of its own: pass
``reward_fn(obs, action, next_obs) -> float`` to give one. Episodes end by truncation after
``max_episode_steps``. ``gymnasium.make("playworld/LatentWorld-v0", run=RUN, prompts=DIR)`` works
once this module is imported (Genie, arXiv 2402.15391, sec. 3.3: agents trained inside the world).
``precision="auto"`` steps the world in bf16 where this machine multiplies bf16 faster
(:mod:`playworld.precision`); the default is fp32. Frames are sampled at `playworld play`'s setting
(:func:`playworld.maskgit.play_sampling`, 1 greedy MaskGIT step, copy penalty 2) unless ``world_config`` says otherwise.
``sb3_vec_env`` gives the batched world as a Stable-Baselines3 ``VecEnv`` (:mod:`playworld.sb3`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from playworld.api import resolve_run, run_prompts
from playworld.errors import ConfigError
from playworld.play.prompts import DatasetPrompts, fit_frames, world_frame_size
from playworld.world import World, WorldConfig

if TYPE_CHECKING:
    from playworld.sb3 import SB3VecEnv

ENV_ID = "playworld/LatentWorld-v0"
RewardFn = Callable[[np.ndarray, int, np.ndarray], float]


class PromptSource:
    """Start frames to sample from: a dataset directory, or frames (H, W, C) / (N, H, W, C) uint8."""

    def __init__(self, prompts: str | Path | np.ndarray | None, size: tuple[int, int]) -> None:
        self.size, self.dataset, self.frames = size, None, None
        if isinstance(prompts, (str, Path)):
            self.dataset = DatasetPrompts(Path(prompts), frames=1)
        elif prompts is not None:
            frames = np.asarray(prompts)
            if frames.ndim == 3:
                frames = frames[None]
            if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3 or not len(frames):
                raise ConfigError(f"prompts must be a dataset directory or uint8 frames (H, W, 3) or (N, H, W, 3), "
                                  f"got {frames.dtype} {frames.shape}")
            self.frames = fit_frames(frames, size)

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else len(self.frames) if self.frames is not None else 0

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A prompt (1, H, W, C) uint8 and its index."""
        if not len(self):
            raise ConfigError("no prompt: pass prompts= (a dataset directory or frames) to the environment, "
                              "or reset(options={'prompt': frame})")
        i = int(rng.integers(len(self)))
        if self.dataset is not None:
            return fit_frames(self.dataset.get(i), self.size), i
        assert self.frames is not None
        return self.frames[i:i + 1], i

    def given(self, prompt: Any) -> np.ndarray:
        """Check a prompt from ``reset(options=...)``: uint8 (H, W, C) or (T0, H, W, C) at the world's size."""
        p = np.asarray(prompt)
        if p.ndim == 3:
            p = p[None]
        if p.ndim != 4 or p.dtype != np.uint8 or tuple(p.shape[1:]) != (*self.size, 3):
            raise ConfigError(f"options['prompt'] must be uint8 (H, W, 3) or (T0, H, W, 3) with H, W = {self.size}, "
                              f"got {p.dtype} {p.shape}")
        return p


def _load(run_or_world: str | Path | World | None, world_config: WorldConfig | None, device: str,
          precision: str) -> World:
    if isinstance(run_or_world, World):
        return run_or_world
    return World.load(run_or_world, world_config, device, precision)


def _default_prompts(run: str | Path | World | None,
                     prompts: str | Path | np.ndarray | None) -> str | Path | np.ndarray | None:
    """``prompts``, or when none are given the start frames a run ships in ``RUN/prompts`` (the shipped
    world's held-out CoinRun levels when ``run`` is None too), as `playworld play` picks them."""
    if prompts is not None or isinstance(run, World):
        return prompts
    return run_prompts(resolve_run(run))


class LatentWorldEnv(gym.Env[np.ndarray, np.int64]):
    """One learned world as a Gymnasium environment (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, run: str | Path | World | None = None, prompts: str | Path | np.ndarray | None = None, *,
                 max_episode_steps: int = 200, reward_fn: RewardFn | None = None,
                 world_config: WorldConfig | None = None, device: str = "cpu", precision: str = "fp32",
                 render_mode: str | None = None) -> None:
        if max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.world = _load(run, world_config, device, precision)
        h, w = world_frame_size(self.world)
        self.action_space = spaces.Discrete(self.world.num_actions)
        self.observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.prompts = PromptSource(_default_prompts(run, prompts), (h, w))
        self.max_episode_steps, self.reward_fn, self.render_mode = max_episode_steps, reward_fn, render_mode
        self._obs: np.ndarray | None = None
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "prompt" in options:
            prompt, index = self.prompts.given(options["prompt"]), -1
        else:
            prompt, index = self.prompts.sample(self.np_random)
        world_seed = int(self.np_random.integers(1 << 62))
        self._obs = self.world.reset(torch.from_numpy(np.array(prompt)), seed=world_seed)[0].numpy()
        self._t = 0
        return self._obs.copy(), {"prompt_index": index, "world_seed": world_seed}

    def step(self, action: Any):
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if not self.action_space.contains(action):
            raise ConfigError(f"action {action!r} is not in Discrete({self.action_space.n})")
        obs = self.world.step(int(action))[0].numpy()
        reward = float(self.reward_fn(self._obs, int(action), obs)) if self.reward_fn is not None else 0.0
        self._obs, self._t = obs, self._t + 1
        return obs.copy(), reward, False, self._t >= self.max_episode_steps, {}

    def render(self) -> np.ndarray | None:
        return None if self._obs is None else self._obs.copy()


class LatentWorldVectorEnv(VectorEnv):
    """N learned worlds stepped together in one batch. Every episode has the same length, so all N end
    (by truncation) together and are reset together on the next step (next-step autoreset)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, run: str | Path | World | None, num_envs: int, prompts: str | Path | np.ndarray | None = None, *,
                 max_episode_steps: int = 200, reward_fn: RewardFn | None = None,
                 world_config: WorldConfig | None = None, device: str = "cpu", precision: str = "fp32",
                 render_mode: str | None = None) -> None:
        if num_envs < 1 or max_episode_steps < 1:
            raise ConfigError(f"num_envs and max_episode_steps must be >= 1, got {num_envs}, {max_episode_steps}")
        self.world = _load(run, world_config, device, precision)
        h, w = world_frame_size(self.world)
        self.num_envs, self.render_mode = num_envs, render_mode
        self.single_action_space = spaces.Discrete(self.world.num_actions)
        self.single_observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.prompts = PromptSource(_default_prompts(run, prompts), (h, w))
        self.max_episode_steps, self.reward_fn = max_episode_steps, reward_fn
        self._obs: np.ndarray | None = None
        self._t, self._needs_reset = 0, False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        n = self.num_envs
        if options and "prompt" in options:
            given = np.asarray(options["prompt"])
            per_env = given.ndim == 4 and len(given) == n and given.shape[1:] == self.single_observation_space.shape
            frames = [self.prompts.given(g) for g in given] if per_env else [self.prompts.given(given)] * n
            index = np.full(n, -1)
        else:
            picks = [self.prompts.sample(self.np_random) for _ in range(n)]
            frames, index = [p for p, _ in picks], np.array([i for _, i in picks])
        t0 = min(len(f) for f in frames)
        prompt = torch.from_numpy(np.stack([f[-t0:] for f in frames]))  # (N, T0, H, W, C)
        world_seed = int(self.np_random.integers(1 << 62))
        self._obs = self.world.reset(prompt, seed=world_seed).numpy()
        self._t, self._needs_reset = 0, False
        return self._obs.copy(), {"prompt_index": index, "world_seed": world_seed}

    def step(self, actions: Any):
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        n = self.num_envs
        if self._needs_reset:  # next-step autoreset: the actions of this call are ignored
            obs, info = self.reset()
            return obs, np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), info
        a = np.asarray(actions)
        if a.shape != (n,) or not self.action_space.contains(a.astype(np.int64)):
            raise ConfigError(f"actions must be {n} integers in [0, {self.single_action_space.n}), got {actions!r}")
        obs = self.world.step(torch.from_numpy(a.astype(np.int64))).numpy()
        rewards = np.zeros(n)
        if self.reward_fn is not None:
            rewards = np.array([self.reward_fn(self._obs[i], int(a[i]), obs[i]) for i in range(n)], dtype=np.float64)
        self._obs, self._t = obs, self._t + 1
        done = self._t >= self.max_episode_steps
        self._needs_reset = done
        return obs.copy(), rewards, np.zeros(n, bool), np.full(n, done), {}

    def render(self) -> tuple[np.ndarray, ...] | None:
        return None if self._obs is None else tuple(self._obs.copy())


def make_env(run: str | Path | World | None = None, num_envs: int | None = None,
             **kwargs: Any) -> LatentWorldEnv | LatentWorldVectorEnv:
    """``LatentWorldEnv(run, **kwargs)``, or with ``num_envs`` a :class:`LatentWorldVectorEnv` of that size.
    Without ``run``, the CoinRun world shipped with the package; without ``prompts``, the run's own
    ``RUN/prompts`` start frames where it ships them."""
    if num_envs is None:
        return LatentWorldEnv(run, **kwargs)
    return LatentWorldVectorEnv(run, num_envs, **kwargs)


def sb3_vec_env(run: str | Path | World | LatentWorldVectorEnv | None = None, num_envs: int = 8,
                **kwargs: Any) -> SB3VecEnv:
    """The batched world as a Stable-Baselines3 ``VecEnv``: ``PPO("CnnPolicy", sb3_vec_env(RUN, 8))``.

    ``run`` and ``kwargs`` are :class:`LatentWorldVectorEnv`'s (or pass one already made). Episodes restart
    in the same step they end, with ``infos[i]["terminal_observation"]`` (:mod:`playworld.sb3`). Needs the
    ``rl`` extra (``pip install "playworld[rl]"``)."""
    try:
        from playworld.sb3 import SB3VecEnv
    except ImportError as e:
        raise ImportError(f"sb3_vec_env needs Stable-Baselines3 ({e}): pip install 'playworld[rl]'") from e
    if isinstance(run, LatentWorldVectorEnv):
        if kwargs:
            raise ConfigError(f"sb3_vec_env got an environment and options for a new one: {sorted(kwargs)}")
        return SB3VecEnv(run)
    return SB3VecEnv(LatentWorldVectorEnv(run, num_envs, **kwargs))


def register() -> None:
    """Register ``playworld/LatentWorld-v0`` with Gymnasium (done on import; safe to call again)."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="playworld.env:LatentWorldEnv",
                     vector_entry_point="playworld.env:LatentWorldVectorEnv")


register()
