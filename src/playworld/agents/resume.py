"""Resume state of an agent's training loop (behaviour cloning, PPO): weights, Adam moments and a JSON
record in ``OUT/resume/``, safetensors + JSON only, each file written atomically.

The record holds the run's settings (``meta``: what the network and the loop were built with) beside
its progress; a re-run resumes only a run with the same settings, except the fields a caller names as
free to change (more steps, another checkpoint interval).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from playworld.errors import CheckpointError
from playworld.io import atomic_write_text, read_json
from playworld.release import check_state_dict, load_tensors, save_tensors
from playworld.train.checkpoint import optimizer_state_from_tensors, optimizer_to_tensors

RESUME = "resume"


def save_resume(out: Path, net: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any],
                progress: dict[str, Any]) -> None:
    """Write ``net``'s weights, ``opt``'s state and {optimizer, **meta, **progress} to ``out/resume``."""
    d = out / RESUME
    tensors, opt_meta = optimizer_to_tensors(opt.state_dict())
    save_tensors(d / "weights.safetensors", net.state_dict())
    save_tensors(d / "optimizer.safetensors", tensors)
    atomic_write_text(d / "state.json", json.dumps({"optimizer": opt_meta, **meta, **progress}) + "\n")


def load_resume(out: Path, net: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any],
                free: dict[str, tuple[str, ...]]) -> dict[str, Any] | None:
    """Load ``out/resume`` into ``net`` and ``opt`` and return its record, or None if there is none.

    Raises CheckpointError naming the file if any ``meta`` entry differs from the record's, ignoring the
    fields ``free[key]`` of a dict entry ``key``."""
    d = out / RESUME
    if not (d / "state.json").is_file():
        return None
    state = read_json(d / "state.json", CheckpointError, "resume state")

    def same(key: str, value: Any) -> Any:
        return {k: v for k, v in value.items() if k not in free[key]} if key in free else value

    for key in meta:
        if key not in state or same(key, state[key]) != same(key, meta[key]):
            raise CheckpointError(f"{d / 'state.json'}: a run with another {key} ({state.get(key)} vs {meta[key]}); "
                                  f"choose another --out or delete {d} to start over")
    weights = load_tensors(d / "weights.safetensors")
    check_state_dict(net, weights, str(d / "weights.safetensors"))
    net.load_state_dict(weights)
    opt.load_state_dict(optimizer_state_from_tensors(opt, load_tensors(d / "optimizer.safetensors"),
                                                     state["optimizer"], str(d)))
    return state
