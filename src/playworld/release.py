"""Release weights, read and written beside the models: ``DIR/model.safetensors`` + ``DIR/config.json``.

The config is the run config plus the sha256 and size of model.safetensors under ``"files"`` (and, from
a trainer, ``"progress"``: step, steps, finished). :func:`load_model` builds the model from its config and
loads its weights after checking them. Loading a world for play or eval goes through here and never
imports the training engine (``playworld.train.engine``, DDP, tqdm); the engine's checkpoints
(:mod:`playworld.train.checkpoint`) use these readers and writers, not the other way round.

Every write goes to a temporary name and is renamed into place; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from playworld.errors import CheckpointError, UnfinishedRunWarning, UnverifiedWeightsWarning
from playworld.io import atomic_write, atomic_write_text, read_json

if TYPE_CHECKING:
    from playworld.train.config import RunConfig

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


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], where: str,
                     optional: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped entries (entries named in
    ``optional`` may be missing)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - set(optional))
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



def read_checkpoint_config(path: Path) -> dict[str, Any]:
    return read_json(Path(path) / "config.json", CheckpointError, "config")


def read_run_config(path: Path) -> RunConfig:
    """The validated run config of the run or release in ``path`` (errors name its config.json)."""
    from playworld.train.config import RunConfig

    return RunConfig.from_dict(read_checkpoint_config(path), where=str(Path(path) / "config.json"))


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


def load_into(module: nn.Module, model_dir: Path, weights: dict[str, torch.Tensor],
              optional: frozenset[str] | set[str] = frozenset()) -> None:
    """Load release ``weights`` read from ``model_dir`` into ``module``, naming the file on a mismatch.
    Entries named in ``optional`` may be missing: they keep the module's own values."""
    check_state_dict(module, weights, str(Path(model_dir) / "model.safetensors"), optional)
    module.load_state_dict(weights, strict=not optional)


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build the released model in ``model_dir`` from its config and load its weights (eval mode),
    after checking them against the sha256 and size its config.json records."""
    from playworld.train.registry import get_spec

    cfg, weights = read_release(model_dir, device)
    module = get_spec(cfg.kind).build_release(cfg.model)
    load_into(module, model_dir, weights)
    return module.to(device).eval()
