"""A perfect world for the sprite world of :mod:`sprite_world`: evaluation tests compare its figures
with the truths they must recover.

The sprite wraps around a plain background, so the next frame under true action a is exactly the
last frame rolled by ``speed * MOVES[a]``. Latent action l means true action ``inverse[l]`` (a known
permutation the evaluation's mapping must find). The oracle LAM reads the motion between frames by
phase correlation; its features are the one-hot true action (a probe on them is exact).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from playworld.eval.motion import phase_correlation

from sprite_world import MOVES, NUM_ACTIONS, PatchTokenizer


class OracleLAM:
    def __init__(self, perm: np.ndarray, speed: int) -> None:
        self.perm, self.speed = torch.as_tensor(perm), speed  # perm[true] = latent

    def true_actions(self, video: Tensor) -> Tensor:
        """video (B, T, H, W, C) in [0, 1] -> (B, T-1) true actions read from the motion."""
        # the sprite wraps around: its frames are periodic, so no window (see phase_correlation)
        shift = phase_correlation(video[:, :-1], video[:, 1:], window=False).round() / self.speed  # (B, T-1, 2)
        moves = torch.as_tensor(MOVES, dtype=shift.dtype)
        return (shift[..., None, :] - moves).abs().sum(-1).argmin(-1)

    def infer_actions(self, video: Tensor) -> Tensor:
        return self.perm[self.true_actions(video)]

    def features(self, video: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(self.true_actions(video), NUM_ACTIONS).float()


class OracleWorld:
    """The :class:`~playworld.eval.rollouts.EvalWorld` interface, with ground-truth dynamics."""

    def __init__(self, video: Tensor, perm: np.ndarray | None = None, speed: int = 2) -> None:
        perm = np.arange(NUM_ACTIONS) if perm is None else np.asarray(perm)
        self.tokenizer = PatchTokenizer(video)
        self.lam = OracleLAM(perm, speed)
        self.inverse = torch.as_tensor(np.argsort(perm))  # latent -> true
        self.speed = speed
        self.last: Tensor | None = None

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    def reset(self, prompt: Tensor, seed: int | None = None) -> Tensor:
        self.last = prompt[:, -1].clone()  # (B, H, W, C) uint8
        return self.last

    def step(self, actions: Tensor) -> Tensor:
        assert self.last is not None
        moves = MOVES[self.inverse[actions].numpy()] * self.speed  # (B, 2)
        self.last = torch.stack([torch.roll(f, shifts=tuple(int(m) for m in mv), dims=(0, 1))
                                 for f, mv in zip(self.last, moves)])
        return self.last
