"""Flow matching as a dynamics backend: the next frame's continuous latents by Euler integration of a
:class:`~playworld.models.flow.FlowDynamicsModel`'s velocity from Gaussian noise (rectified flow, Liu et al.
2023, arXiv 2209.03003) against its temporal KV cache. Latents are float (B, S, E) in the model's space
(:func:`~playworld.models.flow.latent_space`).

With N steps (the world's ``sampling.steps``: 1, 2, 4, 8 ...), t_k = k / N and

    x <- x + (1 / N) v(x, t_k | past, action),   x(0) = temperature * eps,  eps ~ N(0, I)

``eps`` is drawn from each world's own generator (so a seed fixes the frame, batched or alone);
``sampling.temperature`` scales it (0 starts every path at the noise mean; one Euler step gives the model's
conditional mean whatever the start). ``sampling.action_guidance`` g > 1 guides each velocity away from the
action-free one (classifier-free guidance; :meth:`FlowDynamicsModel.velocity`). MaskGIT's other settings
(top-k, copy penalty, schedule) do not apply.
With ``flow.snap`` the result is rounded to the nearest tokenizer code; those clean latents are what a world
commits and decodes.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from playworld.backends import register_backend
from playworld.backends.base import CachedModelBackend, Caches, RowGenerators
from playworld.models.flow import FlowDynamicsModel, check_flow_compatible, euler_sample, latent_space
from playworld.models.tokenizer import TokenizerCache


@register_backend
class FlowBackend(CachedModelBackend):
    name = "flow"
    model_type = FlowDynamicsModel
    compatible = staticmethod(check_flow_compatible)
    model: FlowDynamicsModel

    def encode(self, video: Tensor) -> Tensor:
        """(B, T, H, W, C) in [0, 1] -> the tokenizer's latents (B, T, S, E) in the model's space."""
        latents = latent_space(self.tokenizer, self.tokenizer._latents(video))  # type: ignore[operator]
        if latents.shape[2] != self.grid[0] * self.grid[1]:
            raise ValueError(f"tokenizer makes {latents.shape[2]} tokens per frame, the dynamics grid {self.grid}")
        return latents

    def snap(self, latents: Tensor) -> Tensor:
        """Latents (..., S, E) -> the nearest codes' token ids (..., S) long."""
        return self.tokenizer._quantize(latents.float()).indices  # type: ignore[operator]

    def decode(self, latents: Tensor, decoder_caches: Any) -> Tensor:
        """Latents (B, T, S, E) -> frames (B, T, H, W, C): their nearest codes' tokens through the cached decoder
        (``flow.snap``), or the latents themselves (normalised as the quantizer would) without it."""
        tok = self.tokenizer
        if self.model.config.flow.snap:
            h, w = self.grid
            indices = rearrange(self.snap(latents), "b t (h w) -> b t h w", h=h, w=w)
            return tok.decode_step(indices, decoder_caches)  # type: ignore[operator]
        codes = latents.float()
        if tok.config.l2_codes:  # type: ignore[union-attr]
            codes = torch.nn.functional.normalize(codes, dim=-1)
        caches = [decoder_caches] if isinstance(decoder_caches, TokenizerCache) else list(decoder_caches)
        decoder = caches[0].decoder if len(caches) == 1 else [c.decoder for c in caches]
        return tok._pixels(codes, decoder, True).clamp(0.0, 1.0)  # type: ignore[operator]

    def sample(self, frame_actions: Tensor, caches: Caches, prev: Tensor, sampling: Any,
               generators: RowGenerators) -> Tensor:
        steps, temperature = int(sampling.steps), float(sampling.temperature)
        guidance = float(sampling.action_guidance)
        shape = tuple(prev.shape[1:])  # (S, E)
        noise = torch.cat([torch.randn((rows, *shape), generator=g, device=prev.device) for g, rows in generators])

        def velocity(x: Tensor, t: float) -> Tensor:  # (B, S, E) at level t -> (B, S, E)
            levels = x.new_full((x.shape[0], 1), t)
            return self.model.velocity(x[:, None], levels, frame_actions, cache=caches, prev=prev,
                                       action_guidance=guidance)[:, 0]

        x = euler_sample(velocity, temperature * noise, steps)  # (B, S, E)
        if self.model.config.flow.snap:
            codes = self.tokenizer.quantizer.lookup(self.snap(x))  # type: ignore[union-attr]  # (B, S, E)
            x = latent_space(self.tokenizer, codes)
        return x.to(prev.dtype)
