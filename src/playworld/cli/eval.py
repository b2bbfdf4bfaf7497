"""`playworld eval [RUN] [--data DIR]`: metrics.json + report.html for a trained world (docs/eval.md);
`playworld eval --compare A B ...`: the headline figures of several evaluations side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from playworld.cli.threads import add_threads_argument
    from playworld.config import add_dataclass_args
    from playworld.eval.config import EvalConfig

    p = sub.add_parser(
        "eval", help="evaluate a trained world (metrics.json, report.html) or compare evaluations",
        description="Evaluate:  playworld eval [RUN] [--data DIR] [--split test] [--episodes 64] [--out RUN/eval]\n"
        "Compare:   playworld eval --compare RUN_A RUN_B ... [--out compare.md]\n\n"
        "Every figure is measured on held-out episodes with fixed seeds and carries a 95% bootstrap interval.\n"
        "Without RUN: the world shipped in src/playworld/assets/coinrun/ (output: ./eval/coinrun). Without --data:\n"
        "the run's training data if it is here (its test split), else, for a Procgen world, 16 real-game\n"
        "episodes on held-out levels, collected once into ~/.cache/playworld/heldout/ and reused.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run directory with tokenizer/, lam/ and dynamics/ (default: shipped world)")
    p.add_argument("--data", help="dataset directory (its recorded actions are used here only; default: the run's "
                   "training data if here, else held-out Procgen episodes collected into a cache, docs/eval.md)")
    p.add_argument("--out", help="output directory (default: RUN/eval, ./eval/coinrun for the shipped world); "
                   "with --compare: the markdown table file")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="compare the evaluations of these runs (or of "
                   "their eval directories / metrics.json files) instead of evaluating")
    p.add_argument("--device", default="cpu", help="torch device for the models (default: %(default)s)")
    add_threads_argument(p)
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from playworld.errors import ConfigError

    if args.compare:
        if args.run or args.data:
            raise ConfigError("give either RUN --data DIR (evaluate) or --compare RUN_A RUN_B ..., not both")
        return _compare(args)
    return _evaluate(args)


def _compare(args: argparse.Namespace) -> int:
    from playworld.eval.compare import compare, to_markdown
    from playworld.io import atomic_write_text

    table = to_markdown(compare(args.compare))
    print(table, end="")
    if args.out:
        atomic_write_text(Path(args.out), table)
        print(f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json
    import time

    from playworld.api import DEFAULT_RUN, resolve_run
    from playworld.cli.threads import apply_threads
    from playworld.config import dataclass_from_args
    from playworld.data.loader import ClipDataset
    from playworld.errors import DatasetError
    from playworld.eval.config import EvalConfig
    from playworld.eval.evaluate import evaluate
    from playworld.eval.heldout import collect_heldout, plan_heldout
    from playworld.eval.report import render_report
    from playworld.eval.schema import metrics_text, validate
    from playworld.io import atomic_write_text
    from playworld.play.actions import FILENAME as ACTION_NAMES_FILE
    from playworld.video import write_video
    from playworld.world import World, WorldConfig

    cfg = dataclass_from_args(EvalConfig, args)
    apply_threads(args.threads)
    shipped = args.run is None
    args.run = str(resolve_run(args.run))
    if args.data is None:
        args.data = str(collect_heldout(plan_heldout(args.run)))
    # the shipped world lives inside the installed package: its evaluation goes to the working directory
    out = Path(args.out) if args.out else (Path("eval") / DEFAULT_RUN.name if shipped else Path(args.run) / "eval")
    world = World.load(args.run, WorldConfig(sampling=cfg.sampling(args.run)), device=args.device,
                       precision=cfg.precision, threads=args.threads)
    clips = ClipDataset(args.data, clip_len=cfg.clip_len, split=cfg.split)
    lam_cfg = world.lam.config
    want = (lam_cfg.height, lam_cfg.width, lam_cfg.channels)
    if tuple(clips.dataset.frame_shape) != want:
        raise DatasetError(f"{args.data}: frames are {tuple(clips.dataset.frame_shape)}, the world in {args.run} "
                           f"was trained on {want}")
    start = time.perf_counter()
    result = evaluate(world, clips, cfg, run=str(args.run), data=str(args.data), device=str(args.device))
    metrics = json.loads(json.dumps(result.metrics))
    validate(metrics, str(out / "metrics.json"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", metrics_text(metrics))
    gifs = {}
    for name, frames in result.gifs.items():
        path = write_video(out / f"{name}.gif", frames, fps=6, scale=2)
        gifs[name] = path.read_bytes()
    atomic_write_text(out / "report.html", render_report(metrics, gifs, result.strips))
    print(f"evaluated {metrics['counts']['episodes']} episodes of {args.data}:{cfg.split} in "
          f"{time.perf_counter() - start:.0f} s")
    for name, e in metrics["headline"].items():
        print(f"  {name:34s} {e['mean']:9.3f}  [{e['low']:.3f}, {e['high']:.3f}]  ({e['better']} is better)")
    for w in metrics["warnings"]:
        print(f"  warning: {w}")
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    if not shipped and not (Path(args.run) / ACTION_NAMES_FILE).exists():
        print(f"its keys have numbers only: `playworld name-actions {out}` names them from these figures")
    return 0
