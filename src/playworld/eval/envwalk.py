"""Walks and key presses in the real environment, for datasets collected from Procgen.

On each evaluated level (its seed from the manifest), the real game is reset and left idle (NOOP) for a
few frames so the agent lands. Then :func:`procgen_walk` walks it k steps with one true action and k
steps with its opposite (the memory figure), and :func:`procgen_press` presses each of a list of true
actions a few times from copies of that same start (the real game's consistency). The idle frames are
the model's prompt, so the model and the real game start from the same frames and can be compared. A
level whose episode ends during the walk or the presses is dropped.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

PROCGEN_NOOP = 4
# true actions that undo each other, per Procgen game (the 15-action combo layout shared by all games:
# 1 LEFT, 7 RIGHT, 3 DOWN, 5 UP); CoinRun's UP is a jump and its DOWN does nothing, so only left/right.
PROCGEN_OPPOSITES: dict[str, tuple[tuple[int, int], ...]] = {"coinrun": ((7, 1),)}
PROCGEN_DEFAULT_OPPOSITES = ((7, 1), (5, 3))


def default_opposites(source: dict[str, Any]) -> tuple[tuple[int, int], ...] | None:
    """Opposite true actions for a dataset's ``source`` (manifest), or None if unknown."""
    if source.get("kind") != "procgen":
        return None
    return PROCGEN_OPPOSITES.get(str(source.get("game")), PROCGEN_DEFAULT_OPPOSITES)


@dataclass
class RealWalk:
    """prompts: (S, c, H, W, C) uint8 idle frames before the walk; frames: (S, 3, H, W, C) uint8 real
    frames at the start, after k steps there, after k steps back; level_seeds: (S,)."""

    prompts: np.ndarray
    frames: np.ndarray
    level_seeds: list[int]


def _play_level(source: dict[str, Any], seed: int, schedule: np.ndarray) -> np.ndarray | None:
    """Step K copies of level ``seed`` of a Procgen dataset ``source`` through ``schedule`` (T, K) true
    actions -> every frame seen, (K, T+1, H, W, C) uint8, or None if an episode ended on the way."""
    video, alive = _play_level_until_end(source, seed, schedule)
    return video if alive.all() else None


def _play_level_until_end(source: dict[str, Any], seed: int, schedule: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step K copies of level ``seed`` through ``schedule`` (T, K) true actions -> every frame seen, (K, T+1,
    H, W, C) uint8, and alive (K, T+1) bool: frame t still belongs to the copy's first episode (Procgen starts
    a new one at once when an episode ends; its frames are kept but marked)."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        from procgen import ProcgenGym3Env
    cfg = source.get("config", {})
    steps, k = schedule.shape
    env = ProcgenGym3Env(num=k, env_name=source["game"], distribution_mode=cfg.get("distribution_mode", "hard"),
                         start_level=int(seed), num_levels=1, rand_seed=int(seed))
    try:
        seen, alive = [], []  # (K, H, W, C), (K,) per frame
        ended = np.zeros(k, dtype=bool)
        for t in range(steps + 1):
            _, obs, first = env.observe()
            if t:
                ended |= np.asarray(first, dtype=bool)
            seen.append(obs["rgb"].copy())
            alive.append(~ended)
            if t < steps:
                env.act(schedule[t])
    finally:
        env.close()
    return np.stack(seen, 1), np.stack(alive, 1)


def procgen_walk(source: dict[str, Any], level_seeds: list[int], there: int, back: int, k: int,
                 context: int, settle: int = 8) -> RealWalk:
    """Walk ``there`` k times then ``back`` k times on each level of a Procgen dataset ``source``."""
    s = max(settle, context)  # the frame the walk starts from (the prompt ends with it)
    schedule = np.array([PROCGEN_NOOP] * s + [there] * k + [back] * k)[:, None]  # (T, 1)
    prompts, frames, seeds = [], [], []
    for seed in level_seeds:
        video = _play_level(source, seed, schedule)
        if video is None:
            continue
        seen = video[0]  # (T+1, H, W, C)
        prompts.append(seen[s - context + 1:s + 1])
        frames.append(np.stack([seen[s], seen[s + k], seen[s + 2 * k]]))
        seeds.append(int(seed))
    if not frames:
        raise RuntimeError("every real walk ended the episode early")
    return RealWalk(np.stack(prompts), np.stack(frames), seeds)


@dataclass
class RealPresses:
    """prompts: (S, c, H, W, C) uint8 idle frames before the presses; frames: (S, K, 1+steps, H, W, C) uint8,
    the start frame then each of the K actions pressed ``steps`` times from it; level_seeds: (S,)."""

    prompts: np.ndarray
    frames: np.ndarray
    level_seeds: list[int]


def procgen_press(source: dict[str, Any], level_seeds: list[int], actions: list[int], steps: int, context: int,
                  settle: int = 8) -> RealPresses:
    """Press each of ``actions`` (true Procgen actions) ``steps`` times on each level of a Procgen dataset
    ``source``, every action from the same settled start: K copies of the level are stepped together."""
    if not actions or steps < 1:
        raise ValueError(f"procgen_press needs at least one action and one step, got {actions!r} x {steps}")
    k, start = len(actions), max(settle, context)
    schedule = np.concatenate([np.full((start, k), PROCGEN_NOOP), np.tile(actions, (steps, 1))])  # (T, K)
    prompts, frames, seeds = [], [], []
    for seed in level_seeds:
        video = _play_level(source, seed, schedule)  # (K, T+1, H, W, C); the K copies agree up to the start
        if video is None:
            continue
        prompts.append(video[0, start - context + 1:start + 1])
        frames.append(video[:, start:])
        seeds.append(int(seed))
    if not frames:
        raise RuntimeError("every level's episode ended before the presses were done")
    return RealPresses(np.stack(prompts), np.stack(frames), seeds)


@dataclass
class RealHolds:
    """prompts: (S, c, H, W, C) uint8 idle frames before the holds; frames: (S, K, 1+steps, H, W, C) uint8,
    the start frame then each of the K actions held ``steps`` steps from it; alive: (S, K, steps) bool, step
    i (frame i-1 -> i) still inside the copy's first episode (False once the agent died or finished the level:
    what follows is another episode's); level_seeds: (S,)."""

    prompts: np.ndarray
    frames: np.ndarray
    alive: np.ndarray
    level_seeds: list[int]


def procgen_hold(source: dict[str, Any], level_seeds: list[int], actions: list[int], steps: int, context: int,
                 settle: int = 8) -> RealHolds:
    """Hold each of ``actions`` (true Procgen actions) for ``steps`` steps on each level of a Procgen dataset
    ``source``, every action from the same settled start (as :func:`procgen_press`). Unlike the presses, a
    copy whose episode ends during the hold is kept, with the steps after its end marked not alive, so the
    levels where holding a key kills the agent are not silently dropped; a level whose episode ends while
    it settles is."""
    if not actions or steps < 1:
        raise ValueError(f"procgen_hold needs at least one action and one step, got {actions!r} x {steps}")
    return procgen_play(source, level_seeds, np.tile(actions, (steps, 1)), context, settle)


def procgen_play(source: dict[str, Any], level_seeds: list[int], schedule: np.ndarray, context: int,
                 settle: int = 8) -> RealHolds:
    """Play ``schedule`` (steps, K) true actions, K copies of each level side by side, from the settled start
    of :func:`procgen_hold` (which plays one key per copy throughout); the same frames, prompts and alive
    marks."""
    schedule = np.asarray(schedule, dtype=np.int64)
    if schedule.ndim != 2 or not schedule.size:
        raise ValueError(f"procgen_play needs a (steps, K) schedule of true actions, got shape {schedule.shape}")
    k, start = schedule.shape[1], max(settle, context)
    schedule = np.concatenate([np.full((start, k), PROCGEN_NOOP), schedule])  # (T, K)
    prompts, frames, alive, seeds = [], [], [], []
    for seed in level_seeds:
        video, live = _play_level_until_end(source, seed, schedule)  # (K, T+1, H, W, C), (K, T+1)
        if not live[:, :start + 1].all():
            continue
        prompts.append(video[0, start - context + 1:start + 1])
        frames.append(video[:, start:])
        alive.append(live[:, start + 1:])
        seeds.append(int(seed))
    if not frames:
        raise RuntimeError("every level's episode ended before its start frame")
    return RealHolds(np.stack(prompts), np.stack(frames), np.stack(alive), seeds)


def key_classes(frames: np.ndarray) -> list[int]:
    """frames (S, K, 1+L, H, W, C) of :class:`RealPresses` -> (K,) the class of each pressed key: the first
    key whose frames are identical to its own from every start (keys the game cannot tell apart, such as
    CoinRun's NOOP and its fire keys, share a class)."""
    k = frames.shape[1]
    return [next(b for b in range(a + 1) if np.array_equal(frames[:, a], frames[:, b])) for a in range(k)]
