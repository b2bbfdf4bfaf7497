"""Named size presets, one registry for every model kind (not copy-pasted functions).

tiny  -- trains in minutes on 2 CPU cores; what the tests use.
small -- the CPU recipe: a CoinRun world in about two hours of 2-core CPU time for all three models.
base  -- Genie's CoinRun case study sizes (tokenizer 8 layers d=512, 1024 codes; dynamics 12 layers
         d=512; batch 48 / 36), for GPUs.
A preset gives values for a run config's sections; anything not named keeps the dataclass default.
"""

from __future__ import annotations

import copy
from typing import Any

from playworld.config import apply_overrides, from_dict
from playworld.errors import ConfigError

PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "tiny": {
        "tokenizer": {
            "model": {},
            "optim": {"lr": 1e-3, "warmup_steps": 20},
            "data": {"clip_len": 4, "batch_size": 4},
            "train": {"steps": 200, "log_every": 10, "val_every": 100, "ckpt_every": 100},
        },
        "lam": {
            "model": {},
            "optim": {"lr": 1e-3, "warmup_steps": 20},
            "data": {"clip_len": 4, "batch_size": 4},
            "train": {"steps": 200, "log_every": 10, "val_every": 100, "ckpt_every": 100},
        },
        "dynamics": {
            "model": {},
            "optim": {"lr": 1e-3, "warmup_steps": 20},
            "data": {"clip_len": 4, "batch_size": 4},
            "train": {"steps": 200, "log_every": 10, "val_every": 100, "ckpt_every": 100},
        },
    },
    "small": {
        "tokenizer": {"model": {}, "optim": {}, "data": {}, "train": {}},
        "lam": {"model": {}, "optim": {}, "data": {}, "train": {}},
        "dynamics": {"model": {}, "optim": {}, "data": {}, "train": {}},
    },
    "base": {
        "tokenizer": {"model": {}, "optim": {}, "data": {"batch_size": 48}, "train": {"steps": 300_000}},
        "lam": {"model": {}, "optim": {}, "data": {"batch_size": 36}, "train": {"steps": 200_000}},
        "dynamics": {"model": {}, "optim": {}, "data": {"batch_size": 36}, "train": {"steps": 200_000}},
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
    if data_path:
        sections.setdefault("data", {})["path"] = data_path
    cfg = RunConfig.from_dict({"kind": kind, "preset": preset, "deps": deps or {}, **sections},
                              where=f"preset {preset}/{kind}")
    return apply_overrides(cfg, overrides)


__all__ = ["PRESETS", "preset_names", "build_run_config", "from_dict"]
