"""A behaviour policy that plans with the simulator itself: better than random on any Procgen game, with no
script per game.

Learning agents from video needs video of a behaviour worth imitating; a sticky-random policy gives nothing
to clone, and a scripted one exists only for games someone scripted. Procgen can copy a running game
(``get_state``/``set_state``, which carry the level and the game's random state), so a planner can try every
action in copies of the game before it acts, as in the Atari planning baselines of Bellemare et al. (2013)
and the rollout policies of Monte-Carlo search:

- at each decision (every ``hold`` frames, and at an episode's start) the slot's state is copied into
  ``NUM_ACTIONS x rollouts`` planning copies; candidate ``a`` is held for ``hold`` frames and continued by
  sticky-random actions up to ``horizon`` frames;
- every candidate's r-th play-out continues with the same random draws (common random numbers), so that
  candidates leading to the same game tie exactly;
- a candidate's score is the mean over its rollouts of the discounted return, less ``death_penalty`` where the
  episode ended without completing the level (Procgen's ``prev_level_complete``);
- the best candidate is played for ``hold`` frames; ties (often: no reward in sight) keep the previous action
  if it is among the best, else draw one of the best (``ties="first"``: take the lowest-numbered one); with
  probability ``explore`` a decision is a uniformly random action instead, so that the data keeps every action
  in use.

Deterministic: the copies step from copied states with actions drawn from the slot's own stream, so the
actions depend on (seed, slot) and the game alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from playworld.errors import ConfigError

__all__ = ["PlanConfig", "Lookahead"]


@dataclass(frozen=True)
class PlanConfig:
    """How the lookahead policy plans (see the module docstring)."""

    horizon: int = 24
    rollouts: int = 2
    hold: int = 4
    explore: float = 0.2
    death_penalty: float = 10.0
    discount: float = 0.97
    sticky_prob: float = 0.75  # continuation actions after the held candidate
    ties: str = "random"  # "random": a tie (not won by the previous action) draws among the best; "first": the
    # lowest-numbered best action, so that the choice depends on the game alone (easier to clone)

    def __post_init__(self) -> None:
        if self.hold < 1 or self.horizon < self.hold:
            raise ConfigError(f"plan: need 1 <= hold ({self.hold}) <= horizon ({self.horizon})")
        if self.rollouts < 1:
            raise ConfigError(f"plan: rollouts={self.rollouts} must be >= 1")
        if not 0.0 <= self.explore <= 1.0:
            raise ConfigError(f"plan: explore={self.explore} must be in [0, 1]")
        if not 0.0 < self.discount <= 1.0:
            raise ConfigError(f"plan: discount={self.discount} must be in (0, 1]")
        if not 0.0 <= self.sticky_prob < 1.0:
            raise ConfigError(f"plan: sticky_prob={self.sticky_prob} must be in [0, 1)")
        if self.ties not in ("random", "first"):
            raise ConfigError(f"plan: ties={self.ties!r} must be 'random' or 'first'")


class Lookahead:
    """Vectorised over N slots; ``attach`` gives it the slots' states and a factory of planning copies.

    ``get_states() -> list[bytes]`` returns the N slots' current game states; ``make_sim(num)`` returns a Procgen
    env of the same game and mode with ``num`` slots (its own seed and levels do not matter: ``set_state``
    replaces them).
    """

    def __init__(self, seeds: Sequence[np.random.SeedSequence], num_actions: int, plan: PlanConfig,
                 label: str = "lookahead") -> None:
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.num_actions, self.plan = num_actions, plan
        self.labels = [label] * len(seeds)
        self.action = np.zeros(len(seeds), dtype=np.int64)
        self.left = np.zeros(len(seeds), dtype=np.int64)  # frames still to play of the current decision
        self.get_states: Callable[[], list[bytes]] | None = None
        self.sim: Any = None

    def attach(self, get_states: Callable[[], list[bytes]], make_sim: Callable[[int], Any]) -> None:
        self.close()
        self.get_states = get_states
        self.sim = make_sim(self.num_actions * self.plan.rollouts)

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()
            self.sim = None

    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        if self.get_states is None or self.sim is None:
            raise RuntimeError("Lookahead policy: call attach(get_states, make_sim) before acting")
        new = np.asarray(first, dtype=bool) | (self.left <= 0)
        if new.any():
            states = self.get_states()
            for s in np.flatnonzero(new):
                self.action[s] = self._decide(s, states[s], bool(first[s]))
                self.left[s] = self.plan.hold
        self.left -= 1
        return self.action.copy()

    def _decide(self, slot: int, state: bytes, fresh: bool) -> int:
        rng, p = self.rngs[slot], self.plan
        if rng.random() < p.explore:
            return int(rng.integers(self.num_actions))
        scores = self.scores(state, rng)  # (A,)
        best = np.flatnonzero(scores >= scores.max() - 1e-9)
        if not fresh and self.action[slot] in best:
            return int(self.action[slot])
        return int(best[0]) if p.ties == "first" else int(best[rng.integers(len(best))])

    def scores(self, state: bytes, rng: np.random.Generator) -> np.ndarray:
        """Mean discounted return of each action held for ``hold`` frames then sticky-random: (A,) float64."""
        p, a_n = self.plan, self.num_actions
        n = a_n * p.rollouts
        cand = np.repeat(np.arange(a_n), p.rollouts)  # (n,) candidate of each copy
        # Continuation draws (repeat?, fresh action), the same for every candidate's r-th play-out (common
        # random numbers): candidates that lead to the same game tie exactly instead of by noise.
        u = np.tile(rng.random((p.horizon, 1, p.rollouts, 2)), (1, a_n, 1, 1)).reshape(p.horizon, n, 2)
        self.sim.callmethod("set_state", [state] * n)
        ret, alive, act = np.zeros(n), np.ones(n, dtype=bool), cand.copy()
        for h in range(p.horizon):
            if h >= p.hold:
                fresh_act = (u[h, :, 1] * a_n).astype(np.int64)
                act = np.where(u[h, :, 0] < p.sticky_prob, act, fresh_act)
            self.sim.act(act)
            rew, _, first = self.sim.observe()
            ret += np.where(alive, p.discount ** h * rew, 0.0)
            ended = alive & first
            if ended.any():
                infos = self.sim.get_info()
                won = np.array([bool(i.get("prev_level_complete", 0)) for i in infos])
                ret -= np.where(ended & ~won, p.death_penalty * p.discount ** h, 0.0)
                alive &= ~first
            if not alive.any():
                break
        return ret.reshape(a_n, p.rollouts).mean(1)
