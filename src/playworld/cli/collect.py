"""`playworld collect procgen ...`: record Procgen episodes into a dataset, or measure the policies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playworld.config import add_dataclass_args, dataclass_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from playworld.data.collect import CollectConfig

    parser = subparsers.add_parser("collect", help="record episodes from a simulator into a dataset")
    sources = parser.add_subparsers(dest="collect_source", metavar="SOURCE", required=True)
    procgen = sources.add_parser(
        "procgen", help="record Procgen episodes (frames, true actions, rewards, level seeds)",
        description="Record Procgen episodes into DIR. Deterministic for a seed; an interrupted run resumes "
        "when re-run with the same arguments.")
    add_dataclass_args(procgen, CollectConfig)
    procgen.add_argument("--out", type=Path, help="dataset directory to create")
    procgen.add_argument("--policy-report", action="store_true",
                         help="write nothing: play --episodes with every policy and print their statistics")
    procgen.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                         help="show a progress bar")
    procgen.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from playworld.data.collect import CollectConfig, collect, format_policy_report, policy_report
    from playworld.errors import ConfigError

    cfg = dataclass_from_args(CollectConfig, args)
    if args.policy_report:
        print(format_policy_report(policy_report(cfg, progress=args.progress)))
        return 0
    if args.out is None:
        raise ConfigError("collect procgen: --out DIR is required (or pass --policy-report)")
    try:
        result = collect(cfg, args.out, progress=args.progress)
    except KeyboardInterrupt:
        print(f"{args.out}: stopped; finished units are kept, re-run the same command to resume",
              file=sys.stderr)
        raise
    if result.status == "already complete":
        print(f"{result.out}: already complete ({cfg.episodes} episodes); nothing to do")
    else:
        print(f"{result.out}: {result.status}, {result.episodes} episodes / {result.frames} frames recorded "
              f"in {result.seconds:.1f} s ({result.frames / max(result.seconds, 1e-9):.0f} frames/s; "
              f"{100 * result.frames / max(result.stepped_frames, 1):.0f}% of the frames stepped were kept)")
    return 0 if result.status != "interrupted" else 1
