"""Finite scalar quantization (FSQ: Mentzer et al. 2023, arXiv 2309.15505, sec. 3 and appendix A.1).

Each of the d latent channels is squashed to a bounded range and rounded to one of L_i levels; the
implicit codebook is the grid of prod(L_i) points, so there is nothing to learn, no auxiliary loss and
no codebook collapse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from playworld.nn.quantize import QuantizeOutput, code_counts, usage_and_perplexity


class FSQ(nn.Module):
    """Finite scalar quantizer over ``levels`` = (L_1, ..., L_d); codebook size K = prod(L_i).

    Per channel i, with h_i = (L_i - 1)(1 + eps) / 2, o_i = 0.5 if L_i is even else 0:

        bound(z)_i = tanh(z_i + atanh(o_i / h_i)) * h_i - o_i        (bound(0) = 0)
        q_i = round_ste(bound(z)_i) / floor(L_i / 2)                  (codes in [-1, 1])

    bound(z)_i spans (-floor(L_i/2) - eps', ceil(L_i/2) - 1 + eps'), so rounding gives exactly L_i
    integers. (The paper's listing uses (1 - eps) and tan for the shift; with atanh and (1 + eps) the
    shift stays finite for L_i = 2 and bound(0) = 0 for every L_i.)

    Index <-> code is the mixed-radix number of the per-channel digits q_i * floor(L_i/2) + floor(L_i/2)
    in [0, L_i). ``cluster_size`` is a running (EMA, ``usage_decay``) histogram of code use, updated in
    training mode, so callers can report per-code usage as for :class:`~playworld.nn.vq.VectorQuantizer`.

    Input/output width is d = len(levels); computation is float32 whatever the autocast state.
    """

    cluster_size: Tensor

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), *, eps: float = 1e-3, usage_decay: float = 0.99) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"FSQ levels must be a non-empty sequence of integers >= 2, got {levels}")
        if not 0.0 < usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in (0, 1), got {usage_decay}")
        self.levels, self.dim, self.num_codes = levels, len(levels), math.prod(levels)
        self.eps, self.usage_decay = eps, usage_decay
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.int64), dim=0)
        self.register_buffer("_levels", lv, persistent=False)  # (d,)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)  # (d,)
        self.register_buffer("_basis", basis, persistent=False)  # (d,) mixed-radix place values
        self.register_buffer("cluster_size", torch.zeros(self.num_codes))

    @property
    def code_dim(self) -> int:
        return self.dim

    def bound(self, z: Tensor) -> Tensor:
        """(..., d) -> (..., d) squashed so that rounding yields exactly L_i integer values per channel."""
        half_l = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """codes (..., d) on the grid -> indices (...) long in [0, K)."""
        digits = (codes * self._half_width + self._half_width).round().long()  # (..., d) in [0, L_i)
        return (digits * self._basis).sum(dim=-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """indices (...) long in [0, K) -> codes (..., d) float32 in [-1, 1]."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels.long()  # (..., d)
        return (digits.float() - self._half_width) / self._half_width

    def usage_histogram(self) -> Tensor:
        """(K,) running share of the vectors assigned to each code (sums to 1; zeros before training)."""
        n = self.cluster_size.detach()
        return n / n.sum().clamp_min(1e-12)

    def forward(self, z: Tensor) -> QuantizeOutput:
        """z: (..., d) -> QuantizeOutput(quantized (..., d) in [-1, 1], indices (...), loss 0, usage, perplexity)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ with levels {self.levels} expects (..., {self.dim}) inputs, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            bounded = self.bound(z.float())
            rounded = bounded + (bounded.round() - bounded).detach()  # straight-through round
            codes = rounded / self._half_width  # (..., d)
            indices = self.codes_to_indices(codes.detach())  # (...)
        counts = code_counts(indices, self.num_codes)
        if self.training:
            with torch.no_grad():
                self.cluster_size.lerp_(counts, 1.0 - self.usage_decay)
        usage, perplexity = usage_and_perplexity(counts)
        return QuantizeOutput(
            quantized=codes.to(z.dtype),
            indices=indices,
            loss=z.new_zeros((), dtype=torch.float32),
            usage=usage,
            perplexity=perplexity,
        )

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}"
