"""One player's world: a prompt, a seed, the actions taken, undo by exact replay, and a bounded recording.

Every operation that touches the model is a generator that yields once per model step and returns
the frame to show, so that a scheduler can interleave a long replay of one session with the steps of
others (:mod:`playworld.play.scheduler`). A step of the world is not taken here: the operation
yields a :class:`WorldStep` request and is sent back the frame, so that the scheduler can take the
steps of many sessions in one batched pass (``World.step_many``); :func:`run_op` drives an operation
alone. Other model work (a reset) runs inline and yields None. Nothing here knows about the server.

Undo and replay are exact because a world is seeded and can be copied: the session keeps a snapshot of
its world at the *anchor* (``World.snapshot``: both caches, the last tokens, the random state), and undo
restores it and replays the actions taken since, which gives the same frames bit for bit. Memory stays
bounded however long one plays: the world's caches are bounded by its config, there is one anchor
snapshot, the recording keeps the last ``max_record_frames`` frames, and the action history the last
``max_history`` actions. When the history is full the session *rebases*: the anchor becomes a snapshot
of the world as it is (a copy of its caches, ~10 ms for the shipped world, where restarting the world
from the frames shown took ~350 ms and showed as a freeze every ``max_history`` frames), and undo
cannot reach past that point. Play itself goes on untouched.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from playworld.play.config import SessionLimits
from playworld.world import World, WorldState


@dataclass
class WorldStep:
    """An operation's request: step ``world`` (batch 1) by ``action``. The driver sends back the frame
    (H, W, C) uint8 and sets ``ms``, the model time of the (possibly batched) step."""

    world: World
    action: int
    ms: float = 0.0


Op = Generator["WorldStep | None", "np.ndarray | None", np.ndarray]  # one yield per model step; returns a frame


def run_op(op: Op) -> np.ndarray:
    """Drive an operation to its end alone, taking each requested step with ``World.step``."""
    value: np.ndarray | None = None
    try:
        while True:
            request = op.send(value)
            value = None
            if request is not None:
                t0 = time.perf_counter()
                value = request.world.step(request.action)[0].numpy()
                request.ms = 1000 * (time.perf_counter() - t0)
    except StopIteration as stop:
        return stop.value


class SessionError(ValueError):
    """A request this session cannot serve now (nothing to undo, no world started); sent to the player."""


class Session:
    """A single world (batch 1) and its history. Not thread-safe: one scheduler thread drives it."""

    def __init__(self, world: World, limits: SessionLimits | None = None) -> None:
        self.world, self.limits = world, limits or SessionLimits()
        self.prompt: np.ndarray | None = None  # (T0, H, W, C) uint8, where the session started
        self.seed = 0
        self.anchor: WorldState | None = None  # the world where the action history begins
        self.anchor_frame: np.ndarray | None = None  # (H, W, C) the frame shown there
        self.rebases = 0
        self.actions: list[int] = []  # since the anchor, 0-based
        self.total_steps = 0  # actions on the shown timeline, including those before a rebase
        self.frames: deque[np.ndarray] = deque(maxlen=self.limits.max_record_frames)
        self.step_ms = 0.0  # model time of the last step

    @property
    def started(self) -> bool:
        return self.prompt is not None

    def start(self, prompt: np.ndarray, seed: int) -> Op:
        """Begin from ``prompt`` (H, W, C) or (T0, H, W, C) uint8 with ``seed``; clears history and recording."""
        prompt = np.ascontiguousarray(prompt if prompt.ndim == 4 else prompt[None], dtype=np.uint8)
        self.prompt = prompt[-self.world.config.context_frames:].copy()
        self.seed, self.rebases, self.actions, self.total_steps = seed, 0, [], 0
        self.frames.clear()
        frame = self.world.reset(torch.from_numpy(self.prompt), seed=seed)[0].numpy()
        self.anchor, self.anchor_frame = self.world.snapshot(), frame
        self.frames.append(frame)
        yield None
        return frame

    def _require_started(self) -> None:
        if not self.started:
            raise SessionError("no world yet: start from a dataset frame, a picture or a sketch first")

    def _check_action(self, action: int) -> None:
        if not 0 <= action < self.world.num_actions:
            raise SessionError(f"action {action} is not in [0, {self.world.num_actions})")

    def _step(self, action: int) -> Generator[WorldStep, np.ndarray, np.ndarray]:
        request = WorldStep(self.world, action)
        frame = yield request
        self.step_ms = request.ms
        return frame

    def step(self, action: int) -> Op:
        """Take one action (0-based) and return the new frame."""
        self._require_started()
        self._check_action(action)
        if len(self.actions) >= self.limits.max_history:
            self._rebase()
        frame = yield from self._step(action)
        self.actions.append(action)
        self.total_steps += 1
        self.frames.append(frame)
        return frame

    def _rebase(self) -> None:
        """Move the anchor to the world as it is now; the history starts afresh (play is untouched)."""
        self.anchor, self.anchor_frame = self.world.snapshot(), self.frames[-1]
        self.rebases += 1
        self.actions = []

    def _replay(self, actions: Sequence[int]) -> Op:
        assert self.anchor is not None and self.anchor_frame is not None
        self.world.restore(self.anchor)
        frame = self.anchor_frame
        yield None
        for a in actions:
            frame = yield from self._step(a)
        return frame

    def undo(self) -> Op:
        """Take back the last action: replay the history without it (exact). Returns the frame before it."""
        self._require_started()
        if not self.actions:
            raise SessionError("nothing to undo" if self.total_steps == 0 else
                               f"cannot undo further: the history holds the last {self.limits.max_history} actions")
        keep = self.actions[:-1]
        frame = yield from self._replay(keep)  # the frame shown before the last action, bit for bit
        self.actions = keep
        self.total_steps -= 1
        if len(self.frames) > 1:
            self.frames.pop()
        return frame

    def restart(self) -> Op:
        """Back to the start (the prompt and seed of the current anchor)."""
        self._require_started()
        self.total_steps -= len(self.actions)
        self.actions = []
        frame = yield from self._replay([])
        self.frames.clear()
        self.frames.append(frame)
        return frame

    def replay(self, actions: Sequence[int]) -> Op:
        """Restart and play ``actions`` (0-based) from the anchor; the recording holds the new timeline."""
        self._require_started()
        if len(actions) > self.limits.max_replay:
            raise SessionError(f"replay of {len(actions)} actions exceeds the limit {self.limits.max_replay}")
        for a in actions:
            self._check_action(a)
        self.total_steps -= len(self.actions)
        self.actions = []
        frame = yield from self._replay([])
        self.frames.clear()
        self.frames.append(frame)
        for a in actions:
            frame = yield from self.step(a)
        return frame

    def recording(self) -> np.ndarray:
        """The frames of the timeline shown (the last ``max_record_frames``): (T, H, W, C) uint8."""
        self._require_started()
        return np.stack(list(self.frames))
