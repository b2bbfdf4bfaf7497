"""Frames/s of one session's ``World.step`` on a quiet CPU and beside busy processes, for several torch
thread counts and OpenMP wait policies: how `playworld play`, eval, rollout and the Gymnasium env hold up
when a browser, an editor or another job computes on the same machine.

    .venv/bin/python benchmarks/play.py --contention [--load 1] [--seconds 3] [--rounds 2]

Each candidate (threads x wait policy) is a worker process of its own (the wait policy is read once,
when the OpenMP runtime starts), loaded once and idle between its measurements. The parent measures
every candidate quiet, then starts ``--load`` busy-loop processes (pure Python spin, one core each) and
measures every candidate again, then stops them; ``--rounds`` repeats this, so drift of the machine
hits every candidate alike. Printed: median frames/s quiet and loaded and their ratio (1.0: no loss).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ((1, "default"), (2, "default"), (2, "PASSIVE"), (1, "PASSIVE"))
"""(torch threads, OMP_WAIT_POLICY): "default" leaves the variable unset (the OpenMP runtime's own
policy: spin a while, then sleep)."""

_SPIN = "while True:\n    pass\n"


@dataclass
class Worker:
    threads: int
    policy: str
    proc: subprocess.Popen

    @property
    def name(self) -> str:
        return f"threads {self.threads}, wait policy {self.policy.lower()}"

    def measure(self, seconds: float) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("fps "):
            raise RuntimeError(f"worker ({self.name}) answered {line!r}; see its stderr above")
        return float(line.split()[1])


def start_worker(threads: int, policy: str, model_args: list[str]) -> Worker:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # the worker sets torch's threads itself
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, str(Path(__file__)), "--worker", "--threads", str(threads), *model_args]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    worker = Worker(threads, policy, proc)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"worker ({worker.name}) failed to start; see its stderr above")
    return worker


def busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def run_contention(model_args: list[str], load: int, seconds: float, rounds: int) -> None:
    workers = [start_worker(t, pol, model_args) for t, pol in CANDIDATES]
    quiet: dict[str, list[float]] = {w.name: [] for w in workers}
    loaded: dict[str, list[float]] = {w.name: [] for w in workers}
    try:
        for w in workers:
            w.measure(min(seconds, 1.0))  # warm-up
        for r in range(rounds):
            for w in workers:
                quiet[w.name].append(w.measure(seconds))
            hogs = busy(load)
            try:
                time.sleep(0.5)  # let the scheduler spread them
                for w in workers:
                    loaded[w.name].append(w.measure(seconds))
            finally:
                stop(hogs)
            print(f"round {r + 1}: " + "; ".join(f"{w.name}: {quiet[w.name][-1]:.1f} -> {loaded[w.name][-1]:.1f}"
                                                 for w in workers), flush=True)
    finally:
        for w in workers:
            w.proc.kill()
            w.proc.wait()
    print(f"one session's World.step, frames/s quiet and beside {load} busy process(es) on "
          f"{len(os.sched_getaffinity(0))} cores (median of {rounds} rounds of {seconds:g} s):")
    for name in quiet:
        q, lo = median(quiet[name]), median(loaded[name])
        print(f"  {name:34s} quiet {q:6.1f}  loaded {lo:6.1f}  loaded/quiet {lo / q:5.2f}")


def worker_main(args: argparse.Namespace) -> None:
    """Load the world, then answer each line of stdin (seconds) with ``fps N`` of World.step."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from play import models, world_fps  # benchmarks/play.py
    from playworld.play.config import PlayConfig
    from playworld.precision import cast_for_play, resolve_precision
    from playworld.world import WorldConfig

    torch.set_num_threads(args.threads)
    mods = models(args)
    cast_for_play(mods[0], mods[2], resolve_precision(args.precision))
    sampling = PlayConfig(steps=args.steps, action_guidance=args.action_guidance).sampling(args.run)
    cfg = WorldConfig(context_frames=args.context, decoder_context=args.context, sampling=sampling)
    print("ready", flush=True)
    for line in sys.stdin:
        print(f"fps {world_fps(mods, cfg, 1, float(line))}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--run")
    p.add_argument("--preset")
    p.add_argument("--steps", type=int)
    p.add_argument("--action-guidance", type=float)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--precision", required=True)
    worker_main(p.parse_args())
