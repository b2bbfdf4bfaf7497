"""The batched world as a Stable-Baselines3 ``VecEnv``, so ``PPO("CnnPolicy", env)`` trains on it unmodified.

SB3 takes its own vector API, not Gymnasium's: ``reset() -> obs``, ``step_wait() -> (obs, rewards, dones,
infos)`` with one info dict per env and same-step autoreset (a finished env's returned observation is
already the next episode's first frame; the last frame of the finished one is in
``infos[i]["terminal_observation"]``, and ``infos[i]["TimeLimit.truncated"]`` says it ended by the time
limit). :class:`SB3VecEnv` translates :class:`playworld.env.LatentWorldVectorEnv` (next-step autoreset,
one info dict of arrays) into that. Observations stay (H, W, 3) uint8: SB3 sees an image space and
transposes to channels-first itself (``VecTransposeImage``).

The N worlds are one batched object, so they end and restart together, and ``get_attr``,
``set_attr`` and ``env_method`` act on that one object (a ``set_attr`` for some worlds only is refused).
Needs the ``rl`` extra: ``pip install "playworld[rl]"``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from playworld.env import LatentWorldVectorEnv
from playworld.errors import ConfigError


class SB3VecEnv(VecEnv):
    """A :class:`LatentWorldVectorEnv` behind Stable-Baselines3's ``VecEnv`` API (see the module docstring)."""

    def __init__(self, venv: LatentWorldVectorEnv) -> None:
        if not isinstance(venv, LatentWorldVectorEnv):
            raise ConfigError(f"SB3VecEnv wraps a LatentWorldVectorEnv, got {type(venv).__name__}")
        self.venv = venv  # before VecEnv.__init__, which reads render_mode through get_attr
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def _infos(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """Gymnasium's one dict of per-env arrays -> SB3's list of one dict per env."""
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            if key.startswith("_"):  # Gymnasium's "is this key set for env i" masks
                continue
            per_env = isinstance(value, np.ndarray) and value.shape[:1] == (self.num_envs,)
            for i in range(self.num_envs):
                out[i][key] = value[i].item() if per_env and value[i].ndim == 0 else value[i] if per_env else value
        return out

    def _options_for_reset(self) -> dict[str, Any] | None:
        """SB3 keeps reset options per env; the worlds reset together, so every env gets them or none does."""
        given = [o for o in self._options if o]
        if not given:
            return None
        if len(given) != self.num_envs:
            raise ConfigError(f"the {self.num_envs} worlds reset together: set_options for every env or none, "
                              f"got options for {len(given)}")
        options = dict(given[0])
        if all("prompt" in o for o in given):
            options["prompt"] = np.stack([np.asarray(o["prompt"]) for o in given])  # (N, H, W, 3): one per world
        return options

    def reset(self) -> VecEnvObs:
        obs, info = self.venv.reset(seed=self._seeds[0], options=self._options_for_reset())
        self.reset_infos = self._infos(info)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise gym.error.ResetNeeded("call step_async(actions) before step_wait()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions.reshape(self.num_envs))
        self._actions = None
        dones = terminated | truncated
        infos = self._infos(info)
        if dones.any():
            if not dones.all():  # one batched world: every episode has the same length
                raise RuntimeError(f"worlds ended apart ({dones.tolist()}); they share one batch and must end together")
            for i in range(self.num_envs):
                infos[i]["terminal_observation"] = obs[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            obs, reset_info = self.venv.reset()  # same-step autoreset, as SB3 expects
            self.reset_infos = self._infos(reset_info)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> list[np.ndarray | None]:
        frames = self.venv.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise ConfigError(f"set_attr({attr_name!r}) for some worlds only: the {self.num_envs} worlds are one "
                              f"batched object, set it for all (indices=None)")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Calls the method once on the batched world and gives its result to every index asked for."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]  # the worlds are one batch, never Gymnasium-wrapped
