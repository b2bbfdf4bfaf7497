"""Record Procgen episodes (frames, true actions, rewards, level seeds) into a playworld dataset.

Determinism and resume: the work is split into UNITS of ``episodes_per_shard`` episodes. Unit ``u`` plays
a fresh ``ProcgenGym3Env(num=num_envs, rand_seed=derived(seed, u))`` with one policy stream per slot
derived from (seed, u, slot); slot ``s`` records episodes until it has its share of the unit (slots are
filled in order, ``ceil(episodes_in_unit / num_envs)`` each), so the unit's episodes, ordered
(slot, k), depend on nothing but the config. One unit is one shard plus a small record in
``.DIR.partial/units/``; a re-run with the same arguments continues from the missing units and gives the
same bytes as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from playworld.bars import progress_bar
from playworld.config import field, from_dict, to_dict
from playworld.data.format import (
    MANIFEST,
    DatasetWriter,
    Episode,
    EpisodeData,
    ShardEntry,
    SplitRule,
    episode_from_json,
    partial_dir,
    read_manifest,
)
from playworld.data.lookahead import PlanConfig
from playworld.data.policies import ACTION_NAMES, NUM_ACTIONS, POLICIES, Policy, make_policy
from playworld.errors import ConfigError, DatasetError
from playworld.io import atomic_write_text

__all__ = ["PROCGEN_GAMES", "CollectConfig", "CollectResult", "collect", "make_env", "PlayedUnit", "play_unit", "unit_sizes",
           "PolicyStats", "policy_report", "format_policy_report"]

PROCGEN_GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
                 "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
# Procgen aborts the whole process (a C assertion) on an unsupported game/mode pair, so check here first.
_MODE_GAMES = {
    "extreme": {"chaser", "dodgeball", "leaper", "starpilot"},
    "memory": {"caveflyer", "dodgeball", "heist", "jumper", "maze", "miner"},
    "exploration": {"coinrun", "caveflyer", "leaper", "jumper", "maze", "heist", "climber", "ninja"},
}
_CONFIG_FILE, _UNITS_DIR = "collect.json", "units"


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """What to record. Two runs with equal configs produce byte-identical shards."""

    episodes: int = field(help="number of episodes to record")
    game: str = field("coinrun", help=f"Procgen game: {', '.join(PROCGEN_GAMES)}")
    policy: Literal["random", "scripted", "mix", "lookahead", "agent"] = field(
        "random", help="behaviour: sticky random, scripted (motion-rich), mix (50/50 per episode), lookahead "
        "(plans every action in copies of the game: better than random on any game), or agent (a trained "
        "policy that acts on the frames, --agent)")
    distribution_mode: Literal["easy", "hard", "extreme", "memory", "exploration"] = field(
        "hard", help="Procgen level distribution")
    start_level: int = field(0, help="first level seed")
    num_levels: int = field(0, help="number of distinct levels (0 = unbounded)")
    seed: int = field(0, help="seed of the env rand seeds and of the policies' streams")
    num_envs: int = field(8, help="parallel env slots (8: on few cores, fewer slots each playing more "
                          "episodes of a unit waste fewer steps waiting for the slowest slot)")
    max_episode_frames: int | None = field(
        None, help="truncate episodes to this many frames (the rest is played but not kept)")
    sticky_prob: float = field(0.75, help="random policy: probability of repeating the previous action")
    episodes_per_shard: int = field(64, help="episodes per unit: one shard and one resume point each")
    plan_horizon: int = field(24, help="lookahead: frames each candidate action is played out")
    plan_rollouts: int = field(2, help="lookahead: play-outs per candidate action")
    plan_hold: int = field(4, help="lookahead: frames each decision is held (and a candidate before its play-out)")
    plan_explore: float = field(0.2, help="lookahead: probability that a decision is a uniformly random action")
    plan_death_penalty: float = field(10.0, help="lookahead: score lost by a play-out whose episode ends unfinished")
    plan_ties: Literal["random", "first"] = field(
        "random", help="lookahead: a tie that the previous action does not win draws among the best ('random') "
        "or takes the lowest-numbered best action ('first': the choice depends on the game alone)")
    agent: str | None = field(None, help="policy 'agent': the agent directory whose true-action policy plays "
                              "(`playworld agent train-real`)")

    def plan(self) -> PlanConfig:
        """The lookahead policy's settings."""
        return PlanConfig(horizon=self.plan_horizon, rollouts=self.plan_rollouts, hold=self.plan_hold,
                          explore=self.plan_explore, death_penalty=self.plan_death_penalty,
                          sticky_prob=self.sticky_prob, ties=self.plan_ties)

    def __post_init__(self) -> None:
        if self.game not in PROCGEN_GAMES:
            raise ConfigError(f"game={self.game!r} is not a Procgen game; choose one of {list(PROCGEN_GAMES)}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy={self.policy!r} is not one of {list(POLICIES)}")
        games = _MODE_GAMES.get(self.distribution_mode)
        if games is not None and self.game not in games:
            raise ConfigError(f"distribution_mode={self.distribution_mode!r} is not supported by {self.game}; "
                              f"it is by {sorted(games)}")
        if self.distribution_mode == "exploration" and (self.start_level or self.num_levels):
            raise ConfigError("distribution_mode='exploration' fixes the level; leave start_level and "
                              "num_levels at 0")
        for name, low in (("episodes", 1), ("num_envs", 1), ("episodes_per_shard", 1), ("start_level", 0),
                          ("num_levels", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= {low}")
        if self.max_episode_frames is not None and self.max_episode_frames < 2:
            raise ConfigError(f"max_episode_frames={self.max_episode_frames} must be >= 2 (or unset)")
        if not 0.0 <= self.sticky_prob < 1.0:
            raise ConfigError(f"sticky_prob={self.sticky_prob} must be in [0, 1)")
        self.plan()  # checks the plan_* fields
        if (self.policy == "agent") != (self.agent is not None):
            raise ConfigError("policy='agent' needs --agent DIR, and --agent needs --policy agent")


@dataclasses.dataclass(frozen=True)
class CollectResult:
    out: Path
    status: Literal["complete", "already complete", "interrupted"]
    units_done: int
    units_total: int
    episodes: int  # recorded by this call
    frames: int  # recorded by this call
    stepped_frames: int  # env frames stepped by this call: recorded + discarded (truncated, slots waiting)
    seconds: float


def unit_sizes(cfg: CollectConfig) -> list[int]:
    """Episodes in each unit: ``episodes_per_shard`` each, the last one the remainder."""
    n = cfg.episodes_per_shard
    return [min(n, cfg.episodes - u * n) for u in range(math.ceil(cfg.episodes / n))]


def _unit_seeds(cfg: CollectConfig, unit: int) -> tuple[int, list[np.random.SeedSequence]]:
    """Env rand seed (31 bit) and one policy seed per slot, each derived from (seed, unit[, slot])."""
    env_seed = int(np.random.SeedSequence(cfg.seed, spawn_key=(unit, 0)).generate_state(1)[0]) & 0x7FFFFFFF
    return env_seed, [np.random.SeedSequence(cfg.seed, spawn_key=(unit, 1, s)) for s in range(cfg.num_envs)]


def procgen_env(**kwargs: Any) -> Any:
    """``procgen.ProcgenGym3Env(**kwargs)``."""
    # procgen imports gym, which prints a deprecation notice to stderr and warns; neither concerns us.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env(**kwargs)


def make_env(cfg: CollectConfig, rand_seed: int) -> Any:
    """``ProcgenGym3Env`` for ``cfg`` (game, mode, levels, num_envs slots) with ``rand_seed``."""
    levels = {} if cfg.distribution_mode == "exploration" else \
        {"start_level": cfg.start_level, "num_levels": cfg.num_levels}
    return procgen_env(num=cfg.num_envs, env_name=cfg.game, distribution_mode=cfg.distribution_mode,
                       rand_seed=rand_seed, **levels)


@dataclasses.dataclass(frozen=True)
class PlayedUnit:
    episodes: list[EpisodeData]  # in (slot, k) order; empty if played with keep=False
    steps: int  # env steps taken (each steps every slot, recorded or not)


def play_unit(cfg: CollectConfig, unit: int, n_episodes: int,
              on_episode: Callable[[EpisodeData], None] | None = None, keep: bool = True) -> PlayedUnit:
    """Play unit ``unit``: its ``n_episodes`` episodes in (slot, k) order (none if not ``keep``;
    ``on_episode`` still sees each, in completion order).

    Episode arrays: frames (L, 64, 64, 3) uint8, actions (L,) int64, rewards (L,) float32, where
    ``actions[t]`` was taken at ``frames[t]`` and earned ``rewards[t]``. Slots that have their share keep
    stepping (their steps are discarded) until every slot is done.
    """
    rand_seed, slot_seeds = _unit_seeds(cfg, unit)
    policy = make_policy(cfg.policy, cfg.game, slot_seeds, sticky_prob=cfg.sticky_prob, plan=cfg.plan(),
                         agent=cfg.agent)
    share = math.ceil(n_episodes / cfg.num_envs)
    want = [min(max(n_episodes - s * share, 0), share) for s in range(cfg.num_envs)]
    env = make_env(cfg, rand_seed)
    try:  # close explicitly: a gym3 env finalised by the GC inside another env's cffi dlopen deadlocks
        policy.attach(lambda: env.callmethod("get_state"),
                      lambda num: make_env(dataclasses.replace(cfg, num_envs=num), rand_seed))
        done, steps = _record(env, policy, want, cfg, on_episode, keep)
    finally:
        policy.close()
        env.close()
    return PlayedUnit([ep for slot in done for ep in slot] if keep else [], steps)


def _record(env: Any, policy: Policy, want: list[int], cfg: CollectConfig,
            on_episode: Callable[[EpisodeData], None] | None, keep: bool) -> tuple[list[list[EpisodeData]], int]:
    """Step ``env`` until slot ``s`` has finished ``want[s]`` episodes; returns them per slot, and the steps."""
    num, source = len(want), f"procgen:{cfg.game}"
    done: list[list[EpisodeData]] = [[] for _ in range(num)]
    rec: list[dict[str, Any] | None] = [None] * num  # open episode of each slot: frames, actions, rewards

    def start(s: int, info: dict[str, Any]) -> None:
        rec[s] = {"frames": [], "actions": [], "rewards": [], "level_seed": int(info["level_seed"])}

    _, obs, first = env.observe()
    infos = env.get_info()
    for s in range(num):
        if want[s]:
            start(s, infos[s])
    steps = 0
    while any(len(d) < w for d, w in zip(done, want)):
        steps += 1
        rgb = obs["rgb"]  # (N, 64, 64, 3) uint8, a fresh array each step (gym3 copies), so slots keep views
        actions = policy(first, rgb)  # (N,) int64
        for s, r in enumerate(rec):
            if r is not None:
                r["frames"].append(rgb[s])
                r["actions"].append(actions[s])
        env.act(actions)
        rew, obs, first = env.observe()  # reward of `actions`; first: episode ended, obs is the next one's
        if first.any():
            infos = env.get_info()
        for s, r in enumerate(rec):
            if r is not None:
                r["rewards"].append(rew[s])
                if first[s] or len(r["frames"]) == cfg.max_episode_frames:
                    ep = EpisodeData(
                        frames=np.stack(r["frames"]), actions=np.array(r["actions"], dtype=np.int64),
                        rewards=np.array(r["rewards"], dtype=np.float32), level_seed=r["level_seed"],
                        source=source, success=bool(infos[s]["prev_level_complete"]) if first[s] else None,
                        truncated=not first[s], policy=policy.labels[s])
                    done[s].append(ep if keep else dataclasses.replace(ep, frames=ep.frames[:0]))
                    rec[s] = None
                    if on_episode is not None:
                        on_episode(ep)
            if first[s] and rec[s] is None and len(done[s]) < want[s]:
                start(s, infos[s])
    return done, steps


def _source(cfg: CollectConfig) -> dict[str, Any]:
    return {"kind": "procgen", "game": cfg.game, "config": to_dict(cfg)}


def _normalised(config: Any) -> Any:
    """A stored config with fields added since it was written filled with their defaults (else as stored)."""
    try:
        return to_dict(from_dict(CollectConfig, config, where="collect config"))
    except (ConfigError, TypeError, ValueError):
        return config


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def _load_unit(path: Path) -> tuple[ShardEntry, list[Episode]]:
    try:
        data = json.loads(path.read_text())
        shard = from_dict(ShardEntry, data["shard"], where="shard")
    except (OSError, KeyError, json.JSONDecodeError, ConfigError) as e:
        raise DatasetError(f"{path}: unreadable unit record ({e}); delete it to re-collect that unit") from e
    return shard, [episode_from_json(e, f"{path}: episodes[{i}]") for i, e in enumerate(data["episodes"])]


def _unit_is_done(partial: Path, unit: int) -> bool:
    record = partial / _UNITS_DIR / f"{unit:05d}.json"
    if not record.exists():
        return False
    shard, _ = _load_unit(record)
    return all((partial / f.path).is_file() and (partial / f.path).stat().st_size == f.bytes
               for f in shard.files().values())


def _write_unit(writer: DatasetWriter, unit: int, data: list[EpisodeData], first_index: int) -> int:
    """Shard files first, then the unit record that marks them complete; returns the episode count."""
    shard, rows = writer.write_shard(unit, data, first_index=first_index)
    record = {"unit": unit, "shard": to_dict(shard), "episodes": [dataclasses.asdict(r) for r in rows]}
    atomic_write_text(writer.partial / _UNITS_DIR / f"{unit:05d}.json", json.dumps(record) + "\n")
    return len(rows)


def _is_complete(cfg: CollectConfig, out: Path) -> bool:
    """True if ``out`` is a finished dataset of ``cfg``; raises if ``out`` holds anything else."""
    if (out / MANIFEST).exists():
        old = dict(read_manifest(out).source)
        if "config" in old:
            old["config"] = _normalised(old["config"])
        if old == _source(cfg):
            return True
        raise DatasetError(f"{out}: already holds a dataset made with other settings "
                           f"({_diff(old.get('config', {}), to_dict(cfg))}); choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not a playworld dataset; choose another --out")
    return False


def _open_partial(cfg: CollectConfig, out: Path) -> Path:
    """The partial directory of ``out``, created with ``cfg`` recorded, or checked to hold ``cfg``'s run."""
    partial = partial_dir(out)
    config_file = partial / _CONFIG_FILE
    if not config_file.exists():
        atomic_write_text(config_file, json.dumps({"config": to_dict(cfg)}, indent=2) + "\n")
        return partial
    try:
        stored = _normalised(json.loads(config_file.read_text())["config"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise DatasetError(f"{config_file}: unreadable ({e}); delete {partial} to start over") from e
    if stored != to_dict(cfg):
        raise DatasetError(f"{partial} holds an unfinished collection with other arguments "
                           f"({_diff(stored, to_dict(cfg))}); re-run with the same arguments to resume, "
                           f"or delete {partial} to start over")
    return partial


def collect(cfg: CollectConfig, out: str | Path, *, progress: bool = True, max_units: int | None = None,
            on_unit_done: Callable[[int], None] | None = None) -> CollectResult:
    """Record ``cfg.episodes`` episodes into the dataset directory ``out``, resuming a partial run.

    ``max_units`` stops after that many units are written in this call, and ``on_unit_done(u)`` runs after
    each (raising from it simulates a hard stop); either leaves a resumable ``.out.partial``.
    """
    out, t0 = Path(out), time.perf_counter()
    sizes = unit_sizes(cfg)
    if _is_complete(cfg, out):
        return CollectResult(out, "already complete", len(sizes), len(sizes), 0, 0, 0, 0.0)
    partial = _open_partial(cfg, out)
    writer = DatasetWriter(out, frame_shape=(64, 64, 3), num_actions=NUM_ACTIONS, source=_source(cfg),
                           rule=SplitRule(by="level"))
    todo = [u for u in range(len(sizes)) if not _unit_is_done(partial, u)]
    done_before = len(sizes) - len(todo)
    episodes = frames = stepped = units_written = 0  # in this call
    bar = progress_bar(total=cfg.episodes, initial=sum(sizes) - sum(sizes[u] for u in todo), unit="ep",
                       desc=f"collect {cfg.game}/{cfg.policy}", disable=not progress)

    def count(ep: EpisodeData) -> None:
        nonlocal frames
        frames += len(ep.frames)
        bar.set_postfix(frames=frames, fps=f"{frames / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)
        bar.update(0)  # redraws at most every mininterval; episodes are counted when their unit is written

    # Shard writing and hashing release the GIL: unit u is written by a thread while unit u + 1 plays.
    in_flight: tuple[int, Future[int]] | None = None

    def settle() -> None:
        nonlocal in_flight, episodes, units_written
        if in_flight is not None:
            u, written = in_flight[0], in_flight[1].result()
            in_flight, episodes, units_written = None, episodes + written, units_written + 1
            bar.update(written)
            if on_unit_done is not None:
                on_unit_done(u)

    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="playworld-shards") as pool:
        for u in todo[:max_units]:
            played = play_unit(cfg, u, sizes[u], on_episode=count)
            stepped += played.steps * cfg.num_envs
            settle()
            in_flight = (u, pool.submit(_write_unit, writer, u, played.episodes, u * cfg.episodes_per_shard))
        settle()
    units_done = done_before + units_written
    if units_done < len(sizes):
        return CollectResult(out, "interrupted", units_done, len(sizes), episodes, frames, stepped,
                             time.perf_counter() - t0)
    shards, rows = [], []
    for u in range(len(sizes)):
        shard, unit_rows = _load_unit(partial / _UNITS_DIR / f"{u:05d}.json")
        shards.append(shard)
        rows.extend(unit_rows)
    writer.finalize(shards, rows, scratch=(_UNITS_DIR, _CONFIG_FILE))
    return CollectResult(out, "complete", units_done, len(sizes), episodes, frames, stepped,
                         time.perf_counter() - t0)


@dataclasses.dataclass(frozen=True)
class PolicyStats:
    """What a behaviour policy's data looks like (measured by :func:`policy_report`)."""

    policy: str
    episodes: int
    frames: int
    success_rate: float | None  # over episodes that ended on their own (prev_level_complete)
    copy_last_psnr: float  # dB: PSNR of the mean MSE of predicting frame t+1 by frame t, frames in [0, 255]
    action_freq: tuple[float, ...]  # (15,) share of frames with each true action
    mean_return: float = math.nan  # mean over episodes of the summed reward (of the recorded frames)

    @property
    def mean_length(self) -> float:
        return self.frames / max(self.episodes, 1)


class _Measure:
    """Running sums for one policy's :class:`PolicyStats`."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.sse, self.pixels, self.frames, self.episodes, self.ended, self.wins = bar, 0.0, 0, 0, 0, 0, 0
        self.returns = 0.0
        self.counts = np.zeros(NUM_ACTIONS, dtype=np.int64)

    def __call__(self, ep: EpisodeData) -> None:
        diff = ep.frames[1:].astype(np.int32) - ep.frames[:-1]  # (L-1, H, W, 3)
        self.sse += float(np.square(diff, dtype=np.int64).sum())
        self.pixels += diff.size
        self.frames, self.episodes = self.frames + len(ep.frames), self.episodes + 1
        self.ended, self.wins = self.ended + (ep.success is not None), self.wins + bool(ep.success)
        self.counts += np.bincount(np.asarray(ep.actions), minlength=NUM_ACTIONS)
        self.returns += float(np.sum(ep.rewards))
        self.bar.update(1)

    def stats(self, policy: str) -> PolicyStats:
        mse = self.sse / max(self.pixels, 1)
        return PolicyStats(policy, self.episodes, self.frames, self.wins / self.ended if self.ended else None,
                           10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf,
                           tuple(float(c) / max(self.frames, 1) for c in self.counts),
                           self.returns / max(self.episodes, 1))


def policy_report(cfg: CollectConfig, policies: tuple[str, ...] = POLICIES, *, progress: bool = True
                  ) -> list[PolicyStats]:
    """Play ``cfg.episodes`` episodes with each policy (same seeds, nothing written) and measure them."""
    stats = []
    for name in policies:
        if name == "agent" and cfg.agent is None:
            continue  # no agent directory given
        run = dataclasses.replace(cfg, policy=name, agent=cfg.agent if name == "agent" else None)
        with progress_bar(total=run.episodes, desc=f"policy {name}", unit="ep", disable=not progress) as bar:
            measure = _Measure(bar)
            for u, size in enumerate(unit_sizes(run)):
                play_unit(run, u, size, on_episode=measure, keep=False)
        stats.append(measure.stats(name))
    return stats


def format_policy_report(stats: list[PolicyStats]) -> str:
    """Markdown tables: one row per policy, then action frequencies (one column per policy)."""
    lines = ["| policy | episodes | frames | mean length | mean return | success | copy-last PSNR (dB) |",
             "|---|---|---|---|---|---|---|"]
    for s in stats:
        success = "n/a" if s.success_rate is None else f"{100 * s.success_rate:.1f}%"
        lines.append(f"| {s.policy} | {s.episodes} | {s.frames} | {s.mean_length:.1f} | {s.mean_return:.2f} | "
                     f"{success} | {s.copy_last_psnr:.2f} |")
    lines += ["", "| action | " + " | ".join(s.policy for s in stats) + " |", "|---" * (len(stats) + 1) + "|"]
    for a, name in enumerate(ACTION_NAMES):
        lines.append(f"| {a} {name} | " + " | ".join(f"{100 * s.action_freq[a]:.1f}%" for s in stats) + " |")
    return "\n".join(lines)
