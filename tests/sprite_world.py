"""A synthetic sprite world with known actions, for tests that must learn something in seconds.

A small coloured square sits on a plain background and is moved by one of four actions
(0 up, 1 down, 2 left, 3 right) by ``speed`` pixels per frame, wrapping around the edges so that
every action always has a visible effect. Positions stay on a grid of ``speed`` pixels, so a patch
tokenizer sees few distinct patches and can be trained exactly in seconds. Each clip draws its sprite colour, background colour
and start position at random, and a uniformly random action sequence.

``make_clips(n, t, seed=...)`` -> :class:`SpriteClips` with ``video`` uint8 (N, T, H, W, 3) and
``actions`` long (N, T-1), where ``actions[:, t]`` moves frame t to frame t+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NUM_ACTIONS = 4
# (dy, dx) per action: up, down, left, right
MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
SPRITE_COLOURS = np.array([(240, 200, 40), (60, 220, 255)], dtype=np.uint8)
BACKGROUNDS = np.array([(20, 20, 60), (70, 20, 30)], dtype=np.uint8)


@dataclass
class SpriteClips:
    """video: uint8 (N, T, H, W, 3); actions: long (N, T-1); positions: long (N, T, 2) (top-left y, x)."""

    video: Tensor
    actions: Tensor
    positions: Tensor


def render(pos: np.ndarray, sprite: np.ndarray, background: np.ndarray, size: int, sprite_size: int) -> np.ndarray:
    """pos: (N, 2) top-left corners; sprite, background: (N, 3) colours -> uint8 (N, size, size, 3)."""
    n = pos.shape[0]
    frames = np.broadcast_to(background[:, None, None, :], (n, size, size, 3)).copy()
    offs = np.arange(sprite_size)
    for i in range(n):
        ys = (pos[i, 0] + offs) % size
        xs = (pos[i, 1] + offs) % size
        frames[i][np.ix_(ys, xs)] = sprite[i]
    return frames


def make_clips(n: int, t: int, *, size: int = 16, sprite_size: int = 4, speed: int = 2,
               seed: int = 0, random_colours: bool = False) -> SpriteClips:
    """Sample ``n`` clips of ``t`` frames of ``size`` x ``size`` pixels with random actions.

    ``random_colours`` draws every clip's background uniformly in RGB and its sprite half the colour
    cube away (so the two always differ), instead of the 2 x 2 palette. With only four colour pairs a
    model can give an action a different meaning per pair; with a continuum of colours the one
    meaning that works everywhere is the motion, which is what a latent action model should find.
    """
    if t < 2:
        raise ValueError(f"clips need at least 2 frames, got t={t}")
    if size % speed:
        raise ValueError(f"speed {speed} must divide size {size}")
    if not 0 < sprite_size < size:
        raise ValueError(f"sprite_size {sprite_size} must be in (0, size={size})")
    rng = np.random.default_rng(seed)
    if random_colours:
        bg = rng.integers(0, 256, (n, 3))
        background = bg.astype(np.uint8)
        sprite = ((bg + 128 + rng.integers(-48, 49, (n, 3))) % 256).astype(np.uint8)
    else:
        sprite = SPRITE_COLOURS[rng.integers(0, len(SPRITE_COLOURS), n)]
        background = BACKGROUNDS[rng.integers(0, len(BACKGROUNDS), n)]
    actions = rng.integers(0, NUM_ACTIONS, (n, t - 1))
    pos = np.empty((n, t, 2), dtype=np.int64)
    pos[:, 0] = speed * rng.integers(0, size // speed, (n, 2))  # on the grid of reachable positions
    for k in range(1, t):
        pos[:, k] = (pos[:, k - 1] + speed * MOVES[actions[:, k - 1]]) % size
    video = np.stack([render(pos[:, k], sprite, background, size, sprite_size) for k in range(t)], axis=1)
    return SpriteClips(video=torch.from_numpy(video), actions=torch.from_numpy(actions),
                       positions=torch.from_numpy(pos))


def best_mapping_accuracy(pred: Tensor, true: Tensor, num_pred: int, num_true: int = NUM_ACTIONS) -> float:
    """Accuracy of the best one-to-one map from true actions to distinct predicted codes.

    pred, true: long tensors of the same shape. A brute-force assignment (Hungarian in spirit; the
    problem is tiny): each true action gets a different code, codes left over count as wrong.
    """
    import itertools

    if pred.shape != true.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and true {tuple(true.shape)} differ in shape")
    conf = torch.zeros(num_true, num_pred, dtype=torch.long)
    conf.index_put_((true.flatten(), pred.flatten()), torch.ones(true.numel(), dtype=torch.long), accumulate=True)
    counts = conf.tolist()
    best = max(sum(counts[a][c] for a, c in enumerate(codes))
               for codes in itertools.permutations(range(num_pred), num_true))
    return best / true.numel()


class PatchTokenizer(torch.nn.Module):
    """An exact, frozen tokenizer for sprite clips: one token per ``patch`` x ``patch`` pixel patch,
    the codebook being every distinct patch seen in ``video`` (nearest patch when encoding).

    It has the parts of :class:`~playworld.models.tokenizer.VideoTokenizer` that the dynamics trainer
    and :class:`~playworld.world.World` use (``encode``, ``decode``, ``new_cache``, ``decode_step``,
    ``num_codes``, ``grid``), so tests of the dynamics model do not depend on training a tokenizer.
    """

    def __init__(self, video: Tensor, patch: int = 4) -> None:
        super().__init__()
        from einops import rearrange

        self.patch = patch
        _, _, h, w, _ = video.shape
        self.grid = (h // patch, w // patch)
        patches = rearrange(video.float() / 255, "n t (h p) (w q) c -> (n t h w) (p q c)", p=patch, q=patch)
        self.register_buffer("codebook", torch.unique(patches, dim=0))  # (K, p*p*C)

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def encode(self, video: Tensor):
        from einops import rearrange

        from playworld.models.tokenizer import TokenizerEncoding

        p, (h, w) = self.patch, self.grid
        patches = rearrange(video, "b t (h p) (w q) c -> b t (h w) (p q c)", p=p, q=p)
        idx = torch.cdist(patches.flatten(0, 1), self.codebook[None]).argmin(-1).view(patches.shape[:3])
        return TokenizerEncoding(indices=rearrange(idx, "b t (h w) -> b t h w", h=h, w=w),
                                 quantized=self.codebook[idx])

    def decode(self, indices: Tensor) -> Tensor:
        from einops import rearrange

        p = self.patch
        return rearrange(self.codebook[indices], "b t h w (p q c) -> b t (h p) (w q) c", p=p, q=p)

    def new_cache(self, max_frames: int) -> None:
        return None  # frames decode independently

    def decode_step(self, indices: Tensor, cache: None = None) -> Tensor:
        return self.decode(indices)
