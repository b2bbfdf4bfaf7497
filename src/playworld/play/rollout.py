"""Roll a world out under a fixed action sequence: a prompt and actions in, frames (or a video) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from playworld.world import World


def rollout(world: World, prompt: np.ndarray | torch.Tensor, actions: Sequence[int], *,
            seed: int = 0) -> np.ndarray:
    """Reset ``world`` on ``prompt`` (uint8 (H, W, C) or (T0, H, W, C)) and apply 0-based ``actions``.

    Returns (1 + len(actions), H, W, C) uint8: the prompt's last frame as the model sees it, then one
    frame per action. The same seed gives the same frames.
    """
    frames = [world.reset(torch.as_tensor(np.array(prompt, dtype=np.uint8, copy=True)), seed=seed)[0]]  # (H, W, C)
    for a in actions:
        frames.append(world.step(int(a))[0])
    return torch.stack(frames).numpy()


def rollout_to_video(world: World, prompt: np.ndarray | torch.Tensor, actions: Sequence[int], out: str | Path, *,
                     seed: int = 0, fps: float = 15.0, scale: int = 1) -> Path:
    """:func:`rollout`, written to ``out`` (.mp4 or .gif)."""
    from playworld.video import write_video

    return write_video(out, rollout(world, prompt, actions, seed=seed), fps=fps, scale=scale)
