"""Play-time precision: run the dynamics model and the tokenizer's decoder in bfloat16 where it is faster.

On CPUs with native bfloat16 matrix units (AVX512-BF16, AMX) oneDNN multiplies bf16 matrices 1.5-1.9x
faster than fp32 (the shipped world's layer shapes on this project's 2-core VM), and a play step is
half matrix products. Only the weights and the residual stream go to bf16: rotary embeddings,
attention scores and the softmax stay in fp32 (:class:`playworld.nn.blocks.Attention`), and so do the
tokenizer's encoder, the quantizer and the LAM, which run once per reset. ``"auto"`` measures instead
of guessing from CPU flags: bf16 where a layer-sized product is clearly faster in bf16 (on CPUs that
emulate bf16 it is slower), bf16 on CUDA devices that support it, fp32 otherwise.
"""

from __future__ import annotations

import time
from typing import Any, get_args

import torch

from playworld.config import Precision
from playworld.errors import ConfigError

PRECISIONS: tuple[str, ...] = get_args(Precision)


def _product_seconds(dtype: torch.dtype, repeats: int = 20) -> float:
    """Best time of a (256, 192) x (192, 768) linear layer, the shape of a play step's MLP input."""
    x, w = torch.randn(256, 192).to(dtype), torch.randn(768, 192).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t0)
    return best


def cpu_bf16_speedup() -> float:
    """How many times faster a play-sized bf16 matrix product is than fp32 on this CPU (measured)."""
    for dtype in (torch.float32, torch.bfloat16):  # warm both kernels up
        _product_seconds(dtype, 3)
    return _product_seconds(torch.float32) / _product_seconds(torch.bfloat16)


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """``"fp32"`` | ``"bf16"`` | ``"auto"`` on ``device`` -> the dtype to play in (see the module's docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_bf16_speedup() >= 1.2 else torch.float32
    return torch.float32


def cast_for_play(tokenizer: Any, dynamics: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast, in place, what a play step runs: the dynamics model and the tokenizer's decoder half."""
    dynamics.to(dtype)
    tokenizer.cast_decoder(dtype)
