"""The `playworld` command line. Each subcommand lives in its own module with
``register(subparsers)``; nothing here runs at import time."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# module name -> subcommand modules register themselves on the parser
_COMMAND_MODULES = (
    "playworld.cli.collect",
    "playworld.cli.ingest",
    "playworld.cli.data",
    "playworld.cli.train",
    "playworld.cli.tokenize",
    "playworld.cli.retoken",
    "playworld.cli.eval",
    "playworld.cli.names",
    "playworld.cli.play_setting",
    "playworld.cli.rollout",
    "playworld.cli.play",
    "playworld.cli.agent",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playworld",
        description="Learn playable worlds from unlabeled video: collect or ingest video, train a video "
        "tokenizer, a latent action model and a dynamics model, evaluate them, and play.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command not built yet
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from playworld import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    from playworld.threads import prefer_passive_wait

    prefer_passive_wait()  # before build_parser: the commands' modules load torch, whose OpenMP reads it once
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from playworld.errors import PlayworldError, PlayworldWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, PlayworldWarning):  # a message for the user, not a code location
            print(f"playworld: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return int(args.func(args) or 0)
    except PlayworldError as e:
        print(f"playworld: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("playworld: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    raise SystemExit(main())
