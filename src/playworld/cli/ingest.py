"""`playworld ingest PATHS... --out DIR`: videos and image folders into a dataset (no actions)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playworld.config import add_dataclass_args, dataclass_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from playworld.data.ingest import IngestConfig

    parser = subparsers.add_parser(
        "ingest", help="turn video files and image folders into a dataset",
        description="Resize (keeping aspect), resample to --fps by timestamps, split at scene cuts and "
        "--max-episode-frames (--no-cuts: one episode per input), and write a dataset without actions. The "
        "report gives the cuts found per input, the episode lengths and the largest frame differences, to "
        "choose --cut-threshold by (docs/data.md). Unreadable inputs are reported and skipped (or abort "
        "with --strict).")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="video files and folders of images")
    add_dataclass_args(parser, IngestConfig)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from playworld.data.ingest import IngestConfig, ingest

    cfg = dataclass_from_args(IngestConfig, args)
    report = ingest(args.paths, args.out, cfg, overwrite=args.overwrite, progress=args.progress)
    print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    return 0
