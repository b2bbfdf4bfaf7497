"""A trained true-action policy as a collection behaviour (`playworld collect procgen --policy agent --agent DIR`).

Each slot samples its action from the policy's distribution over Procgen's 15 keys with its own uniform
stream (inverse CDF), so a slot's actions depend on its frames and its seed alone, and a collection with an
agent is as deterministic as with the other policies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from playworld.agents.policy import load_policy, next_history, trained_game
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
        trained = trained_game(meta)
        if trained is not None and trained != game:
            raise ConfigError(f"{agent_dir}: the agent was trained on {trained}, not {game}")
        self.rng, self.label = rng, label
        self.labels: list[str] = []
        self.history: torch.Tensor | None = None  # (N, context, H, W, 3) uint8

    @torch.no_grad()
    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        if obs is None:
            raise ConfigError("policy 'agent' acts on the frames; call it with obs")
        if self.history is None:
            self.labels = [self.label] * len(obs)
        self.history = next_history(self.history, obs, first, self.policy.config.context)
        probs = self.policy(self.history).double().softmax(-1).numpy()  # (N, 15)
        cum = np.cumsum(probs, axis=1)
        u = self.rng()[:, 0] * cum[:, -1]  # (N,)
        return np.minimum((cum <= u[:, None]).sum(1), NUM_ACTIONS - 1).astype(np.int64)

