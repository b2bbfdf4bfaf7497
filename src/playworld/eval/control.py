"""Figures that drive the world with chosen latent actions: consistency of each action's motion,
memory (there and back again), the start-frame x action grid, and speed.

Shapes: S start frames, K latent actions, c context frames, H x W x C pixels, L steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from playworld.eval.motion import MotionEstimator, silhouettes
from playworld.eval.rollouts import EvalWorld
from playworld.eval.stats import psnr


def press_each_action(world: EvalWorld, prompts: Tensor, steps: int, seed: int, batch: int) -> Tensor:
    """prompts uint8 (S, c, H, W, C) -> frames (S, K, 1+steps, H, W, C) uint8: the start frame as the
    world sees it, then each latent action pressed ``steps`` times from every start, ``batch`` worlds
    at a time."""
    k = world.num_actions
    prompt = prompts.repeat_interleave(k, dim=0)  # (S*K, c, H, W, C), row-major (start, action)
    actions = torch.arange(k).repeat(len(prompts))  # (S*K,)
    out = []
    for s in range(0, len(prompt), batch):
        frames = [world.reset(prompt[s:s + batch], seed=seed).cpu()]
        frames += [world.step(actions[s:s + batch]).cpu() for _ in range(steps)]
        out.append(torch.stack(frames, 1))
    video = torch.cat(out)  # (S*K, 1+steps, H, W, C)
    return video.view(len(prompts), k, *video.shape[1:])


def action_motion(frames: Tensor, motion: MotionEstimator | None = None) -> np.ndarray:
    """frames (S, K, 1+L, H, W, C) -> summed per-step global shift (S, K, 2) in pixels (dy, dx)."""
    shifts = (motion or MotionEstimator())(frames[:, :, :-1], frames[:, :, 1:])  # (S, K, L, 2)
    return shifts.sum(2).numpy()


def motion_silhouettes(motion: np.ndarray, groups: Sequence[int] | None = None) -> np.ndarray:
    """motion (S, K, 2) of :func:`action_motion` -> (S, K) the silhouette of each start's motion under each
    action among all of them, labelled by action, or by ``groups`` (K,) where several actions count as one."""
    s, k = motion.shape[:2]
    labels = np.tile(np.arange(k) if groups is None else np.asarray(groups), s)
    return silhouettes(motion.reshape(s * k, 2), labels).reshape(s, k)


@dataclass
class Walk:
    """One memory walk: k presses of ``there`` then k of ``back``."""

    there: int
    back: int


def walk(world: EvalWorld, prompts: Tensor, walks: list[Walk], k: int, seed: int, batch: int) -> Tensor:
    """prompts uint8 (S, c, H, W, C) -> for every walk and start: (W, S, 3, H, W, C) uint8 frames
    (start as the world sees it, after k steps there, after k steps back)."""
    out = []
    for w in walks:
        per = []
        for s in range(0, len(prompts), batch):
            start = world.reset(prompts[s:s + batch], seed=seed).cpu()
            n = len(start)
            for _ in range(k):
                mid = world.step(torch.full((n,), w.there, dtype=torch.long)).cpu()
            for _ in range(k):
                end = world.step(torch.full((n,), w.back, dtype=torch.long)).cpu()
            per.append(torch.stack([start, mid, end], 1))
        out.append(torch.cat(per))
    return torch.stack(out)


def return_psnr(frames: Tensor) -> np.ndarray:
    """(W, S, 3, H, W, C) uint8 walk frames -> PSNR (W, S) of the frame returned to against the start."""
    f = frames.float() / 255
    return psnr(f[:, :, 2], f[:, :, 0]).numpy()


def ms_per_frame(world: EvalWorld, prompt: Tensor, frames: int, seed: int, warmup: int = 2) -> np.ndarray:
    """Milliseconds of each of ``frames`` generated frames of one world (batch 1, the number a player
    feels), after ``warmup`` steps: prompt uint8 (1, c, H, W, C) -> (frames,). The frame is copied to
    the CPU inside the timing, as a player's screen needs it there."""
    world.reset(prompt, seed=seed)
    action = torch.zeros(1, dtype=torch.long)
    for i in range(warmup):
        world.step(action + i % world.num_actions).cpu()
    out = []
    for i in range(frames):
        start = time.perf_counter()
        world.step(action + i % world.num_actions).cpu()
        out.append(1000 * (time.perf_counter() - start))
    return np.array(out)
