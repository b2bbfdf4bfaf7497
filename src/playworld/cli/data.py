"""`playworld data info|verify|split DIR`: inspect, check and re-split a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playworld.config import add_dataclass_args, dataclass_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from playworld.data.split import SplitRule

    parser = subparsers.add_parser("data", help="inspect, verify and re-split datasets")
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    info = commands.add_parser("info", help="print a summary: episodes, frames, splits, actions, size")
    info.add_argument("dir", type=Path)
    info.set_defaults(func=run_info)
    verify = commands.add_parser("verify", help="re-check every checksum, shape and index entry")
    verify.add_argument("dir", type=Path)
    verify.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    verify.set_defaults(func=run_verify)
    split = commands.add_parser("split", help="reassign train/val/test and rewrite the manifest atomically")
    split.add_argument("dir", type=Path)
    add_dataclass_args(split, SplitRule)
    split.set_defaults(func=run_split)


def run_info(args: argparse.Namespace) -> int:
    from playworld.data.verify import format_summary, summarize

    print(format_summary(summarize(args.dir)))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from playworld.data.verify import verify_dataset

    problems = verify_dataset(args.dir, progress=args.progress)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: OK (every checksum, shape and index entry checks out)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from playworld.data.format import set_split
    from playworld.data.split import SPLITS, SplitRule

    manifest = set_split(args.dir, dataclass_from_args(SplitRule, args))
    counts = {s: sum(1 for e in manifest.episodes if e.split == s) for s in SPLITS}
    print(f"{args.dir}: split by {manifest.split_rule.by}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
