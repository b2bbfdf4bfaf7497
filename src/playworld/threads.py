"""How many CPU threads playworld gives torch, and how they wait: one rule for every command and for
:meth:`playworld.World.load` (thus :func:`playworld.make_env`).

torch's default (one thread per core, OpenMP threads that spin while they wait for each other) is the
fastest choice for a job alone on the machine and the slowest as soon as anything else computes: a
thread that spins holds its core while the thread it waits for has been pushed off the other one by
the other process. Measured with ``benchmarks/play.py --contention`` (one session of the shipped world,
2 cores shared with other jobs, beside 1 / 2 busy processes; loaded/quiet frames/s, two runs each): 2
spinning threads 0.16-0.18 / collapsed already "quiet" (under 1 frame/s whenever another job held a
core); 1 thread 0.45-0.61 / 0.29; 2 threads that sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``)
0.68-1.23 / 0.92-0.93, the fastest loaded in every run and about as fast quiet. So:

- the `playworld` command sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads OpenMP (which reads it
  once, at load), and then uses every core this process may run on;
- where the policy is not passive (a program that imported torch itself, as one using
  :func:`playworld.make_env` does), all cores but one (at least 1): a core stays free for the browser,
  an editor or another job, so the spinning threads rarely wait for a thread pushed off its core.

- `playworld play` (``latency=True``) takes all cores but one, at least 1, whatever the policy: a
  frame is a chain of small operations, and sleeping threads wake too late for them. Quiet, `playworld
  play` in its own process, one player of the shipped world (`benchmarks/play.py --sessions 1
  --threads 1|0`, interleaved, 3 runs each): 1 thread 32.8-34.3 frames/s, 2 passive threads 26.0-26.3.
  One thread never spins, so it keeps 0.45-0.61 of that beside a busy process (above).

``--threads N`` (``threads=N``) or ``OMP_NUM_THREADS`` choose the count instead; an ``OMP_WAIT_POLICY``
set in the environment is left as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads(cores: int, passive: bool, latency: bool = False) -> int:
    """Threads for ``cores`` usable cores when nothing asks for a number: all of them if waiting threads
    sleep (``passive``) and the work is not a chain of small operations (``latency``: one frame at a
    time, as play), else all but one, at least 1."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    return cores if passive and not latency else max(1, cores - 1)


def resolve_threads(requested: int | None, cores: int, environ: Mapping[str, str] | None = None,
                    latency: bool = False) -> int:
    """The thread count to use: ``requested`` if > 0; else ``OMP_NUM_THREADS`` if set to a positive
    number (the user's choice for this machine); else :func:`default_threads` of ``cores`` and of
    whether ``OMP_WAIT_POLICY`` is passive (the policy OpenMP started with, if torch was imported since
    this environment was set, as `playworld` does)."""
    if requested is not None and requested < 0:
        raise ValueError(f"threads must be >= 0 (0: playworld's default), got {requested}")
    if requested:
        return requested
    env = os.environ if environ is None else environ
    given = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return default_threads(cores, env.get("OMP_WAIT_POLICY", "").strip().upper() == WAIT_POLICY, latency)


def set_threads(requested: int | None = None) -> int:
    """``torch.set_num_threads`` to :func:`resolve_threads` of this machine; returns the count.
    torch's setting holds for the calling thread's operations (and, on most builds, the process's)."""
    import torch

    n = resolve_threads(requested, usable_cores())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefer_passive_wait(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` if torch (so OpenMP) is not loaded yet and the environment sets
    no policy; processes started later inherit it. Returns whether this process's OpenMP will start
    passive. Once torch is loaded the environment is left alone: the policy could not change any more,
    and :func:`resolve_threads` reads it as the policy OpenMP started with."""
    env = os.environ if environ is None else environ
    if "torch" not in sys.modules:
        env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
        return env["OMP_WAIT_POLICY"].strip().upper() == WAIT_POLICY
    return False
