"""PPO inside a learned world, acting in latent actions (PPO: Schulman et al., arXiv 1707.06347; the loop
follows CleanRL's ``ppo.py``: GAE, clipped surrogate, advantage normalisation, entropy bonus).

A small loop of its own rather than Stable-Baselines3, so that a run resumes *exactly* from safetensors +
JSON: iteration ``i`` resets the N batched worlds with a seed derived from (seed, i), lets every world play
one episode of ``episode_steps`` latent actions (the worlds end together: they are one batch), and
updates the actor-critic on that rollout with minibatches drawn from a generator seeded by (seed, i).
The state between iterations is therefore only the weights, the Adam moments and ``i``, all of which
``OUT/resume`` holds; an interrupted run re-run with the same command continues with the same rollouts
and batches as an uninterrupted one. (SB3 keeps the last observation, the episode in progress and its RNG
in memory, and saves them only by pickling.)

With ``end_on_reward`` an episode ends at its first positive reward, as CoinRun's ends on the coin: the
world keeps stepping (the batch steps together), but later rewards are dropped and later steps are left
out of the loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from playworld.agents.policy import PolicyConfig, PolicyNet
from playworld.agents.resume import load_resume, save_resume
from playworld.agents.reward import BatchReward
from playworld.bars import progress_bar
from playworld.config import field, to_dict
from playworld.env import LatentWorldVectorEnv
from playworld.errors import ConfigError, TrainingError
from playworld.release import check_state_dict


def check_ppo_settings(cfg: Any, counts: tuple[str, ...], rollout: int) -> None:
    """ConfigError unless every field of ``counts`` is >= 1, one rollout of ``rollout`` steps holds the
    minibatches, lr, clip and max_grad_norm are > 0, and gamma and gae_lambda lie in [0, 1]."""
    for name in counts:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"ppo: {name}={getattr(cfg, name)} must be >= 1")
    if rollout < cfg.minibatches:
        raise ConfigError(f"ppo: minibatches={cfg.minibatches} exceeds the {rollout} steps of one rollout")
    for name in ("lr", "clip", "max_grad_norm"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"ppo: {name}={getattr(cfg, name)} must be > 0")
    for name in ("gamma", "gae_lambda"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"ppo: {name}={getattr(cfg, name)} must lie in [0, 1]")


@dataclass(frozen=True)
class PPOConfig:
    """PPO in the learned world (defaults after CleanRL's Atari/Procgen settings, shortened)."""

    steps: int = field(4096, help="environment steps in all (rounded up to whole iterations of num_envs x "
                                  "episode_steps)")
    num_envs: int = field(8, help="worlds stepped together in one batch")
    episode_steps: int = field(64, help="latent actions per episode (one episode per world per iteration)")
    epochs: int = field(4, help="passes over each rollout")
    minibatches: int = field(4, help="minibatches per pass")
    lr: float = field(2.5e-4, help="Adam learning rate")
    gamma: float = field(0.99, help="discount")
    gae_lambda: float = field(0.95, help="GAE lambda")
    clip: float = field(0.2, help="clip range of the probability ratio")
    ent_coef: float = field(0.01, help="entropy bonus")
    vf_coef: float = field(0.5, help="weight of the value loss")
    max_grad_norm: float = field(0.5, help="gradient norm clip")
    end_on_reward: bool = field(False, help="an episode ends at its first positive reward (CoinRun's coin)")
    seed: int = field(0, help="seed of the weights, the worlds and the batches")

    def __post_init__(self) -> None:
        check_ppo_settings(self, ("steps", "num_envs", "episode_steps", "epochs", "minibatches"),
                           self.num_envs * self.episode_steps)

    @property
    def iterations(self) -> int:
        return math.ceil(self.steps / (self.num_envs * self.episode_steps))


class ActorCritic(nn.Module):
    """The agent's :class:`PolicyNet` (saved as a policy, so `agent eval` plays it) and a value head on its
    features. frames (B, context, H, W, 3) -> logits (B, K), value (B,)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.policy = PolicyNet(config)
        self.value = nn.Linear(config.feature_dim, 1)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.policy.features(frames)  # (B, D)
        return self.policy.head(feats), self.value(feats)[:, 0]


def push(history: Tensor, frames: np.ndarray) -> Tensor:
    """history (N, context, H, W, 3) uint8, frames (N, H, W, 3) -> the history with ``frames`` appended."""
    return torch.cat([history[:, 1:], torch.from_numpy(np.ascontiguousarray(frames))[:, None]], 1)


def fresh(frames: np.ndarray, context: int) -> Tensor:
    """(N, H, W, 3) -> (N, context, H, W, 3): the first frame repeated, as at an episode start in the data."""
    return torch.from_numpy(np.ascontiguousarray(frames))[:, None].repeat(1, context, 1, 1, 1)


def world_seed(seed: int, iteration: int) -> int:
    return (seed * 1_000_003 + iteration) % (1 << 62)


Actor = Callable[[Tensor, torch.Generator], Tensor]
"""history (N, context, H, W, 3) uint8, generator -> latent actions (N,) long."""


@dataclass
class Rollout:
    """T steps of N worlds: obs (T, N, context, H, W, 3) uint8; actions, logp, values, rewards, done (a
    terminal step), alive (the episode had not ended before this step), each (T, N); last_value (N,)."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    rewards: Tensor
    done: Tensor
    alive: Tensor
    last_value: Tensor

    def returns(self) -> Tensor:
        """Undiscounted return of each episode, (N,)."""
        return (self.rewards * self.alive).sum(0)


@torch.no_grad()
def play(env: LatentWorldVectorEnv, reward: BatchReward, steps: int, seed: int, context: int,
         actor: Actor | None = None, *, net: ActorCritic | None = None, end_on_reward: bool = False) -> Rollout:
    """One episode of ``steps`` latent actions in each of the env's worlds, reset with ``seed``; actions
    from ``actor`` (or sampled from ``net``, whose log-probabilities and values are then recorded)."""
    if (actor is None) == (net is None):
        raise ValueError("play: give exactly one of actor and net")
    gen = torch.Generator().manual_seed(seed)
    frames, _ = env.reset(seed=seed)
    n = len(frames)
    hist = fresh(frames, context)
    out: dict[str, list[Tensor]] = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "done", "alive")}
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(steps):
        if net is not None:
            logits, value = net(hist)  # (N, K), (N,)
            a = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            out["logp"].append(logits.log_softmax(-1).gather(1, a[:, None])[:, 0])
            out["values"].append(value)
        else:
            assert actor is not None
            a = actor(hist, gen)
        nxt, *_ = env.step(a.numpy())
        r = torch.as_tensor(reward(frames, a.numpy(), nxt), dtype=torch.float32)  # (N,)
        if r.shape != (n,) or not torch.isfinite(r).all():
            raise ConfigError(f"the reward gave {r.tolist()} for {n} worlds; it must give {n} finite numbers")
        done = alive & (r > 0) if end_on_reward else torch.zeros(n, dtype=torch.bool)
        for k, v in (("obs", hist), ("actions", a), ("rewards", r), ("done", done), ("alive", alive.clone())):
            out[k].append(v)
        alive = alive & ~done
        frames, hist = nxt, push(hist, nxt)
    last = net(hist)[1] if net is not None else torch.zeros(n)
    stacked = {k: torch.stack(v) if v else torch.zeros(steps, n) for k, v in out.items()}
    return Rollout(**stacked, last_value=last)


def advantages(ro: Rollout, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al., arXiv 1506.02438): advantages and value targets, each (T, N). An episode cut by
    the time limit bootstraps from the value of its last frame; one that ended on a reward does not."""
    t_max = len(ro.rewards)
    adv = torch.zeros_like(ro.rewards)
    running = torch.zeros_like(ro.last_value)
    r = ro.rewards * ro.alive
    for t in reversed(range(t_max)):
        nxt = ro.last_value if t == t_max - 1 else ro.values[t + 1]
        cont = 1.0 - ro.done[t].float()
        delta = r[t] + gamma * nxt * cont - ro.values[t]
        running = delta + gamma * lam * cont * running
        adv[t] = running
    return adv, adv + ro.values


@dataclass(frozen=True)
class UpdateStats:
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float


class LossSettings(Protocol):
    """The PPO settings :func:`update` reads (in-world :class:`PPOConfig` and the real game's config)."""

    epochs: int
    minibatches: int
    gamma: float
    gae_lambda: float
    clip: float
    ent_coef: float
    vf_coef: float
    max_grad_norm: float


def update(net: ActorCritic, opt: torch.optim.Optimizer, ro: Rollout, cfg: LossSettings, seed: int) -> UpdateStats:
    """``cfg.epochs`` passes of clipped-surrogate PPO over the rollout's live steps."""
    adv, ret = advantages(ro, cfg.gamma, cfg.gae_lambda)
    mask = ro.alive.flatten()
    obs = ro.obs.flatten(0, 1)[mask]  # (M, context, H, W, 3)
    actions, logp_old = ro.actions.flatten()[mask], ro.logp.flatten()[mask]
    adv, ret = adv.flatten()[mask], ret.flatten()[mask]
    m = len(actions)
    gen = torch.Generator().manual_seed(seed)
    size = max(1, m // cfg.minibatches)
    sums = np.zeros(5)
    count = 0
    net.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(m, generator=gen)
        for s in range(0, m - size + 1, size):
            b = perm[s:s + size]
            logits, value = net(obs[b])
            logp_all = logits.log_softmax(-1)
            logp = logp_all.gather(1, actions[b, None])[:, 0]
            ratio = (logp - logp_old[b]).exp()
            a = adv[b]
            a = (a - a.mean()) / (a.std(unbiased=False) + 1e-8) if len(b) > 1 else a
            pg = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
            v_loss = 0.5 * (value - ret[b]).pow(2).mean()
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            if not torch.isfinite(loss):
                raise TrainingError(f"ppo: loss is {loss.item()}; the last checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            opt.step()
            with torch.no_grad():
                kl = ((ratio - 1) - (logp - logp_old[b])).mean()
                clipped = ((ratio - 1).abs() > cfg.clip).float().mean()
            sums += [pg.item(), v_loss.item(), entropy.item(), kl.item(), clipped.item()]
            count += 1
    net.eval()
    return UpdateStats(*(sums / max(count, 1)).tolist())


def _load_resume(out: Path, net: ActorCritic, opt: torch.optim.Optimizer,
                 meta: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
    """The iteration to continue from and the per-iteration history (0, [] for a new run); more steps
    may continue a run."""
    state = load_resume(out, net, opt, meta, free={"ppo": ("steps",)})
    return (0, []) if state is None else (int(state["iteration"]), list(state.get("history", [])))


@dataclass(frozen=True)
class PPOResult:
    net: ActorCritic
    iterations_run: int  # in this call
    history: list[dict[str, float]]  # per iteration: step, return (mean in-world episode return), losses
    seconds: float


def train_ppo(env: LatentWorldVectorEnv, reward: BatchReward, policy_cfg: PolicyConfig, cfg: PPOConfig,
              out: str | Path, *, meta: dict[str, Any] | None = None, init: PolicyNet | None = None,
              progress: bool = True, max_iterations: int | None = None, log: Any = None) -> PPOResult:
    """PPO on ``env`` (``cfg.num_envs`` worlds) with ``reward``; resumes from ``out/resume``.

    ``init`` starts the policy from given weights (e.g. a latent-BC policy); ``max_iterations`` stops after
    that many iterations in this call (a resumable stop, as an interrupt is); ``log`` is a
    :class:`playworld.train.logger.MetricsLogger` or None.
    """
    out, t0 = Path(out), time.perf_counter()
    if env.num_envs != cfg.num_envs:
        raise ConfigError(f"ppo: num_envs={cfg.num_envs} but the environment steps {env.num_envs} worlds")
    if env.single_action_space.n != policy_cfg.num_actions:
        raise ConfigError(f"ppo: the policy chooses among {policy_cfg.num_actions} actions, the world takes "
                          f"{env.single_action_space.n}")
    torch.manual_seed(cfg.seed)
    net = ActorCritic(policy_cfg)
    if init is not None:
        check_state_dict(net.policy, init.state_dict(), "the --init policy")
        net.policy.load_state_dict(init.state_dict())
    net.eval()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5)
    run_meta = {"policy": to_dict(policy_cfg), "ppo": to_dict(cfg), **(meta or {})}
    start, history = _load_resume(out, net, opt, run_meta)
    end = cfg.iterations if max_iterations is None else min(cfg.iterations, start + max_iterations)
    per_iter = cfg.num_envs * cfg.episode_steps
    bar = progress_bar(total=cfg.iterations * per_iter, initial=start * per_iter, desc="ppo in the world",
                       unit="step", disable=not progress)
    try:
        for it in range(start, end):
            ro = play(env, reward, cfg.episode_steps, world_seed(cfg.seed, it), policy_cfg.context,
                      net=net, end_on_reward=cfg.end_on_reward)
            stats = update(net, opt, ro, cfg, seed=world_seed(cfg.seed, it) + 1)
            rec = {"iteration": it + 1, "step": (it + 1) * per_iter, "return": float(ro.returns().mean()),
                   "ended_on_reward": float(ro.done.any(0).float().mean()), **stats.__dict__}
            history.append(rec)
            save_resume(out, net, opt, run_meta, {"iteration": it + 1, "history": history})
            if log is not None:
                log.log(rec["step"], {k: v for k, v in rec.items() if k not in ("iteration", "step")})
            bar.update(per_iter)
            bar.set_postfix({"return": f"{rec['return']:.2f}"})
    finally:
        bar.close()
    return PPOResult(net, end - start, history, time.perf_counter() - t0)


def random_actor(num_actions: int) -> Actor:
    def act(hist: Tensor, gen: torch.Generator) -> Tensor:
        return torch.randint(num_actions, (len(hist),), generator=gen)

    return act


def policy_actor(policy: PolicyNet, greedy: bool = False) -> Actor:
    @torch.no_grad()
    def act(hist: Tensor, gen: torch.Generator) -> Tensor:
        logits = policy.eval()(hist)
        return logits.argmax(-1) if greedy else torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]

    return act


__all__ = ["PPOConfig", "ActorCritic", "Rollout", "play", "advantages", "update", "train_ppo", "PPOResult",
           "random_actor", "policy_actor"]
