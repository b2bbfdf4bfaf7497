"""One player's world: a prompt, a seed, the actions taken, undo by exact replay, and a bounded recording.

Every operation that touches the model is a generator that yields once per model step and returns
the frame to show, so that a scheduler can interleave a long replay of one session with the steps of
others (:mod:`playworld.play.scheduler`). A step of the world is not taken here: the operation
yields a :class:`WorldStep` request and is sent back the frame, so that the scheduler can take the
steps of many sessions in one batched pass (``World.step_many``); :func:`run_op` drives an operation
alone. Other model work (a reset) runs inline and yields None. Nothing here knows about the server.

Undo and replay are exact because a world is seeded and can be copied: the session keeps snapshots of
its world (``World.snapshot``: both caches, the last tokens, the random state), one where its action
history begins (the *anchor*) and one every ``checkpoint_every`` actions after it. Undo restores the
latest snapshot before the action taken back and replays the actions since, which gives the same
frames bit for bit and replays fewer than ``checkpoint_every`` steps. Memory stays bounded however
long one plays: the world's caches are bounded by its config, at most ``max_history //
checkpoint_every + 1`` snapshots are kept, the recording keeps the last ``max_record_frames`` frames,
and the history at most ``max_history`` actions. When the history would exceed that, the session
*rebases*: the second snapshot becomes the anchor and the actions before it leave the history. Play
itself is untouched (the first version restarted the world from the frames shown, re-encoded, with
a new seed: a ~370 ms freeze every ``max_history`` frames, and no undo right after it).
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


@dataclass
class Checkpoint:
    """The world after the first ``actions`` actions of the history, and the frame shown then."""

    actions: int
    state: WorldState
    frame: np.ndarray  # (H, W, C) uint8


class SessionError(ValueError):
    """A request this session cannot serve now (nothing to undo, no world started); sent to the player."""


class Session:
    """A single world (batch 1) and its history. Not thread-safe: one scheduler thread drives it."""

    def __init__(self, world: World, limits: SessionLimits | None = None) -> None:
        self.world, self.limits = world, limits or SessionLimits()
        self.prompt: np.ndarray | None = None  # (T0, H, W, C) uint8, where the session started
        self.seed = 0
        self.checkpoints: list[Checkpoint] = []  # [0]: the anchor, where the action history begins
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
        self.checkpoints = [Checkpoint(0, self.world.snapshot(), frame)]
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
        frame = yield from self._step(action)
        self.actions.append(action)
        self.total_steps += 1
        self.frames.append(frame)
        if len(self.actions) % self.limits.checkpoint_every == 0:
            self.checkpoints.append(Checkpoint(len(self.actions), self.world.snapshot(), frame))
        if len(self.actions) > self.limits.max_history:
            self._rebase()
        return frame

    def _rebase(self) -> None:
        """The second snapshot becomes the anchor; the actions before it leave the history."""
        drop = self.checkpoints[1].actions
        self.checkpoints = [Checkpoint(c.actions - drop, c.state, c.frame) for c in self.checkpoints[1:]]
        self.actions = self.actions[drop:]
        self.rebases += 1

    def _replay(self, actions: Sequence[int]) -> Op:
        """Back to the last snapshot within ``actions`` (a prefix of the history), then replay the rest."""
        while self.checkpoints[-1].actions > len(actions):
            self.checkpoints.pop()
        start = self.checkpoints[-1]
        self.world.restore(start.state)
        frame = start.frame
        yield None
        for a in actions[start.actions:]:
            frame = yield from self._step(a)
        return frame

    def undo(self) -> Op:
        """Take back the last action: replay the history without it (exact). Returns the frame before it."""
        self._require_started()
        if not self.actions:
            raise SessionError("nothing to undo" if self.total_steps == 0 else
                               "cannot undo further: older actions have left the history (it keeps at most "
                               f"{self.limits.max_history}, at least {self.limits.max_history - self.limits.checkpoint_every})")
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
