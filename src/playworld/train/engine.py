"""One training loop for every playworld model (STYLE.md habit 6: models differ only in their loss).

AdamW with warmup + cosine, gradient clipping and accumulation, optional EMA, bf16 autocast or bf16
weights with fp32 masters (:mod:`playworld.train.mixed`), optional torch.compile, NaN/inf detection,
JSONL + TensorBoard logs, periodic validation with sample images, atomic resumable checkpoints every
N steps and on SIGINT/SIGTERM, exact resume, and DDP or FSDP (:mod:`playworld.train.fsdp`) under
torchrun (rank 0 alone writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from playworld.bars import progress_bar
from playworld.config import ConfigError
from playworld.errors import CheckpointError, DatasetError, TrainingError
from playworld.io import read_json
from playworld.models.base import DeclaresNoWeightDecay, HeldOutStats, TrainableModel, to_unit
from playworld.release import load_into, read_checkpoint_config, read_release, save_release
from playworld.train.checkpoint import CheckpointManager
from playworld.train.config import RunConfig, TrainPrecision
from playworld.train.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum_fields,
    broadcast_choice,
    init_distributed,
)
from playworld.train.ema import EMA
from playworld.train.fsdp import Sharding
from playworld.train.logger import MetricsLogger
from playworld.train.mixed import MasterWeights, resolve_train_precision
from playworld.train.registry import ModelSpec, get_spec
from playworld.train.schedule import lr_at

# Fields that may change between a run and its resumption without changing what is trained.
_RESUME_MUTABLE = {"train.steps", "train.log_every", "train.val_every", "train.val_batches", "train.ckpt_every",
                   "train.keep_checkpoints", "train.compile", "train.device", "data.num_workers", "data.path",
                   "deps.tokenizer", "deps.lam", "train.init_from", "train.strategy"}


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # loss of every step this call ran (rank-averaged)
    interrupted: bool = False
    run_dir: Path | None = None
    signal: int | None = None  # the signal that stopped it (SIGINT, SIGTERM), if one did


class _LossModule(nn.Module):
    """Wraps ``model.compute_loss`` as ``forward`` so that DDP and torch.compile see it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model.compute_loss(video)
        return out.loss, out.metrics


def pick_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank if dist_info else 0)
        return torch.device("cpu")
    return torch.device(name)


# Modules whose ``weight`` is a matrix (or filter bank) that weight decay should shrink, and modules none
# of whose parameters should be decayed: minGPT's whitelist and blacklist (karpathy/minGPT, model.py,
# configure_optimizers). Decay on an embedding table pulls rarely seen rows to zero, and on a norm's
# gain fights the normalisation; biases are offsets, not capacity.
_DECAYED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d)
_UNDECAYED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups ``[decay, no_decay]`` for the trainable parameters of ``model``, by module and
    parameter type (minGPT's rule), never by name: the ``weight`` of a Linear or convolution is decayed;
    biases, norms and embeddings are not; a bare ``nn.Parameter`` (a table, codebook, token or kernel)
    is not decayed if its module declares it in ``no_weight_decay() -> set[str]`` (its own parameter
    names, without the module's prefix; timm's models declare theirs the same way), and an undeclared
    one is an error rather than a guess. Frozen parameters are not in the optimizer at all (unlike jafar).

    Each group also carries ``names`` (the parameters' dotted names, in order), which the checkpoint
    uses to name a parameter that changed group between a run and its resumption."""
    groups: dict[str, dict[str, nn.Parameter]] = {"decay": {}, "no_decay": {}}
    group_of: dict[int, tuple[str, str]] = {}  # id(parameter) -> (group, first name)
    for module_name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        declared = set(module.no_weight_decay()) if isinstance(module, DeclaresNoWeightDecay) else set()
        if declared - set(own):
            raise TrainingError(
                f"{type(module).__name__}.no_weight_decay() at {module_name or 'the model root'!r} names "
                f"{sorted(declared - set(own))}, which are not parameters of that module (it holds {sorted(own)}); "
                "return only the module's own parameter names, without its prefix")
        for local, p in own.items():
            if not p.requires_grad:
                continue
            name = f"{module_name}.{local}" if module_name else local
            if local in declared or local == "bias" or isinstance(module, _UNDECAYED_MODULES):
                group = "no_decay"
            elif local == "weight" and isinstance(module, _DECAYED_MODULES):
                group = "decay"
            else:
                raise TrainingError(
                    f"weight decay: parameter {name!r} ({type(module).__name__}.{local}, shape {tuple(p.shape)}) "
                    f"is neither a Linear/conv weight nor a bias, norm or embedding parameter; declare it in "
                    f"{type(module).__name__}.no_weight_decay() if it is a table, codebook, token or kernel, or "
                    "hold it in an nn.Linear if it is a matrix to decay")
            if id(p) in group_of:  # shared (tied) between modules: one group, or it would be stepped twice
                first_group, first_name = group_of[id(p)]
                if first_group != group:
                    raise TrainingError(
                        f"weight decay: parameter {first_name!r} is shared as {name!r}, and would be in both the "
                        f"{first_group} and the {group} group; tie it only between modules of one type")
                continue
            group_of[id(p)] = (group, name)
            groups[group][name] = p
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in group_of]
    if missing:  # cannot happen while every module's own parameters are walked above; kept as the invariant
        raise TrainingError(f"weight decay: trainable parameter {missing[0]!r} is in neither optimizer group")
    decay, no_decay = groups["decay"], groups["no_decay"]
    return [{"params": list(decay.values()), "names": list(decay), "weight_decay": weight_decay},
            {"params": list(no_decay.values()), "names": list(no_decay), "weight_decay": 0.0}]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_defaults(cfg: RunConfig) -> dict[str, Any]:
    """Dotted key -> default value (as JSON would hold it) of every field of ``cfg``'s dataclass sections."""
    out: dict[str, Any] = {}
    for section in ("model", "optim", "data", "train"):
        value = getattr(cfg, section)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            if dataclasses.is_dataclass(default):  # a nested section: its fields' defaults, dotted
                default = dataclasses.asdict(default)  # type: ignore[arg-type]
            out.update(_flatten({f"{section}.{f.name}": json.loads(json.dumps(default))}))
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """Dotted keys whose values differ (ignoring ones that may change on resume). A key the checkpoint
    lacks counts as its ``defaults`` value: a field added to a config after the run started, left at
    its default, does not change what the run trains."""
    a, b = _flatten(saved), _flatten(current)
    for k, v in (defaults or {}).items():
        a.setdefault(k, v)
    keys = sorted(set(a) | set(b))
    return [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys
            if a.get(k) != b.get(k) and k not in _RESUME_MUTABLE]


class Trainer:
    """Trains ``cfg.kind``'s model on ``cfg.data`` into ``run_dir``.

    ``model`` may be given (already built) instead of being built from the registry.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, *, model: nn.Module | None = None,
                 progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        fsdp = cfg.train.strategy == "fsdp"
        self.dist = init_distributed(pick_device(cfg.train.device).type, group_of_one=fsdp)
        self.device = pick_device(cfg.train.device, self.dist)
        self.progress = progress and self.dist.is_main
        self.spec: ModelSpec = get_spec(cfg.kind)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.train.seed)  # identical init on every rank
        np.random.seed(cfg.train.seed % (2**32))
        model = model if model is not None else self.spec.build_trainable(cfg, self.device)
        if not isinstance(model, TrainableModel):
            raise TrainingError(f"{type(model).__name__} cannot be trained: a model for the engine subclasses "
                                "playworld.models.base.TrainableModel (compute_loss, and the hooks it defaults)")
        self.model: TrainableModel = model.to(self.device)
        self.release = self.spec.release_module(self.model)
        if cfg.train.init_from:
            self._init_from(Path(cfg.train.init_from))
        self.ckpt = CheckpointManager(self.run_dir, keep=cfg.train.keep_checkpoints)
        self.precision = self._resolve_precision()
        # bf16 weights, fp32 masters: what the optimizer, EMA and checkpoints see (train/mixed.py)
        self.masters = MasterWeights(self.model) if self.precision == "bf16-weights" else None
        self.sharding: Sharding | None = None  # set by _build_forward under train.strategy=fsdp
        # before the optimizer is built: FSDP replaces the parameters with their shards
        self._forward = self._build_forward()
        groups = param_groups(self.model, cfg.optim.weight_decay)
        self.optimizer = torch.optim.AdamW(
            self.masters.optimizer_groups(groups) if self.masters else groups, lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
            fused=self.device.type == "cuda")
        self.ema = EMA(self._trainable(self.release), cfg.train.ema_decay) if cfg.train.ema_decay else None
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main)
        self.step = 0
        self._stop = threading.Event()
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ set-up
    def _init_from(self, source: Path) -> None:
        """Load the release weights of run ``source`` into the model being trained, before the optimizer
        and EMA are built from it (a resumed run then overwrites them with its checkpoint)."""
        saved, weights = read_release(source, self.device)
        if saved.kind != self.cfg.kind:
            raise CheckpointError(f"train.init_from {source}: a {saved.kind} run, but this run trains {self.cfg.kind}")
        for note in getattr(self.release, "init_from_notes", lambda _: [])(saved.model):
            if self.dist.is_main:  # said, not refused: a model may be fine-tuned into another way of playing
                tqdm.write(f"warning: train.init_from {source}: {note}", file=sys.stderr)
        # parameters a model may add at their identity keep their init values (dynamics.action_cond='adaln')
        # or are set to it by the model (tokenizer.decoder_only with a deeper decoder)
        optional = getattr(self.release, "init_from_optional", set)()
        load_into(self.release, source, weights, optional)
        missing = set(optional) - set(weights)
        if missing and hasattr(self.release, "init_from_missing"):  # e.g. decoder blocks a fine-tune adds
            self.release.init_from_missing(missing, str(source / "model.safetensors"))

    def _build_forward(self) -> nn.Module:
        module: nn.Module = _LossModule(self.model)
        if self.cfg.train.strategy == "fsdp":
            self.sharding = Sharding(module, self.model, self.device)
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids,
                         find_unused_parameters=self.model.ddp_find_unused)
        if self.cfg.train.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        return module

    def _resolve_precision(self) -> str:
        """``train.precision`` for this device (:func:`playworld.train.mixed.resolve_train_precision`).
        ``auto`` measures; a run being resumed keeps the choice its checkpoint recorded, and every DDP
        rank takes rank 0's, so a noisy measurement never changes what a run computes in."""
        latest = self.ckpt.latest() if self.cfg.train.precision == "auto" else None
        chosen = self._recorded_precision(latest) if latest else \
            resolve_train_precision(self.cfg.train.precision, self.device)
        if self.cfg.train.strategy == "fsdp" and chosen == "bf16-weights":
            if latest is not None:
                raise ConfigError(
                    f"{latest}: this run trains in bf16-weights (chosen by train.precision=auto when it began), "
                    "which train.strategy=fsdp cannot resume; resume it with train.strategy=ddp")
            chosen = "fp32"  # auto under FSDP: its shards are fp32; autocast would be the only other choice
        return broadcast_choice(chosen, get_args(TrainPrecision), self.dist, self.device)

    def _recorded_precision(self, latest: Path) -> str:
        """The precision ``auto`` chose for the run whose latest checkpoint is ``latest`` (before it was
        recorded, auto never chose bf16 weights: bf16 autocast on CUDA, fp32 elsewhere)."""
        state = read_json(latest / "state.json", CheckpointError, f"state of checkpoint {latest.name}")
        chosen = state.get("extra", {}).get("precision")
        if chosen is None:
            return resolve_train_precision("auto", self.device, speedup=lambda: 0.0)
        if chosen not in get_args(TrainPrecision):
            raise CheckpointError(f"{latest / 'state.json'}: unknown training precision {chosen!r}")
        return chosen

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _trainable(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """name -> fp32 value of each trainable parameter of ``module`` (its master under bf16 weights)."""
        if self.masters is not None:
            return self.masters.trainable(module)
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def _loader(self, split: str, seed: int, *, training: bool = False):
        from playworld.data.loader import ClipLoader

        d = self.cfg.data
        if not d.path:
            raise DatasetError("data.path is empty: pass --data DIR")
        loader = ClipLoader(d.path, clip_len=d.clip_len, batch_size=d.batch_size, split=split, seed=seed,
                            rank=self.dist.rank, world_size=self.dist.world_size, num_workers=d.num_workers)
        if training:
            loader = self.model.training_loader(loader, seed=self.cfg.train.seed)
        if not (d.precompute and self.model.caches_tokens):  # the dynamics trainer's token cache
            return loader
        if self.dist.enabled and not self.dist.is_main:
            torch.distributed.barrier()  # rank 0 builds (or checks) the cache first
        loader = self.model.cached_loader(loader, self.run_dir / "token_cache", progress=self.progress)
        if self.dist.enabled and self.dist.is_main:
            torch.distributed.barrier()
        return loader

    def _inputs(self, batch: Any) -> Any:
        """A loader's batch on the device: uint8 pixels (B, T, H, W, C) -> float in [0, 1]; anything else
        (a token batch) is moved as it is."""
        if isinstance(batch, torch.Tensor):
            return to_unit(batch.to(self.device, non_blocking=True))
        return batch.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, loader: Any) -> Path | None:
        """Write a resumable checkpoint and the release weights (rank 0; under FSDP every rank must call
        it, to gather the full state)."""
        if self.sharding is not None:
            weights = self.sharding.full_state(self.model)
            optimizer = self.sharding.full_optimizer_state(self.optimizer)
            ema = self.sharding.full_tensors(self.ema.state_dict()) if self.ema else None
        elif self.dist.is_main:
            weights, optimizer = self.model.state_dict(), self.optimizer.state_dict()
            ema = self.ema.state_dict() if self.ema else None
        if not self.dist.is_main:
            self.save_release()
            return None
        path = self.ckpt.save(step=self.step, weights=weights, optimizer=optimizer, ema=ema,
                              loader=loader.state_dict(), config=self.cfg.to_dict(),
                              extra={"precision": self.precision})
        self.save_release()
        return path

    def save_release(self) -> None:
        """Release weights (EMA if enabled) + config at the run's root: what `playworld.load` reads. Before
        ``train.steps`` the config records the run as unfinished (step N of M), and loaders warn. Under FSDP
        every rank must call it (the weights are gathered); rank 0 writes."""
        if self.sharding is not None:
            weights = self.sharding.full_state(self.release)
            if self.ema is not None:
                weights = {**weights, **self.sharding.full_tensors(self.ema.state_dict())}
        elif not self.dist.is_main:
            return
        else:
            weights = self.ema.export(self.release) if self.ema else self.release.state_dict()
        if self.dist.is_main:
            save_release(self.run_dir, weights, self.cfg.to_dict(), step=self.step, steps=self.cfg.train.steps)

    def _resume(self, loader: Any) -> None:
        path = self.ckpt.latest()
        if path is None:
            return
        diffs = config_differences(read_checkpoint_config(path), self.cfg.to_dict(), config_defaults(self.cfg))
        if diffs:
            raise CheckpointError(f"{path}: config differs from the run being resumed: " + "; ".join(diffs))
        if self.sharding is not None:
            got = self.ckpt.read(path, model=self.model, optimizer=self.optimizer, device=torch.device("cpu"))
            self.sharding.load(got.weights, self.optimizer, got.optimizer)
            state, ema = got.state, got.ema
        else:
            state, ema = self.ckpt.load(path, model=self.model, optimizer=self.optimizer, device=self.device)
        if self.ema is not None:
            if ema is None:
                raise CheckpointError(f"{path}: no EMA weights, but train.ema_decay > 0")
            self.ema.load_state_dict(self.sharding.shard_like(ema, self.ema.shadow) if self.sharding else ema)
        self.step = state.step
        loader.load_state_dict(state.loader)
        if self.dist.is_main:
            tqdm.write(f"{self.cfg.kind}: resuming from step {self.step} ({path})", file=sys.stderr)

    # ------------------------------------------------------------------ loop
    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        previous = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous.append((sig, signal.getsignal(sig)))
            signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """Stop after the current step (a checkpoint is written); the first signal names the exit code."""
        if self._stop_signal is None:
            self._stop_signal = signum
        self._stop.set()

    def fit(self, *, resume: bool = True, stop_after: int | None = None,
            on_step: Callable[[int], None] | None = None) -> TrainResult:
        """Train until ``train.steps``; ``stop_after`` ends this call early after that many steps
        (as SIGINT would: a checkpoint is written). With ``resume``, continue from the latest
        checkpoint in the run directory. ``on_step(step)`` is called after every step (on every rank)."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        loader = self._loader(cfg.data.split, cfg.train.seed, training=True)
        if cfg.data.precompute and cfg.data.val_split and cfg.train.val_every and self.model.caches_tokens:
            with contextlib.suppress(DatasetError):  # encode the val split now too, not at the first validation
                self._loader(cfg.data.val_split, seed=1234)
        if resume:
            self._resume(loader)
        result = TrainResult(step=self.step, run_dir=self.run_dir)
        if self.step >= cfg.train.steps:
            self.save_release()
            return result
        previous = self._install_signals()
        bar = progress_bar(total=cfg.train.steps, initial=self.step, disable=not self.progress,
                           desc=f"train {cfg.kind}", smoothing=0.05)  # a log file gets a line a minute
        batches: Iterator[Any] = iter(loader)
        ran = 0
        window_t, window_clips = time.perf_counter(), 0
        tokens_per_clip = cfg.data.clip_len * int(getattr(cfg.model, "tokens_per_frame", 0))
        try:
            self.model.train()
            while self.step < cfg.train.steps:
                self.model.set_progress(self.step, cfg.train.steps)  # a schedule inside the model, if any
                metrics = self._train_step(batches)
                loss = metrics["loss"]
                result.losses.append(loss)
                self.step += 1
                ran += 1
                window_clips += cfg.data.batch_size * cfg.train.grad_accum * self.dist.world_size
                bar.update(1)
                if on_step is not None:
                    on_step(self.step)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    dt = max(time.perf_counter() - window_t, 1e-9)
                    metrics["clips_per_s"] = window_clips / dt
                    if tokens_per_clip:
                        metrics["tokens_per_s"] = window_clips * tokens_per_clip / dt
                    window_t, window_clips = time.perf_counter(), 0
                    self.logger.log(self.step, metrics)
                    bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{metrics['clips_per_s']:.1f}", refresh=False)
                if cfg.train.val_every and self.step % cfg.train.val_every == 0:
                    self.validate()
                done = self.step >= cfg.train.steps
                stopping = self._stop.is_set() or (stop_after is not None and ran >= stop_after)
                if done or stopping or self.step % cfg.train.ckpt_every == 0:
                    self.save_checkpoint(loader)
                if stopping and not done:
                    result.interrupted = True
                    result.signal = self._stop_signal
                    break
        finally:
            bar.close()
            for sig, handler in previous:
                signal.signal(sig, handler)
            self.logger.close()
        result.step = self.step
        return result

    def _train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        cfg = self.cfg
        lr = lr_at(self.step, lr=cfg.optim.lr, warmup=cfg.optim.warmup_steps, total=cfg.train.steps,
                   min_ratio=cfg.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        accum = cfg.train.grad_accum
        for micro in range(accum):
            video = self._inputs(next(batches))
            sync = contextlib.nullcontext()
            if self.sharding is not None:
                self.sharding.gradient_sync(micro == accum - 1)
                self.sharding.before_forward()
            elif self.dist.enabled and micro < accum - 1:
                sync = self._forward.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    loss, metrics = self._forward(video)
                (loss / accum).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / accum
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / accum
        if self.masters is not None:
            self.masters.grads_to_masters()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        if self.sharding is not None:
            self.sharding.after_backward()
            grad_norm = self.sharding.clip_grad_norm(params, clip)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        totals = all_reduce_mean(totals, self.dist, self.device)
        if not (math.isfinite(totals["loss"]) and math.isfinite(grad_norm)):
            latest = self.ckpt.latest() if self.dist.is_main else None
            raise TrainingError(
                f"non-finite {'loss' if not math.isfinite(totals['loss']) else 'gradient norm'} at step "
                f"{self.step + 1} (loss={totals['loss']}, grad_norm={grad_norm}); stopped without saving. "
                f"Last good checkpoint: {latest or 'none yet'}. Try a lower optim.lr or train.precision=fp32.")
        self.optimizer.step()
        if self.masters is not None:
            self.masters.masters_to_weights()
        if self.ema is not None:
            self.ema.update(self._trainable(self.release), self.step + 1)  # self.step counts steps done before
        totals["lr"] = lr
        totals["grad_norm"] = grad_norm
        return totals

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Mean metrics over ``val_batches`` fixed batches of the validation split; saves samples. A
        model with ``held_out_stats(video)`` (the LAM's action usage) adds figures pooled over those
        batches, and its warning, if any, is printed and logged."""
        cfg = self.cfg
        if not cfg.data.val_split:
            return None
        try:
            loader = self._loader(cfg.data.val_split, seed=1234)
        except DatasetError as e:
            if self.dist.is_main:
                tqdm.write(f"validation skipped: {e}")
            cfg.train.val_every = 0
            return None
        self.model.eval()
        if self.sharding is not None:
            self.sharding.unshard_all()
        try:
            return self._validate(loader)
        finally:
            if self.sharding is not None:
                self.sharding.reshard_all()
            self.model.train()

    def _validate(self, loader: Any) -> dict[str, float]:
        cfg = self.cfg
        totals: dict[str, float] = {}
        first = None
        stats: HeldOutStats | None = None
        it = iter(loader)
        for _ in range(cfg.train.val_batches):
            video = self._inputs(next(it))
            first = video if first is None else first
            with self._autocast():
                out = self.model.compute_loss(video)
                part = self.model.held_out_stats(video)  # see playworld.models.base.HeldOutStats
                if part is not None:
                    stats = part if stats is None else stats + part
            totals["loss"] = totals.get("loss", 0.0) + float(out.loss) / cfg.train.val_batches
            for k, v in out.metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / cfg.train.val_batches
        totals = all_reduce_mean(totals, self.dist, self.device)
        if stats is not None:
            stats = all_reduce_sum_fields(stats, self.dist)
            totals.update(stats.metrics())
            warning = stats.warning()
            if warning and self.dist.is_main:
                self.logger.warning(self.step, warning, prefix="val")
                tqdm.write(f"warning: {cfg.kind} step {self.step}: {warning}", file=sys.stderr)
        self.logger.log(self.step, totals, prefix="val")
        if self.dist.is_main and isinstance(first, torch.Tensor):  # pixels (a token-cache batch has none)
            with self._autocast():
                sheet = self.spec.samples(self.model, first[:4])  # labelled: playworld.train.samples
            if sheet is not None:
                self.logger.image(self.step, "val", sheet.render())
        return totals
