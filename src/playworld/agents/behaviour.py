"""A trained true-action policy as a collection behaviour (`playworld collect procgen --policy agent --agent DIR`).

Each slot samples its action from the policy's distribution over Procgen's 15 keys with its own uniform
stream (inverse CDF), so a slot's actions depend on its frames and its seed alone, and a collection with an
agent is as deterministic as with the other policies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from playworld.agents.policy import load_policy
from playworld.data.policies import NUM_ACTIONS, Blind, SlotRng
from playworld.errors import ConfigError


class AgentPolicy(Blind):
    """The policy of ``agent_dir`` (target ``true``), one history of its last ``context`` frames per slot."""

    def __init__(self, agent_dir: str | Path, rng: SlotRng, game: str, label: str = "agent") -> None:
        self.policy, meta = load_policy(Path(agent_dir))
        cfg = self.policy.config
        if cfg.target != "true" or cfg.num_actions != NUM_ACTIONS:
            raise ConfigError(f"{agent_dir}: policy 'agent' plays a policy over Procgen's {NUM_ACTIONS} true actions "
                              f"(`agent train-real` or `agent bc --oracle`); this one chooses among "
                              f"{cfg.num_actions} {cfg.target} actions")
        trained = meta.get("game") or (meta.get("data_source") or {}).get("game")
        if trained is not None and trained != game:
            raise ConfigError(f"{agent_dir}: the agent was trained on {trained}, not {game}")
        self.rng, self.label = rng, label
        self.labels: list[str] = []
        self.history: torch.Tensor | None = None  # (N, context, H, W, 3) uint8

    @torch.no_grad()
    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        if obs is None:
            raise ConfigError("policy 'agent' acts on the frames; call it with obs")
        frame = torch.from_numpy(np.ascontiguousarray(obs))  # (N, H, W, 3)
        ctx = self.policy.config.context
        fresh = frame[:, None].expand(-1, ctx, -1, -1, -1)
        if self.history is None:
            self.history, self.labels = fresh.clone(), [self.label] * len(frame)
        else:
            shifted = torch.cat([self.history[:, 1:], frame[:, None]], 1)
            self.history = torch.where(torch.as_tensor(first)[:, None, None, None, None], fresh, shifted)
        probs = self.policy(self.history).double().softmax(-1).numpy()  # (N, 15)
        cum = np.cumsum(probs, axis=1)
        u = self.rng()[:, 0] * cum[:, -1]  # (N,)
        return np.minimum((cum <= u[:, None]).sum(1), NUM_ACTIONS - 1).astype(np.int64)

