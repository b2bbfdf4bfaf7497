"""The seam between a :class:`~playworld.world.World` and the model that makes its next frame.

A dynamics backend answers one question: the next frame's latents, given the cached past and an
action. A world owns everything else (the prompt, the LAM, the tokenizer's decoder cache, seeds,
batching across worlds, deferred commits, snapshots), so a backend never sees a player, a server or an
environment, and those never see which backend they drive.

Latents are one tensor per frame with the batch first, (B, *L): MaskGIT's are token ids (B, S) long. A
world keeps the last frame's latents (``prev``) and hands them back at the next step; it only
concatenates and slices them along the batch.

Caches are the backend's own (a :class:`~playworld.nn.blocks.TemporalKVCache` for MaskGIT): any object
with ``clone()``, ``nbytes`` and ``frames``; a batched call takes one cache per world, in row order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from playworld.errors import CheckpointError

Caches = Sequence[Any]
"""One backend cache per world of a batched call, in row order."""

RowGenerators = Sequence[tuple["torch.Generator | None", int]]
"""(generator, rows) per world of a batched call, in row order: each world's own seeded generator."""


class BackendCache(Protocol):
    """What a world needs of a backend's cache: copies for snapshots, its size, the frames it holds."""

    @property
    def nbytes(self) -> int: ...

    @property
    def frames(self) -> int: ...

    def clone(self) -> Any: ...


class DynamicsBackend(ABC):
    """Makes a world's next frame from its cached past and an action (see the module docstring).

    ``dynamics``: the dynamics model (the module a world's ``dynamics`` names, which worlds stepped together
    share); ``tokenizer``: the world's tokenizer, which turns pixels into latents and latents into pixels.
    A subclass registered under ``name`` (:func:`playworld.backends.register_backend`) is what a dynamics
    run whose config says ``backend: name`` plays with.
    """

    name: ClassVar[str]

    def __init__(self, dynamics: nn.Module, tokenizer: nn.Module, lam: nn.Module) -> None:
        self.dynamics, self.tokenizer = dynamics, tokenizer

    @property
    @abstractmethod
    def num_actions(self) -> int:
        """The number of latent actions |A| the dynamics model is conditioned on."""

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """Known frames (B, T, H, W, C) float in [0, 1] -> their latents (B, T, *L)."""

    @abstractmethod
    def decode(self, latents: Tensor, decoder_caches: Any) -> Tensor:
        """Latents (B, T, *L) -> frames (B, T, H, W, C) float, through the tokenizer's cached decoder
        (one ``tokenizer.new_cache`` per world, or one for the whole batch), which they extend."""

    @abstractmethod
    def new_cache(self, max_frames: int) -> BackendCache:
        """An empty cache of the past for one world (or one batch), holding at most ``max_frames`` frames."""

    @abstractmethod
    def commit(self, latents: Tensor, frame_actions: Tensor, caches: Any, prev: Tensor | None) -> None:
        """Append known frames to the cache(s): latents (B, T, *L), ``frame_actions`` (B, T) (the action that
        led to each frame; see :meth:`frame_actions`), ``prev`` (B, *L) the frame before them or None."""

    @abstractmethod
    def sample(self, frame_actions: Tensor, caches: Caches, prev: Tensor, sampling: Any,
               generators: RowGenerators) -> Tensor:
        """The next frame's latents (B, *L) after ``prev`` (B, *L) under ``frame_actions`` (B, 1), against
        the cached past, without writing it to the caches (unless :attr:`commits_in_sample`). ``sampling``:
        the world's sampling settings; ``generators``: (generator, rows) per world in row order, each
        drawing exactly the numbers it would draw if that world stepped alone (so a seed fixes its frames,
        batched or not)."""

    def check_sampling(self, sampling: Any) -> None:
        """Raise a ConfigError if this backend's model cannot sample with ``sampling`` (checked when a
        world is built, before anyone plays); by default every setting is accepted."""
        return None

    @property
    def commits_in_sample(self) -> bool:
        """Whether :meth:`sample` itself writes the new frame to the caches (a model whose frame state is
        that of the pass predicting it): a world then never calls :meth:`commit` for a sampled frame."""
        return False

    def frame_actions(self, actions: Tensor) -> Tensor:
        """Transition actions (B, T-1) -> per-frame conditioning (B, T), the first frame "no action"."""
        first = actions.new_full((actions.shape[0], 1), self.num_actions)
        return torch.cat([first, actions], dim=1)


class CachedModelBackend(DynamicsBackend):
    """A backend over one dynamics network (``model_type``) with a token grid, a temporal KV cache and
    per-frame action conditioning (its ``frame_actions``, ``new_cache`` and ``commit``), as MaskGIT's and
    flow's models are; a subclass adds how latents are encoded, decoded and sampled. ``compatible``
    raises a ConfigError unless the tokenizer and LAM fit the model's config."""

    model_type: ClassVar[type[nn.Module]]
    compatible: ClassVar[Callable[[Any, nn.Module, nn.Module], None]]

    def __init__(self, dynamics: nn.Module, tokenizer: nn.Module, lam: nn.Module) -> None:
        if not isinstance(dynamics, self.model_type):
            raise CheckpointError(f"the {self.name} backend needs a {self.model_type.__name__}, "
                                  f"got {type(dynamics).__name__}")
        config = dynamics.config
        type(self).compatible(config, tokenizer, lam)
        super().__init__(dynamics, tokenizer, lam)
        self.model: Any = dynamics
        self.grid = (config.token_height, config.token_width)

    @property
    def num_actions(self) -> int:
        return self.model.config.num_actions

    def frame_actions(self, actions: Tensor) -> Tensor:
        return self.model.frame_actions(actions)

    def new_cache(self, max_frames: int) -> BackendCache:
        return self.model.new_cache(max_frames)

    def commit(self, latents: Tensor, frame_actions: Tensor, caches: Any, prev: Tensor | None) -> None:
        self.model.commit(latents, frame_actions, caches, prev=prev)
