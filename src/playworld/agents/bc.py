"""Behaviour cloning of a policy on labelled transitions (latent actions, or true ones for oracle BC).

A small resumable loop rather than the model engine: the policy is trained from fixed in-memory
transitions, with no tokens, EMA or sharded loader. Batch ``s`` is drawn from a generator seeded by
(seed, s), so a run resumed from ``AGENT_DIR/resume`` continues with exactly the batches it would have
drawn; the resume state (weights, Adam moments, step) is safetensors + JSON, written atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from playworld.agents.policy import PolicyConfig, PolicyNet, save_policy
from playworld.agents.resume import RESUME, load_resume, save_resume
from playworld.agents.transitions import Transitions
from playworld.bars import progress_bar
from playworld.config import field, to_dict
from playworld.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning: optimisation of the policy on (observation, action label) pairs."""

    steps: int = field(2000, help="optimiser steps")
    batch: int = field(64, help="transitions per step")
    lr: float = field(3e-4, help="Adam learning rate")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    seed: int = field(0, help="seed of the initial weights and of the batches")
    checkpoint_every: int = field(500, help="steps between resume checkpoints")

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bc: {name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"bc: lr={self.lr} must be > 0")


@dataclass(frozen=True)
class BCResult:
    out: Path
    steps_run: int  # in this call
    final_loss: float
    accuracy: float  # of the label on the training transitions, at the end
    seconds: float


def labels_of(trans: Transitions, target: str) -> torch.Tensor:
    """The labels BC clones, (N,) long: latent or true actions; raises if any is missing."""
    labels = trans.latent if target == "latent" else trans.true
    if len(labels) == 0 or int(labels.min()) < 0:
        what = "latent labels (no LAM labelled them)" if target == "latent" else "recorded true actions"
        raise ConfigError(f"bc: target={target!r} needs {what} on every transition")
    return labels


def _load_resume(out: Path, policy: PolicyNet, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> int:
    """The step to continue from (0 for a new run); more steps or another checkpoint interval may resume."""
    state = load_resume(out, policy, opt, meta, free={"bc": ("steps", "checkpoint_every")})
    return 0 if state is None else int(state["step"])


def train_bc(trans: Transitions, policy_cfg: PolicyConfig, cfg: BCConfig, out: str | Path, *,
             meta: dict[str, Any] | None = None, progress: bool = True, max_steps: int | None = None) -> BCResult:
    """Clone ``trans``'s labels (``policy_cfg.target``) into a new policy at ``out``, resuming a partial run.

    ``max_steps`` stops after that many steps in this call (a resumable stop, as an interrupt is).
    Writes ``out/policy.safetensors`` + ``out/policy.json`` when ``cfg.steps`` are done.
    """
    out, t0 = Path(out), time.perf_counter()
    labels = labels_of(trans, policy_cfg.target)
    if int(labels.max()) >= policy_cfg.num_actions:
        raise ConfigError(f"bc: label {int(labels.max())} out of range for num_actions={policy_cfg.num_actions}")
    torch.manual_seed(cfg.seed)
    policy = PolicyNet(policy_cfg)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run_meta = {"policy": to_dict(policy_cfg), "bc": to_dict(cfg), "target": policy_cfg.target}
    start = _load_resume(out, policy, opt, run_meta)
    end = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)
    loss_value = float("nan")
    policy.train()
    bar = progress_bar(range(start, end), desc=f"bc ({policy_cfg.target} actions)", unit="step",
                       disable=not progress, initial=start, total=cfg.steps)
    done = start  # steps whose update has been applied
    try:
        for step in bar:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            idx = torch.randint(len(trans), (cfg.batch,), generator=g)  # (B,)
            logits = policy(trans.observations(idx, policy_cfg.context))  # (B, K)
            loss = F.cross_entropy(logits, labels[idx])
            if not torch.isfinite(loss):
                raise TrainingError(f"bc: loss is {loss.item()} at step {step}; the last checkpoint in "
                                    f"{out / RESUME} is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_resume(out, policy, opt, run_meta, {"step": step + 1})
    except KeyboardInterrupt:
        save_resume(out, policy, opt, run_meta, {"step": done})
        raise
    if end < cfg.steps:
        save_resume(out, policy, opt, run_meta, {"step": end})
        return BCResult(out, end - start, loss_value, float("nan"), time.perf_counter() - t0)
    acc = accuracy(policy, trans, labels)
    save_resume(out, policy, opt, run_meta, {"step": end})
    save_policy(out, policy, {**(meta or {}), "bc": to_dict(cfg), "train_accuracy": acc, "transitions": len(trans)})
    return BCResult(out, end - start, loss_value, acc, time.perf_counter() - t0)


@torch.no_grad()
def accuracy(policy: PolicyNet, trans: Transitions, labels: torch.Tensor, batch: int = 512) -> float:
    """Fraction of ``trans`` where the policy's most likely action is ``labels``."""
    policy.eval()
    hits = 0
    for s in range(0, len(trans), batch):
        idx = torch.arange(s, min(s + batch, len(trans)))
        hits += int((policy(trans.observations(idx, policy.config.context)).argmax(-1) == labels[idx]).sum())
    return hits / len(trans)


__all__ = ["BCConfig", "BCResult", "train_bc", "accuracy", "labels_of"]
