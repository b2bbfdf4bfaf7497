"""An inverse dynamics model (IDM) fit on a few labelled transitions: the labelled baseline for latent BC.

VPT (Baker et al., "Video PreTraining", NeurIPS 2022) labels unlabeled video with an IDM trained on a
small labelled set and clones those keys. Given the same N labelled transitions that ``agent decode
--labels N`` reads (:func:`playworld.agents.transitions.pick_labelled`, same seed), this is the route a latent
action model has to beat: if an IDM on N labels recovers the keys better than the LAM's latent labels do
(their NMI with the recorded keys, side by side in ``policy.json``), the LAM is not earning its place on
that data. The IDM is the policy's CNN over frames t-1, t and t+1 (it sees the transition, as a LAM's
encoder does) predicting the key recorded at frame t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from playworld.agents.policy import PolicyConfig, PolicyNet
from playworld.agents.transitions import Transitions, pick_labelled
from playworld.bars import progress_bar
from playworld.config import field
from playworld.errors import ConfigError

# frames the IDM reads: t-1 and t (clamped at the episode start), then t+1
IDM_FRAMES = 3


@dataclass(frozen=True)
class IDMConfig:
    """How the IDM is fit on its N labelled transitions."""

    labels: int = field(200, help="labelled transitions the IDM is fit on (drawn as `agent decode` draws them)")
    steps: int = field(1500, help="optimiser steps")
    batch: int = field(64, help="labelled transitions per step")
    lr: float = field(5e-4, help="AdamW learning rate")
    weight_decay: float = field(0.01, help="AdamW weight decay")
    channels: int = field(32, help="first conv width of the CNN")
    seed: int = field(0, help="seed of the N transitions drawn (decode's --seed) and of the weights")

    def __post_init__(self) -> None:
        for name in ("labels", "steps", "batch", "channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"idm.{name} must be >= 1, got {getattr(self, name)}")


def idm_observations(trans: Transitions, index: Tensor) -> Tensor:
    """index (B,) -> (B, 3, H, W, 3) uint8: frames t-1, t (clamped at the episode start) and t+1."""
    now = trans.observations(index, IDM_FRAMES - 1)  # (B, 2, H, W, 3): t-1, t
    return torch.cat([now, trans.frames[trans.current[index] + 1][:, None]], dim=1)


def train_idm(trans: Transitions, num_true: int, cfg: IDMConfig, *, progress: bool = True) -> PolicyNet:
    """Fit the IDM on ``cfg.labels`` transitions of ``trans`` with a recorded key (their ``true``)."""
    idx = pick_labelled(trans.true, cfg.labels, cfg.seed)  # (N,)
    torch.manual_seed(cfg.seed)
    net = PolicyNet(PolicyConfig(num_actions=num_true, context=IDM_FRAMES, channels=cfg.channels, target="true"))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for _ in progress_bar(range(cfg.steps), desc=f"inverse dynamics ({cfg.labels} labels)", unit="step",
                          disable=not progress):
        b = idx[torch.randint(len(idx), (cfg.batch,), generator=g)]
        loss = F.cross_entropy(net(idm_observations(trans, b)), trans.true[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict_keys(idm: PolicyNet, trans: Transitions, batch: int = 512) -> Tensor:
    """(N,) long: the IDM's most likely key for every transition of ``trans``."""
    idm.eval()
    return torch.cat([idm(idm_observations(trans, torch.arange(s, min(s + batch, len(trans))))).argmax(-1)
                      for s in range(0, len(trans), batch)])


def key_agreement(pred: Tensor, true: Tensor) -> dict[str, float | int]:
    """How well predicted keys match the recorded ones where recorded: accuracy, the majority key's share
    (what always answering one key scores) and their NMI (:func:`playworld.eval.actions.nmi`)."""
    from playworld.eval.actions import confusion, nmi

    have = true >= 0
    if not bool(have.any()):
        return {}
    p, t = pred[have].numpy(), true[have].numpy()
    conf = confusion(p, t, int(p.max()) + 1, int(t.max()) + 1)
    return {"accuracy": float((p == t).mean()), "majority": float(np.bincount(t).max() / len(t)),
            "nmi": float(nmi(conf)), "transitions": int(have.sum())}
