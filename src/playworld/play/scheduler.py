"""One worker thread drives every session's model work, a tick at a time.

Sessions submit *operations* (generators that yield once per model step, :mod:`playworld.play.session`).
The scheduler waits ``window_ms`` after the first pending operation to collect the others, then runs
one tick in its worker thread: each pending operation advances by one model step, in arrival order.
Finished operations resolve their futures; unfinished ones (a long undo or replay) wait for the next
tick, so one player's replay never holds up another player's keypress by more than a step.

Why not one batched forward pass across sessions: every session holds its own temporal KV caches at
its own absolute frame position (RoPE) and fill level, and its own random generator; stacking them
exactly would need per-row positions, padding masks and per-row sampling that ``World`` does not
have. Serialising model work in one thread still gives the CPU to one step at a time (no thread
oversubscription between sessions), and keeps each session bit-exact and isolated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class _Job:
    op: Generator[None, None, Any]
    future: asyncio.Future
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class SchedulerStats:
    """Ticks run, operation steps advanced, seconds the worker was busy, most operations in one tick."""

    ticks: int = 0
    steps: int = 0
    busy_s: float = 0.0
    max_batch: int = 0


class StepScheduler:
    """Runs generator operations from many sessions in one worker thread, one step per op per tick."""

    def __init__(self, window_ms: float = 2.0, torch_threads: int | None = None) -> None:
        self.window_s = window_ms / 1000
        self._pending: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._torch_threads = torch_threads
        self._pool: ThreadPoolExecutor | None = None
        self.stats = SchedulerStats()

    def _init_thread(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)

    async def run(self, op: Generator[None, None, Any]) -> Any:
        """Drive ``op`` to its end on the worker thread; returns its value or raises its exception."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playworld-step",
                                            initializer=self._init_thread)
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        job = _Job(op, loop.create_future())
        self._pending.append(job)
        assert self._wake is not None
        self._wake.set()
        return await job.future

    def _tick(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        for job in jobs:
            try:
                next(job.op)
            except StopIteration as stop:
                job.done, job.result = True, stop.value
            except Exception as e:  # noqa: BLE001 - delivered to the session that asked, never to the others
                job.done, job.error = True, e
        self.stats.busy_s += time.perf_counter() - t0
        self.stats.ticks += 1
        self.stats.steps += len(jobs)
        self.stats.max_batch = max(self.stats.max_batch, len(jobs))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                if self.window_s > 0:
                    await asyncio.sleep(self.window_s)  # let other sessions' keys arrive
            jobs = [j for j in self._pending if not j.future.cancelled()]
            self._pending = []
            if not jobs:
                continue
            assert self._pool is not None
            await loop.run_in_executor(self._pool, self._tick, jobs)
            for job in jobs:
                if not job.done:
                    self._pending.append(job)
                elif job.future.cancelled():
                    continue
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
