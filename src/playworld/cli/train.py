"""`playworld train tokenizer|lam|dynamics|all` -- also under torchrun for DDP:

    torchrun --nproc_per_node 2 -m playworld train tokenizer --data DIR --preset small --out RUN
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playworld.train.lam_retry import LAMRetry
    from playworld.train.progress import PipelineProgress

KINDS = ("tokenizer", "lam", "dynamics")


def register(sub: argparse._SubParsersAction) -> None:
    from playworld.cli.threads import add_threads_argument
    from playworld.presets import preset_names

    p = sub.add_parser(
        "train", help="train a model (tokenizer, lam, dynamics) or all three in turn",
        description="Train playworld models. Every run is resumable: re-running the same command continues "
        "from the latest checkpoint in --out. Override any config value with --set section.key=value "
        "(sections: model, optim, data, train), e.g. --set model.dim=256 --set train.steps=5000.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="multi-GPU / multi-process: torchrun --nproc_per_node N -m playworld train ...\n"
        "multi-node: torchrun --nnodes M --node_rank R --master_addr HOST --master_port 29500 "
        "--nproc_per_node N -m playworld train ...",
    )
    p.add_argument("what", choices=(*KINDS, "all"), help="which model to train")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="run directory (for `all`: parent of tokenizer/, lam/, dynamics/)")
    p.add_argument("--preset", default="tiny", choices=preset_names(), help="size preset (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. model.dim=256 (repeatable; for `all`, prefix with "
                   "the kind: tokenizer.train.steps=100)")
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    p.add_argument("--tokenizer", default=None, help="dynamics: tokenizer run directory (default: OUT/../tokenizer)")
    p.add_argument("--lam", default=None, help="dynamics: LAM run directory (default: OUT/../lam)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)
    p.add_argument("--allow-collapsed-lam", action="store_true",
                   help="all: train the dynamics model even if the LAM's encoder is collapsed on held-out clips "
                   "(uses under half its actions or has perplexity < 1.5); by default `all` stops after the LAM")
    p.add_argument("--no-lam-retry", dest="lam_retry", action="store_false",
                   help="all: stop at a collapsed LAM at once; by default `all` first keeps it as OUT/lam-collapsed "
                   "and trains one more LAM (balanced assignment at temperature 0.3, the next seed), going on "
                   "only if that one passes the check")
    p.set_defaults(func=run)


def _overrides_for(kind: str, args: argparse.Namespace, scoped: bool, extra: tuple[str, ...] = ()) -> list[str]:
    out = []
    for item in args.overrides:
        head = item.split(".", 1)[0]
        if scoped and head in KINDS:
            if head == kind:
                out.append(item.split(".", 1)[1])
        elif not scoped or head not in KINDS:
            out.append(item)
    if args.steps is not None:
        out.append(f"train.steps={args.steps}")
    return [*out, *extra]


def _config(kind: str, args: argparse.Namespace, scoped: bool, deps: dict[str, str], extra: tuple[str, ...] = ()):
    from playworld.presets import build_run_config

    return build_run_config(kind, args.preset, data_path=args.data,
                            overrides=_overrides_for(kind, args, scoped, extra), deps=deps)


def _train_one(kind: str, out: Path, args: argparse.Namespace, scoped: bool, deps: dict[str, str],
               pipeline: PipelineProgress | None = None, extra: tuple[str, ...] = ()) -> int:
    from playworld.errors import ConfigError
    from playworld.train import Trainer
    from playworld.train.progress import steps_done

    cfg = _config(kind, args, scoped, deps, extra)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.no_resume and (out / "checkpoints").exists():
        raise ConfigError(f"{out}: already holds a run; remove it or drop --no-resume")
    trainer = Trainer(cfg, out, progress=not args.no_progress)
    if pipeline is not None:
        pipeline.start_stage(kind, steps_done(out))
    result = trainer.fit(resume=True, on_step=pipeline.on_step if pipeline is not None else None)
    say = pipeline.write if pipeline is not None else print
    if pipeline is not None:
        pipeline.end_stage(kind, result.step)
    if result.interrupted:
        say(f"{kind}: stopped at step {result.step}; checkpoint saved in {out}. Re-run to continue.")
        # the shell's convention, 128 + the signal: 130 after SIGINT (Ctrl-C), 143 after SIGTERM
        return 128 + (result.signal or signal.SIGINT)
    say(f"{kind}: done at step {result.step}: {out}")
    return 0


def _pipeline(out: Path, args: argparse.Namespace, deps: dict[str, str]) -> PipelineProgress | None:
    """The overall progress of `train all` (rank 0 only; none with --no-progress or --print-config):
    each stage weighted by its estimated cost, stages already finished in OUT counted as done, and
    rates measured by an earlier call (OUT/KIND/logs) reused."""
    import os

    from playworld.train.progress import (
        PipelineProgress,
        StageState,
        measured_seconds_per_step,
        step_cost,
        steps_done,
    )

    if args.print_config or args.no_progress or os.environ.get("RANK", "0") != "0":
        return None
    cfgs = {kind: _config(kind, args, True, deps if kind == "dynamics" else {}) for kind in KINDS}
    stages = []
    for kind, cfg in cfgs.items():
        frozen = [cfgs["tokenizer"], cfgs["lam"]] if kind == "dynamics" else []
        stages.append(StageState(kind, cfg.train.steps, min(steps_done(out / kind), cfg.train.steps),
                                 step_cost(kind, cfg, frozen), measured_seconds_per_step(out / kind)))
    return PipelineProgress(stages)


def _check_lam(out: Path, args: argparse.Namespace, retry: LAMRetry | None,
               pipeline: PipelineProgress | None = None) -> int:
    """Stop `all` before the dynamics model if the LAM's encoder is collapsed on held-out clips (see
    playworld.train.lam_check), after one retry with other settings (playworld.train.lam_retry) unless
    --no-lam-retry or the run already retried (``retry``: its record); with --allow-collapsed-lam, say so and
    go on. Returns an exit code (non-zero: the retry's training was stopped)."""
    from playworld.errors import TrainingError
    from playworld.train.lam_check import measure_lam, require_healthy_lam

    say = pipeline.write if pipeline is not None else print
    lam_dir = out / "lam"
    check = measure_lam(lam_dir)
    if check.collapsed and retry is None and args.lam_retry:
        retry = _start_retry_on_rank0(out, args, check.describe())
        say(f"lam: collapsed ({check.usage.collapse()}: {check.describe()}); kept as {out / retry.set_aside}. "
            f"Training one more LAM in {lam_dir} with {', '.join(retry.overrides)} (--no-lam-retry stops here "
            f"instead)", file=sys.stderr)
        code = _train_one("lam", lam_dir, args, True, {}, pipeline, retry.overrides)
        if code:
            return code
        check = measure_lam(lam_dir)
    try:
        require_healthy_lam(check, lam_dir, retried=retry)
    except TrainingError as e:
        if not args.allow_collapsed_lam:
            raise
        say(f"warning (--allow-collapsed-lam, training the dynamics model anyway): {e}", file=sys.stderr)
        return 0
    say(f"lam: check passed{' (the retry)' if retry else ''}: {check.describe()}")
    return 0


def _default_play_setting(out: Path, pipeline: PipelineProgress | None) -> None:
    """The finished world's play setting for the kind of dynamics model its run recorded (rank 0 writes it;
    :func:`playworld.play_setting.default_play_setting`)."""
    from playworld.play_setting import ONE_PASS_COPY_PENALTY, default_play_setting
    from playworld.release import read_run_config
    from playworld.train.distributed import init_distributed
    from playworld.train.engine import pick_device

    cfg = read_run_config(out / "dynamics")
    if init_distributed(pick_device(cfg.train.device).type).is_main:  # joined already by the engine's stages
        written = default_play_setting(out, cfg.model)
        if written is not None:
            (pipeline.write if pipeline is not None else print)(
                f"play setting: {written} (copy penalty {ONE_PASS_COPY_PENALTY:g}: one pass per frame)")


def _start_retry_on_rank0(out: Path, args: argparse.Namespace, first_check: str) -> LAMRetry:
    """Record the retry and move the collapsed LAM aside once: under torchrun every rank has measured the same
    LAM; rank 0 writes and renames between two barriers, then every rank reads the record."""
    from playworld.train.distributed import barrier, init_distributed
    from playworld.train.engine import pick_device
    from playworld.train.lam_retry import read_retry, start_retry

    cfg = _config("lam", args, True, {})
    info = init_distributed(pick_device(cfg.train.device).type)
    barrier(info)  # every rank has measured lam/ before it moves
    if info.is_main:
        start_retry(out, first_check, cfg.train.seed)
    barrier(info)
    retry = read_retry(out)
    assert retry is not None
    return retry


def run(args: argparse.Namespace) -> int:
    from playworld.cli.threads import apply_threads
    from playworld.train.distributed import shutdown_distributed

    apply_threads(args.threads)
    try:
        code = _run(args)
    except BaseException:
        shutdown_distributed(synchronize=False)
        raise
    shutdown_distributed()  # under torchrun: ranks leave the process group together, not at interpreter exit
    return code


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.what == "all":
        from playworld.train.lam_retry import read_retry

        deps = {"tokenizer": str(out / "tokenizer"), "lam": str(out / "lam")}
        retry = read_retry(out)  # recorded by an earlier call: its second LAM resumes with the retry's settings
        pipeline = _pipeline(out, args, deps)
        try:
            for kind in KINDS:
                if kind == "dynamics" and not args.print_config:
                    code = _check_lam(out, args, retry, pipeline)
                    if code:
                        return code
                extra = retry.overrides if kind == "lam" and retry is not None else ()
                code = _train_one(kind, out / kind, args, True, deps if kind == "dynamics" else {}, pipeline, extra)
                if code:
                    return code
            if not args.print_config:
                _default_play_setting(out, pipeline)
        finally:
            if pipeline is not None:
                pipeline.close()
        return 0
    deps = {}
    if args.what == "dynamics":
        deps = {"tokenizer": args.tokenizer or str(out.parent / "tokenizer"),
                "lam": args.lam or str(out.parent / "lam")}
    return _train_one(args.what, out, args, False, deps)
