"""Named size presets, one registry for every model kind (not copy-pasted functions).

tiny  -- trains in minutes on 2 CPU cores; what the tests use.
small -- the CPU recipe: a CoinRun world in under two hours on 2 CPU cores for all three models
         (tokenizer 2,000 steps, LAM 1,500, dynamics 2,800 of which the last 20% self-forced, one pass per
         frame; `playworld train all --preset small --threads 2`, docs/training.md).
base  -- Genie's CoinRun case study sizes (tokenizer 8 layers d=512, 1024 codes; dynamics 12 layers
         d=512; batch 48 / 36), for GPUs.
A preset gives values for a run config's sections; anything not named keeps the dataclass default.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from playworld.config import apply_overrides, from_dict
from playworld.errors import ConfigError

# Every preset's LAM picks each transition's action by a balanced assignment (docs/models.md, "Balanced
# assignment"): on four datasets and two seeds it kept the encoder's actions alive where picking the
# smallest error collapsed them. LAMConfig's own default stays "argmin", the rule that runs made before
# the option existed recorded by leaving it out.
_LAM_ASSIGN = {"assign": "balanced", "assign_temperature": 0.1}

# The small tokenizer also matches edges (L1 of pixel differences) and frame-to-frame change: at 700 steps it
# reconstructed held-out CoinRun 0.85-1.9 dB better on two seeds, motion kept alike (docs/models.md).
_TOKENIZER_LOSS = {"edge_weight": 0.1, "temporal_weight": 1.0}

# The small dynamics model learns from real frames for the first 80% of its steps and from its own rollouts
# (self-forcing) for the last 20%: the shipped CoinRun world had the same two phases as two runs (2,900 plain
# steps, then a 700-step self-forced fine-tune, whose held keys kept 0.86 of the real game's pixel change at
# steps 20-30 against 0.31 after a plain fine-tune; docs/models.md).
_SELF_FORCED_END = {"self_forcing": 1.0, "self_forcing_start": 0.8}
# The small dynamics model predicts each frame in one pass (dynamics.one_pass) from its first step: 2,800 such
# steps (76 min) made a CoinRun world more accurate and consistent than the two-pass MaskGIT world of 3,600
# steps, as real and alive at its copy penalty of 3 (which `train all` writes into the world's
# play_setting.json), and 1.55x faster to play (docs/models.md, "One pass from the first step").
_ONE_PASS = {"one_pass": True}
# ... both MaskGIT's: a preset run switched to another backend (--set model.backend=flow) trains without
# them (the flow backend refuses these fields; its own noise on the past is dynamics.flow's).
_MASKGIT_ONLY = (*_SELF_FORCED_END, *_ONE_PASS)

PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "tiny": {
        "tokenizer": {
            "model": {"dim": 64, "enc_depth": 2, "dec_depth": 2, "heads": 4, "num_codes": 256, "code_dim": 16},
            "optim": {"lr": 1e-3, "warmup_steps": 20},
            "data": {"clip_len": 4, "batch_size": 4},
            "train": {"steps": 200, "log_every": 10, "val_every": 100, "ckpt_every": 100},
        },
        "lam": {
            "model": {"dim": 64, "encoder_depth": 2, "decoder_depth": 1, "head_depth": 1, "heads": 4,
                      **_LAM_ASSIGN},
            "optim": {"lr": 1e-3, "warmup_steps": 20},
            "data": {"clip_len": 4, "batch_size": 4},
            "train": {"steps": 200, "log_every": 10, "val_every": 100, "ckpt_every": 100},
        },
        "dynamics": {
            "model": {"dim": 64, "depth": 2, "heads": 4},
            "optim": {"lr": 1e-3, "warmup_steps": 20},
            "data": {"clip_len": 4, "batch_size": 4},
            "train": {"steps": 200, "log_every": 10, "val_every": 100, "ckpt_every": 100},
        },
    },
    "small": {
        "tokenizer": {
            "model": {"dim": 128, "enc_depth": 3, "dec_depth": 3, "heads": 4, "num_codes": 1024, "code_dim": 32,
                      "ema_decay": 0.95, **_TOKENIZER_LOSS},
            "optim": {"lr": 1e-3, "warmup_steps": 200},
            "data": {"clip_len": 4, "batch_size": 8},
            "train": {"steps": 2000, "log_every": 25, "val_every": 500, "ckpt_every": 250, "ema_decay": 0.999},
        },
        "lam": {
            "model": {"dim": 128, "encoder_depth": 2, "decoder_depth": 2, "head_depth": 1, "heads": 4,
                      **_LAM_ASSIGN},
            "optim": {"lr": 1e-3, "warmup_steps": 100},
            "data": {"clip_len": 4, "batch_size": 16},
            "train": {"steps": 1500, "log_every": 25, "val_every": 250, "ckpt_every": 100},
        },
        "dynamics": {
            "model": {"dim": 192, "depth": 4, "heads": 6, **_SELF_FORCED_END, **_ONE_PASS},
            "optim": {"lr": 1e-3, "warmup_steps": 100},
            "data": {"clip_len": 8, "batch_size": 8},
            "train": {"steps": 2800, "log_every": 25, "val_every": 500, "ckpt_every": 250},
        },
    },
    "base": {
        "tokenizer": {
            "model": {"dim": 512, "enc_depth": 8, "dec_depth": 8, "heads": 8, "num_codes": 1024, "code_dim": 32},
            "optim": {"lr": 3e-4, "warmup_steps": 2000},
            "data": {"clip_len": 16, "batch_size": 48},
            "train": {"steps": 300_000, "log_every": 100, "val_every": 5000, "ckpt_every": 2000, "ema_decay": 0.9999},
        },
        "lam": {
            "model": {"dim": 512, "encoder_depth": 8, "decoder_depth": 6, "head_depth": 2, "heads": 8,
                      **_LAM_ASSIGN},
            "optim": {"lr": 3e-4, "warmup_steps": 2000},
            "data": {"clip_len": 16, "batch_size": 36},
            "train": {"steps": 200_000, "log_every": 100, "val_every": 5000, "ckpt_every": 2000},
        },
        "dynamics": {
            "model": {"dim": 512, "depth": 12, "heads": 8},
            "optim": {"lr": 3e-4, "warmup_steps": 2000},
            "data": {"clip_len": 16, "batch_size": 36},
            "train": {"steps": 200_000, "log_every": 100, "val_every": 5000, "ckpt_every": 2000},
        },
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def build_run_config(kind: str, preset: str, *, data_path: str = "", overrides: list[str] | None = None,
                     deps: dict[str, str] | None = None):
    """The run config of ``kind`` at ``preset``, with ``--set`` overrides applied and validated."""
    from playworld.train.config import RunConfig

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {preset_names()}")
    sections = copy.deepcopy(PRESETS[preset][kind])
    if kind == "dynamics" and _override(overrides, "model.backend") not in (None, "maskgit"):
        for name in _MASKGIT_ONLY:
            sections.get("model", {}).pop(name, None)
    if data_path:
        sections.setdefault("data", {})["path"] = data_path
    deps = {name: str(Path(where).expanduser().resolve()) for name, where in (deps or {}).items()}
    cfg = RunConfig.from_dict({"kind": kind, "preset": preset, "deps": deps, **sections},
                              where=f"preset {preset}/{kind}")
    cfg = apply_overrides(cfg, overrides)
    if cfg.data.path:  # recorded absolute, as deps are: a run's config.json is read from any directory
        data_dir = str(Path(cfg.data.path).expanduser().resolve())
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data_dir))
    if kind == "dynamics" and cfg.deps:
        cfg = _match_dependencies(cfg)
    if kind == "lam" and cfg.model.label_weight > 0 and cfg.model.label_actions == 0 and cfg.data.path:
        cfg = _match_label_actions(cfg)
    return cfg


def _override(overrides: list[str] | None, key: str) -> str | None:
    """The value the last ``--set key=value`` of ``overrides`` gives ``key``, None if none does."""
    found = None
    for item in overrides or []:
        name, _, value = item.partition("=")
        if name.strip() == key:
            found = value.strip()
    return found


def _match_label_actions(cfg):
    """A LAM that reads recorded actions scores them over the dataset's action space (its manifest's
    num_actions); a dataset without actions is refused here, before any training."""
    from playworld.data.format import Dataset

    dataset = Dataset(cfg.data.path)
    if dataset.num_actions is None:
        raise ConfigError(f"{cfg.data.path}: lam.label_weight > 0 reads recorded actions, but this dataset has none "
                          "(its manifest's num_actions is null): leave model.label_weight at 0")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, label_actions=dataset.num_actions))


def _match_dependencies(cfg):
    """Set the dynamics model's vocabulary, token grid and action count from its tokenizer and LAM runs."""
    from playworld.release import read_run_config

    found = {}
    for dep in ("tokenizer", "lam"):
        path = Path(cfg.deps.get(dep, ""))
        if cfg.deps.get(dep) and (path / "config.json").is_file():
            found[dep] = read_run_config(path).model
    model = cfg.model
    if "tokenizer" in found:
        tok = found["tokenizer"]
        side = tok.image_size // tok.patch
        model = dataclasses.replace(model, vocab_size=tok.codebook_size, token_height=side, token_width=side)
        if model.backend == "flow":  # the flow backend's latents are the tokenizer's codes' width
            width = tok.code_dim if tok.quantizer == "vq" else len(tok.fsq_levels)
            model = dataclasses.replace(model, flow=dataclasses.replace(model.flow, latent_dim=width))
    if "lam" in found:
        model = dataclasses.replace(model, num_actions=found["lam"].num_actions)
    return dataclasses.replace(cfg, model=model)


__all__ = ["PRESETS", "preset_names", "build_run_config", "from_dict"]
