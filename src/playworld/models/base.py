"""What every trainable playworld model gives the training engine.

A model the engine trains subclasses :class:`TrainableModel`: an ``nn.Module`` with a ``config``
dataclass and ``compute_loss(batch)``, plus optional hooks whose defaults live on the base class, so the
engine (`playworld.train`) calls them rather than probing for them; it owns the loop, so models differ
only in their loss (STYLE.md, habit 6).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


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


@runtime_checkable
class DeclaresNoWeightDecay(Protocol):
    """A module (any sub-module of a model) whose bare parameters (tables, codebooks, tokens, kernels) are
    not to be weight-decayed: ``no_weight_decay()`` names them, without the module's prefix (timm's
    convention; read by :func:`playworld.train.engine.param_groups`)."""

    def no_weight_decay(self) -> set[str]: ...


@runtime_checkable
class KeepsFP32(Protocol):
    """A module some of whose parameters stay fp32 when a model trains with bf16 weights: ``keep_fp32``
    holds their name prefixes, relative to the module (read by :mod:`playworld.train.mixed`)."""

    keep_fp32: tuple[str, ...]


@runtime_checkable
class WritesInForward(Protocol):
    """A module whose forward writes some of its weights outside the optimizer (restarts, EMA codebooks):
    ``written_in_forward`` holds their name prefixes, relative to the module (read by
    :mod:`playworld.train.fsdp`, which keeps them replicated)."""

    written_in_forward: tuple[str, ...]


class TrainableModel(nn.Module, ABC):
    """What a model gives the training engine: the one abstract method is :meth:`compute_loss`; every
    other hook has its default here.

    Sub-modules (of any type) may also declare :class:`KeepsFP32`, :class:`WritesInForward` and
    :class:`DeclaresNoWeightDecay`.
    """

    config: Any
    keep_fp32: ClassVar[tuple[str, ...]] = ()
    caches_tokens: ClassVar[bool] = False
    """Whether :meth:`cached_loader` can serve pre-encoded batches (``data.precompute``)."""
    ddp_find_unused: ClassVar[bool] = False
    """Whether DDP must look for parameters a step leaves unused (``find_unused_parameters``)."""

    @abstractmethod
    def compute_loss(self, batch: Any) -> LossOutput:
        """batch: video (B, T, H, W, C) float in [0, 1] (or what :meth:`cached_loader` yields) -> LossOutput."""

    def held_out_stats(self, video: Tensor) -> HeldOutStats | None:
        """Figures pooled over validation batches (:class:`HeldOutStats`), or None (the default: none)."""
        return None

    @property
    def trainable_module(self) -> nn.Module:
        """The part whose weights are optimised and released (default: the whole model; a wrapper around
        frozen sub-models returns the model it trains)."""
        return self

    def set_progress(self, step: int, total: int) -> None:
        """Called by the engine before each training step with the step about to run (0-based) and
        ``train.steps``: for a schedule inside the model (the dynamics model's ``self_forcing_start``).
        Default: nothing."""

    def no_weight_decay(self) -> set[str]:
        """Names of this module's own bare parameters not to decay (see :class:`DeclaresNoWeightDecay`)."""
        return set()

    def training_loader(self, loader: Any, *, seed: int) -> Any:
        """The training stream this model reads, over the pixel ``loader`` of its training split (``seed``:
        the run's). Default: ``loader`` itself; a LAM that reads a few recorded actions wraps it."""
        return loader

    def cached_loader(self, loader: Any, directory: Path, *, progress: bool = True) -> Any:
        """A loader of pre-encoded batches over ``loader``'s split, cached in ``directory``; only when
        :attr:`caches_tokens`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no token cache (caches_tokens is False)")


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
