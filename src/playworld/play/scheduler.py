"""One worker thread drives every session's model work, a tick at a time, stepping worlds in batches.

Sessions submit *operations* (generators, :mod:`playworld.play.session`) that yield once per model
step: either a :class:`~playworld.play.session.WorldStep` request, or None after inline work (a
reset). The scheduler waits ``window_ms`` after the first pending operation to collect the others,
then runs one tick in its worker thread: every operation makes one move, and all the world steps
requested in the tick are taken together by ``World.step_many``: one batched pass through the
dynamics model and the decoder for all players, each world keeping its own caches, positions and
seed. Finished operations resolve their futures; unfinished ones (a long undo or replay) go on in
the next tick, so one player's replay never holds up another player's keypress by more than a step.

Steps defer their commit (``World.step_many(defer_commit=True)``): a tick returns the frames once they
are decoded, and when no work waits the worker writes the new frames' keys/values to the dynamics
caches (``World.commit_many``) while the frames travel to the players. A key that arrives meanwhile
waits for the commit, so it never costs more than committing at once; a player who looks at the frame
before pressing the next key (every human) gets it a third of a step sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from playworld.play.session import WorldStep
from playworld.world import World

_START = object()  # a job whose operation has not run yet


def _grouped(worlds: list[World], key: Callable[[World], Hashable]) -> list[list[int]]:
    """Indices of ``worlds`` grouped by ``key`` (worlds that can share one batched pass), in order."""
    groups: dict[Hashable, list[int]] = {}
    for i, w in enumerate(worlds):
        groups.setdefault(key(w), []).append(i)
    return list(groups.values())


@dataclass
class _Job:
    op: Generator[Any, Any, Any]
    future: asyncio.Future
    request: Any = _START
    done: bool = False
    result: Any = None
    error: BaseException | None = None

    def advance(self, value: Any) -> None:
        """Run the operation to its next yield (sending ``value``); record its request or its end."""
        try:
            self.request = next(self.op) if self.request is _START else self.op.send(value)
        except StopIteration as stop:
            self.done, self.result = True, stop.value
        except Exception as e:  # noqa: BLE001 - delivered to the session that asked, never to the others
            self.done, self.error = True, e


@dataclass
class SchedulerStats:
    """Ticks run, operation moves made, seconds the worker was busy, most world steps taken in one pass."""

    ticks: int = 0
    steps: int = 0
    busy_s: float = 0.0
    max_batch: int = 0
    idle_commits: int = 0  # deferred commits written while no work waited


class StepScheduler:
    """Runs generator operations from many sessions in one worker thread, one step per op per tick."""

    def __init__(self, window_ms: float = 2.0, torch_threads: int | None = None, defer_commit: bool = True) -> None:
        self.window_s = window_ms / 1000
        self.defer_commit = defer_commit  # reply before committing (see the module's docstring)
        self.players = 2  # sessions that may submit work; the server keeps it current (no window for one)
        self._pending: list[_Job] = []
        self._running: list[_Job] = []  # the jobs of the tick now on the worker thread
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._torch_threads = torch_threads
        self._pool: ThreadPoolExecutor | None = None
        self._uncommitted: list[World] = []  # worlds stepped with a deferred commit since the last flush
        self.stats = SchedulerStats()

    def _init_thread(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)

    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playworld-step",
                                            initializer=self._init_thread)
        return self._pool

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the worker thread and wait for its result (from outside the event loop).

        Load the models and do any other torch work of the process here: the CPU build's OpenMP
        threads spin between parallel regions only while no more of them exist than cores, so a
        second thread running torch ops (its own OpenMP team) made every step ~1.5x slower
        (shipped world, 2 cores: 33 -> 48-54 ms per frame)."""
        return self._ensure_pool().submit(fn, *args, **kwargs).result()

    async def run(self, op: Generator[None, None, Any]) -> Any:
        """Drive ``op`` to its end on the worker thread; returns its value or raises its exception."""
        loop = asyncio.get_running_loop()
        self._ensure_pool()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        job = _Job(op, loop.create_future())
        self._pending.append(job)
        assert self._wake is not None
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the session went away: its operation makes no further move
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
            raise

    @property
    def pending(self) -> int:
        """Operations still to be driven (waiting or in the tick now running) whose session still waits."""
        return sum(not j.future.cancelled() for j in (*self._pending, *self._running))

    def _tick(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        moved = set()
        for job in jobs:  # new operations run to their first request (inline work counts as their move)
            if job.request is _START:
                job.advance(None)
                if job.request is None:
                    moved.add(id(job))
        stepping = [j for j in jobs if not j.done and isinstance(j.request, WorldStep)]
        frames = self._step_all([j.request for j in stepping])
        for job, frame in zip(stepping, frames):
            if isinstance(frame, BaseException):
                job.done, job.error = True, frame
            else:
                job.advance(frame)
            moved.add(id(job))
        for job in jobs:  # operations that did inline work last tick go on
            if not job.done and job.request is None and id(job) not in moved:
                job.advance(None)
        self.stats.busy_s += time.perf_counter() - t0
        self.stats.ticks += 1
        self.stats.steps += len(jobs)

    def _step_all(self, requests: list[WorldStep]) -> list[Any]:
        """Take the requested steps, in one ``World.step_many`` per group of worlds that share models
        and settings; a failing batch is retried one world at a time so an error reaches only its own."""
        out: list[Any] = [None] * len(requests)
        for idx in _grouped([r.world for r in requests],
                            lambda w: (id(w.dynamics), id(w.tokenizer), repr(w.config.sampling))):
            group = [requests[i] for i in idx]
            t0 = time.perf_counter()
            try:
                frames = World.step_many([r.world for r in group], [r.action for r in group],
                                         defer_commit=self.defer_commit)
                if self.defer_commit:  # a one_pass world wrote its frame while sampling: nothing to wait for
                    self._uncommitted.extend(r.world for r in group if r.world.uncommitted)
                results: list[Any] = [f[0].numpy() for f in frames]
            except Exception:  # noqa: BLE001 - isolate the culprit below
                results = []
                for r in group:
                    try:
                        results.append(r.world.step(r.action)[0].numpy())
                    except Exception as e:  # noqa: BLE001
                        results.append(e)
            ms = 1000 * (time.perf_counter() - t0)
            for i, r, res in zip(idx, group, results):
                r.ms, out[i] = ms, res
            self.stats.max_batch = max(self.stats.max_batch, len(group))
        return out

    def _commit(self) -> None:
        """Write the deferred commits, one batched pass per dynamics model. A failure is left for the
        world's next step to meet (and report to its own session)."""
        worlds, self._uncommitted = self._uncommitted, []
        for idx in _grouped(worlds, lambda w: id(w.dynamics)):
            try:
                self.stats.idle_commits += World.commit_many([worlds[i] for i in idx])
            except Exception:  # noqa: BLE001, S110 - each world's next step commits again and reports
                pass

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._pending and self._uncommitted:
                assert self._pool is not None
                await loop.run_in_executor(self._pool, self._commit)  # the frames are being sent meanwhile
                continue
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                if self.window_s > 0 and self.players > 1:
                    await asyncio.sleep(self.window_s)  # let other sessions' keys arrive
            jobs = [j for j in self._pending if not j.future.cancelled()]
            self._pending = []
            if not jobs:
                continue
            assert self._pool is not None
            self._running = jobs
            try:
                await loop.run_in_executor(self._pool, self._tick, jobs)
            finally:
                self._running = []
            for job in jobs:
                if job.future.cancelled():  # its session left during the tick: drop it, done or not
                    continue
                if not job.done:
                    self._pending.append(job)
                elif job.error is not None:
                    job.future.set_exception(job.error)
                else:
                    job.future.set_result(job.result)

    def close(self) -> None:
        """Stop the loop and the worker thread (a later :meth:`run` starts them again)."""
        if self._task is not None and not self._task.get_loop().is_closed():
            self._task.cancel()
        self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
