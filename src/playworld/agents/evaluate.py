"""Play controllers in the real Procgen game on given levels: return, success and episode length.

Each episode plays one level seed in its own ``ProcgenGym3Env(num=1, start_level=seed, num_levels=1)``;
the episodes step in lock step so that a network controller acts on all of them in one batch. An
episode ends at the game's own end (Procgen's ``first`` flag; CoinRun ends on the coin or on death) or is
cut at ``max_steps`` (then it counts as failed). Figures carry 95% bootstrap intervals over episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from playworld.agents.decode import ActionDecoder
from playworld.agents.policy import PolicyNet, next_history
from playworld.bars import progress_bar
from playworld.data.lookahead import PlanConfig
from playworld.data.policies import NUM_ACTIONS, make_policy
from playworld.eval.stats import Estimate, bootstrap


class Controller(Protocol):
    """obs (N, H, W, 3) uint8, first (N,) bool (slot starts an episode) -> actions (N,) int64."""

    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray: ...


class RandomController:
    """Uniformly random actions from a seeded generator."""

    def __init__(self, seed: int, num_actions: int = NUM_ACTIONS) -> None:
        self.rng, self.num_actions = np.random.default_rng(seed), num_actions

    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, self.num_actions, len(first)).astype(np.int64)


class BehaviourController:
    """The collection policy (`playworld collect --policy`), one seeded stream per slot."""

    def __init__(self, name: str, game: str, slots: int, seed: int, sticky_prob: float = 0.75,
                 plan: PlanConfig | None = None, agent: str | None = None) -> None:
        seeds = [np.random.SeedSequence(seed, spawn_key=(s,)) for s in range(slots)]
        self.policy = make_policy(name, game, seeds, sticky_prob=sticky_prob, plan=plan, agent=agent)

    def attach(self, get_states: Callable[[], list[bytes]], make_sim: Callable[[int], Any]) -> None:
        """Give a planning policy (``lookahead``) the games' states; other policies ignore it."""
        self.policy.attach(get_states, make_sim)

    def close(self) -> None:
        self.policy.close()

    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        return self.policy(first, obs)


class AgentController:
    """A cloned policy (latent or true actions), its latent choice decoded to a real action.

    Actions are sampled from the policy's distribution (``greedy`` takes the most likely one); a
    deterministic cloned policy gets stuck against walls, as BC agents in Procgen commonly do.
    """

    def __init__(self, policy: PolicyNet, decoder: ActionDecoder | None, *, seed: int, greedy: bool = False) -> None:
        self.policy, self.decoder, self.greedy = policy.eval(), decoder, greedy
        self.gen = torch.Generator().manual_seed(seed)
        self.history: torch.Tensor | None = None  # (N, context, H, W, 3) uint8

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        self.history = next_history(self.history, obs, first, self.policy.config.context)
        feats = self.policy.features(self.history)  # (N, D)
        logits = self.policy.head(feats)  # (N, K)
        choice = logits.argmax(-1) if self.greedy else torch.multinomial(logits.softmax(-1), 1, generator=self.gen)[:, 0]
        actions = choice if self.decoder is None else self.decoder(feats, choice)
        return actions.numpy().astype(np.int64)


@dataclass(frozen=True)
class EpisodeStats:
    """Per episode: level seed, return, success (reached the goal), length in steps, cut at max_steps."""

    level: np.ndarray
    ret: np.ndarray
    success: np.ndarray
    length: np.ndarray
    truncated: np.ndarray

    def summary(self, seed: int = 0, resamples: int = 1000) -> dict[str, Estimate]:
        return {"return": bootstrap(self.ret, seed=seed, resamples=resamples),
                "success": bootstrap(self.success.astype(np.float64), seed=seed, resamples=resamples),
                "length": bootstrap(self.length.astype(np.float64), seed=seed, resamples=resamples)}


def _make_env(game: str, mode: str, level: int, rand_seed: int, num: int = 1) -> Any:
    from playworld.data.collect import procgen_env

    return procgen_env(num=num, env_name=game, distribution_mode=mode, start_level=level, num_levels=1,
                          rand_seed=rand_seed)


def play_levels(controller: Controller, game: str, levels: list[int] | tuple[int, ...], *, mode: str = "hard",
                max_steps: int = 1000, seed: int = 0, progress: bool = False, desc: str = "episodes") -> EpisodeStats:
    """One episode of ``controller`` on each level seed of ``levels``, in the real game."""
    if not levels:
        raise ValueError("play_levels: no levels given")
    envs = [_make_env(game, mode, lvl, seed) for lvl in levels]
    n = len(envs)
    ret, length = np.zeros(n), np.zeros(n, dtype=np.int64)
    success, done, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    bar = progress_bar(total=n, desc=desc, unit="episode", disable=not progress, leave=False)
    attach = getattr(controller, "attach", None)
    try:
        if attach is not None:  # a planning behaviour policy reads the games' states
            attach(lambda: [e.callmethod("get_state")[0] for e in envs],
                   lambda num: _make_env(game, mode, levels[0], seed, num))
        obs = np.concatenate([e.observe()[1]["rgb"] for e in envs])  # (N, H, W, 3)
        first = np.ones(n, dtype=bool)
        while not done.all():
            actions = controller(obs, first)  # (N,)
            first = np.zeros(n, dtype=bool)
            for i in np.flatnonzero(~done):
                envs[i].act(actions[i:i + 1])
                rew, o, f = envs[i].observe()
                ret[i] += float(rew[0])
                length[i] += 1
                if f[0]:  # the episode ended; obs is already the next one's first frame
                    done[i], success[i] = True, bool(envs[i].get_info()[0]["prev_level_complete"])
                elif length[i] >= max_steps:
                    done[i] = truncated[i] = True
                obs[i] = o["rgb"][0]
                bar.update(int(done[i]))
    finally:
        bar.close()
        if hasattr(controller, "close"):
            controller.close()
        for e in envs:  # close explicitly (see playworld.data.collect.play_unit)
            e.close()
    return EpisodeStats(np.asarray(levels), ret, success, length, truncated)
