"""Real-looking textured frames with known sub-pixel shifts, for the motion estimator's tests.

A frame is a smooth 1/f random texture (natural images have about this spectrum) with a few
hard-edged blocks (platforms, walls). A shifted pair is cut from a larger canvas shifted by a Fourier
phase ramp (exact sub-pixel, any sign), so content enters and leaves at the crop's edges as under a
moving camera; ``static`` overlays the same patch grid and fine dither on both frames, the way a
tokenizer's artifacts stay put while the scene moves.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def texture(size: int, seed: int) -> Tensor:
    """(size, size, 3) float in [0, 255]: 1/f noise plus six flat blocks."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    amp = 1 / (1e-2 + f[:, None] ** 2 + f[None] ** 2).sqrt()
    t = torch.fft.ifft2(torch.fft.fft2(torch.randn(3, size, size, generator=g)) * amp).real
    img = 128 + 30 * ((t - t.mean()) / t.std()).permute(1, 2, 0)
    for _ in range(6):
        y, x = torch.randint(0, size - 16, (2,), generator=g).tolist()
        h, w = torch.randint(4, 16, (2,), generator=g).tolist()
        img[y:y + h, x:x + w] = torch.rand(3, generator=g) * 255
    return img.clamp(0, 255)


def fourier_shift(img: Tensor, dy: float, dx: float) -> Tensor:
    """(H, W, C) -> the same image rolled by (dy, dx) pixels, sub-pixel, periodic."""
    h, w = img.shape[:2]
    fy, fx = torch.fft.fftfreq(h)[:, None], torch.fft.fftfreq(w)[None, :]
    ramp = torch.exp(-2j * math.pi * (fy * dy + fx * dx))
    return torch.fft.ifft2(torch.fft.fft2(img.permute(2, 0, 1)) * ramp).real.permute(1, 2, 0)


def static_artifacts(size: int, period: int = 4, amplitude: float = 20.0, seed: int = 99) -> Tensor:
    """(size, size, 3): a patch grid of ``period`` pixels plus fixed fine dither, the same every frame."""
    i = torch.arange(size)
    grid = ((i[:, None] % period == 0) | (i[None, :] % period == 0)).float() * amplitude
    dither = (torch.rand(size, size, generator=torch.Generator().manual_seed(seed)) - 0.5) * 2 * amplitude
    return (grid + dither)[..., None].expand(size, size, 3)


def shifted_pair(dy: float, dx: float, *, seed: int = 0, size: int = 64, static: bool = False) -> tuple[Tensor, Tensor]:
    """Two (size, size, 3) frames, the second the first's scene moved by (dy, dx): crops of a canvas
    half as large again, so the edges are not periodic."""
    pad = size // 4
    canvas = texture(size + 2 * pad, seed)
    a = canvas[pad:pad + size, pad:pad + size]
    b = fourier_shift(canvas, dy, dx)[pad:pad + size, pad:pad + size]
    if static:
        art = static_artifacts(size)
        a, b = a + art, b + art
    return a, b
