"""The training engine: one loop, checkpoints, logging, DDP."""

from playworld.train.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from playworld.train.engine import Trainer, TrainResult

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "TrainConfig", "Trainer", "TrainResult"]
