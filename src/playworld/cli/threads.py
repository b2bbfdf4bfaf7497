"""`--threads N`, shared by every command that computes (train, eval, rollout, tokenize, play).

torch runs each operation on as many threads as the machine has cores. That is the fastest choice
for a job alone on the machine and the slowest when it is not: torch's threads spin while they wait
for each other, so two 2-thread jobs on 2 cores (training while playing, or two trainings) preempt
each other's spinning threads and each runs 10-30x slower than with one thread. Give ``--threads 1``
to each job when something else computes on the machine.
"""

from __future__ import annotations

import argparse

HELP = ("torch CPU threads (default 0: torch's choice, one per core). Give 1 when anything else computes on this "
        "machine: two jobs of 2 threads on 2 cores run 10-30x slower than two of 1")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: torch's default), got {n}")
    return n


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (``args.threads``: 0 means torch's default)."""
    parser.add_argument("--threads", type=_count, default=0, metavar="N", help=HELP)


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` for this process's torch operations, unless 0 (torch's default).
    A command whose torch work runs on another thread sets it there (torch's setting is per thread
    only on some builds; `playworld play`'s scheduler sets it on its worker)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
