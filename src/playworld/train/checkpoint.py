"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

Two kinds (STYLE.md habit 7):
- release weights: ``DIR/model.safetensors`` + ``DIR/config.json``, read and written by
  :mod:`playworld.release` (beside the models, so that loading a world never imports this engine);
  its names are re-exported here;
- resume state: ``RUN/checkpoints/step-NNNNNNN/`` holding model, optimizer, EMA and RNG tensors
  (safetensors) and ``state.json`` (step, loader position, Python/NumPy RNG, sha256 of every file).

Every write goes to a temporary name and is renamed into place, so a crash (or SIGKILL) in the
middle of saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from playworld.errors import CheckpointError
from playworld.io import atomic_write_text, read_json
from playworld.release import (  # noqa: F401  (re-exported: the release reader and writer live beside the models)
    check_state_dict,
    file_record,
    load_into,
    load_model,
    load_tensors,
    read_checkpoint_config,
    read_release,
    read_release_config,
    save_release,
    save_tensors,
    sha256_file,
    unfinished,
    verify_release_files,
)

STATE_VERSION = 1


# ----------------------------------------------------------------------------- optimizer

def optimizer_to_tensors(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict (``Optimizer.state_dict()``'s layout) into tensors (safetensors) and
    JSON (param groups, scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                                 meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The optimizer state dict that :func:`optimizer_to_tensors` split, after checking that its parameter
    groups are ``opt``'s."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = meta["param_groups"]
    current = opt.state_dict()["param_groups"]
    _check_same_groups(groups, current, where)
    # a checkpoint from before groups carried names resumes with the current names
    groups = [{"names": now["names"], **saved} if "names" in now else saved for saved, now in zip(groups, current)]
    return {"state": state, "param_groups": groups}


def _check_same_groups(saved: list[dict[str, Any]], current: list[dict[str, Any]], where: str) -> None:
    """Raise CheckpointError unless the checkpoint's optimizer groups hold the same parameters as the
    current optimizer's, naming the first that moved (groups carry ``names`` since weight decay was
    decided by module type; older checkpoints are compared by group sizes only)."""
    sizes = [len(g["params"]) for g in saved], [len(g["params"]) for g in current]
    names = [g.get("names") for g in saved], [g.get("names") for g in current]
    if all(n is not None for n in names[0] + names[1]):
        if len(saved) == len(current) and names[0] == names[1]:
            return
        was = {n: i for i, group in enumerate(names[0]) for n in group}
        now = {n: i for i, group in enumerate(names[1]) for n in group}
        moved = [n for n in sorted(set(was) | set(now)) if was.get(n) != now.get(n)]
        detail = (f"e.g. {moved[0]!r} is in group {was.get(moved[0])} of the checkpoint and group "
                  f"{now.get(moved[0])} now ({len(moved)} parameter(s) differ)" if moved else "their order differs")
    elif sizes[0] == sizes[1]:
        return
    else:
        detail = (f"group sizes {sizes[0]} vs {sizes[1]}; a checkpoint written before weight decay was decided "
                  "by module type (embeddings, position tables, codebooks and the LAM's kernels moved to the "
                  "no-decay group) cannot resume with this version")
    raise CheckpointError(
        f"{where}: the optimizer's parameter groups differ from the model's ({detail}). Its released weights "
        "still load (playworld.load); to train on, start a fresh run directory, or finish this run with the "
        "playworld version that began it")


# ----------------------------------------------------------------------------- RNG

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy": _np_state_to_json(np.random.get_state())}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    np.random.set_state(_np_state_from_json(meta["numpy"]))


def _np_state_to_json(st: tuple) -> list:
    return [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]


def _np_state_from_json(st: list) -> tuple:
    return (st[0], np.asarray(st[1], dtype=np.uint32), st[2], st[3], st[4])


# ----------------------------------------------------------------------------- resume state

@dataclass
class ResumeState:
    """What a resumable checkpoint restores besides weights."""

    step: int
    loader: dict[str, Any]
    extra: dict[str, Any]


@dataclass
class CheckpointContents:
    """A resumable checkpoint as read: resume state, full weights, optimizer state dict, EMA tensors."""

    state: ResumeState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    ema: dict[str, torch.Tensor] | None


class CheckpointManager:
    """Resumable checkpoints under ``RUN/checkpoints``; ``latest`` names the newest complete one."""

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not path.is_dir():
            raise CheckpointError(f"{pointer}: points to {path.name}, which does not exist")
        return path

    def save(self, *, step: int, weights: dict[str, torch.Tensor], optimizer: dict[str, Any],
             ema: dict[str, torch.Tensor] | None, loader: dict[str, Any], config: dict[str, Any],
             extra: dict[str, Any] | None = None) -> Path:
        """Write the model's ``weights`` (its full state dict), the ``optimizer``'s state dict
        (``Optimizer.state_dict()``'s layout), EMA, RNG, loader position and config as ``step-NNNNNNNN``."""
        name = f"step-{step:08d}"
        final = self.root / name
        tmp = self.root / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(tmp / "model.safetensors", weights)
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        if ema is not None:
            save_tensors(tmp / "ema.safetensors", ema)
        rng_tensors, rng_meta = rng_state()
        save_tensors(tmp / "rng.safetensors", rng_tensors)
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        state = {"version": STATE_VERSION, "step": step, "loader": loader, "optimizer": opt_meta,
                 "rng": rng_meta, "extra": extra or {}, "sha256": files}
        atomic_write_text(tmp / "state.json", json.dumps(state) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(self.root / "latest", name + "\n")
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in done[: max(len(done) - self.keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def read(self, path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             device: torch.device) -> CheckpointContents:
        """Verify and read the checkpoint at ``path``, checked against ``model`` and ``optimizer``
        (which are left as they are), and restore the RNG."""
        path = Path(path)
        state_file = path / "state.json"
        state = read_json(state_file, CheckpointError, f"state of checkpoint {path.name}")
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(f"{state_file}: unsupported checkpoint version {state.get('version')}")
        for fname, digest in state["sha256"].items():
            f = path / fname
            if not f.is_file():
                raise CheckpointError(f"{f}: listed in state.json but missing")
            if sha256_file(f) != digest:
                raise CheckpointError(f"{f}: checksum mismatch (file corrupt or modified)")
        weights = load_tensors(path / "model.safetensors", device)
        check_state_dict(model, weights, str(path / "model.safetensors"))
        opt_state = optimizer_state_from_tensors(optimizer, load_tensors(path / "optimizer.safetensors", device),
                                                 state["optimizer"], str(path / "optimizer.safetensors"))
        ema = load_tensors(path / "ema.safetensors", device) if (path / "ema.safetensors").is_file() else None
        set_rng_state(load_tensors(path / "rng.safetensors"), state["rng"])
        resume = ResumeState(step=int(state["step"]), loader=state["loader"], extra=state.get("extra", {}))
        return CheckpointContents(resume, weights, opt_state, ema)

    def load(self, path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             device: torch.device) -> tuple[ResumeState, dict[str, torch.Tensor] | None]:
        """Restore model, optimizer and RNG in place; returns the resume state and EMA tensors."""
        got = self.read(path, model=model, optimizer=optimizer, device=device)
        model.load_state_dict(got.weights)
        try:
            optimizer.load_state_dict(got.optimizer)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{Path(path) / 'optimizer.safetensors'}: optimizer state does not fit the "
                                  f"model ({e})") from e
        return got.state, got.ema
