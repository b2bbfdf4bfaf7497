"""MaskGIT as a dynamics backend: the next frame's tokens by iterative masked decoding
(:func:`playworld.maskgit.maskgit_decode`) with a :class:`~playworld.models.dynamics.DynamicsModel`
against its temporal KV cache (Genie, arXiv 2402.15391, sec. 2.3). Latents are token ids (B, S)."""

from __future__ import annotations

from typing import Any

from einops import rearrange
from torch import Tensor

from playworld.backends.base import CachedModelBackend, Caches, RowGenerators
from playworld.maskgit import SamplingConfig, maskgit_decode
from playworld.models.dynamics import DynamicsModel, check_compatible


class MaskGITBackend(CachedModelBackend):
    name = "maskgit"
    model_type = DynamicsModel
    compatible = staticmethod(check_compatible)
    model: DynamicsModel

    def encode(self, video: Tensor) -> Tensor:
        indices = self.tokenizer.encode(video).indices  # type: ignore[operator]  # (B, T, h, w)
        if tuple(indices.shape[2:]) != self.grid:
            raise ValueError(f"tokenizer grid {tuple(indices.shape[2:])} != dynamics grid {self.grid}")
        return rearrange(indices, "b t h w -> b t (h w)")

    def decode(self, latents: Tensor, decoder_caches: Any) -> Tensor:
        h, w = self.grid
        indices = rearrange(latents, "b t (h w) -> b t h w", h=h, w=w)
        return self.tokenizer.decode_step(indices, decoder_caches)  # type: ignore[operator]

    def check_sampling(self, sampling: Any) -> None:
        if isinstance(sampling, SamplingConfig):
            self.model.check_one_pass_sampling(sampling)

    @property
    def commits_in_sample(self) -> bool:
        """A ``one_pass`` model's frame state is that of the pass predicting it: sampling writes it."""
        return bool(self.model.config.one_pass)

    def sample(self, frame_actions: Tensor, caches: Caches, prev: Tensor, sampling: Any,
               generators: RowGenerators) -> Tensor:
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"the maskgit backend samples with a SamplingConfig, got {type(sampling).__name__}")
        model = self.model
        model.check_one_pass_sampling(sampling)
        commit = self.commits_in_sample

        def logits_fn(tokens: Tensor) -> Tensor:  # (B, S) -> (B, S, V)
            return model.step_logits(tokens, frame_actions, caches, prev, sampling.action_guidance, commit=commit)

        return maskgit_decode(logits_fn, prev.shape[0], model.config.num_tokens, model.mask_id, sampling,
                              generators, prev.device, prev=prev)  # (B, S)
