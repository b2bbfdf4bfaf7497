"""What every quantizer returns, and the codebook statistics they share.

The quantizers themselves live one per file: :mod:`playworld.nn.vq` (VQ-VAE, van den Oord et al. 2017,
arXiv 1711.00937) and :mod:`playworld.nn.fsq` (FSQ, Mentzer et al. 2023, arXiv 2309.15505). Both map
(..., D) latents to (..., D) straight-through codes and (...) integer indices, and both keep a running
per-code usage histogram so callers can report which codes are alive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class QuantizeOutput:
    """Result of quantizing latents z of shape (..., D).

    quantized: (..., D) codes with a straight-through gradient to z (value = code, d/dz = identity).
    indices: (...) long, the code index of every vector, in [0, num_codes).
    loss: () scalar to add to the training loss (commitment + codebook terms; 0 for FSQ).
    usage: () fraction of the codebook used by this batch, in (0, 1]; detached.
    perplexity: () exp(entropy) of the batch's code histogram, in [1, num_codes]; detached.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    usage: Tensor
    perplexity: Tensor


def code_counts(indices: Tensor, num_codes: int) -> Tensor:
    """(...) long -> (num_codes,) float32 number of occurrences of each code."""
    return torch.bincount(indices.reshape(-1), minlength=num_codes).float()


def usage_and_perplexity(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Codebook usage and perplexity of a code histogram.

    counts: (K,) non-negative. usage = |{k : counts_k > 0}| / K;
    perplexity = exp(-sum_k p_k log p_k) with p = counts / sum(counts), so a uniform assignment over
    all K codes has perplexity K and a collapsed codebook has perplexity 1.
    """
    counts = counts.detach().float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).float().mean(), entropy.exp()
