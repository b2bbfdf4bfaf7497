"""`playworld play-setting RUN`: show or set the setting a world is played at (RUN/play_setting.json)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "play-setting", help="show or set how a world's frames are decoded when it is played (play_setting.json)",
        description="playworld play-setting RUN                      show the setting RUN plays at\n"
        "playworld play-setting RUN --copy-penalty 3 --note \"...\"   set fields (the others are kept)\n"
        "playworld play-setting RUN --from-eval EVAL             the setting an evaluation measured\n"
        "playworld play-setting RUN --clear                      back to play's global setting\n\n"
        "Writes RUN/play_setting.json, which `playworld play`, `rollout`, `eval`, World.load and make_env\n"
        "start from; their own flags still override it (docs/play.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a world run directory (tokenizer/, lam/, dynamics/)")
    p.add_argument("--steps", type=int, help="MaskGIT iterations per frame")
    p.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    p.add_argument("--copy-penalty", type=float, help="logit taken from each place's previous token")
    p.add_argument("--action-guidance", type=float, help="1 = off; g > 1 amplifies the pressed action's change")
    p.add_argument("--from-eval", metavar="EVAL", help="take the decoding setting a `playworld eval` of this "
                   "world measured (its metrics.json, its directory, or a run with eval/metrics.json)")
    p.add_argument("--note", default=None, help="why this setting (kept in the file)")
    p.add_argument("--clear", action="store_true", help="remove the file: the world plays at play's setting")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from playworld.errors import ConfigError
    from playworld.eval.compare import find_metrics
    from playworld.eval.config import EvalConfig
    from playworld.eval.schema import load_metrics
    from playworld.io import read_json
    from playworld.maskgit import play_sampling
    from playworld.play_setting import FIELDS, FILENAME, parse_play_setting, save_play_setting, world_sampling

    run_dir: Path = args.run
    if not (run_dir / "dynamics").is_dir():
        raise ConfigError(f"{run_dir}: not a world run directory (no dynamics/)")
    path = run_dir / FILENAME
    given = {"steps": args.steps, "temperature": args.temperature, "copy_penalty": args.copy_penalty,
             "action_guidance": args.action_guidance}
    if args.clear:
        if any(v is not None for v in given.values()) or args.from_eval or args.note is not None:
            raise ConfigError("--clear takes no other setting")
        path.unlink(missing_ok=True)
        print(f"{run_dir}: plays at play's setting ({_describe(dataclasses.asdict(play_sampling()))})")
        return 0
    raw = read_json(path, ConfigError, "play setting file") if path.is_file() else None
    own = parse_play_setting(raw, str(path)) if raw is not None else {}  # its fields are kept unless given now
    note = args.note
    if args.from_eval:
        metrics_path = find_metrics(args.from_eval)
        metrics = load_metrics(metrics_path)
        # the eval's own reader (older files read as they ran), then the setting its fields describe
        measured = EvalConfig.from_settings(metrics["settings"], str(metrics_path)).sampling()
        given = {k: given[k] if given[k] is not None else getattr(measured, k) for k in FIELDS}
        note = note if note is not None else f"as measured by {metrics_path} (of {metrics['run']})"
    if any(v is not None for v in given.values()) or note is not None:
        own = {**own, **{k: v for k, v in given.items() if v is not None}}
        save_play_setting(run_dir, note=note if note is not None else (raw or {}).get("note", ""), **own)
        print(f"wrote {path}")
    setting = dataclasses.asdict(world_sampling(run_dir))
    source = f"{path}: {_describe(own)}" if own else "no play_setting.json"
    print(f"{run_dir} plays at {_describe({k: setting[k] for k in FIELDS})} ({source}; the rest is play's)")
    return 0


def _describe(values: dict) -> str:
    names = {"steps": "steps", "temperature": "temperature", "copy_penalty": "copy penalty",
             "action_guidance": "action guidance"}
    return ", ".join(f"{names[k]} {v:g}" for k, v in values.items() if k in names)
