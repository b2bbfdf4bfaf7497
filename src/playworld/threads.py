"""How many CPU threads playworld gives torch, and how they wait: one rule for every command and for
:meth:`playworld.World.load` (thus :func:`playworld.make_env`).

torch's default (one thread per core, OpenMP threads that spin while they wait for each other) is the
fastest choice for a job alone on the machine and the slowest as soon as anything else computes: on 2
cores beside one busy process, one session of the shipped world fell from 26 to under 1 frame/s with 2
threads, and kept 10-20 with 1 (`benchmarks/play.py --contention`). So by default playworld

- uses one thread fewer than the cores this process may run on (at least 1): a core stays free for the
  browser drawing the page, an editor, or another job, and on 2 cores no thread ever waits for another;
- asks OpenMP to put waiting threads to sleep (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning, so that
  when other work does take a core, the threads left do not burn the rest of the CPU waiting for it
  (2 threads beside a busy process on 2 cores: 0.7 frames/s spinning, 16.5 passive). OpenMP reads the
  variable once, when torch is imported, so only the `playworld` command can set it; a program that
  imports torch itself sets it in its environment.

``--threads N`` (``threads=N``) or ``OMP_NUM_THREADS`` choose the count instead; ``OMP_WAIT_POLICY`` set
in the environment is left as it is.
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


def default_threads(cores: int) -> int:
    """Threads for ``cores`` usable cores when nothing asks for a number: all but one, at least 1."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    return max(1, cores - 1)


def resolve_threads(requested: int | None, cores: int, environ: Mapping[str, str] | None = None) -> int:
    """The thread count to use: ``requested`` if > 0; else ``OMP_NUM_THREADS`` if set to a positive
    number (the user's choice for this machine); else :func:`default_threads` of ``cores``."""
    if requested is not None and requested < 0:
        raise ValueError(f"threads must be >= 0 (0: playworld's default), got {requested}")
    if requested:
        return requested
    env = os.environ if environ is None else environ
    given = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return default_threads(cores)


def set_threads(requested: int | None = None) -> int:
    """``torch.set_num_threads`` to :func:`resolve_threads` of this machine; returns the count.
    torch's setting holds for the calling thread's operations (and, on most builds, the process's)."""
    import torch

    n = resolve_threads(requested, usable_cores())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefer_passive_wait(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy already. Returns whether
    it takes effect in this process: only if torch (and so OpenMP) is not loaded yet; processes this
    one starts inherit it either way."""
    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return env["OMP_WAIT_POLICY"].upper() == WAIT_POLICY and "torch" not in sys.modules
