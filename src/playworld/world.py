"""Play a learned world frame by frame (Genie, arXiv 2402.15391, sec. 2.3 "Inference").

``World.reset(prompt)`` tokenizes the prompt frames, infers the latent actions between them with the
LAM, and fills two bounded temporal KV caches: the dynamics model's and the tokenizer decoder's.
``World.step(actions)`` then makes the next frame's latents against the cached past with the dynamics
run's backend (:mod:`playworld.backends`; MaskGIT's tokens by default, :mod:`playworld.maskgit`),
commits them to the dynamics cache, and decodes only that frame to pixels with the tokenizer's cached
decoder. The commit may be deferred (``step_many(..., defer_commit=True)``):
the frame is returned first and its keys/values are written by :meth:`World.commit_many`, which a
server runs while the frame travels to the player, or by the next step. Both caches keep the last
``context_frames`` frames, so the cost of a step and the memory held do not grow with how long one has
played. Many worlds step together (batch B), and a seed fixes every sampled token. ``snapshot`` and
``restore`` copy a world's whole state (undo without replaying from the start).

Shapes: B worlds, T0 prompt frames, H x W x C pixels (uint8 at this API), (B, *L) one frame's latents
(MaskGIT: (B, S) token ids).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from playworld.backends import DynamicsBackend, make_backend
from playworld.config import field
from playworld.errors import CheckpointError, ConfigError
from playworld.maskgit import SamplingConfig, play_sampling
from playworld.models.base import to_uint8, to_unit
from playworld.play_setting import world_sampling


@dataclass
class WorldConfig:
    """Play-time settings: context windows and how new frames are sampled."""

    context_frames: int = field(16, help="frames the dynamics model attends to (its KV cache window)")
    decoder_context: int = field(16, help="frames the tokenizer's decoder attends to when decoding a frame")
    sampling: SamplingConfig | None = field(
        None, help="decoding of each new frame; None: the world's play setting (World.load: its run's "
        "play_setting.json over play's global setting, playworld.play_setting; a world built from models in "
        "memory: play's global setting, 1 greedy step, copy penalty 2)")

    def __post_init__(self) -> None:
        if self.context_frames < 1:
            raise ConfigError(f"world.context_frames must be >= 1, got {self.context_frames}")
        if self.decoder_context < 1:
            raise ConfigError(f"world.decoder_context must be >= 1, got {self.decoder_context}")


@dataclass
class WorldState:
    """A copy of everything a world's next frames depend on (:meth:`World.snapshot`): both caches,
    the last frame's latents and the random generator's state. Restoring it and taking the same
    actions gives the same frames, bit for bit."""

    cache: Any  # the backend's cache
    decoder_cache: Any
    last: Tensor  # (B, *L): the last frame's latents
    generator: Tensor  # torch.Generator.get_state()
    batch_size: int
    frames_played: int
    dynamics: nn.Module  # the model it belongs to

    @property
    def nbytes(self) -> int:
        """Memory held by the copy (almost all of it the two caches' rings)."""
        return (self.cache.nbytes + self.decoder_cache.nbytes + self.last.numel() * self.last.element_size()
                + self.generator.numel())


class World:
    """A batch of playable worlds: ``reset(prompt, seed=)`` then ``step(actions)`` -> frames.

    tokenizer: a :class:`~playworld.models.tokenizer.VideoTokenizer` (``encode``, ``new_cache``,
    ``decode_step``); lam: a :class:`~playworld.models.lam.LatentActionModel`; dynamics: the dynamics
    model, played through the backend its config names (:func:`playworld.backends.make_backend`; a
    :class:`~playworld.models.dynamics.DynamicsModel` plays with MaskGIT) unless ``backend`` is given.
    All three are put in eval mode.
    """

    def __init__(self, tokenizer: nn.Module, lam: nn.Module, dynamics: nn.Module,
                 config: WorldConfig | None = None, backend: DynamicsBackend | None = None) -> None:
        self.backend = backend if backend is not None else make_backend(dynamics, tokenizer, lam)
        if self.backend.dynamics is not dynamics or self.backend.tokenizer is not tokenizer:
            raise ValueError("the backend given to World must wrap the world's own dynamics model and tokenizer")
        self.tokenizer, self.lam, self.dynamics = tokenizer.eval(), lam.eval(), dynamics.eval()
        self.config = config or WorldConfig()
        if self.config.sampling is None:  # resolved here, so that every world holds the setting it plays at
            self.config = dataclasses.replace(self.config, sampling=play_sampling())
        self.backend.check_sampling(self.config.sampling)
        self.device = next(dynamics.parameters()).device
        self._cache: Any = None  # the backend's cache of the past
        self._decoder_cache: Any = None
        self._last: Tensor | None = None  # (B, *L): the frame the next one follows
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None  # a frame not yet committed: latents, actions, prev
        self._generator = torch.Generator(device=self.device)
        self.batch_size = 0
        self.frames_played = 0

    @classmethod
    def from_models(cls, tokenizer: nn.Module, lam: nn.Module, dynamics: nn.Module,
                    config: WorldConfig | None = None, device: str | torch.device | None = None) -> World:
        """Build a world from models in memory, moved to ``device`` (default: where dynamics is)."""
        if device is not None:
            tokenizer, lam, dynamics = tokenizer.to(device), lam.to(device), dynamics.to(device)
        return cls(tokenizer, lam, dynamics, config)

    @classmethod
    def load(cls, run_dir: str | Path | None = None, config: WorldConfig | None = None,
             device: str | torch.device = "cpu", precision: str = "fp32", threads: int | None = None) -> World:
        """Load ``run_dir/{tokenizer,lam,dynamics}/`` (each ``model.safetensors`` + ``config.json``,
        the layout `playworld train` writes; read by :func:`playworld.api.load`); without ``run_dir``, the
        CoinRun world shipped with the package (:data:`playworld.api.DEFAULT_RUN`). ``precision``:
        "fp32", "bf16" or "auto" for the dynamics model and decoder (:mod:`playworld.precision`).
        ``threads``: torch's CPU threads for this process, set here: None, playworld's default (all cores but
        one, or ``OMP_NUM_THREADS``; :mod:`playworld.threads`, so a step holds up beside other work); N, N;
        0, torch's setting left as it is."""
        from playworld.api import load, resolve_run
        from playworld.precision import cast_for_play, resolve_precision
        from playworld.threads import set_threads

        run_dir = resolve_run(run_dir)
        dtype = resolve_precision(precision, device)
        if threads != 0:
            set_threads(threads)

        run = load(run_dir, device)
        run.require("tokenizer", "lam", "dynamics")
        assert run.tokenizer is not None and run.lam is not None and run.dynamics is not None
        config = config or WorldConfig()
        if config.sampling is None:
            config = dataclasses.replace(config, sampling=world_sampling(run_dir))
        cast_for_play(run.tokenizer, run.dynamics, dtype)
        try:
            return cls(run.tokenizer, run.lam, run.dynamics, config)
        except (CheckpointError, ConfigError) as e:  # a backend that cannot play these models: name the run
            raise type(e)(f"{run_dir / 'dynamics'}: {e}") from e

    @property
    def dtype(self) -> torch.dtype:
        """The dynamics model's dtype: what a step computes in (fp32 or bf16, see :meth:`load`)."""
        return next(self.dynamics.parameters()).dtype

    @property
    def num_actions(self) -> int:
        return self.backend.num_actions

    def _prompt(self, prompt: Tensor, batch_size: int | None) -> Tensor:
        """uint8 (H, W, C) | (T0, H, W, C) | (B, T0, H, W, C) -> (B, T0', H, W, C), last frames kept."""
        if prompt.dtype != torch.uint8:
            raise TypeError(f"prompt frames must be uint8, got {prompt.dtype}")
        if prompt.dim() == 3:
            prompt = prompt[None, None]
        elif prompt.dim() == 4:
            prompt = prompt[None]
        elif prompt.dim() != 5:
            raise ValueError(f"prompt must be (H, W, C), (T0, H, W, C) or (B, T0, H, W, C), got {tuple(prompt.shape)}")
        if batch_size is not None:
            if prompt.shape[0] not in (1, batch_size):
                raise ValueError(f"batch_size {batch_size} given for a prompt batch of {prompt.shape[0]}")
            prompt = prompt.expand(batch_size, *prompt.shape[1:])
        return prompt[:, -self.config.context_frames:].to(self.device)

    @torch.inference_mode()
    def reset(self, prompt: Tensor, seed: int | None = None, batch_size: int | None = None) -> Tensor:
        """Start B worlds from prompt frames; returns the last prompt frame as the model sees it
        (through the tokenizer), uint8 (B, H, W, C). ``seed`` fixes every later sampled frame."""
        video = to_unit(self._prompt(prompt, batch_size))  # (B, T0, H, W, C) in [0, 1]
        b, t0 = video.shape[:2]
        latents = self.backend.encode(video)  # (B, T0, *L)
        actions = (self.lam.infer_actions(video) if t0 > 1  # type: ignore[operator]
                   else video.new_zeros(b, 0, dtype=torch.long))  # (B, T0-1)
        self._cache = self.backend.new_cache(self.config.context_frames)
        self._pending = None
        self.backend.commit(latents, self.backend.frame_actions(actions), self._cache, None)
        self._last = latents[:, -1]  # (B, *L): the frame the next one follows
        self._decoder_cache = self.tokenizer.new_cache(self.config.decoder_context)  # type: ignore[operator]
        frames = self.backend.decode(latents, self._decoder_cache)  # (B, T0, H, W, C)
        self._generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.batch_size, self.frames_played = b, 0
        return to_uint8(frames[:, -1])

    @torch.inference_mode()
    def snapshot(self) -> WorldState:
        """Copy the world's state (a deferred commit is written first); see :meth:`restore`."""
        if self._cache is None or self._last is None:
            raise RuntimeError("call World.reset(prompt) before snapshot()")
        World.commit_many([self])
        return WorldState(self._cache.clone(), self._decoder_cache.clone(), self._last.clone(),
                          self._generator.get_state(), self.batch_size, self.frames_played, self.dynamics)

    @torch.inference_mode()
    def restore(self, state: WorldState) -> None:
        """Return to a :meth:`snapshot` (which stays intact: restore it as often as needed)."""
        if state.dynamics is not self.dynamics:
            raise ValueError("this snapshot was taken from a world of another dynamics model")
        self._cache, self._decoder_cache = state.cache.clone(), state.decoder_cache.clone()
        self._last, self._pending = state.last.clone(), None
        self._generator.set_state(state.generator)
        self.batch_size, self.frames_played = state.batch_size, state.frames_played

    def _actions(self, actions: int | Tensor) -> Tensor:
        a = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        if a.dim() == 0:
            a = a.expand(self.batch_size)
        if a.shape != (self.batch_size,):
            raise ValueError(f"actions must be an int or ({self.batch_size},) for {self.batch_size} worlds, "
                             f"got shape {tuple(a.shape)}")
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= self.num_actions):
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {a.tolist()}")
        return a

    @torch.inference_mode()
    def step(self, actions: int | Tensor) -> Tensor:
        """Advance every world by one latent action (int for all, or (B,) long) -> uint8 (B, H, W, C)."""
        return World.step_many([self], [actions])[0]

    @property
    def uncommitted(self) -> bool:
        """Whether the last frame's keys/values still await :meth:`commit_many` (a deferred commit)."""
        return self._pending is not None

    @staticmethod
    @torch.inference_mode()
    def commit_many(worlds: Sequence[World]) -> int:
        """Write the deferred commits of ``worlds`` (those that have one) to their dynamics caches, in one
        batched pass; returns how many worlds committed. The worlds must share their dynamics model."""
        todo = [w for w in dict.fromkeys(worlds) if w._pending is not None]
        if not todo:
            return 0
        if any(w.dynamics is not todo[0].dynamics for w in todo):
            raise ValueError("worlds committed together must share their dynamics model")
        latents, frame_actions, prev = (torch.cat(parts) for parts in zip(*(w._pending for w in todo)))  # type: ignore[misc]
        todo[0].backend.commit(latents[:, None], frame_actions, [w._cache for w in todo], prev)
        for w in todo:
            w._pending = None
        return len(todo)

    @staticmethod
    @torch.inference_mode()
    def step_many(worlds: Sequence[World], actions: Sequence[int | Tensor],
                  defer_commit: bool = False) -> list[Tensor]:
        """Advance several worlds by one action each (as in :meth:`step`) in one batched pass through
        the dynamics model and the tokenizer's decoder: how a server serves many players at once.

        The worlds must share their models (the same objects) and sampling settings. Each keeps its
        own caches, frame positions and seed, so its frames are the ones its own ``step`` would give,
        up to float rounding in batched matrix products. Returns each world's frames (B_i, H, W, C).

        ``defer_commit``: return the frames before writing the new frame's keys/values to the dynamics
        caches (about a third of a step's time); :meth:`commit_many` writes them, or the next step
        does. The frames are the same either way; a server commits while the frame is on its way. A
        backend that writes them while sampling (``commits_in_sample``: a one_pass model) has nothing to defer.
        """
        if len(worlds) != len(actions):
            raise ValueError(f"{len(worlds)} worlds but {len(actions)} actions")
        if not worlds:
            return []
        first = worlds[0]
        for w in worlds:
            if w._cache is None:
                raise RuntimeError("call World.reset(prompt) before step()")
            if (w.dynamics, w.tokenizer, type(w.backend)) != (first.dynamics, first.tokenizer, type(first.backend)) \
                    or w.config.sampling != first.config.sampling:
                raise ValueError("worlds stepped together must share their models and sampling settings")
        if len({id(w) for w in worlds}) != len(worlds):
            raise ValueError("a world can take only one step at a time (it appears twice)")
        frame_actions = torch.cat([w._actions(a) for w, a in zip(worlds, actions)])[:, None]  # (B, 1)
        World.commit_many(worlds)
        prev = torch.cat([w._last for w in worlds])  # type: ignore[misc]  # (B, *L)
        caches = [w._cache for w in worlds]
        groups = [(w._generator, w.batch_size) for w in worlds]
        backend = first.backend
        latents = backend.sample(frame_actions, caches, prev, first.config.sampling, groups)  # (B, *L)
        if backend.commits_in_sample:  # the sampling pass wrote the frame: nothing to commit or defer
            defer_commit = False
        elif not defer_commit:
            backend.commit(latents[:, None], frame_actions, caches, prev)
        frames = backend.decode(latents[:, None], [x._decoder_cache for x in worlds])[:, 0]  # (B, H, W, C)
        out, start = [], 0
        for x in worlds:
            stop = start + x.batch_size
            if defer_commit:
                x._pending = (latents[start:stop], frame_actions[start:stop], prev[start:stop])
            x._last = latents[start:stop]
            x.frames_played += 1
            out.append(to_uint8(frames[start:stop]))
            start = stop
        return out

    def cache_frames(self) -> tuple[int, int]:
        """Frames held by the dynamics and tokenizer-decoder caches (both bounded by the config); a
        deferred commit is written first."""
        World.commit_many([self])
        dec_cache = getattr(self._decoder_cache, "decoder", None)
        dec = dec_cache.frames if dec_cache is not None else 0
        return (self._cache.frames if self._cache is not None else 0), dec
