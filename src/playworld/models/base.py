"""What every trainable playworld model gives the training engine.

A model is an ``nn.Module`` with a ``config`` dataclass and ``compute_loss(video)``; the engine
(`playworld.train`) owns the loop, so models differ only in their loss (STYLE.md, habit 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class LossOutput:
    """loss: scalar to minimise; metrics: detached scalars to log (name -> 0-dim tensor)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Trainable(Protocol):
    config: Any

    def compute_loss(self, video: Tensor) -> LossOutput:
        """video: (B, T, H, W, C) float in [0, 1] -> LossOutput."""
        ...


class HeldOutStats(Protocol):
    """What a model's optional ``held_out_stats(video)`` returns for one validation batch: figures the
    batch-averaged loss metrics cannot give (e.g. how many latent actions occur over the whole held-out
    set). A dataclass whose tensor fields are additive counts, so the engine sums it over batches
    (``+``) and over data-parallel ranks (each field all-reduced) before reading it."""

    def __add__(self, other: Any) -> Any: ...

    def metrics(self) -> dict[str, float]:
        """The figures to log, name -> value."""
        ...

    def warning(self) -> str | None:
        """A problem worth telling the user during training (logged and printed), or None."""
        ...


def to_unit(video_u8: Tensor) -> Tensor:
    """(B, T, H, W, C) uint8 -> float32 in [0, 1]."""
    if video_u8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 video, got {video_u8.dtype}")
    return video_u8.float().div_(255.0)


def to_uint8(frames: Tensor) -> Tensor:
    """float in [0, 1] (any shape) -> uint8, clamped and rounded."""
    return frames.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB of signals in [0, 1]: 10 log10(1 / mse)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
