"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

Two kinds (STYLE.md habit 7):
- release weights: ``DIR/model.safetensors`` + ``DIR/config.json`` (the run config, plus the sha256
  and size of model.safetensors under ``"files"``; from a trainer, ``"progress"``: step, steps, finished),
  loadable with :func:`load_model`, which checks the files and warns on an unfinished run;
- resume state: ``RUN/checkpoints/step-NNNNNNN/`` holding model, optimizer, EMA and RNG tensors
  (safetensors) and ``state.json`` (step, loader position, Python/NumPy RNG, sha256 of every file).

Every write goes to a temporary name and is renamed into place, so a crash (or SIGKILL) in the
middle of saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from playworld.errors import CheckpointError, UnfinishedRunWarning, UnverifiedWeightsWarning
from playworld.io import atomic_write, atomic_write_text, read_json

STATE_VERSION = 1


# ----------------------------------------------------------------------------- tensors

def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors copied to contiguous CPU memory).

    ``metadata`` is stored as one JSON string under the key "playworld": safetensors keeps metadata in
    a hash map whose order varies between processes, and files must be byte-identical for equal content.
    """
    if metadata:
        metadata = {"playworld": json.dumps(metadata, sort_keys=True)}
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped entries."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:4]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:4]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:4]))
    if problems:
        raise CheckpointError(f"{where}: weights do not match the model built from its config: "
                              + ", ".join(problems))


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


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    return read_json(Path(path) / "config.json", CheckpointError, "config")


# ----------------------------------------------------------------------------- release weights

def file_record(path: Path) -> dict[str, Any]:
    """What a release's config.json records of one weight file: ``{"sha256": hex, "bytes": size}``."""
    path = Path(path)
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def save_release(out_dir: Path, weights: dict[str, torch.Tensor], config: dict[str, Any], *,
                 step: int | None = None, steps: int | None = None) -> None:
    """Write ``out_dir/model.safetensors``, then ``out_dir/config.json``: the run config plus
    ``"files": {"model.safetensors": {"sha256", "bytes"}}``, which :func:`load_model` checks (each atomically).
    A trainer passes ``step`` and ``steps``: recorded as ``"progress": {"step", "steps", "finished"}``, so the
    weights of a run stopped before ``steps`` never pass for finished ones (loaders warn, dynamics refuses them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file = out_dir / "model.safetensors"
    save_tensors(weights_file, weights, metadata={"kind": config["kind"]})
    config = {**config, "files": {weights_file.name: file_record(weights_file)}}
    if step is not None and steps is not None:
        config["progress"] = {"step": step, "steps": steps, "finished": step >= steps}
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def verify_release_files(model_dir: Path, config: dict[str, Any]) -> None:
    """Check every file a release's ``config.json`` lists under ``"files"`` (size, then sha256); a
    mismatch raises CheckpointError naming the file. A config without the entry (a release written
    before playworld recorded hashes) warns (UnverifiedWeightsWarning) naming the directory."""
    model_dir = Path(model_dir)
    where = model_dir / "config.json"
    files = config.get("files")
    if files is None:
        warnings.warn(f"{model_dir}: config.json records no sha256 of model.safetensors (written before playworld "
                      "recorded them), so these weights are loaded unverified", UnverifiedWeightsWarning,
                      stacklevel=3)
        return
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(f"{where}: \"files\" must map each weight file (model.safetensors at least) to "
                              "its {\"sha256\", \"bytes\"}")
    for name, record in files.items():
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(f"{where}: \"files\" lists {name!r}, not a file name in {model_dir}")
        digest, size = (record.get("sha256"), record.get("bytes")) if isinstance(record, dict) else (None, None)
        hex_digest = isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")
        if not (hex_digest and isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            raise CheckpointError(f"{where}: files.{name} must be {{\"sha256\": 64 hex digits, \"bytes\": int}}, "
                                  f"got {record!r}")
        path = model_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in config.json but missing")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{path}: {actual} bytes, but config.json records {size} (truncated, or "
                                  "replaced by another file)")
        actual_digest = sha256_file(path)
        if actual_digest != digest:
            raise CheckpointError(f"{path}: sha256 {actual_digest} differs from the {digest} that config.json "
                                  "records (file corrupt or modified)")


def unfinished(config: dict[str, Any], where: Path) -> str | None:
    """"step N of M" if a release's config records that its run stopped before its last step, else None
    (finished, or a release from before progress was recorded)."""
    progress = config.get("progress")
    if progress is None:
        return None
    if not (isinstance(progress, dict) and isinstance(progress.get("finished"), bool)
            and isinstance(progress.get("step"), int) and isinstance(progress.get("steps"), int)):
        raise CheckpointError(f"{where}: \"progress\" must be {{\"step\": int, \"steps\": int, \"finished\": bool}}, "
                              f"got {progress!r}")
    return None if progress["finished"] else f"step {progress['step']} of {progress['steps']}"


def read_release_config(model_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of the release in ``model_dir``, after checking the weight files it lists
    (:func:`verify_release_files`); a missing config.json raises CheckpointError saying so."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        beside = " beside model.safetensors" if (model_dir / "model.safetensors").is_file() else ""
        raise CheckpointError(f"{config_file}: missing{beside}; release weights are model.safetensors with the "
                              "config.json that `playworld train` writes next to it")
    config = read_json(config_file, CheckpointError, "config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    verify_release_files(model_dir, config)
    stopped = unfinished(config, config_file)
    if stopped:
        warnings.warn(f"{model_dir}: an unfinished run ({stopped}): these are its latest weights, not its final "
                      "ones; re-run its `playworld train` command to finish it", UnfinishedRunWarning, stacklevel=3)
    return config


def read_release(model_dir: Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, torch.Tensor]]:
    """The run config (a :class:`~playworld.train.config.RunConfig`) and weights of the release in
    ``model_dir``, the weights checked against the sha256 and size its config.json records."""
    from playworld.train.config import RunConfig

    model_dir = Path(model_dir)
    cfg = RunConfig.from_dict(read_release_config(model_dir), where=str(model_dir / "config.json"))
    return cfg, load_tensors(model_dir / "model.safetensors", device)


def load_into(module: nn.Module, model_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    """Load release ``weights`` read from ``model_dir`` into ``module``, naming the file on a mismatch."""
    check_state_dict(module, weights, str(Path(model_dir) / "model.safetensors"))
    module.load_state_dict(weights)


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build the released model in ``model_dir`` from its config and load its weights (eval mode),
    after checking them against the sha256 and size its config.json records."""
    from playworld.train.registry import get_spec

    cfg, weights = read_release(model_dir, device)
    module = get_spec(cfg.kind).build_release(cfg.model)
    load_into(module, model_dir, weights)
    return module.to(device).eval()
