"""Which model each run kind trains, and how to rebuild it. Imports are lazy so that loading a
tokenizer never imports the dynamics code."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from playworld.errors import ConfigError

if TYPE_CHECKING:
    from playworld.models.base import TrainableModel


def _attr(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    config_path: str  # "module:ConfigClass"
    model_path: str  # "module:ModelClass" (or a function), built as ModelClass(config)
    trainable: Callable[[Any, Any], nn.Module] | None = None  # (run_config, device) -> module with compute_loss
    samples_path: str | None = None  # "module:function": (trainable, video) -> SampleSheet | None, for RUN/samples

    @property
    def config_cls(self) -> type:
        return _attr(self.config_path)

    def samples(self, trainable: nn.Module, video: Any) -> Any:
        """The labelled :class:`playworld.train.samples.SampleSheet` of ``trainable`` on ``video``
        (B, T, H, W, C) in [0, 1], or None when this kind has none or the module is not its model."""
        return None if self.samples_path is None else _attr(self.samples_path)(trainable, video)

    def build_release(self, model_cfg: Any) -> nn.Module:
        return _attr(self.model_path)(model_cfg)

    def build_trainable(self, run_cfg: Any, device: Any) -> nn.Module:
        if self.trainable is not None:
            return self.trainable(run_cfg, device)
        return self.build_release(run_cfg.model)

    @staticmethod
    def release_module(trainable: TrainableModel) -> nn.Module:
        """The part of a trainable model whose weights are released (the wrapped model, if any)."""
        return trainable.trainable_module


def build_dynamics(config: Any) -> nn.Module:
    """The dynamics model a config describes: a flow-matching model for ``backend: flow``
    (:mod:`playworld.models.flow`), else the MaskGIT token model (every other backend plays one)."""
    if getattr(config, "backend", "maskgit") == "flow":
        from playworld.models.flow import FlowDynamicsModel

        return FlowDynamicsModel(config)
    from playworld.models.dynamics import DynamicsModel

    return DynamicsModel(config)


def _dynamics_trainable(run_cfg: Any, device: Any) -> nn.Module:
    from playworld.errors import CheckpointError
    from playworld.models.dynamics import DynamicsTrainer
    from playworld.release import load_model, read_checkpoint_config, unfinished

    for dep in ("tokenizer", "lam"):
        if dep not in run_cfg.deps:
            raise ConfigError(f"a dynamics run needs deps.{dep}: the {dep} run directory to use (frozen)")
        where = Path(run_cfg.deps[dep])
        stopped = unfinished(read_checkpoint_config(where), where / "config.json")
        if stopped:
            raise CheckpointError(f"{where}: the {dep} run is unfinished ({stopped}); a dynamics model learns on "
                                  f"top of its final weights: re-run its `playworld train` command to finish it first")
    tok = load_model(Path(run_cfg.deps["tokenizer"]), device)
    lam = load_model(Path(run_cfg.deps["lam"]), device)
    sha = {}  # what a token cache is keyed by: the frozen weights, as each release's config.json records them
    for dep in ("tokenizer", "lam"):
        record = read_checkpoint_config(Path(run_cfg.deps[dep])).get("files", {}).get("model.safetensors", {})
        if isinstance(record, dict) and isinstance(record.get("sha256"), str):
            sha[dep] = record["sha256"]
    if run_cfg.model.backend == "flow":
        from playworld.models.flow import FlowDynamicsTrainer

        if run_cfg.data.precompute:
            raise ConfigError("data.precompute caches MaskGIT's token ids; the flow backend learns the tokenizer's "
                              "continuous latents, encoded on every batch: drop data.precompute")

        return FlowDynamicsTrainer(run_cfg.model, tokenizer=tok, lam=lam)
    return DynamicsTrainer(run_cfg.model, tokenizer=tok, lam=lam, weights_sha256=sha)


def _tokenizer_trainable(run_cfg: Any, device: Any) -> nn.Module:
    from playworld.models.tokenizer import VideoTokenizer

    if run_cfg.model.decoder_only and not run_cfg.train.init_from:
        raise ConfigError("tokenizer.decoder_only trains the decoder of a tokenizer that exists: set train.init_from "
                          "to that tokenizer's run directory (its encoder and codebook are kept as they are)")
    return VideoTokenizer(run_cfg.model)


SPECS: dict[str, ModelSpec] = {
    "tokenizer": ModelSpec("tokenizer", "playworld.models.tokenizer:TokenizerConfig",
                           "playworld.models.tokenizer:VideoTokenizer", trainable=_tokenizer_trainable,
                           samples_path="playworld.train.samples:tokenizer_samples"),
    "lam": ModelSpec("lam", "playworld.models.lam:LAMConfig", "playworld.models.lam:LatentActionModel",
                     samples_path="playworld.train.samples:lam_samples"),
    "dynamics": ModelSpec("dynamics", "playworld.models.dynamics:DynamicsConfig",
                          "playworld.train.registry:build_dynamics", trainable=_dynamics_trainable,
                          samples_path="playworld.train.samples:dynamics_samples"),
}


def get_spec(kind: str) -> ModelSpec:
    try:
        return SPECS[kind]
    except KeyError:
        raise ConfigError(f"unknown model kind {kind!r}; known: {sorted(SPECS)}") from None
