"""`--threads N`, shared by every command that computes (train, eval, rollout, tokenize, play).

The default and why: :mod:`playworld.threads` (all cores but one, at least 1; OpenMP threads that sleep
rather than spin while they wait, set by :func:`playworld.cli.main` before torch loads).
"""

from __future__ import annotations

import argparse

HELP = ("torch CPU threads (default 0: playworld's choice, all cores but one, at least 1, or OMP_NUM_THREADS "
        "if set). More threads are faster only while nothing else computes on this machine")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: playworld's default), got {n}")
    return n


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (``args.threads``: 0 means playworld's default, :func:`playworld.threads.resolve_threads`)."""
    parser.add_argument("--threads", type=_count, default=0, metavar="N", help=HELP)


def command_threads(threads: int, latency: bool = False) -> int:
    """The thread count ``--threads threads`` stands for on this machine (``latency``: for one frame at
    a time, as `playworld play`; :func:`playworld.threads.default_threads`)."""
    from playworld.threads import resolve_threads, usable_cores

    return resolve_threads(threads, usable_cores(), latency=latency)


def apply_threads(threads: int) -> int:
    """``torch.set_num_threads`` to what ``--threads threads`` stands for; returns the count.
    A command whose torch work runs on another thread sets it there (torch's setting is per thread
    only on some builds; `playworld play`'s scheduler sets it on its worker)."""
    from playworld.threads import set_threads

    return set_threads(threads)
