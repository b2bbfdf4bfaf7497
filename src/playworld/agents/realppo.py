"""PPO in the real Procgen game, frames -> Procgen's 15 keys: an expert whose choices are a function of the frames.

Behaviour cloning (latent or oracle) can only copy what the frames determine. The lookahead planner of
`playworld collect` chooses from copies of the game's future, and no clone of it beat random play
(docs/agents.md); an agent trained on the frames themselves can be cloned by construction, so its video is
the fair test of latent BC on a new game. The loop follows CleanRL's ``ppo_procgen.py`` (Huang et al.,
JMLR 2022): N games with automatic resets, rollouts of T steps, GAE, clipped surrogate, rewards scaled by
a running standard deviation of the discounted return (as Gymnasium's ``NormalizeReward``), on the same
:func:`playworld.agents.ppo.update` as PPO inside a learned world.

Levels: the games draw from ``[start_level, start_level + num_levels)``; `agent eval`'s held-out levels
(the first test-split seeds from 0) must lie outside that range, and are checked to.

Exact resume: every iteration saves, beside the weights and Adam moments, each game's full state
(Procgen's ``get_state``: level, positions and random state), the observation history and the reward
scaler, all as safetensors; a stopped run re-run with the same command continues with the same games,
actions and batches as an uninterrupted one. Iteration ``i`` samples actions and minibatches from
generators seeded by (seed, i).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from playworld.agents.policy import PolicyConfig, next_history, save_policy
from playworld.agents.ppo import ActorCritic, Rollout, check_ppo_settings, fresh, update, world_seed
from playworld.agents.resume import RESUME, load_resume, save_resume
from playworld.bars import progress_bar
from playworld.config import field, to_dict
from playworld.data.policies import NUM_ACTIONS
from playworld.errors import CheckpointError, ConfigError
from playworld.release import load_tensors, save_tensors

KIND = "ppo-real"
GAMES_FILE = "games.safetensors"


@dataclass(frozen=True)
class RealPPOConfig:
    """PPO in the real game (defaults after CleanRL's Procgen settings, with fewer games per batch)."""

    game: str = field("starpilot", help="Procgen game")
    distribution_mode: str = field("hard", help="Procgen level distribution")
    start_level: int = field(10_000, help="first training level seed (held-out evaluation levels lie below it)")
    num_levels: int = field(100_000, help="training level seeds: [start_level, start_level + num_levels)")
    steps: int = field(1_000_000, help="game steps in all (rounded up to whole iterations of num_envs x "
                                       "rollout_steps)")
    num_envs: int = field(64, help="games stepped together")
    rollout_steps: int = field(128, help="steps of each game per iteration")
    epochs: int = field(3, help="passes over each rollout")
    minibatches: int = field(8, help="minibatches per pass")
    lr: float = field(5e-4, help="Adam learning rate")
    gamma: float = field(0.99, help="discount")
    gae_lambda: float = field(0.95, help="GAE lambda")
    clip: float = field(0.2, help="clip range of the probability ratio")
    ent_coef: float = field(0.01, help="entropy bonus")
    vf_coef: float = field(0.5, help="weight of the value loss")
    max_grad_norm: float = field(0.5, help="gradient norm clip")
    normalise_reward: bool = field(True, help="scale rewards by a running std of the discounted return")
    seed: int = field(0, help="seed of the weights, the games and the batches")

    def __post_init__(self) -> None:
        from playworld.data.collect import CollectConfig

        CollectConfig(episodes=1, game=self.game, distribution_mode=self.distribution_mode)  # checks game/mode
        if self.num_levels < 1:
            raise ConfigError(f"ppo: num_levels={self.num_levels} must be >= 1 (0, Procgen's unbounded levels, "
                              f"would include the held-out ones)")
        if self.start_level < 0 or self.seed < 0:
            raise ConfigError(f"ppo: start_level={self.start_level} and seed={self.seed} must be >= 0")
        if self.start_level + self.num_levels > 2**31 - 1:
            raise ConfigError(f"ppo: start_level + num_levels = {self.start_level + self.num_levels} exceeds "
                              f"Procgen's 31-bit level seeds")
        check_ppo_settings(self, ("steps", "num_envs", "rollout_steps", "epochs", "minibatches"),
                           self.num_envs * self.rollout_steps)

    @property
    def iterations(self) -> int:
        return math.ceil(self.steps / (self.num_envs * self.rollout_steps))

    @property
    def level_range(self) -> tuple[int, int]:
        """Training level seeds, [start, end)."""
        return self.start_level, self.start_level + self.num_levels


def make_games(cfg: RealPPOConfig) -> Any:
    from playworld.data.collect import procgen_env

    rand_seed = int(np.random.SeedSequence(cfg.seed, spawn_key=(7,)).generate_state(1)[0]) & 0x7FFFFFFF
    return procgen_env(num=cfg.num_envs, env_name=cfg.game, distribution_mode=cfg.distribution_mode,
                       start_level=cfg.start_level, num_levels=cfg.num_levels, rand_seed=rand_seed)


class Games:
    """N real games, each one's observation history (N, context, H, W, 3) uint8, running episode return and
    length, and the reward scaler's state; :meth:`tensors` / :meth:`restore` save and restore all of it."""

    def __init__(self, cfg: RealPPOConfig, context: int) -> None:
        self.cfg, self.env = cfg, make_games(cfg)
        _, obs, _ = self.env.observe()
        self.hist = fresh(obs["rgb"], context)
        n = cfg.num_envs
        self.ep_return, self.ep_length = np.zeros(n), np.zeros(n, dtype=np.int64)
        self.discounted = np.zeros(n)  # running discounted return, for the reward scale
        self.stat = np.array([1e-4, 0.0, 1.0])  # count, mean, variance of the discounted returns seen

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[float, int]]]:
        """Act; returns the scaled rewards (N,), ``first`` (N,) bool (the game ended and restarted) and
        (return, length) of each episode that ended."""
        self.env.act(actions.astype(np.int32))
        rew, obs, first = self.env.observe()
        rew = rew.astype(np.float64)
        self.ep_return += rew
        self.ep_length += 1
        ended = [(float(self.ep_return[i]), int(self.ep_length[i])) for i in np.flatnonzero(first)]
        self.ep_return[first], self.ep_length[first] = 0.0, 0
        scaled = rew
        if self.cfg.normalise_reward:
            self.discounted = self.discounted * self.cfg.gamma + rew
            self._update_stat(self.discounted)
            scaled = rew / math.sqrt(self.stat[2] + 1e-8)
            self.discounted[first] = 0.0
        self.hist = next_history(self.hist, obs["rgb"], first, self.hist.shape[1])
        return scaled, np.asarray(first, dtype=bool), ended

    def _update_stat(self, x: np.ndarray) -> None:
        """Parallel-variance update of (count, mean, var) with the batch ``x`` (Chan et al.)."""
        count, mean, var = self.stat
        b_mean, b_var, b_count = float(x.mean()), float(x.var()), len(x)
        delta, total = b_mean - mean, count + b_count
        m2 = var * count + b_var * b_count + delta**2 * count * b_count / total
        self.stat = np.array([total, mean + delta * b_count / total, m2 / total])

    def tensors(self, iteration: int) -> dict[str, Tensor]:
        states = self.env.callmethod("get_state")
        out = {f"state.{i}": torch.frombuffer(bytearray(s), dtype=torch.uint8) for i, s in enumerate(states)}
        out.update(hist=self.hist.clone(), ep_return=torch.from_numpy(self.ep_return.copy()),
                   ep_length=torch.from_numpy(self.ep_length.copy()),
                   discounted=torch.from_numpy(self.discounted.copy()), stat=torch.from_numpy(self.stat.copy()),
                   iteration=torch.tensor([iteration]))
        return out

    def restore(self, t: dict[str, Tensor], where: str) -> None:
        n = self.cfg.num_envs
        states = [t.get(f"state.{i}") for i in range(n)]
        if any(s is None for s in states) or t["hist"].shape[0] != n or t["hist"].shape[1:] != self.hist.shape[1:]:
            raise CheckpointError(f"{where}: saved games do not match {n} games with history {tuple(self.hist.shape)}")
        self.env.callmethod("set_state", [bytes(s.numpy().tobytes()) for s in states])  # type: ignore[union-attr]
        self.hist = t["hist"].clone()
        self.ep_return, self.ep_length = t["ep_return"].numpy().copy(), t["ep_length"].numpy().copy()
        self.discounted, self.stat = t["discounted"].numpy().copy(), t["stat"].numpy().copy()

    def close(self) -> None:
        self.env.close()


@torch.no_grad()
def rollout(net: ActorCritic, games: Games, steps: int, seed: int) -> tuple[Rollout, list[tuple[float, int]]]:
    """``steps`` steps of every game, actions sampled from ``net``; and the episodes that ended."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[Tensor]] = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "done")}
    ended: list[tuple[float, int]] = []
    for _ in range(steps):
        logits, value = net(games.hist)  # (N, 15), (N,)
        a = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        obs = games.hist
        scaled, first, fin = games.step(a.numpy())
        ended += fin
        for k, v in (("obs", obs), ("actions", a), ("logp", logits.log_softmax(-1).gather(1, a[:, None])[:, 0]),
                     ("values", value), ("rewards", torch.as_tensor(scaled, dtype=torch.float32)),
                     ("done", torch.as_tensor(first))):
            out[k].append(v)
    stacked = {k: torch.stack(v) for k, v in out.items()}
    ro = Rollout(**stacked, alive=torch.ones_like(stacked["done"]), last_value=net(games.hist)[1])
    return ro, ended


@dataclass(frozen=True)
class RealPPOResult:
    out: Path
    iterations_run: int  # in this call
    history: list[dict[str, float]]  # per iteration: step, episodes ended, their mean return and length, losses
    seconds: float


def policy_meta(cfg: RealPPOConfig) -> dict[str, Any]:
    """What ``policy.json`` records of a real-game PPO agent: `agent eval` checks the game and the levels."""
    return {"kind": KIND, "game": cfg.game, "distribution_mode": cfg.distribution_mode,
            "train_level_range": list(cfg.level_range), "num_true": NUM_ACTIONS, "ppo": to_dict(cfg)}


def train_real(cfg: RealPPOConfig, policy_cfg: PolicyConfig, out: str | Path, *, progress: bool = True,
               max_iterations: int | None = None, log: Any = None) -> RealPPOResult:
    """PPO in the real game into ``out`` (``policy.safetensors`` + ``policy.json`` after every iteration, which
    `agent eval` and `collect --policy agent` play); resumes from ``out/resume``.

    ``max_iterations`` stops after that many iterations in this call (a resumable stop, as an interrupt is);
    ``log`` is a :class:`playworld.train.logger.MetricsLogger` or None.
    """
    out, t0 = Path(out), time.perf_counter()
    if policy_cfg.target != "true" or policy_cfg.num_actions != NUM_ACTIONS:
        raise ConfigError(f"ppo: a real-game policy chooses among Procgen's {NUM_ACTIONS} true actions")
    torch.manual_seed(cfg.seed)
    net = ActorCritic(policy_cfg).eval()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5)
    run_meta = {"kind": KIND, "policy": to_dict(policy_cfg), "ppo": to_dict(cfg)}
    state = load_resume(out, net, opt, run_meta, free={"ppo": ("steps",)})
    start, history = (0, []) if state is None else (int(state["iteration"]), list(state.get("history", [])))
    games = Games(cfg, policy_cfg.context)
    try:
        if state is not None:
            path = out / RESUME / GAMES_FILE
            saved = load_tensors(path) if path.is_file() else {}
            if int(saved.get("iteration", torch.tensor([-1]))[0]) != start:
                raise CheckpointError(f"{path}: missing or from another iteration than {out / RESUME}/state.json "
                                      f"({start}); delete {out / RESUME} to start over")
            games.restore(saved, str(path))
        end = cfg.iterations if max_iterations is None else min(cfg.iterations, start + max_iterations)
        per_iter = cfg.num_envs * cfg.rollout_steps
        bar = progress_bar(total=cfg.iterations * per_iter, initial=start * per_iter, desc=f"ppo in {cfg.game}",
                           unit="step", disable=not progress)
        try:
            for it in range(start, end):
                ro, ended = rollout(net, games, cfg.rollout_steps, world_seed(cfg.seed, it))
                stats = update(net, opt, ro, cfg, seed=world_seed(cfg.seed, it) + 1)
                rets = [r for r, _ in ended]
                rec: dict[str, float] = {"iteration": it + 1, "step": (it + 1) * per_iter, "episodes": len(ended),
                                         **stats.__dict__}
                if ended:  # mean return and length of the episodes that ended in this iteration
                    rec.update({"return": float(np.mean(rets)), "length": float(np.mean([n for _, n in ended]))})
                history.append(rec)
                save_tensors(out / RESUME / GAMES_FILE, games.tensors(it + 1))
                save_resume(out, net, opt, run_meta, {"iteration": it + 1, "history": history})
                save_policy(out, net.policy, {**policy_meta(cfg), "iteration": it + 1, "step": rec["step"]})
                if log is not None:
                    log.log(rec["step"], {k: v for k, v in rec.items() if k not in ("iteration", "step")})
                bar.update(per_iter)
                if rets:
                    bar.set_postfix({"return": f"{rec['return']:.2f}"})
        finally:
            bar.close()
    finally:
        games.close()
    return RealPPOResult(out, end - start, history, time.perf_counter() - t0)


__all__ = ["RealPPOConfig", "RealPPOResult", "Games", "rollout", "train_real", "policy_meta", "KIND"]
