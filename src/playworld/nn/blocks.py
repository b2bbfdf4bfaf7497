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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from playworld.nn.kvcache import CachedRows, TemporalKVCache
from playworld.nn.rope import apply_rope, grid_rope_angles, rope_angles


def _math(t: Tensor) -> Tensor:
    """Activations of a model cast to bf16/fp16 for play (:mod:`playworld.precision`) -> fp32, so that
    rotary embeddings and attention scores keep fp32 precision; otherwise (fp32, or autocast, which
    chooses for itself) unchanged."""
    if t.dtype in (torch.bfloat16, torch.float16) and not torch.is_autocast_enabled(t.device.type):
        return t.float()
    return t


def _back(t: Tensor, like: Tensor) -> Tensor:
    """An attention output back to the residual stream's dtype (a no-op but for a model cast for play)."""
    return t if t.dtype == like.dtype or torch.is_autocast_enabled(t.device.type) else t.to(like.dtype)


# largest batch handed to one scaled_dot_product_attention call (CUDA grids allow 65,535 on their y/z axes)
SDPA_MAX_BATCH = 32_768


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
        cached: Sequence[CachedRows] | None = None,
        layer: int = 0,
        kv_only: bool = False,
    ) -> Tensor:
        """x: (N, L, D) -> (N, L, D).

        With ``cached`` (temporal attention at play time: block ``layer`` of one or more caches, each
        owning a range of rows), queries attend to their cache's past frames plus the new ones, whose
        keys/values are written to the ring (and kept if the step commits). ``causal`` masks attention
        to later positions within x. ``kv_only`` (with a cache) only writes the new keys/values and
        returns x unchanged: a commit's last block needs nothing else.
        """
        if cached is not None:
            return self._cached(x, cached, layer, kv_only)
        drop = self.dropout if self.training else 0.0
        if x.shape[1] == 1 and drop == 0.0:
            # one position attends to itself alone with weight 1: the output is its value, exactly (the
            # LAM's per-action head runs temporal attention over single frames for a huge N)
            dim = x.shape[-1]
            return self.proj(F.linear(x, self.qkv.weight[2 * dim:], self.qkv.bias[2 * dim:]))  # (N, 1, D)
        q, k, v = rearrange(_math(self.qkv(x)), "n l (three h k) -> three n h l k", three=3, h=self.heads)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        causal = causal and x.shape[1] > 1
        # CUDA's fused attention kernels put the batch on a grid axis of at most 65,535 blocks ("invalid
        # argument" beyond it): a larger N is attended in slices
        outs = [F.scaled_dot_product_attention(q[i : i + SDPA_MAX_BATCH], k[i : i + SDPA_MAX_BATCH],
                                               v[i : i + SDPA_MAX_BATCH], is_causal=causal, dropout_p=drop)
                for i in range(0, q.shape[0], SDPA_MAX_BATCH)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (N, h, L, k)
        return self.proj(_back(rearrange(out, "n h l k -> n l (h k)"), x))  # (N, L, D)

    def _cached(self, x: Tensor, cached: Sequence[CachedRows], layer: int, kv_only: bool) -> Tensor:
        q: Tensor | None
        if kv_only:
            dim = x.shape[-1]
            k, v = rearrange(_math(F.linear(x, self.qkv.weight[dim:], self.qkv.bias[dim:])),
                             "n l (two h k) -> two n h l k", two=2, h=self.heads)
            q = None
        else:
            q, k, v = rearrange(_math(self.qkv(x)), "n l (three h k) -> three n h l k", three=3, h=self.heads)
        outs = []
        for part in cached:  # projections above ran batched; each cache attends over its own past
            rows = slice(part.start * part.cache.num_spatial, part.stop * part.cache.num_spatial)
            cos, sin = part.step.rope
            q_rows = None if q is None else apply_rope(q[rows], cos, sin)
            out = part.cache.attend(layer, q_rows, apply_rope(k[rows], cos, sin), v[rows], part.step)
            if out is not None:
                outs.append(out)
        if kv_only:
            return x
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (N, H, L, K)
        return self.proj(_back(rearrange(out, "n h l k -> n l (h k)"), x))


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

    forward(x: (B, T, S, D), ..., cond: (B, T, D) or None) -> (B, T, S, D).

    ``modulated``: each frame's conditioning vector ``cond`` scales and shifts the three pre-norms and
    gates the three residual branches (adaLN, as DiT conditions on its class: Peebles & Xie 2023,
    arXiv 2212.09748), through one linear map that starts at zero, so a modulated block begins as the
    plain one (DiT zeroes the gates instead; starting from the identity lets a trained model be fine-tuned
    with the modulation added).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = True, modulated: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = Attention(dim, heads, dropout, rope=True)
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = Attention(dim, heads, dropout, rope=True)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        # cond (B, T, D) -> shift, scale and gate of each of the three sub-layers, 9 x (B, T, D)
        self.modulation = nn.Linear(dim, 9 * dim) if modulated else None

    def zero_modulation(self) -> None:
        """Start the modulation at the identity (called after the model's weight init)."""
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cached: Sequence[CachedRows] | None = None,
                layer: int = 0, rope_s: tuple[Tensor, Tensor] | None = None, kv_only: bool = False,
                cond: Tensor | None = None) -> Tensor:
        """``kv_only``: write this block's temporal keys/values to the cache and stop (returns x
        after spatial attention): what committing a frame needs from the last block."""
        b, t, s, d = x.shape
        if self.modulation is not None:
            if cond is None or cond.shape != (b, t, d):
                raise ValueError(f"a modulated ST block needs cond (B, T, D) = {(b, t, d)}, "
                                 f"got {None if cond is None else tuple(cond.shape)}")
            mods = rearrange(self.modulation(F.silu(cond)), "b t (n d) -> n b t 1 d", n=9)
        else:
            mods = None

        def pre(norm: nn.LayerNorm, i: int) -> Tensor:  # (B, T, S, D), modulated
            h = norm(x)
            return h if mods is None else h * (1 + mods[3 * i + 1]) + mods[3 * i]

        def gate(h: Tensor, i: int) -> Tensor:
            return h if mods is None else h * (1 + mods[3 * i + 2])

        h = rearrange(pre(self.norm_s, 0), "b t s d -> (b t) s d")
        x = x + gate(rearrange(self.attn_s(h, rope=rope_s), "(b t) s d -> b t s d", b=b), 0)
        h = rearrange(pre(self.norm_t, 1), "b t s d -> (b s) t d")
        h = self.attn_t(h, causal=self.causal, rope=rope, cached=cached, layer=layer, kv_only=kv_only)
        if kv_only:
            return x
        x = x + gate(rearrange(h, "(b s) t d -> b t s d", b=b), 1)
        return x + gate(self.mlp(pre(self.norm_m, 2)), 2)


class STTransformer(nn.Module):
    """A stack of ST blocks with a learned spatial position embedding and a final norm.

    forward(x: (B, T, S, D), cache=None, commit=False, cond=None) -> (B, T, S, D)

    Without a cache, frames are at temporal positions 0..T-1. With a :class:`TemporalKVCache`, x
    holds the next T frames after those cached (usually T = 1): they are placed at absolute
    positions ``cache.pos ..``, attend to the cached frames, and, if ``commit``, are appended to the
    cache (which then advances ``cache.pos``). A non-committed call is how MaskGIT refines a frame
    several times against the same past. ``modulated`` blocks read a per-frame conditioning vector
    ``cond`` (B, T, D) (see :class:`STBlock`).
    """

    def __init__(self, dim: int, depth: int, heads: int, num_spatial: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, causal: bool = True, grad_checkpoint: bool = False,
                 spatial_grid: tuple[int, int] | None = None, learned_pos: bool = True,
                 modulated: bool = False) -> None:
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
        self.blocks = nn.ModuleList(STBlock(dim, heads, mlp_ratio, dropout, causal, modulated)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.grad_checkpoint = grad_checkpoint

    def no_weight_decay(self) -> set[str]:
        """The learned position table is not decayed (see ``playworld.train.engine.param_groups``)."""
        return {"pos_s"} if self.pos_s is not None else set()

    def new_cache(self, max_frames: int) -> TemporalKVCache:
        return TemporalKVCache(num_layers=self.depth, max_frames=max_frames, num_spatial=self.num_spatial)

    def forward(self, x: Tensor, cache: TemporalKVCache | Sequence[TemporalKVCache] | None = None,
                commit: bool | Tensor = False, cond: Tensor | None = None) -> Tensor:
        """``cache``: one cache for the whole batch, or several whose rows are stacked in order (each
        must already hold its rows: worlds played apart, stepped together). ``commit``: True/False
        for every row, or a (B,) bool mask of the rows whose new frames are kept. ``cond`` (B, T, D):
        the frames' conditioning, read by modulated blocks (ignored by plain ones)."""
        x, rope_s = self._inputs(x)
        if cache is not None:
            return self._cached(x, cache, commit, rope_s, output=True, cond=cond)
        rope = rope_angles(torch.arange(x.shape[1], device=x.device), self.dim // self.heads)
        for block in self.blocks:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, None, 0, rope_s, False, cond, use_reentrant=False)
            else:
                x = block(x, rope, rope_s=rope_s, cond=cond)
        return self.norm(x)

    def commit_frames(self, x: Tensor, cache: TemporalKVCache | Sequence[TemporalKVCache],
                      commit: bool | Tensor = True, cond: Tensor | None = None) -> None:
        """Append frames x (B, T, S, D) to ``cache`` without computing outputs: the last block stops
        once its keys/values are written (no temporal attention output, MLP or final norm)."""
        x, rope_s = self._inputs(x)
        self._cached(x, cache, commit, rope_s, output=False, cond=cond)

    def _inputs(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Check x (B, T, S, D), add the learned positions if any; returns it and the spatial RoPE tables."""
        if x.dim() != 4 or x.shape[2:] != (self.num_spatial, self.dim):
            raise ValueError(f"STTransformer expects (B, T, {self.num_spatial}, {self.dim}), got {tuple(x.shape)}")
        if self.pos_s is not None:
            x = x + self.pos_s
        return x, ((self.rope_s_cos, self.rope_s_sin) if self.spatial_grid is not None else None)

    def _cached(self, x: Tensor, cache: TemporalKVCache | Sequence[TemporalKVCache], commit: bool | Tensor,
                rope_s: tuple[Tensor, Tensor] | None, output: bool, cond: Tensor | None = None) -> Tensor:
        b, t = x.shape[:2]
        caches = [cache] if isinstance(cache, TemporalKVCache) else list(cache)
        causal = self.blocks[0].causal if self.depth else True
        parts, start = [], 0
        for c in caches:
            rows = b if len(caches) == 1 else c.batch_size
            if rows < 1:
                raise ValueError("stepping several caches together needs each to hold its rows already")
            mask = commit[start:start + rows] if isinstance(commit, Tensor) and commit.dim() else commit
            step = c.plan(rows, t, self.dim // self.heads, causal, mask, x.device)
            parts.append(CachedRows(c, step, start, start + rows))
            start += rows
        if start != b:
            raise ValueError(f"the caches hold {start} rows, got a batch of {b}")
        for i, block in enumerate(self.blocks):
            x = block(x, None, parts, i, rope_s, kv_only=not output and i == self.depth - 1, cond=cond)
        for part in parts:
            part.cache.advance(part.step)
        return self.norm(x) if output else x


def init_weights(module: nn.Module) -> None:
    """GPT-style init: normal(0, 0.02) linears/embeddings, zero biases; residual projections scaled;
    the modulation of modulated ST blocks zero (they start as plain blocks)."""
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
    for m in module.modules():  # modulated blocks start as plain ones
        if isinstance(m, STBlock):
            m.zero_modulation()
