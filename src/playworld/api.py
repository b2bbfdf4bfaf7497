"""`playworld.load(RUN)`: the trained models of a run directory, with their configs.

A run directory is either one model's directory (``model.safetensors`` + ``config.json``, what
`playworld train tokenizer|lam|dynamics --out DIR` writes) or the parent that
`playworld train all --out RUN` writes: ``RUN/tokenizer``, ``RUN/lam``, ``RUN/dynamics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from playworld.errors import CheckpointError

PARTS = ("tokenizer", "lam", "dynamics")

DEFAULT_RUN = Path(__file__).resolve().parent / "assets" / "coinrun"
"""The CoinRun world shipped with the package (tokenizer/, lam/, dynamics/ and prompts/ of held-out-level
start frames): what `playworld play`, :meth:`playworld.World.load` and :func:`playworld.make_env` use
when given no run."""


def resolve_run(run: str | Path | None) -> Path:
    """``run`` or, if None, the shipped default world; a missing directory raises naming the path."""
    if run is not None:
        return Path(run)
    if not (DEFAULT_RUN / "dynamics").is_dir():
        raise CheckpointError(f"no RUN given and the default world {DEFAULT_RUN} is missing (not shipped in "
                              "this checkout yet); pass a run directory written by `playworld train all --out RUN`")
    return DEFAULT_RUN


def run_prompts(run_dir: str | Path) -> Path | None:
    """``run_dir/prompts`` when the run ships start frames there (a dataset, as the shipped world does),
    else None: the start frames `playworld play`, `playworld rollout` and :func:`playworld.make_env` use
    when given none."""
    prompts = Path(run_dir) / "prompts"
    return prompts if (prompts / "manifest.json").is_file() else None


@dataclass
class LoadedRun:
    """The models found in a run (None where a part is absent), each part's run config and the directory it
    was loaded from (``run/part``, or ``run`` itself when it is a single model's release)."""

    path: Path
    tokenizer: nn.Module | None = None
    lam: nn.Module | None = None
    dynamics: nn.Module | None = None
    configs: dict[str, Any] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)

    def require(self, *parts: str) -> None:
        missing = [p for p in parts if getattr(self, p) is None]
        if missing:
            raise CheckpointError(f"{self.path}: no trained {', '.join(missing)} here "
                                  f"(expected {', '.join(str(self.path / p) for p in missing)})")


def _is_model_dir(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def load(run: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load every trained model in ``run`` (eval mode, on ``device``)."""
    from playworld.release import load_model, read_checkpoint_config, read_run_config

    path = Path(run)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory")
    out = LoadedRun(path=path)
    for d in (path, *(path / p for p in PARTS)):
        if (d / "model.safetensors").is_file() and not (d / "config.json").is_file():
            raise CheckpointError(f"{d / 'config.json'}: missing beside {d / 'model.safetensors'}; release weights "
                                  "need the config.json that `playworld train` writes next to them")
    dirs = {p: path / p for p in PARTS if _is_model_dir(path / p)}
    if _is_model_dir(path):
        kind = read_checkpoint_config(path).get("kind")
        if kind not in PARTS:
            raise CheckpointError(f"{path / 'config.json'}: unknown kind {kind!r}")
        dirs[kind] = path
    if not dirs:
        raise CheckpointError(f"{path}: holds no released model (model.safetensors + config.json), "
                              f"neither directly nor in {', '.join(PARTS)}/")
    for part, d in dirs.items():
        setattr(out, part, load_model(d, device))
        out.configs[part] = read_run_config(d)
        out.dirs[part] = d
    return out
