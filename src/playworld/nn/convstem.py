"""Convolutional stem and head for a patch-token transformer: pixels <-> a token grid, frame by frame.

A linear patch embedding sees each p x p patch alone and a linear patch head paints each patch from one
token, so fine texture and edges that cross patch borders are hard for it; small residual convolutions
at full and half resolution are cheap at 64x64 and see across patch borders (the encoder/decoder
pyramid of VQGAN, Esser et al. 2021, arXiv 2012.09841, without its attention and GAN loss). Both act on
each frame alone, so a causal-in-time transformer between them stays causal and can still encode and
decode one frame at a time.

Shapes: N frames (batch x time), H x W pixels, C colour channels, F feature channels, p patch side
(a power of two: log2(p) stride-2 stages), h x w = H/p x W/p tokens, D token width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), 3x3 convolutions, same width; the second conv starts
    small (a tenth of its default scale) so each block starts near the identity and gradients still
    reach the first."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, F, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def _stages(patch: int) -> int:
    stages = int(math.log2(patch))
    if 2**stages != patch:
        raise ValueError(f"a convolutional stem needs a power-of-two patch, got {patch}")
    return stages


class ConvStem(nn.Module):
    """Frames (N, H, W, C) in [-1, 1] -> tokens (N, h*w, D): a 3x3 conv, then per stage a residual block
    and a stride-2 conv that doubles the channels, a last residual block and a linear map to D."""

    def __init__(self, channels: int, features: int, patch: int, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1)]
        f = features
        for _ in range(_stages(patch)):
            layers += [ResBlock(f), nn.Conv2d(f, 2 * f, 4, stride=2, padding=1)]
            f *= 2
        layers += [ResBlock(f), _norm(f), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(f, dim)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.net(rearrange(frames, "n h w c -> n c h w"))  # (N, F', h, w)
        return self.out(rearrange(x, "n f h w -> n (h w) f"))


class ConvHead(nn.Module):
    """Tokens (N, h*w, D) -> frames (N, H, W, C), the mirror of :class:`ConvStem`: a linear map to
    features, then per stage a residual block and a nearest-neighbour 2x upsampling followed by a 3x3
    conv that halves the channels, a last residual block and a 3x3 conv to colours."""

    def __init__(self, channels: int, features: int, patch: int, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        stages = _stages(patch)
        f = features * 2**stages
        self.inp = nn.Linear(dim, f)
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [ResBlock(f), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(f, f // 2, 3, padding=1)]
            f //= 2
        layers += [ResBlock(f), _norm(f), nn.SiLU(), nn.Conv2d(f, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: Tensor) -> Tensor:
        h, w = self.grid
        x = rearrange(self.inp(tokens), "n (h w) f -> n f h w", h=h, w=w)
        return rearrange(self.net(x), "n c h w -> n h w c")
