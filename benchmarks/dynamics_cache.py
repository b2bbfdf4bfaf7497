"""What the dynamics token/action cache (``data.precompute``) saves, and how its tokens relate to per-clip ones.

On a real dataset, with a trained tokenizer and LAM (default: the CoinRun world shipped with the
package), this builds two dynamics :class:`playworld.train.Trainer` s of a preset, one encoding every
clip on the fly and one reading the cache, and times real engine steps of each, interleaved A, B, A, B
... so that load from other jobs falls on both alike (median wall and process CPU time per step, and
their ratio). The cache is built for ``--split`` (default val, a few thousand frames): its build time
per frame, extrapolated to the train and val splits, is the one-off cost. Then it compares, over every
clip of that split, the cached tokens and actions with those the same models give each clip encoded
on its own (the share of tokens that differ, by frame of the clip, and the share of actions that agree,
by transition).

    .venv/bin/python benchmarks/dynamics_cache.py --data DATASET [--preset small] [--steps 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from playworld.api import DEFAULT_RUN
from playworld.data.format import Dataset
from playworld.models.base import to_unit
from playworld.presets import build_run_config
from playworld.train import Trainer
from playworld.train.mixed import resolve_train_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--world", default=str(DEFAULT_RUN), help="directory holding tokenizer/ and lam/ runs")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--split", default="val", help="split to build the cache for and train on")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--agree-clips", type=int, default=400, help="clips compared (0 = none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = Path(args.world)
    deps = {"tokenizer": str(world / "tokenizer"), "lam": str(world / "lam")}
    precision = resolve_train_precision("auto", torch.device("cpu"))
    root = Path(tempfile.mkdtemp(prefix="dyncache-"))
    runs = {}
    for name, on in (("on the fly", "false"), ("cached", "true")):
        cfg = build_run_config("dynamics", args.preset, data_path=args.data, deps=deps, overrides=[
            f"data.precompute={on}", f"data.split={args.split}", "data.val_split=", "train.device=cpu",
            f"train.precision={precision}"])
        torch.manual_seed(0)
        runs[name] = Trainer(cfg, root / name.replace(" ", "-"), progress=False)
    c0, w0 = time.process_time(), time.perf_counter()
    loaders = {name: iter(tr._loader(args.split, tr.cfg.train.seed)) for name, tr in runs.items()}
    build_cpu, build_wall = time.process_time() - c0, time.perf_counter() - w0
    data = Dataset(args.data)
    frames = {s: sum(e.length for e in data.episodes(s)) for s in (args.split, "train", "val")}
    print(f"precision {precision}, {args.threads} thread(s); cache of split {args.split!r}: {frames[args.split]} "
          f"frames in {build_wall:.1f} s wall / {build_cpu:.1f} s CPU = {1e3 * build_cpu / frames[args.split]:.2f} "
          f"ms CPU per frame; train+val ({frames['train'] + frames['val']} frames) extrapolated: "
          f"{build_cpu / frames[args.split] * (frames['train'] + frames['val']) / 60:.1f} min CPU")
    for name, tr in runs.items():
        tr.model.train()
        tr._train_step(loaders[name])  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.steps):
        for name, tr in runs.items():
            w, c = time.perf_counter(), time.process_time()
            tr._train_step(loaders[name])
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}
    for k, (w, c) in med.items():
        print(f"{k:>10}: {w:.3f} s wall, {c:.3f} s CPU per step (median of {args.steps})")
    (wf, cf), (wc, cc) = med["on the fly"], med["cached"]
    print(f"cached / on the fly: {wc / wf:.3f} wall, {cc / cf:.3f} CPU ({cf / cc:.2f}x fewer CPU seconds per step)")
    if args.agree_clips:
        agreement(runs["cached"], args.split, args.agree_clips)


@torch.no_grad()
def agreement(trainer: Trainer, split: str, limit: int) -> None:
    """Cached vs per-clip tokens and actions over (up to ``limit``, evenly spaced) clips of ``split``."""
    model = trainer.model
    loader = trainer._loader(split, seed=0)
    clips = loader.loader.clips
    step = max(1, len(clips) // limit)
    n = 0
    diff_t = agree_t = None
    for first in range(0, len(clips), step * 16):
        idx = list(range(first, min(len(clips), first + step * 16), step))
        got = loader.get_batch(idx)
        tokens, actions = model.tokens_and_actions(to_unit(clips.get_batch(idx)))
        d = (got.tokens != tokens).float().mean(2).sum(0)  # (T,)
        a = (got.actions == actions).float().sum(0)  # (T-1,)
        diff_t = d if diff_t is None else diff_t + d
        agree_t = a if agree_t is None else agree_t + a
        n += len(idx)
    diff, agree = float(diff_t.sum()) / (n * len(diff_t)), float(agree_t.sum()) / (n * len(agree_t))
    print(f"{n} clips of {clips.clip_len} frames: tokens differing from per-clip encoding {100 * diff:.2f}% "
          f"(by frame of the clip: {', '.join(f'{100 * float(x) / n:.1f}' for x in diff_t)} %); "
          f"latent actions agreeing {100 * agree:.2f}% (by transition: "
          f"{', '.join(f'{100 * float(x) / n:.1f}' for x in agree_t)} %)")


if __name__ == "__main__":
    main()
