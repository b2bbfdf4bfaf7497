"""Rotary position embeddings (RoPE, Su et al., arXiv 2104.09864): 1D over frames, 2D axial over
a token grid. Attention scores between rotated queries and keys depend only on position differences.

Shapes: T positions, K head width (even; divisible by 4 for the 2D tables).
"""

from __future__ import annotations

import torch
from torch import Tensor


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
    """Rotate channel pairs (2i, 2i+1) by the tables' angles. x: (..., T, K) with K even; cos, sin:
    (T, K/2), or any shape that broadcasts against (..., T, K/2)."""
    if x.dtype in (torch.float32, torch.float64) and _complex_viewable(x):
        # one complex product (x1 + i x2)(cos + i sin): the same numbers as below, ~5x faster on CPU
        xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * torch.complex(cos.to(x.dtype), sin.to(x.dtype))).flatten(-2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def _complex_viewable(x: Tensor) -> bool:
    """Whether x's last axis can be read as complex pairs without a copy (view_as_complex's rules)."""
    return (x.stride(-1) == 1 and x.storage_offset() % 2 == 0
            and all(st % 2 == 0 for st, n in zip(x.stride()[:-1], x.shape[:-1]) if n > 1))
