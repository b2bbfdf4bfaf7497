"""`playworld agent train-in-world` and its evaluation, as library calls: PPO inside a learned world, then
the same policy in the real game, and the gap between the two returns.

An in-world agent directory holds ``policy.safetensors`` + ``policy.json`` (a latent-action policy that
`agent eval` plays; ``kind: "ppo-in-world"``, with the run, start frames, reward and PPO settings),
``reward-head/`` (when the reward was learned from ``--data``), ``resume/`` (weights, Adam moments,
iteration, per-iteration history), ``logs/`` (``metrics.jsonl`` and TensorBoard events) and, after
`agent eval`, ``eval.json`` + ``eval.md``.

Start frames are the first frames of the train split's episodes of ``--data`` (level starts, none from a
held-out level), else the run's shipped prompts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from playworld.agents.decode import ActionDecoder, available_decoders, load_decoder
from playworld.agents.evaluate import Controller, RandomController, play_levels
from playworld.agents.pipeline import EvalConfig, eval_levels
from playworld.agents.policy import PolicyConfig, PolicyNet, load_policy, save_policy
from playworld.agents.ppo import PPOConfig, PPOResult, play, policy_actor, random_actor, train_ppo, world_seed
from playworld.agents.reward import (
    BatchReward,
    RewardHeadConfig,
    batched,
    load_reward_fn,
    load_reward_head,
    train_reward_head,
)
from playworld.config import to_dict
from playworld.data.format import Dataset
from playworld.errors import CheckpointError, ConfigError, DatasetError
from playworld.eval.stats import bootstrap
from playworld.io import atomic_write_text

KIND = "ppo-in-world"
REWARD_HEAD = "reward-head"


def start_frames(data: str | Path, limit: int = 512) -> np.ndarray:
    """(N, H, W, 3) uint8: the first frame of up to ``limit`` train-split episodes of ``data``."""
    ds = Dataset(data)
    episodes = ds.episodes("train")[:limit]
    if not episodes:
        raise DatasetError(f"{ds.root}: no train episode to start the worlds from")
    return np.stack([np.array(ds.frames(e)[0]) for e in episodes])


def data_meta(data: str | Path | None) -> dict[str, Any]:
    """What eval needs of the start-frame data: its split rule and train levels (held-out levels are checked
    against them)."""
    if data is None:
        return {"data": None}
    ds = Dataset(data)
    rule = ds.manifest.split_rule
    return {"data": str(Path(data).resolve()), "data_source": ds.manifest.source,
            "split_rule": {"by": rule.by, "val": rule.val, "test": rule.test},
            "train_levels": sorted({e.level_seed for e in ds.episodes("train") if e.level_seed is not None})}


def make_reward(out: Path, *, data: str | Path | None, reward_fn: str | None, reward_head: str | Path | None,
                head_cfg: RewardHeadConfig, max_episodes: int | None, progress: bool,
                threshold: float | None = None) -> tuple[BatchReward, dict]:
    """The reward and how to rebuild it: the user's ``module:function``, a given reward head, or a head
    learned from ``data``'s recorded rewards into ``out/reward-head`` (reused when it is there);
    ``threshold`` overrides the head's own."""
    if reward_fn is not None and reward_head is not None:
        raise ConfigError("give --reward-fn or --reward-head, not both")
    if reward_fn is not None:
        return batched(load_reward_fn(reward_fn)), {"kind": "function", "spec": reward_fn}
    if reward_head is None:
        if data is None:
            raise ConfigError("no reward: give --data (a reward head is learned from its recorded rewards), "
                              "--reward-head DIR, or --reward-fn module:function")
        reward_head = out / REWARD_HEAD
        if not (reward_head / "config.json").is_file():
            res = train_reward_head(data, reward_head, head_cfg, max_episodes=max_episodes, progress=progress)
            if progress:
                print(f"{res.path}: reward head on {res.transitions} transitions ({res.positives} rewarded, "
                      f"scale {res.scale:g}); {res.accuracy['split']} accuracy on rewarded "
                      f"{res.accuracy['positives']:.2f}, unrewarded {res.accuracy['negatives']:.2f} "
                      f"({res.seconds:.0f} s)")
    path = Path(reward_head).resolve()
    desc = {"kind": "head", "path": str(path), "threshold": threshold}
    return rebuild_reward(desc), desc


def rebuild_reward(desc: dict[str, Any]) -> BatchReward:
    if desc.get("kind") == "function":
        return batched(load_reward_fn(desc["spec"]))
    if desc.get("kind") == "head":
        head = load_reward_head(desc["path"])
        if desc.get("threshold") is not None:
            if not 0 < desc["threshold"] < 1:
                raise ConfigError(f"reward threshold {desc['threshold']} must lie in (0, 1)")
            head.threshold = float(desc["threshold"])
        return head
    raise CheckpointError(f"unknown reward description {desc}")


def make_world_env(run: str | Path | None, data: str | Path | None, num_envs: int, episode_steps: int) -> Any:
    """The batched worlds of ``run`` starting from ``data``'s train-split level starts (or the run's prompts)."""
    from playworld.api import resolve_run, run_prompts
    from playworld.env import LatentWorldVectorEnv
    from playworld.world import World

    run_dir = resolve_run(run)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory (a run written by `playworld train`)")
    world = World.load(run_dir, threads=0)
    prompts: Any = start_frames(data) if data is not None else run_prompts(run_dir)
    if prompts is None:
        raise ConfigError(f"{run_dir}: ships no prompts/; give --data DIR for start frames")
    return LatentWorldVectorEnv(world, num_envs, prompts, max_episode_steps=episode_steps)


@dataclass(frozen=True)
class InWorldResult:
    out: Path
    ppo: PPOResult
    done: bool  # every iteration run: policy.safetensors written


def train_in_world(run: str | Path | None, out: str | Path, cfg: PPOConfig, *, data: str | Path | None = None,
                   reward_fn: str | None = None, reward_head: str | Path | None = None,
                   head_cfg: RewardHeadConfig | None = None, reward_episodes: int | None = 300,
                   reward_threshold: float | None = None,
                   context: int = 2, channels: int = 32, init: str | Path | None = None,
                   progress: bool = True, max_iterations: int | None = None) -> InWorldResult:
    """PPO inside ``run``'s world into ``out`` (see the module docstring); re-running resumes."""
    from playworld.api import resolve_run
    from playworld.train.logger import MetricsLogger

    out = Path(out)
    run_dir = resolve_run(run)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory (a run written by `playworld train`)")
    reward, reward_desc = make_reward(out, data=data, reward_fn=reward_fn, reward_head=reward_head,
                                      head_cfg=head_cfg or RewardHeadConfig(), max_episodes=reward_episodes,
                                      progress=progress, threshold=reward_threshold)
    init_policy: PolicyNet | None = None
    if init is not None:
        init_policy, _ = load_policy(Path(init))
        if init_policy.config.target != "latent":
            raise ConfigError(f"--init {init}: its policy chooses true actions; PPO in the world needs latent ones")
    env = make_world_env(run_dir, data, cfg.num_envs, cfg.episode_steps)
    if init_policy is not None:
        policy_cfg = init_policy.config
    else:
        policy_cfg = PolicyConfig(num_actions=env.world.num_actions, context=context, channels=channels)
    meta = {"run": str(run_dir.resolve()), "reward": reward_desc, "start": data_meta(data)["data"],
            "init": None if init is None else str(Path(init).resolve())}
    log = MetricsLogger(out)
    try:
        res = train_ppo(env, reward, policy_cfg, cfg, out, meta=meta, init=init_policy, progress=progress,
                        max_iterations=max_iterations, log=log)
    finally:
        log.close()
    done = len(res.history) >= cfg.iterations
    if done:
        h = res.history
        save_policy(out, res.net.policy, {"kind": KIND, **meta, **data_meta(data), "ppo": to_dict(cfg),
                                          "in_world_return": {"first": h[0]["return"], "last": h[-1]["return"]},
                                          "env_steps": h[-1]["step"]})
    return InWorldResult(out, res, done)


class DecodedController:
    """A latent-action policy in the real game: its choice (uniform over the latent actions when ``policy`` is
    None), decoded by a decoder fit for another (latent-BC) policy, which reads that policy's features of the
    same frames. Frames (N, H, W, 3) uint8."""

    def __init__(self, policy: PolicyNet | None, decoder: ActionDecoder, feature_policy: PolicyNet, *, seed: int,
                 greedy: bool = False) -> None:
        self.policy, self.decoder, self.features = policy, decoder, feature_policy.eval()
        self.greedy, self.gen = greedy, torch.Generator().manual_seed(seed)
        self.context = max(feature_policy.config.context, 1 if policy is None else policy.config.context)
        self.history: torch.Tensor | None = None  # (N, context, H, W, 3)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        frame = torch.from_numpy(np.ascontiguousarray(obs))  # (N, H, W, 3)
        fresh = frame[:, None].expand(-1, self.context, -1, -1, -1)
        if self.history is None or len(self.history) != len(frame):
            self.history = fresh.clone()
        else:
            shifted = torch.cat([self.history[:, 1:], frame[:, None]], 1)
            self.history = torch.where(torch.as_tensor(first)[:, None, None, None, None], fresh, shifted)
        if self.policy is None:
            choice = torch.randint(self.features.config.num_actions, (len(frame),), generator=self.gen)
        else:
            logits = self.policy.eval()(self.history[:, -self.policy.config.context:])  # (N, K)
            choice = (logits.argmax(-1) if self.greedy
                      else torch.multinomial(logits.softmax(-1), 1, generator=self.gen)[:, 0])
        feats = self.features.features(self.history[:, -self.features.config.context:])  # (N, D)
        return self.decoder(feats, choice).numpy().astype(np.int64)


def in_world_returns(env: Any, reward: BatchReward, cfg: PPOConfig, context: int, actor: Any, episodes: int,
                     seed: int) -> np.ndarray:
    """Returns of ``episodes`` in-world episodes (batches of the env's worlds, seeds apart from training's)."""
    rets: list[np.ndarray] = []
    k = 0
    while sum(len(r) for r in rets) < episodes:
        ro = play(env, reward, cfg.episode_steps, world_seed(seed + 104_729, k), context, actor,
                  end_on_reward=cfg.end_on_reward)
        rets.append(ro.returns().numpy())
        k += 1
    return np.concatenate(rets)[:episodes]


def evaluate_in_world(agent_dir: str | Path, cfg: EvalConfig, decoder_agent: str | Path, *,
                      labels: int | None = None, in_world_episodes: int = 32, progress: bool = True) -> dict[str, Any]:
    """Random real keys, random latent actions, the latent-BC agent of ``decoder_agent`` and the in-world PPO
    policy of ``agent_dir``: each in the real game (held-out levels, latent choices decoded by
    ``decoder_agent``'s decoder for ``labels``) and inside the world (same reward and episode length as
    training; the two random rows share uniform latent actions there); writes eval.json and eval.md.
    Random latent actions through the decoder are the control for the PPO policy: a decoder that maps most
    latents to one good key makes any latent policy look good in the real game."""
    agent_dir, decoder_agent = Path(agent_dir), Path(decoder_agent)
    policy, meta = load_policy(agent_dir)
    if meta.get("kind") != KIND:
        raise ConfigError(f"{agent_dir}: not an in-world agent (policy.json kind {meta.get('kind')!r})")
    bc, bc_meta = load_policy(decoder_agent)
    if bc.config.target != "latent" or bc.config.num_actions != policy.config.num_actions:
        raise ConfigError(f"--decoder {decoder_agent}: a latent-BC agent with {policy.config.num_actions} latent "
                          f"actions is needed, it has {bc.config.num_actions} ({bc.config.target} actions)")
    have = available_decoders(decoder_agent)
    if not have or (labels is not None and labels not in have):
        raise CheckpointError(f"{decoder_agent}: no decoder for {labels if labels is not None else 'any'} labels "
                              f"(have {have}); run `playworld agent decode {decoder_agent} --labels N`")
    n = have[-1] if labels is None else labels
    decoder, _ = load_decoder(decoder_agent, n, bc.config.feature_dim, bc.config.num_actions)
    levels = eval_levels(bc_meta, cfg.episodes)
    seen = set(meta.get("train_levels", [])) & set(levels)
    if seen:
        raise DatasetError(f"held-out levels {sorted(seen)[:5]} are levels the worlds started from ({meta.get('data')})")
    ppo_cfg = PPOConfig(**meta["ppo"])
    env = make_world_env(meta["run"], meta.get("data"), ppo_cfg.num_envs, ppo_cfg.episode_steps)
    reward = rebuild_reward(meta["reward"])
    k = policy.config.num_actions
    uniform = random_actor(k)  # in the world, both random rows take uniform latent actions
    rows: list[tuple[str, Controller, Any, int]] = [
        ("random", RandomController(cfg.seed), uniform, 1),
        (f"random latent, N={n}", DecodedController(None, decoder, bc, seed=cfg.seed), uniform, 1),
        (f"latent BC, N={n}", DecodedController(bc, decoder, bc, seed=cfg.seed, greedy=cfg.greedy),
         policy_actor(bc, cfg.greedy), bc.config.context),
        (f"in-world PPO, N={n}", DecodedController(policy, decoder, bc, seed=cfg.seed, greedy=cfg.greedy),
         policy_actor(policy, cfg.greedy), policy.config.context)]
    results: dict[str, Any] = {"game": cfg.game, "mode": cfg.mode, "levels": levels, "max_steps": cfg.max_steps,
                               "decoder": {"agent": str(decoder_agent.resolve()), "labels": n},
                               "in_world": {"episodes": in_world_episodes, "episode_steps": ppo_cfg.episode_steps,
                                            "end_on_reward": ppo_cfg.end_on_reward, "reward": meta["reward"]},
                               "rows": {}}
    in_world: dict[int, np.ndarray] = {}
    for label, ctrl, actor, context in rows:
        t0 = time.perf_counter()
        stats = play_levels(ctrl, cfg.game, levels, mode=cfg.mode, max_steps=cfg.max_steps, seed=cfg.seed,
                            progress=progress, desc=label)
        real_s = time.perf_counter() - t0
        summary = stats.summary(seed=cfg.seed)
        t0 = time.perf_counter()
        if id(actor) not in in_world:
            in_world[id(actor)] = in_world_returns(env, reward, ppo_cfg, context, actor, in_world_episodes, cfg.seed)
        world_ret = in_world[id(actor)]
        world = bootstrap(world_ret, seed=cfg.seed)
        results["rows"][label] = {**{k: v.to_json() for k, v in summary.items()}, "in_world": world.to_json(),
                                  "gap": world.mean - summary["return"].mean, "real_seconds": real_s,
                                  "in_world_seconds": time.perf_counter() - t0, "returns": stats.ret.tolist(),
                                  "in_world_returns": world_ret.tolist()}
        if progress:
            print(f"{label}: real return {summary['return']}, success {summary['success']}; in-world return {world}")
    atomic_write_text(agent_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(agent_dir / "eval.md", markdown_table(results))
    return results


def markdown_table(results: dict[str, Any]) -> str:
    def cell(e: dict[str, float]) -> str:
        return f"{e['mean']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"

    w = results["in_world"]
    lines = [f"{results['game']} ({results['mode']}), {len(results['levels'])} held-out levels in the real game; "
             f"{w['episodes']} in-world episodes of {w['episode_steps']} latent actions"
             f"{' (ending at the first reward)' if w['end_on_reward'] else ''}; decoder "
             f"N={results['decoder']['labels']}; 95% bootstrap intervals over episodes", "",
             "| agent | real return | real success | in-world return | gap (in-world - real) |",
             "|---|---|---|---|---|"]
    for label, r in results["rows"].items():
        lines.append(f"| {label} | {cell(r['return'])} | {cell(r['success'])} | {cell(r['in_world'])} | "
                     f"{r['gap']:+.2f} |")
    return "\n".join(lines) + "\n"


__all__ = ["train_in_world", "evaluate_in_world", "InWorldResult", "DecodedController", "start_frames",
           "make_reward", "markdown_table", "KIND"]
