"""Spatio-temporal transformer blocks (ST-transformer of Genie, arXiv 2402.15391, sec. 2.1).

Each block attends spatially within a frame, then temporally across frames at the same spatial
position with a causal mask, then applies an MLP. A model built from these blocks is causal in
time: its output for frame t never depends on frames after t (tests/test_blocks.py checks it).

Temporal attention uses rotary position embeddings (RoPE) so that cached keys keep their meaning when
the context window slides during play: attention depends only on the distance between frames.

Shapes: B batch, T frames, S spatial tokens per frame, D model width, H heads, K head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def rope_angles(positions: Tensor, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables for rotary embeddings.

    positions: (T,) integer frame positions (absolute; only differences matter to attention).
    Returns cos, sin of shape (T, head_dim // 2), computed in float64 so that large positions
    (long play sessions) keep their precision, then cast to float32.
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, K/2)
    return ang.cos().float(), ang.sin().float()


def grid_rope_angles(grid: tuple[int, int], head_dim: int, extra: int = 0) -> tuple[Tensor, Tensor]:
    """2D axial rotary tables for a row-major ``grid`` of (rows, cols) tokens (spatial attention).

    Half of each head's rotary pairs turn with the row, half with the column, so attention scores
    depend on relative offsets (dy, dx): a shift by the same amount anywhere in the frame looks the
    same, which is what motion is. ``extra`` trailing tokens (e.g. a summary token) are not rotated.
    Returns cos, sin of shape (rows*cols + extra, head_dim // 2); head_dim must be divisible by 4.
    """
    if head_dim % 4:
        raise ValueError(f"2D rotary embeddings need a head width divisible by 4, got {head_dim}")
    rows, cols = grid
    r = torch.arange(rows).repeat_interleave(cols)  # (S,)
    c = torch.arange(cols).repeat(rows)  # (S,)
    cos_r, sin_r = rope_angles(r, head_dim // 2, base=100.0)
    cos_c, sin_c = rope_angles(c, head_dim // 2, base=100.0)
    cos, sin = torch.cat([cos_r, cos_c], dim=-1), torch.cat([sin_r, sin_c], dim=-1)  # (S, K/2)
    if extra:
        cos = torch.cat([cos, cos.new_ones(extra, cos.shape[1])])
        sin = torch.cat([sin, sin.new_zeros(extra, sin.shape[1])])
    return cos, sin


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs of channels. x: (..., T, K) with K even; cos, sin: (T, K/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


@dataclass
class LayerCache:
    """Temporal keys/values of past frames for one block: k, v of shape (B*S, H, t, K)."""

    k: Tensor | None = None
    v: Tensor | None = None


@dataclass
class TemporalKVCache:
    """Per-block temporal key/value cache for frame-by-frame generation.

    ``max_frames`` bounds the cache (a sliding context window): the cost of a step and the memory
    held never grow with how long one has played. ``pos`` is the absolute index of the next frame.
    Cached k, v rows are ordered (b s), S = ``num_spatial``.
    """

    num_layers: int
    max_frames: int
    num_spatial: int
    layers: list[LayerCache] = field(default_factory=list)
    pos: int = 0

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not self.layers:
            self.layers = [LayerCache() for _ in range(self.num_layers)]

    @property
    def frames(self) -> int:
        """Number of frames currently held (<= max_frames)."""
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]

    def reset(self) -> None:
        self.layers = [LayerCache() for _ in range(self.num_layers)]
        self.pos = 0

    def select(self, index: Tensor) -> None:
        """Keep only batch rows ``index`` (B',) of every layer, e.g. to drop finished sessions."""
        for layer in self.layers:
            if layer.k is None or layer.v is None:
                continue
            k = rearrange(layer.k, "(b s) h t k -> b s h t k", s=self.num_spatial)[index]
            v = rearrange(layer.v, "(b s) h t k -> b s h t k", s=self.num_spatial)[index]
            layer.k = rearrange(k, "b s h t k -> (b s) h t k")
            layer.v = rearrange(v, "b s h t k -> (b s) h t k")


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis with a fused qkv projection."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, rope: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        if rope and self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {self.head_dim}")
        self.rope = rope
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: LayerCache | None = None,
        commit: bool = False,
        max_frames: int | None = None,
    ) -> Tensor:
        """x: (N, L, D) -> (N, L, D).

        With ``cache`` (temporal attention at play time), queries attend to the cached keys of past
        frames plus their own; with ``commit`` the new keys/values are appended (trimmed to the
        last ``max_frames``). ``causal`` masks attention to later positions within x.
        """
        q, k, v = rearrange(self.qkv(x), "n l (three h k) -> three n h l k", three=3, h=self.heads)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            past_k, past_v = cache.k, cache.v
            if past_k is not None and max_frames is not None:
                keep = max(max_frames - k.shape[2], 0)  # a frame sees at most max_frames frames, itself included
                start = max(past_k.shape[2] - keep, 0)
                past_k, past_v = past_k[:, :, start:], past_v[:, :, start:]
                if keep == 0:
                    past_k = past_v = None
            if commit:
                new_k = k if past_k is None else torch.cat([past_k, k], dim=2)
                new_v = v if past_v is None else torch.cat([past_v, v], dim=2)
                if max_frames is not None and new_k.shape[2] > max_frames:
                    new_k, new_v = new_k[:, :, -max_frames:], new_v[:, :, -max_frames:]
                cache.k, cache.v = new_k, new_v
            if past_k is not None:
                assert past_v is not None
                n_past, n_new = past_k.shape[2], k.shape[2]
                k = torch.cat([past_k, k], dim=2)
                v = torch.cat([past_v, v], dim=2)
                if causal and n_new > 1:
                    # (L_new, L_past + L_new): every past frame visible, causal among the new ones
                    mask = torch.ones(n_new, n_past + n_new, dtype=torch.bool, device=x.device).tril(n_past)
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                else:
                    out = F.scaled_dot_product_attention(q, k, v)
                return self.proj(rearrange(out, "n h l k -> n l (h k)"))
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and x.shape[1] > 1, dropout_p=drop)
        return self.proj(rearrange(out, "n h l k -> n l (h k)"))  # (N, L, D)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class STBlock(nn.Module):
    """Spatial attention -> causal temporal attention -> MLP, each pre-norm with a residual.

    forward(x: (B, T, S, D)) -> (B, T, S, D).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = Attention(dim, heads, dropout, rope=True)
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = Attention(dim, heads, dropout, rope=True)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache: LayerCache | None = None,
                commit: bool = False, max_frames: int | None = None,
                rope_s: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, t, s, d = x.shape
        h = rearrange(self.norm_s(x), "b t s d -> (b t) s d")
        x = x + rearrange(self.attn_s(h, rope=rope_s), "(b t) s d -> b t s d", b=b)
        h = rearrange(self.norm_t(x), "b t s d -> (b s) t d")
        h = self.attn_t(h, causal=self.causal, rope=rope, cache=cache, commit=commit, max_frames=max_frames)
        x = x + rearrange(h, "(b s) t d -> b t s d", b=b)
        return x + self.mlp(self.norm_m(x))


class STTransformer(nn.Module):
    """A stack of ST blocks with a learned spatial position embedding and a final norm.

    forward(x: (B, T, S, D), cache=None, commit=False) -> (B, T, S, D)

    Without a cache, frames are at temporal positions 0..T-1. With a :class:`TemporalKVCache`, x
    holds the next T frames after those cached (usually T = 1): they are placed at absolute
    positions ``cache.pos ..``, attend to the cached frames, and, if ``commit``, are appended to the
    cache (which then advances ``cache.pos``). A non-committed call is how MaskGIT refines a frame
    several times against the same past.
    """

    def __init__(self, dim: int, depth: int, heads: int, num_spatial: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, causal: bool = True, grad_checkpoint: bool = False,
                 spatial_grid: tuple[int, int] | None = None, learned_pos: bool = True) -> None:
        super().__init__()
        self.dim, self.depth, self.heads, self.num_spatial = dim, depth, heads, num_spatial
        self.spatial_grid = tuple(spatial_grid) if spatial_grid is not None else None
        if self.spatial_grid is not None:
            extra = num_spatial - self.spatial_grid[0] * self.spatial_grid[1]
            if extra < 0:
                raise ValueError(f"spatial grid {self.spatial_grid} has more cells than num_spatial {num_spatial}")
            if (dim // heads) % 4:
                raise ValueError(f"2D spatial RoPE needs dim / heads divisible by 4, got {dim}/{heads}")
        if self.spatial_grid is not None:  # fixed tables, built once (not saved: derived from the config)
            cos, sin = grid_rope_angles(self.spatial_grid, dim // heads, num_spatial - self.spatial_grid[0] *
                                        self.spatial_grid[1])
            self.register_buffer("rope_s_cos", cos, persistent=False)
            self.register_buffer("rope_s_sin", sin, persistent=False)
        self.pos_s = nn.Parameter(torch.zeros(1, 1, num_spatial, dim)) if learned_pos else None
        if self.pos_s is not None:
            nn.init.trunc_normal_(self.pos_s, std=0.02)
        self.blocks = nn.ModuleList(STBlock(dim, heads, mlp_ratio, dropout, causal) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.grad_checkpoint = grad_checkpoint

    def new_cache(self, max_frames: int) -> TemporalKVCache:
        return TemporalKVCache(num_layers=self.depth, max_frames=max_frames, num_spatial=self.num_spatial)

    def forward(self, x: Tensor, cache: TemporalKVCache | None = None, commit: bool = False) -> Tensor:
        b, t, s, d = x.shape
        if s != self.num_spatial or d != self.dim:
            raise ValueError(f"STTransformer expects (B, T, {self.num_spatial}, {self.dim}), got {tuple(x.shape)}")
        start = cache.pos if cache is not None else 0
        rope = rope_angles(torch.arange(start, start + t, device=x.device), self.dim // self.heads)
        rope_s = (self.rope_s_cos, self.rope_s_sin) if self.spatial_grid is not None else None
        if self.pos_s is not None:
            x = x + self.pos_s
        for i, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, rope, cache.layers[i], commit, cache.max_frames, rope_s)
            elif self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, None, False, None, rope_s, use_reentrant=False)
            else:
                x = block(x, rope, rope_s=rope_s)
        if cache is not None and commit:
            cache.pos += t
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """GPT-style init: normal(0, 0.02) linears/embeddings, zero biases; residual projections scaled."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02
            if name.endswith(("proj", "fc2")):
                depth = max(1, sum(1 for _ in module.modules() if isinstance(_, STBlock)))
                std = 0.02 / math.sqrt(2 * depth)
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
