"""The agent's policy: a small CNN over the last ``context`` frames -> logits over actions.

The same network clones latent actions (latent BC) or true actions (oracle BC); :meth:`PolicyNet.features`
is the trunk the action decoder reads (LAPO, Schmidt & Jiang, ICLR 2024, sec. 3.3).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from playworld.config import field, from_dict, to_dict
from playworld.errors import CheckpointError, ConfigError
from playworld.io import atomic_write_text, read_json
from playworld.release import check_state_dict, load_tensors, save_tensors

POLICY_WEIGHTS, POLICY_CONFIG = "policy.safetensors", "policy.json"


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Shape of the policy network."""

    num_actions: int = field(help="actions the policy chooses from (K latent, or the true action count)")
    context: int = field(2, help="frames the policy sees: the current one and context-1 before it")
    channels: int = field(32, help="channels of the first conv layer (the next two have twice as many)")
    feature_dim: int = field(128, help="width of features(), the trunk the action decoder reads")
    target: Literal["latent", "true"] = field("latent", help="what the policy clones: latent or true actions")

    def __post_init__(self) -> None:
        for name in ("num_actions", "context", "channels", "feature_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"policy: {name}={getattr(self, name)} must be >= 1")
        if self.target not in ("latent", "true"):
            raise ConfigError(f"policy: target={self.target!r} must be 'latent' or 'true'")


class PolicyNet(nn.Module):
    """frames (B, context, H, W, 3) uint8 or float in [0, 1] -> logits (B, num_actions)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.trunk = nn.Sequential(
            nn.Conv2d(3 * config.context, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # 64x64 -> 8x8 -> 4x4; a 16x16 test world -> 2x2 -> 4x4
            nn.Flatten(), nn.Linear(2 * c * 16, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.num_actions)

    def features(self, frames: Tensor) -> Tensor:
        """frames (B, context, H, W, 3) -> (B, feature_dim)."""
        if frames.ndim != 5 or frames.shape[1] != self.config.context or frames.shape[-1] != 3:
            raise ValueError(f"policy: frames must be (B, {self.config.context}, H, W, 3), got {tuple(frames.shape)}")
        x = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
        return self.trunk(rearrange(x, "b t h w c -> b (t c) h w"))

    def forward(self, frames: Tensor) -> Tensor:
        return self.head(self.features(frames))


def next_history(history: Tensor | None, frames: np.ndarray, first: np.ndarray, context: int) -> Tensor:
    """(N, context, H, W, 3) uint8: ``history`` with ``frames`` (N, H, W, 3) appended. Slots where ``first``
    (a new episode), and every slot when there is no history of N slots yet, hold ``frames`` repeated, as at
    an episode start in the data."""
    frame = torch.from_numpy(np.ascontiguousarray(frames))  # (N, H, W, 3)
    fresh = frame[:, None].expand(-1, context, -1, -1, -1)
    if history is None or len(history) != len(frame):
        return fresh.clone()
    shifted = torch.cat([history[:, 1:], frame[:, None]], 1)
    return torch.where(torch.as_tensor(first)[:, None, None, None, None], fresh, shifted)


def trained_game(meta: dict[str, Any]) -> str | None:
    """The game a policy learned, from its ``policy.json``: a real-game agent's, else its dataset's."""
    return meta.get("game") or (meta.get("data_source") or {}).get("game")


def save_policy(out: Path, policy: PolicyNet, meta: dict[str, Any]) -> None:
    """``out/policy.safetensors`` + ``out/policy.json`` (config and what it was trained on), atomically."""
    save_tensors(out / POLICY_WEIGHTS, policy.state_dict())
    atomic_write_text(out / POLICY_CONFIG, json.dumps({"config": to_dict(policy.config), **meta}, indent=2) + "\n")


def load_policy(agent_dir: Path) -> tuple[PolicyNet, dict[str, Any]]:
    """The policy of an agent directory (eval mode) and its ``policy.json``."""
    agent_dir = Path(agent_dir)
    if not (agent_dir / POLICY_WEIGHTS).is_file():
        raise CheckpointError(f"{agent_dir}: no {POLICY_WEIGHTS}; train one with `playworld agent bc`")
    meta = read_json(agent_dir / POLICY_CONFIG, CheckpointError, "policy config")
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{agent_dir / POLICY_CONFIG}: no 'config' entry")
    policy = PolicyNet(from_dict(PolicyConfig, meta["config"], where=str(agent_dir / POLICY_CONFIG)))
    state = load_tensors(agent_dir / POLICY_WEIGHTS)
    check_state_dict(policy, state, str(agent_dir / POLICY_WEIGHTS))
    policy.load_state_dict(state)
    return policy.eval(), meta
