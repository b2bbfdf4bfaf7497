"""Training configuration: optimiser, data, loop, and the run config that nests a model config.

A run config is saved with every checkpoint (``config.json``) and validated on load, so a
checkpoint can always be rebuilt, and a mismatch is named rather than loaded silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from playworld.config import ConfigError, field, from_dict, to_dict

Kind = Literal["tokenizer", "lam", "dynamics"]
# playworld.config.Precision (what eval and play compute in) plus a training-only mode: bf16 weights
# with fp32 master copies in the optimizer (playworld.train.mixed)
TrainPrecision = Literal["auto", "fp32", "bf16", "bf16-weights"]
# How ranks under torchrun share the work (playworld.train.engine, playworld.train.fsdp)
Strategy = Literal["ddp", "fsdp"]
# Top-level keys that a release's config.json adds to the run config (playworld.train.checkpoint):
# "files" (sha256 and size of each weight file) and "progress" (step, steps, finished), read and checked
# by load_model, not by RunConfig.
RELEASE_KEYS = frozenset({"files", "progress"})


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = field(3e-4, help="peak learning rate")
    weight_decay: float = field(0.05, help="AdamW weight decay on Linear/conv weights only; never norms, biases, "
                                "embeddings, position tables, codebooks, the LAM's kernels or frozen sub-models")
    beta1: float = field(0.9, help="AdamW beta1")
    beta2: float = field(0.95, help="AdamW beta2")
    eps: float = field(1e-8, help="AdamW epsilon")
    warmup_steps: int = field(200, help="linear warmup steps")
    min_lr_ratio: float = field(0.1, help="final learning rate as a fraction of lr (cosine decay)")
    grad_clip: float = field(1.0, help="clip the global gradient norm to this (0 disables)")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"optim betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class DataConfig:
    """Where clips come from. ``batch_size`` is per process; the global batch is batch_size x world size."""

    path: str = field("", help="dataset directory (made by `playworld collect` or `playworld ingest`)")
    clip_len: int = field(16, help="frames per training clip")
    batch_size: int = field(8, help="clips per step per process")
    num_workers: int = field(0, help="loader worker processes per training process")
    split: str = field("train", help="split to train on")
    val_split: str = field("val", help="split for periodic validation ('' disables)")
    precompute: bool = field(False, help="dynamics: tokenize and label every episode of the train and val splits "
                             "once with the frozen tokenizer and LAM (cached in RUN/token_cache, reused while "
                             "they and the dataset are unchanged) instead of on every batch: each step costs "
                             "0.75x, the build about what one small-preset run saves (docs/training.md), so it "
                             "pays off for long, repeated or resumed runs; off: each clip is encoded on the fly "
                             "(other kinds ignore it)")

    def __post_init__(self) -> None:
        if self.clip_len < 2:
            raise ConfigError(f"data.clip_len must be >= 2, got {self.clip_len}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    """The loop: length, intervals, numerics."""

    steps: int = field(1000, help="optimizer steps in total")
    seed: int = field(0, help="seed for init, data order and every random draw")
    log_every: int = field(10, help="log metrics every N steps")
    val_every: int = field(250, help="validate (and save sample images) every N steps (0 disables)")
    val_batches: int = field(4, help="batches per validation")
    ckpt_every: int = field(250, help="write a resumable checkpoint every N steps")
    keep_checkpoints: int = field(2, help="resumable checkpoints kept on disk (newest first)")
    precision: TrainPrecision = field(
        "auto", help="fp32; bf16 (autocast: fp32 weights cast at every step); bf16-weights (weights kept in "
        "bf16, fp32 master copies stepped by the optimizer; norms, attention softmax, quantizers and "
        "losses fp32); auto: bf16 autocast on CUDA; on CPU bf16-weights where a bf16 matrix product measures "
        ">= 1.5x faster than fp32 (AVX512-BF16, AMX), else fp32")
    compile: bool = field(False, help="torch.compile the model")
    strategy: Strategy = field(
        "ddp", help="data parallelism under torchrun: ddp (each rank holds the whole model; gradients "
        "all-reduced) or fsdp (weights, gradients and AdamW moments sharded over ranks with PyTorch's FSDP2 "
        "fully_shard; fp32 weights, precision fp32 or bf16 autocast, not bf16-weights; checkpoints and "
        "release weights are the files one process writes). fsdp in one process shards over a group of one")
    ema_decay: float = field(0.0, help="keep an EMA of the weights with this decay (0 disables), warmed up "
                             "as min(decay, (1 + n) / (10 + n)) after n steps; released weights are the EMA")
    grad_accum: int = field(1, help="micro-batches accumulated per optimizer step")
    deterministic: bool = field(False, help="torch.use_deterministic_algorithms (exact resume on CPU)")
    device: str = field("auto", help="auto, cpu, cuda or cuda:N")
    init_from: str = field("", help="start from the release weights of this run directory (same kind and "
                           "shapes, e.g. a shipped world's dynamics/ to fine-tune on your own video); the "
                           "optimizer, schedule and data order start fresh; ignored when resuming")

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "val_batches", "ckpt_every", "keep_checkpoints", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_every < 0:
            raise ConfigError(f"train.val_every must be >= 0, got {self.val_every}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"train.strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.strategy == "fsdp" and self.precision == "bf16-weights":
            raise ConfigError(
                "train.precision=bf16-weights cannot train under train.strategy=fsdp: FSDP's sharded fp32 "
                "parameters are already the master weights, and bf16 copies beside them would not be sharded; "
                "use train.precision=bf16 (autocast on the fp32 shards), fp32 or auto")


@dataclass
class RunConfig:
    """Everything that defines a training run. ``model`` is the config dataclass of ``kind``'s model;
    ``deps`` names the runs of frozen models it needs (dynamics: tokenizer and lam run directories)."""

    kind: Kind
    model: Any
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    deps: dict[str, str] = dataclasses.field(default_factory=dict)
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        from playworld.train.registry import get_spec

        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        missing = {"kind", "model"} - set(data)
        if missing:
            raise ConfigError(f"{where}: missing key(s) {sorted(missing)}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)} - RELEASE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        spec = get_spec(data["kind"])
        deps = data.get("deps", {})
        if not isinstance(deps, dict) or not all(isinstance(v, str) for v in deps.values()):
            raise ConfigError(f"{where}.deps: expected a mapping of name -> run directory")
        return cls(
            kind=data["kind"],
            model=from_dict(spec.config_cls, data["model"], where=f"{where}.model"),
            optim=from_dict(OptimConfig, data.get("optim", {}), where=f"{where}.optim"),
            data=from_dict(DataConfig, data.get("data", {}), where=f"{where}.data"),
            train=from_dict(TrainConfig, data.get("train", {}), where=f"{where}.train"),
            deps=dict(deps),
            preset=str(data.get("preset", "custom")),
        )
