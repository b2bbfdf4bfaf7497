"""Latent actions -> real actions: a head on the policy's features and the latent action, fit on N
labelled transitions (LAPO, Schmidt & Jiang, ICLR 2024, sec. 3.3; Genie, arXiv 2402.15391, sec. 3.3).

With N > 0 the head competes with the simplest decoder, the majority true action of each latent among the
N labels, and the better of the two by cross-validation on those N labels is kept. With N = 0 no true
action is read: each latent action maps to the real action its motion name means
(``action_names.json`` beside the run, e.g. latent 2 "right" -> RIGHT), and unnamed ones to NOOP, or,
without names, latent k to real action k (identity fallback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from playworld.agents.policy import PolicyNet
from playworld.agents.transitions import Transitions
from playworld.agents.transitions import pick_labelled as pick_keyed
from playworld.config import field, to_dict
from playworld.errors import CheckpointError, ConfigError
from playworld.io import atomic_write_text, read_json
from playworld.release import load_tensors, save_tensors

# motion names (as action_names.json writes them) -> Procgen action names
MOTION_NAMES = {"right": "RIGHT", "left": "LEFT", "up": "UP", "jump": "UP", "down": "DOWN", "fall": "DOWN",
                "jump-right": "RIGHT+UP", "jump-left": "LEFT+UP", "up-right": "RIGHT+UP", "up-left": "LEFT+UP",
                "down-right": "RIGHT+DOWN", "down-left": "LEFT+DOWN", "noop": "NOOP", "still": "NOOP",
                "stay": "NOOP", "none": "NOOP"}


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder head and its fit on N labelled transitions."""

    labels: int = field(200, help="labelled transitions the head is fit on (0: map by motion names)")
    hidden: int = field(64, help="hidden width of the head")
    steps: int = field(500, help="optimiser steps of the fit (full batch of the N transitions)")
    lr: float = field(3e-3, help="Adam learning rate")
    weight_decay: float = field(1e-3, help="AdamW weight decay (N may be tiny)")
    seed: int = field(0, help="seed of the N transitions drawn and of the head's weights")

    def __post_init__(self) -> None:
        for name, low in (("labels", 0), ("hidden", 1), ("steps", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"decode: {name}={getattr(self, name)} must be >= {low}")


class DecoderHead(nn.Module):
    """(features (B, D), latent (B,) long) -> true-action logits (B, A)."""

    def __init__(self, feature_dim: int, num_latent: int, num_true: int, hidden: int) -> None:
        super().__init__()
        self.num_latent = num_latent
        self.net = nn.Sequential(nn.Linear(feature_dim + num_latent, hidden), nn.ReLU(), nn.Linear(hidden, num_true))

    def forward(self, features: Tensor, latent: Tensor) -> Tensor:
        return self.net(torch.cat([features, F.one_hot(latent, self.num_latent).float()], -1))


class ActionDecoder(nn.Module):
    """Latent action -> true action: a head (N > 0) or a fixed table (N = 0)."""

    def __init__(self, table: Tensor | None = None, head: DecoderHead | None = None) -> None:
        super().__init__()
        if (table is None) == (head is None):
            raise ValueError("ActionDecoder: give exactly one of table and head")
        self.head = head
        self.register_buffer("table", table if table is not None else torch.zeros(0, dtype=torch.long))

    def forward(self, features: Tensor, latent: Tensor) -> Tensor:
        """features (B, D), latent (B,) -> true actions (B,) long."""
        if self.head is None:
            return self.table[latent]
        return self.head(features, latent).argmax(-1)


def name_table(num_latent: int, num_true: int, names: dict[int, str] | None, true_names: tuple[str, ...] | None
               ) -> tuple[Tensor, str]:
    """The N = 0 mapping (num_latent,) long and how it was made."""
    if names and true_names:
        noop = true_names.index("NOOP") if "NOOP" in true_names else 0
        table = torch.full((num_latent,), noop, dtype=torch.long)
        for latent, name in names.items():
            real = MOTION_NAMES.get(name.lower(), name.upper())
            if real in true_names and 0 <= latent < num_latent:
                table[latent] = true_names.index(real)
        return table, "motion names (action_names.json)"
    return torch.arange(num_latent) % num_true, "identity (no action names)"


def pick_labelled(trans: Transitions, n: int, seed: int) -> Tensor:
    """Indices (n,) of the labelled transitions: n drawn without replacement among those with a true action."""
    try:
        return pick_keyed(trans.true, n, seed)
    except ConfigError as e:
        raise ConfigError(f"decode: --labels {e}") from None


@torch.no_grad()
def policy_features(policy: PolicyNet, trans: Transitions, idx: Tensor, batch: int = 512) -> Tensor:
    policy.eval()
    return torch.cat([policy.features(trans.observations(idx[s:s + batch], policy.config.context))
                      for s in range(0, len(idx), batch)])


def fit_decoder(policy: PolicyNet, trans: Transitions, num_true: int, cfg: DecoderConfig,
                idx: Tensor | None = None) -> DecoderHead:
    """Fit a head on ``cfg.labels`` transitions' (features, latent label) -> true action (frozen policy);
    ``idx`` gives the labelled transitions instead of drawing ``cfg.labels`` of them."""
    if cfg.labels == 0:
        raise ConfigError("decode: fit_decoder needs labels >= 1 (0 maps by names)")
    if int(trans.latent.min()) < 0:
        raise ConfigError("decode: the transitions carry no latent labels; label them with the run's LAM")
    idx = pick_labelled(trans, cfg.labels, cfg.seed) if idx is None else idx
    feats, latent, true = policy_features(policy, trans, idx), trans.latent[idx], trans.true[idx]
    torch.manual_seed(cfg.seed)
    head = DecoderHead(policy.config.feature_dim, policy.config.num_actions, num_true, cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.steps):
        loss = F.cross_entropy(head(feats, latent), true)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def majority_table(latent: Tensor, true: Tensor, fallback: Tensor) -> Tensor:
    """(K,) long: the most frequent true action of each latent among the labelled ones; ``fallback[k]``
    for a latent none of them has (Genie's way of naming latent actions)."""
    table = fallback.clone()
    for k in range(len(table)):
        seen = true[latent == k]
        if len(seen):
            table[k] = seen.mode().values
    return table


def fit_best(policy: PolicyNet, trans: Transitions, num_true: int, cfg: DecoderConfig, fallback: Tensor,
             folds: int = 5) -> tuple[ActionDecoder, str, dict[str, float]]:
    """The better of the head and the majority table on ``cfg.labels`` labels, chosen by ``folds``-fold
    cross-validation on those labels alone (a head on features overfits a few dozen labels; a table cannot
    use the observation). Returns the chosen decoder refit on all N, its description and the CV accuracies."""
    idx = pick_labelled(trans, cfg.labels, cfg.seed)
    hits = {"head": 0.0, "majority": 0.0}
    k = min(folds, len(idx))
    for f in range(k):
        test = idx[f::k]
        train = torch.cat([idx[g::k] for g in range(k) if g != f])
        if len(train) == 0:
            continue
        head = fit_decoder(policy, trans, num_true, cfg, idx=train)
        table = majority_table(trans.latent[train], trans.true[train], fallback)
        with torch.no_grad():
            feats = policy_features(policy, trans, test)
            hits["head"] += float((head(feats, trans.latent[test]).argmax(-1) == trans.true[test]).sum())
        hits["majority"] += float((table[trans.latent[test]] == trans.true[test]).sum())
    cv = {name: h / len(idx) for name, h in hits.items()}
    if cv["head"] > cv["majority"]:
        return ActionDecoder(head=fit_decoder(policy, trans, num_true, cfg, idx=idx)), f"head on {cfg.labels} labels", cv
    table = majority_table(trans.latent[idx], trans.true[idx], fallback)
    return ActionDecoder(table=table), f"majority true action per latent of {cfg.labels} labels", cv


def decoder_accuracy(policy: PolicyNet, decoder: ActionDecoder, trans: Transitions) -> float:
    """Fraction of ``trans`` (with true actions) whose latent label the decoder maps to the true action."""
    idx = torch.nonzero(trans.true >= 0).flatten()
    with torch.no_grad():
        pred = decoder(policy_features(policy, trans, idx), trans.latent[idx])
    return float((pred == trans.true[idx]).float().mean())


def decoder_path(agent_dir: Path, labels: int) -> Path:
    return Path(agent_dir) / f"decoder-n{labels}"


def save_decoder(agent_dir: Path, decoder: ActionDecoder, cfg: DecoderConfig, meta: dict[str, Any]) -> Path:
    d = decoder_path(agent_dir, cfg.labels)
    save_tensors(d / "model.safetensors", decoder.state_dict())
    atomic_write_text(d / "config.json", json.dumps({"decoder": to_dict(cfg), **meta}, indent=2) + "\n")
    return d


def load_decoder(agent_dir: Path, labels: int, feature_dim: int, num_latent: int) -> tuple[ActionDecoder, dict]:
    d = decoder_path(agent_dir, labels)
    meta = read_json(d / "config.json", CheckpointError, "decoder config")
    state = load_tensors(d / "model.safetensors")
    if state["table"].numel():  # names (N = 0) or the majority table
        decoder = ActionDecoder(table=state["table"])
    else:
        head = DecoderHead(feature_dim, num_latent, int(meta["num_true"]), int(meta["decoder"]["hidden"]))
        decoder = ActionDecoder(head=head)
        try:
            decoder.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{d / 'model.safetensors'}: does not match its config ({e})") from e
    return decoder.eval(), meta


def available_decoders(agent_dir: Path) -> list[int]:
    """The N of every decoder saved in ``agent_dir``, ascending."""
    out = []
    for p in Path(agent_dir).glob("decoder-n*"):
        if (p / "model.safetensors").is_file() and p.name[len("decoder-n"):].isdigit():
            out.append(int(p.name[len("decoder-n"):]))
    return sorted(out)
