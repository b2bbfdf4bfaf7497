"""Behaviour policies for collection, vectorised over env slots, each slot with its own seeded stream.

A policy maps ``first`` (N,) bool (slot starts a new episode) and the slots' frames (N, H, W, 3) uint8 to
actions (N,) int64 in Procgen's 15-action set. Slot ``s`` draws only from its own generator, so its actions
depend on (seed, unit, slot) and its own frames alone. Every policy has ``attach``/``close`` hooks: the
lookahead planner reads the games' states through them, the others ignore them.
The recorded actions are the true ones; evaluation uses them, no model trains on them.

Why motion-rich behaviour: Genie-style worlds learn controllability only from data in which actions
visibly matter (GenieRedux, arXiv 2409.06445: agent data gave ΔtPSNR 1.89 vs 0.70 for random-agent data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from playworld.data.lookahead import Lookahead, PlanConfig
from playworld.errors import ConfigError

__all__ = ["NUM_ACTIONS", "ACTION_NAMES", "PLATFORMERS", "POLICIES", "Policy", "SlotRng", "StickyRandom",
           "SegmentPolicy", "Mix", "make_policy"]

NUM_ACTIONS = 15
ACTION_NAMES = ("LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP",
                "D", "A", "W", "S", "Q", "E")
LEFT_DOWN, LEFT, LEFT_UP, DOWN, NOOP, UP, RIGHT_DOWN, RIGHT, RIGHT_UP = range(9)


def true_action_names(source: dict[str, Any]) -> tuple[str, ...] | None:
    """Names of a dataset's true actions from its manifest's ``source``: Procgen's 15 for collected Procgen
    data, else None."""
    return ACTION_NAMES if source.get("kind") == "procgen" else None


# Side-view games where the level runs left to right and UP jumps. Jumper and climber levels also go up,
# which a rightward run with frequent jumps still explores well; leaper (frogger) is not a platformer.
PLATFORMERS = frozenset({"coinrun", "ninja", "climber", "jumper"})
POLICIES = ("random", "scripted", "mix", "lookahead", "agent")


class Policy(Protocol):
    labels: list[str]  # (N,) name of the behaviour each slot is playing in its current episode

    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        """first (N,) bool, obs (N, H, W, 3) uint8 (the frames acted on) -> actions (N,) int64."""
        ...

    def attach(self, get_states: Callable[[], list[bytes]], make_sim: Callable[[int], Any]) -> None:
        """Called once the games exist: ``get_states()`` gives their states, ``make_sim(n)`` an n-slot copy."""
        ...

    def close(self) -> None:
        """Release what ``attach`` made."""
        ...


class Blind:
    """The hooks of a policy that neither reads the games' states nor holds anything to release."""

    def attach(self, get_states: Callable[[], list[bytes]], make_sim: Callable[[int], Any]) -> None:
        pass

    def close(self) -> None:
        pass


class SlotRng:
    """N independent uniform streams, one per slot, read K numbers per step in one vectorised call.

    Each slot's generator is drawn in blocks of (block, K), so the numbers a slot sees depend only on its
    own seed and on how many steps it has taken, never on the other slots.
    """

    def __init__(self, seeds: Sequence[np.random.SeedSequence], k: int, block: int = 512) -> None:
        self._gens = [np.random.default_rng(s) for s in seeds]
        self._k, self._block, self._pos = k, block, block
        self._buf = np.empty((block, len(seeds), k))

    def __call__(self) -> np.ndarray:
        """Next numbers: (N, K) float64 in [0, 1)."""
        if self._pos == self._block:
            self._buf = np.stack([g.random((self._block, self._k)) for g in self._gens], axis=1)  # (block, N, K)
            self._pos = 0
        self._pos += 1
        return self._buf[self._pos - 1]


class StickyRandom(Blind):
    """Repeat the previous action with probability ``p``, else draw uniformly from all actions.

    A new episode always draws afresh.
    """

    def __init__(self, rng: SlotRng, p: float = 0.75, num_actions: int = NUM_ACTIONS) -> None:
        self.rng, self.p, self.num_actions = rng, p, num_actions
        self.prev: np.ndarray | None = None
        self.labels: list[str] = []

    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        u = self.rng()  # (N, 2)
        fresh = (u[:, 1] * self.num_actions).astype(np.int64)
        if self.prev is None:
            self.prev = fresh
            self.labels = ["random"] * len(first)
        self.prev = np.where(first | (u[:, 0] >= self.p), fresh, self.prev)
        return self.prev


@dataclass(frozen=True)
class Segment:
    """Hold one action drawn uniformly from ``actions`` for ``hold`` = lo..hi frames; ``share`` is the
    expected fraction of frames spent in segments of this kind."""

    share: float
    actions: tuple[int, ...]
    lo: int
    hi: int


ALL_ACTIONS = tuple(range(NUM_ACTIONS))
# ~50% run right, ~30% right+jump held 4-12 frames (high jumps, repeated on landing), ~20% random.
PLATFORMER_SEGMENTS = (Segment(0.5, (RIGHT,), 2, 8), Segment(0.3, (RIGHT_UP,), 4, 12),
                       Segment(0.2, ALL_ACTIONS, 1, 3))
# Other games: long holds of one of the 8 directions, with brief presses of the special keys (fire, etc.).
EXPLORER_SEGMENTS = (Segment(0.9, (LEFT_DOWN, LEFT, LEFT_UP, DOWN, UP, RIGHT_DOWN, RIGHT, RIGHT_UP), 8, 32),
                     Segment(0.1, tuple(range(9, NUM_ACTIONS)), 1, 4))


class SegmentPolicy(Blind):
    """Plays a sequence of held segments; each new segment (and each new episode) draws its kind, action
    and hold length. Segment kinds are drawn with probability proportional to share / mean hold so the
    expected share of frames matches ``Segment.share``."""

    def __init__(self, rng: SlotRng, segments: Sequence[Segment], label: str = "scripted") -> None:
        self.rng, self.label = rng, label
        shares = np.array([s.share for s in segments]) / sum(s.share for s in segments)
        mean_hold = np.array([(s.lo + s.hi) / 2 for s in segments])
        self.cum = np.cumsum(shares / mean_hold / (shares / mean_hold).sum())
        width = max(len(s.actions) for s in segments)
        self.table = np.array([list(s.actions) + [s.actions[0]] * (width - len(s.actions)) for s in segments])
        self.count = np.array([len(s.actions) for s in segments])
        self.lo, self.span = np.array([s.lo for s in segments]), np.array([s.hi - s.lo + 1 for s in segments])
        self.action: np.ndarray | None = None
        self.left = np.zeros(0, dtype=np.int64)
        self.labels: list[str] = []

    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        u = self.rng()  # (N, 3): kind, action, hold
        kind = np.minimum(np.searchsorted(self.cum, u[:, 0], side="right"), len(self.cum) - 1)
        act = self.table[kind, (u[:, 1] * self.count[kind]).astype(np.int64)]
        hold = self.lo[kind] + (u[:, 2] * self.span[kind]).astype(np.int64)
        if self.action is None:
            self.action, self.left = act, np.zeros(len(first), dtype=np.int64)
            self.labels = [self.label] * len(first)
        new = first | (self.left <= 0)
        self.action = np.where(new, act, self.action)
        self.left = np.where(new, hold, self.left) - 1
        return self.action


class Mix(Blind):
    """Each episode of each slot plays ``a`` or ``b`` with probability 1/2 (drawn from the slot's stream)."""

    def __init__(self, rng: SlotRng, a: Policy, b: Policy) -> None:
        self.rng, self.a, self.b = rng, a, b
        self.use_b: np.ndarray | None = None
        self.labels: list[str] = []

    def __call__(self, first: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        u = self.rng()[:, 0]  # (N,)
        self.use_b = np.where(first, u < 0.5, self.use_b if self.use_b is not None else False)
        act_a, act_b = self.a(first, obs), self.b(first, obs)
        self.labels = [lb if use else la for use, la, lb in zip(self.use_b, self.a.labels, self.b.labels)]
        return np.where(self.use_b, act_b, act_a)


def make_policy(name: str, game: str, seeds: Sequence[np.random.SeedSequence], *, sticky_prob: float = 0.75,
                plan: PlanConfig | None = None, agent: str | Path | None = None) -> Policy:
    """Build policy ``name`` for ``game`` with one seed per slot (independent streams are spawned per part).

    ``lookahead`` (settings ``plan``) plans in copies of the game: attach it to the env before acting
    (:meth:`playworld.data.lookahead.Lookahead.attach`). ``agent`` plays the true-action policy of the agent
    directory ``agent`` (`playworld agent train-real` or `agent bc --oracle`) on the frames.
    """
    if name not in POLICIES:
        raise ConfigError(f"policy {name!r} is not one of {list(POLICIES)}")
    streams = [s.spawn(5) for s in seeds]  # per slot: random, scripted, mix choice, lookahead, agent
    if name == "lookahead":
        return Lookahead([s[3] for s in streams], NUM_ACTIONS, plan or PlanConfig())
    if name == "agent":
        if agent is None:
            raise ConfigError("policy 'agent' needs the agent directory to play (--agent DIR)")
        from playworld.agents.behaviour import AgentPolicy

        return AgentPolicy(agent, SlotRng([s[4] for s in streams], 1), game)

    def rng(part: int, k: int) -> SlotRng:
        return SlotRng([s[part] for s in streams], k)

    def random() -> Policy:
        return StickyRandom(rng(0, 2), sticky_prob)

    def scripted() -> Policy:
        return SegmentPolicy(rng(1, 3), PLATFORMER_SEGMENTS if game in PLATFORMERS else EXPLORER_SEGMENTS)

    if name == "random":
        return random()
    if name == "scripted":
        return scripted()
    return Mix(rng(2, 1), random(), scripted())
