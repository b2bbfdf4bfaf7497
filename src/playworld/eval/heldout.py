"""Where `playworld eval` takes held-out episodes from when it is given no ``--data``.

In order: (1) the run's own training data, if it is on this machine (the path its config.json
records): its test split, the levels hashed out of training; (2) for a Procgen world (the game read
from the start frames the run ships in ``RUN/prompts``, as the shipped world does), a small
set of real-game episodes collected once into a cache directory and reused: one episode on each of
the first ``episodes`` level seeds that the default split rule puts in the test split (levels that
`playworld train`, which reads the train split, never saw in data split by that rule, whatever range
of levels it was collected from); (3) otherwise an error that says to pass ``--data``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from playworld.config import to_dict
from playworld.data.format import MANIFEST, DatasetWriter, read_manifest
from playworld.data.split import SplitRule, split_of
from playworld.errors import ConfigError, DatasetError

HELDOUT_EPISODES = 16
"""Episodes of the collected held-out set (at most 20 MB at 100 frames each): enough for every figure,
with wide intervals; pass ``--data`` with a bigger test split for tight ones."""
HELDOUT_FRAMES = 100
"""Frames kept of each collected episode: four non-overlapping clips of the default 4 + 15 frames."""
HELDOUT_SEED = 0
"""Seed of the collected episodes' behaviour policy (the level seeds are fixed by the split rule)."""


@dataclasses.dataclass(frozen=True)
class HeldoutPlan:
    """What `playworld eval` evaluates on when given no ``--data``.

    ``kind`` "dataset": ``data`` exists (the run's training data) and is read as it is.
    ``kind`` "collect": ``data`` is the cache directory of ``levels`` (one episode each, played with
    ``collect``'s game, mode, policy and frame cap); complete once its manifest exists.
    """

    kind: Literal["dataset", "collect"]
    data: Path
    why: str
    collect: Any = None  # playworld.data.collect.CollectConfig of the game (kind "collect")
    levels: tuple[int, ...] = ()
    rule: SplitRule = dataclasses.field(default_factory=SplitRule)


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$PLAYWORLD_CACHE``, else ``$XDG_CACHE_HOME/playworld``, else ``~/.cache/playworld``."""
    env = os.environ if environ is None else environ
    if env.get("PLAYWORLD_CACHE"):
        return Path(env["PLAYWORLD_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "playworld"


def held_out_levels(rule: SplitRule, count: int, start: int = 0) -> tuple[int, ...]:
    """The first ``count`` level seeds >= ``start`` that ``rule`` puts in the test split."""
    if rule.by != "level" or rule.test <= 0:
        raise ConfigError(f"split rule {rule}: held-out levels need by='level' and test > 0")
    levels: list[int] = []
    seed = start
    while len(levels) < count:
        if split_of(rule, level_seed=seed, index=0, source="") == "test":
            levels.append(seed)
        seed += 1
    return tuple(levels)


def _training_data(run_dir: Path) -> tuple[str | None, Path | None]:
    """The training data path the run's config.json records, and that path if it holds a dataset here."""
    from playworld.release import read_checkpoint_config

    for part in ("dynamics", "lam", "tokenizer", "."):
        if (run_dir / part / "config.json").is_file():
            recorded = read_checkpoint_config(run_dir / part).get("data", {}).get("path")
            if recorded:
                path = Path(recorded)
                return str(recorded), path if (path / MANIFEST).is_file() else None
    return None, None


def plan_heldout(run_dir: str | Path, *, episodes: int = HELDOUT_EPISODES, frames: int = HELDOUT_FRAMES,
                 cache: Path | None = None, procgen_available: bool | None = None) -> HeldoutPlan:
    """Decide where ``playworld eval RUN`` without ``--data`` takes its episodes (see the module docstring)."""
    from playworld.api import run_prompts
    from playworld.data.collect import CollectConfig

    run_dir = Path(run_dir)
    recorded, data = _training_data(run_dir)
    if data is not None:
        return HeldoutPlan("dataset", data, f"the run's training data {data} (its held-out test split)",
                           rule=read_manifest(data).split_rule)
    prompts = run_prompts(run_dir)
    source = read_manifest(prompts).source if prompts is not None else {}
    hint = (f"the training data it records ({recorded}) is not here" if recorded
            else "its config.json records no training data")
    if source.get("kind") != "procgen":
        raise ConfigError(f"{run_dir}: no --data given, {hint}, and the run ships no Procgen start frames to "
                          "name its game; pass --data DIR, a dataset with held-out episodes (its --split test)")
    if procgen_available is None:
        procgen_available = importlib.util.find_spec("procgen") is not None
    if not procgen_available:
        raise ConfigError(f"{run_dir}: no --data given and {hint}; collecting held-out {source.get('game')} "
                          "episodes needs procgen (pip install procgen), or pass --data DIR")
    config = source.get("config", {})
    rule = SplitRule()  # what `playworld collect` writes: levels hashed, 5% val, 5% test
    game = CollectConfig(episodes=episodes, game=str(source.get("game")),
                         distribution_mode=config.get("distribution_mode", "hard"),
                         policy=config.get("policy", "random"), num_envs=1, max_episode_frames=frames,
                         seed=HELDOUT_SEED)
    levels = held_out_levels(rule, episodes)
    key = hashlib.sha256(json.dumps([dataclasses.asdict(game), levels], sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() if cache is None else Path(cache)
    out = root / "heldout" / f"{game.game}-{game.distribution_mode}-{episodes}x{frames}-{key}"
    return HeldoutPlan("collect", out, f"{episodes} real {game.game} episodes ({game.policy} policy, at most "
                       f"{frames} frames each) on the first {episodes} test-split levels (held out of "
                       f"training by the level-seed hash)", collect=game, levels=levels, rule=rule)


def collect_heldout(plan: HeldoutPlan, *, log: Callable[[str], None] = print) -> Path:
    """The held-out dataset of ``plan``: read as it is, reused from the cache, or collected into it
    (atomically: a ``.partial`` sibling renamed when complete)."""
    from playworld.data.collect import play_unit
    from playworld.data.policies import NUM_ACTIONS

    if plan.kind == "dataset":
        log(f"playworld eval: no --data given; using {plan.why}")
        return plan.data
    assert plan.collect is not None
    source = {"kind": "procgen", "game": plan.collect.game, "config": to_dict(plan.collect),
              "held_out": {"levels": list(plan.levels), "why": plan.why}}
    if (plan.data / MANIFEST).is_file():
        if read_manifest(plan.data).source != source:
            raise DatasetError(f"{plan.data}: holds another dataset than the held-out set it is named for; "
                               "delete it to collect again")
        log(f"playworld eval: no --data given; using the cached held-out set {plan.data}: {plan.why}")
        return plan.data
    log(f"playworld eval: no --data given; collecting {plan.why} into {plan.data} (once; pass --data DIR "
        "for a bigger set)")
    partial = plan.data.parent / f".{plan.data.name}.partial"
    if partial.exists():  # left by an interrupted collection: each level is quick to play again
        import shutil

        shutil.rmtree(partial)
    writer = DatasetWriter(plan.data, frame_shape=(64, 64, 3), num_actions=NUM_ACTIONS, source=source,
                           rule=plan.rule)
    try:
        for i, level in enumerate(plan.levels):
            cfg = dataclasses.replace(plan.collect, episodes=1, start_level=level, num_levels=1,
                                      seed=plan.collect.seed + i)
            (episode,) = play_unit(cfg, 0, 1).episodes
            if episode.level_seed != level:
                raise DatasetError(f"procgen played level {episode.level_seed}, asked for {level}")
            writer.add(episode)
        writer.finalize()
    except BaseException:
        with contextlib.suppress(OSError):
            writer.abort()
        raise
    return plan.data
