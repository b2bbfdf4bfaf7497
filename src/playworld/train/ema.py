"""Exponential moving average of trainable weights (Polyak averaging)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, for ``params``: name -> the trainable parameters
    of a module (their fp32 master copies when the module holds bf16 weights, playworld.train.mixed).

    Buffers (e.g. a VQ codebook updated by EMA itself) are copied as they are at export time.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        for n, p in params.items():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's state dict with EMA weights in place of the trainable parameters."""
        out = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for n, v in self.shadow.items():
            out[n] = v.clone()
        return out
