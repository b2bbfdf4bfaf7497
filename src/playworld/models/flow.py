"""Flow-matching dynamics over the tokenizer's continuous latents (conditional flow matching, Lipman et al.
2023, arXiv 2210.02747; rectified flow, Liu et al. 2023, arXiv 2209.03003), trained in the style of diffusion
forcing (Chen et al. 2024, arXiv 2407.01392) with noise on the context (GameNGen, arXiv 2408.14837; DIAMOND,
arXiv 2405.12399).

Each frame's latents x1 (S, E) follow the straight path from a Gaussian draw x0 ~ N(0, I):

    x_t = (1 - t) x0 + t x1,     d x_t / dt = x1 - x0         (t = 0 noise, t = 1 clean)

and the model v(x_t, t | past, action) regresses that velocity, ``E ||v - (x1 - x0)||^2`` (or, with
``flow.predict = "x1"``, the clean latents, ``E ||x1_hat - x1||^2``, with v = (x1_hat - x_t) / (1 - t)). Each frame of a
training clip has its own level t (diffusion forcing), so the causal ST-transformer learns from noisy past
frames: a share ``flow.context_share`` of the frames are context-like, lightly noised (sigma = 1 - t ~ U[0,
``context_noise_max``]), the others targets (t ~ U[0, 1]). At play the next frame is integrated from x0 by
Euler steps against the cached past (:mod:`playworld.backends.flow`).

Latents: the tokenizer's pre-quantization latents in the space its quantizer measures distances in: for a VQ
tokenizer with cosine codes (``l2_codes``, the default), the l2-normalised latent times sqrt(E) (unit RMS per
coordinate, the scale of x0). Predicted latents are decoded by rounding them to the nearest code and decoding
those tokens (``flow.snap``): the decoder was trained on codes only, and committing codes keeps a rollout on
the data the model saw, the error correction MaskGIT gets from sampling tokens. FSQ tokenizers are not
supported yet.

Conditioning, as :class:`~playworld.models.dynamics.DynamicsModel`: each token embeds its noisy latent, the
latent action that leads to its frame, the frame's noise level (sinusoidal features -> MLP) and the latent at
its place in the previous frame (``prev_frame_input``; the previous frame as the model sees it, noisy in
training, clean at play).

Shapes: B batch, T frames, S = h*w tokens per frame, E latent width, D model width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from playworld.errors import ConfigError
from playworld.models.base import LossOutput
from playworld.models.dynamics import (
    DynamicsConfig,
    FrozenModelsTrainer,
    check_compatible,
    drop_actions,
    frame_actions,
    guidance_actions,
    guide,
    repeat_caches,
)
from playworld.nn.blocks import STTransformer, TemporalKVCache, init_weights


def time_features(t: Tensor, dim: int) -> Tensor:
    """Noise levels t (...) in [0, 1] -> sinusoidal features (..., dim) (Transformer positions of 1000 t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[..., None] * freqs  # (..., half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def path_sample(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The rectified-flow path at levels t (broadcast against x0, x1): (x_t, dx_t/dt) =
    ((1 - t) x0 + t x1, x1 - x0)."""
    return (1.0 - t) * x0 + t * x1, x1 - x0


def euler_sample(velocity: Callable[[Tensor, float], Tensor], x0: Tensor, steps: int) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 (x0, any shape) to t = 1 in ``steps`` Euler steps,
    t_k = k / steps: x <- x + velocity(x, t_k) / steps."""
    if steps < 1:
        raise ValueError(f"Euler sampling needs steps >= 1, got {steps}")
    x = x0
    for k in range(steps):
        x = x + velocity(x, k / steps) / steps
    return x


class FlowDynamicsModel(nn.Module):
    """forward(x (B, T, S, E), levels (B, T), frame_actions (B, T), cache=None, commit=False, prev=None)
    -> velocity (B, T, S, E).

    ``levels[:, t]`` is frame t's noise level (1 = clean); ``prev`` (B, S, E) the frame before ``x[:, 0]``
    (with a cache, the last committed one), None for none.
    """

    keep_fp32 = ("head.",)

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        if config.backend != "flow":
            raise ConfigError(f"FlowDynamicsModel needs dynamics.backend 'flow', got {config.backend!r}")
        self.config = config
        c, e = config, config.flow.latent_dim
        self.no_action_id = c.num_actions
        self.in_proj = nn.Linear(e, c.dim)
        self.prev_proj = nn.Linear(e, c.dim) if c.prev_frame_input else None
        self.action_emb = nn.Embedding(c.num_actions + 1, c.dim)  # + "no action"
        self.time_mlp = nn.Sequential(nn.Linear(64, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        grid = (c.token_height, c.token_width) if c.spatial_rope else None
        self.transformer = STTransformer(c.dim, c.depth, c.heads, c.num_tokens, c.mlp_ratio, c.dropout, causal=True,
                                         grad_checkpoint=c.grad_checkpoint, spatial_grid=grid,
                                         learned_pos=not c.spatial_rope)
        self.head = nn.Linear(c.dim, e)
        init_weights(self)

    def new_cache(self, max_frames: int) -> TemporalKVCache:
        return self.transformer.new_cache(max_frames)

    def frame_actions(self, actions: Tensor) -> Tensor:
        """(B, T-1) transition actions -> (B, T) per-frame conditioning, frame 1 = no action."""
        return frame_actions(actions, self.no_action_id)

    def embed(self, x: Tensor, levels: Tensor, frame_actions: Tensor, prev: Tensor | None = None) -> Tensor:
        """x (B, T, S, E), levels (B, T), frame_actions (B, T), prev (B, S, E) or None -> (B, T, S, D)."""
        c = self.config
        if x.dim() != 4 or x.shape[2:] != (c.num_tokens, c.flow.latent_dim):
            raise ValueError(f"flow dynamics expects latents (B, T, {c.num_tokens}, {c.flow.latent_dim}), "
                             f"got {tuple(x.shape)}")
        if levels.shape != x.shape[:2] or frame_actions.shape != x.shape[:2]:
            raise ValueError(f"levels and frame_actions must be {tuple(x.shape[:2])}, got {tuple(levels.shape)} "
                             f"and {tuple(frame_actions.shape)}")
        dtype = self.in_proj.weight.dtype
        cond = self.action_emb(frame_actions) + self.time_mlp(time_features(levels, 64).to(dtype))  # (B, T, D)
        h = self.in_proj(x.to(dtype)) + cond[:, :, None, :]
        if self.prev_proj is not None:
            if prev is None:  # no frame before: zeros, the mean of the noise a level-0 frame holds
                prev = x.new_zeros(x.shape[0], *x.shape[2:])
            elif prev.shape != (x.shape[0], *x.shape[2:]):
                raise ValueError(f"prev must be {(x.shape[0], *x.shape[2:])}, got {tuple(prev.shape)}")
            h = h + self.prev_proj(torch.cat([prev[:, None], x[:, :-1]], dim=1).to(dtype))
        return h

    def forward(self, x: Tensor, levels: Tensor, frame_actions: Tensor,
                cache: TemporalKVCache | Sequence[TemporalKVCache] | None = None,
                commit: bool = False, prev: Tensor | None = None) -> Tensor:
        h = self.embed(x, levels, frame_actions, prev)  # (B, T, S, D)
        return self.head(self.transformer(h, cache=cache, commit=commit)).float()  # (B, T, S, E)

    def velocity(self, x: Tensor, levels: Tensor, frame_actions: Tensor,
                 cache: TemporalKVCache | Sequence[TemporalKVCache] | None = None, prev: Tensor | None = None,
                 action_guidance: float = 1.0) -> Tensor:
        """The velocity (B, T, S, E) at x (B, T, S, E), levels (B, T) < 1: the output itself, or with
        ``flow.predict = "x1"`` (x1_hat - x_t) / (1 - t). Never commits.

        With ``action_guidance`` g > 1 (``SamplingConfig.action_guidance``) the output under the pressed
        action is moved away from the action-free one, out_a + (g - 1) (out_a - out_free): classifier-free
        guidance of the velocity (or of x1_hat, the same thing, as the velocity is affine in it). out_free is
        the no-action id's output for a model trained with ``action_dropout``, else the mean over the |A|
        latent actions, all in one pass of 2 (or |A| + 1) copies of the batch."""
        if action_guidance == 1.0:
            out = self(x, levels, frame_actions, cache=cache, commit=False, prev=prev)
        else:  # one pass over the pressed and the action-free copies of the batch
            asked = guidance_actions(frame_actions, self)  # (n, B, T)
            n = len(asked)
            both = self(x.repeat(n, 1, 1, 1), levels.repeat(n, 1), rearrange(asked, "n b t -> (n b) t"),
                        cache=None if cache is None else repeat_caches(cache, n), commit=False,
                        prev=None if prev is None else prev.repeat(n, 1, 1))
            out = guide(both, n, action_guidance)
        if self.config.flow.predict == "x1":
            return (out - x.float()) / (1.0 - levels.float()).clamp_min(1e-3)[:, :, None, None]
        return out

    def commit(self, x: Tensor, frame_actions: Tensor, cache: TemporalKVCache | Sequence[TemporalKVCache],
               prev: Tensor | None = None) -> None:
        """Append known clean frames x (B, T, S, E) to ``cache``, told they carry ``flow.context_noise``."""
        levels = x.new_full(x.shape[:2], 1.0 - self.config.flow.context_noise, dtype=torch.float32)
        self.transformer.commit_frames(self.embed(x, levels, frame_actions, prev), cache)

    def noise_levels(self, b: int, t: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Independent levels (B, T) per frame: context-like (1 - U[0, context_noise_max]) with probability
        ``context_share``, else target-like (U[0, 1])."""
        f = self.config.flow
        context = torch.rand(b, t, device=device, generator=generator) < f.context_share
        u = torch.rand(b, t, device=device, generator=generator)
        return torch.where(context, 1.0 - f.context_noise_max * u, u)

    def compute_loss_latents(self, latents: Tensor, actions: Tensor, generator: torch.Generator | None = None
                             ) -> LossOutput:
        """latents (B, T, S, E) clean, actions (B, T-1) -> the flow-matching loss.

        metrics: ``flow_mse`` (the loss: velocity MSE, or clean-latent MSE with ``predict = "x1"``), ``x1_mse`` (MSE of the implied clean estimate
        x_t + (1 - t) v on target-like frames, t < 1 - context_noise_max), ``mean_level``."""
        b, t = latents.shape[:2]
        if latents.dim() != 4 or t < 2:
            raise ValueError(f"latents must be (B, T>=2, S, E), got {tuple(latents.shape)}")
        if actions.shape != (b, t - 1):
            raise ValueError(f"actions must be (B, T-1) = {(b, t - 1)}, got {tuple(actions.shape)}")
        x1 = latents.float()
        x0 = torch.randn(x1.shape, device=x1.device, generator=generator)
        levels = self.noise_levels(b, t, x1.device, generator)  # (B, T)
        lv = levels[:, :, None, None]
        xt, target_v = path_sample(x0, x1, lv)
        out = self(xt, levels, drop_actions(self.frame_actions(actions), self))  # (B, T, S, E)
        x1_pred = self.config.flow.predict == "x1"
        err = (out - (x1 if x1_pred else target_v)).pow(2).mean(dim=(2, 3))  # (B, T)
        first = 0 if self.config.flow.loss_first_frame else 1
        loss = err[:, first:].mean()
        with torch.no_grad():
            est = out if x1_pred else xt + (1.0 - lv) * out
            target = (levels < 1.0 - self.config.flow.context_noise_max)[:, first:]
            x1_err = (est - x1).pow(2).mean(dim=(2, 3))[:, first:]
            x1_mse = x1_err[target].mean() if target.any() else x1_err.new_zeros(())
        return LossOutput(loss, {"flow_mse": loss.detach(), "x1_mse": x1_mse, "mean_level": levels.mean()})


def latent_space(tokenizer: nn.Module, latents: Tensor) -> Tensor:
    """A VQ tokenizer's pre-quantization latents (..., E) -> the flow model's space: l2-normalised and
    scaled by sqrt(E) with cosine codes (what the quantizer compares, at unit RMS), else as they are."""
    check_flow_tokenizer(tokenizer)
    if tokenizer.config.l2_codes:  # type: ignore[union-attr]
        return F.normalize(latents.float(), dim=-1) * math.sqrt(latents.shape[-1])
    return latents.float()


def check_flow_tokenizer(tokenizer: nn.Module) -> None:
    """Raise ConfigError unless the tokenizer is one the flow backend reads latents from (VQ)."""
    config = getattr(tokenizer, "config", None)
    if getattr(config, "quantizer", None) != "vq":
        raise ConfigError(f"the flow backend needs a VQ tokenizer; got quantizer "
                          f"{getattr(config, 'quantizer', None)!r} (FSQ is not supported yet)")


def check_flow_compatible(config: DynamicsConfig, tokenizer: nn.Module, lam: nn.Module) -> None:
    """As :func:`~playworld.models.dynamics.check_compatible`, plus the latent width and quantizer kind."""
    check_compatible(config, tokenizer, lam)
    check_flow_tokenizer(tokenizer)
    width = tokenizer.quantizer.dim  # type: ignore[union-attr]
    if width != config.flow.latent_dim:
        raise ConfigError(f"dynamics.flow.latent_dim {config.flow.latent_dim} != tokenizer code width {width}")


class FlowDynamicsTrainer(FrozenModelsTrainer):
    """Trains a :class:`FlowDynamicsModel` from pixels with a frozen tokenizer and a frozen LAM (as
    :class:`~playworld.models.dynamics.DynamicsTrainer`; the token cache is not used: the targets are
    continuous latents, encoded on every batch)."""

    dynamics: FlowDynamicsModel

    def __init__(self, config: DynamicsConfig, *, tokenizer: nn.Module, lam: nn.Module) -> None:
        check_flow_compatible(config, tokenizer, lam)
        super().__init__(config, tokenizer=tokenizer, lam=lam, dynamics=FlowDynamicsModel(config))

    @torch.no_grad()
    def latents_and_actions(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, H, W, C) in [0, 1] -> latents (B, T, S, E) float, actions (B, T-1) long."""
        latents = latent_space(self.tokenizer, self.tokenizer._latents(video))  # type: ignore[operator]
        return latents, self.lam.infer_actions(video)  # type: ignore[operator]

    def compute_loss(self, batch: Tensor) -> LossOutput:
        """batch: video (B, T, H, W, C) float in [0, 1]."""
        if not isinstance(batch, Tensor):
            raise TypeError("the flow dynamics trainer reads pixel clips (data.precompute is MaskGIT's token cache)")
        latents, actions = self.latents_and_actions(batch)
        return self.dynamics.compute_loss_latents(latents, actions)
