"""The training engine: one loop, checkpoints, logging, DDP.

The engine is imported lazily (on first use of ``Trainer`` or ``TrainResult``), so that importing a
light module of this package, e.g. :mod:`playworld.train.config` to read a release's run config,
never pulls in the engine, tqdm or torch.distributed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from playworld.train.config import DataConfig, OptimConfig, RunConfig, TrainConfig

if TYPE_CHECKING:
    from playworld.train.engine import Trainer, TrainResult

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "TrainConfig", "Trainer", "TrainResult"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "TrainResult"):
        from playworld.train import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'playworld.train' has no attribute {name!r}")
