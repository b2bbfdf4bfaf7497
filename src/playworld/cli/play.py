"""`playworld play`: a local web page to play a trained world with the keyboard."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from playworld.cli.threads import add_threads_argument
    from playworld.config import add_dataclass_args
    from playworld.play.config import PlayConfig

    p = sub.add_parser(
        "play", help="serve a web page to play a trained world (several players at once)",
        description="playworld play [RUN] [--data DIR]: open http://127.0.0.1:8000 and press keys 1..N.\n"
        "Without RUN, plays the world shipped in src/playworld/assets/coinrun/.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run directory with tokenizer/, lam/ and dynamics/ (default: shipped world)")
    p.add_argument("--data", help="dataset directory to draw start frames from "
                   "(default: RUN/prompts when it holds a dataset, as the shipped world does)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default: %(default)s)")
    add_threads_argument(p)
    add_dataclass_args(p, PlayConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from playworld.api import load, resolve_run, run_prompts
    from playworld.cli.threads import command_threads
    from playworld.config import dataclass_from_args
    from playworld.play.config import PlayConfig
    from playworld.play.scheduler import StepScheduler
    from playworld.play.server import PlayServer
    from playworld.precision import cast_for_play, resolve_precision

    config = dataclass_from_args(PlayConfig, args)
    run_dir = resolve_run(args.run)
    # every torch op of the server runs on the scheduler's worker thread, loading included (see StepScheduler.call)
    scheduler = StepScheduler(config.window_ms, torch_threads=command_threads(args.threads, latency=True),
                               defer_commit=config.defer_commit)
    loaded = scheduler.call(load, run_dir, args.device)
    loaded.require("tokenizer", "lam", "dynamics")
    dtype = scheduler.call(resolve_precision, config.precision, args.device)
    scheduler.call(cast_for_play, loaded.tokenizer, loaded.dynamics, dtype)
    data = args.data
    if data is None:
        data = run_prompts(run_dir)  # start frames shipped with the world, if it ships them
    server = PlayServer((loaded.tokenizer, loaded.lam, loaded.dynamics), config, run_dir=run_dir, data=data,
                        scheduler=scheduler)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"playworld: warning: listening on {config.host}: anyone who can reach it can play (and use CPU)")
    print(f"playworld: playing {run_dir} at http://{config.host}:{config.port}/ "
          f"({server.num_actions} actions, {str(dtype).removeprefix('torch.')}, {config.max_sessions} sessions at most)")
    uvicorn.run(server.app(), host=config.host, port=config.port, log_level="warning",
                ws_max_size=config.max_message_chars)
    return 0
