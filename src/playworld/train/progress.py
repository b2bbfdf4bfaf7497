"""How far a multi-stage run (`playworld train all`: tokenizer, LAM, dynamics) has come, and how long
it has left.

Each stage is weighted by what its steps cost: measured seconds per step once a stage has run (in this
call, or in an earlier one, read from its ``logs/metrics.jsonl``), and before that the stage's cost
from its config (parameters x tokens per step, :func:`step_cost`) scaled by the seconds per cost unit
of the stages measured so far. :func:`estimate_pipeline` is the pure rule; :class:`PipelineProgress`
feeds it from a running ``train all`` and shows it (a tqdm bar on a terminal, an occasional plain line
in a log).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from playworld.errors import ConfigError


@dataclass(frozen=True)
class StageState:
    """One stage of a pipeline as the estimator sees it."""

    name: str
    steps: int  # optimizer steps the stage runs in all (train.steps)
    done: int  # steps already taken (a finished stage: done == steps)
    cost: float  # relative cost of one step, from the config (any unit, the same for every stage); > 0
    seconds_per_step: float | None = None  # measured, once the stage has run a few steps

    def __post_init__(self) -> None:
        if self.steps < 0 or not 0 <= self.done:
            raise ConfigError(f"stage {self.name}: steps {self.steps} and done {self.done} must be >= 0")
        if not (math.isfinite(self.cost) and self.cost > 0):
            raise ConfigError(f"stage {self.name}: cost per step must be a positive number, got {self.cost}")
        if self.seconds_per_step is not None and not (math.isfinite(self.seconds_per_step)
                                                      and self.seconds_per_step > 0):
            raise ConfigError(f"stage {self.name}: seconds_per_step must be > 0, got {self.seconds_per_step}")


@dataclass(frozen=True)
class PipelineEstimate:
    fraction: float  # of the pipeline's estimated work done, in [0, 1]
    eta_s: float | None  # estimated seconds left; None until some stage has a measured rate
    total_s: float | None  # estimated seconds of the whole pipeline (done + left); None likewise
    seconds_per_step: tuple[float | None, ...]  # what one step of each stage is taken to cost


def estimate_pipeline(stages: Sequence[StageState]) -> PipelineEstimate:
    """Fraction done and seconds left of ``stages`` run in order.

    A stage's step costs its measured ``seconds_per_step``; an unmeasured stage's costs
    ``cost x sum(seconds per step) / sum(cost)`` over the measured stages, so a dynamics stage not yet
    started is timed from the tokenizer's and LAM's rates on this machine. Pooling the measured stages
    damps the error of the cost model for any one of them: on the `small` preset it puts the LAM at 0.43
    of a tokenizer step and the dynamics model at 4.4, where the engine measures 0.78 and 3.2 (fp32, 1
    thread), so the dynamics stage is timed 1.7x too long before it starts, and from its own rate once it
    runs. With no measurement at all, the fraction weighs steps by ``cost`` alone and there is no ETA.
    Steps done beyond ``steps`` (a run resumed with fewer steps) count as ``steps``."""
    if not stages:
        raise ConfigError("a pipeline needs at least one stage")
    measured = [i for i, s in enumerate(stages) if s.seconds_per_step is not None]
    rate = sum(stages[i].seconds_per_step or 0.0 for i in measured) / sum(stages[i].cost for i in measured) \
        if measured else None  # seconds per cost unit
    per_step = [s.seconds_per_step if s.seconds_per_step is not None else
                (s.cost * rate if rate is not None else None) for s in stages]
    weights = [p if p is not None else s.cost for p, s in zip(per_step, stages, strict=True)]
    done = sum(w * min(s.done, s.steps) for w, s in zip(weights, stages, strict=True))
    total = sum(w * s.steps for w, s in zip(weights, stages, strict=True))
    fraction = 1.0 if total == 0 else done / total
    if not measured:
        return PipelineEstimate(fraction, None, None, tuple(per_step))
    return PipelineEstimate(fraction, total - done, total, tuple(per_step))


# ----------------------------------------------------------------------------- inputs from configs and runs

def step_cost(kind: str, cfg: Any, frozen: Sequence[Any] = ()) -> float:
    """Relative cost of one training step of run config ``cfg``: trainable parameters x tokens per
    step (6 FLOPs each for forward and backward), plus 2 per parameter x token of each frozen model in
    ``frozen`` (run configs whose forward pass the step also runs: the dynamics model's tokenizer and LAM).
    Models are built on the meta device, so nothing is allocated."""
    total = 6.0 * _params_x_tokens(kind, cfg)
    for dep in frozen:
        total += 2.0 * _params_x_tokens(dep.kind, dep, frames=_frames_per_step(cfg))
    return total


def _frames_per_step(cfg: Any) -> int:
    return cfg.data.batch_size * cfg.data.clip_len * cfg.train.grad_accum


def _params_x_tokens(kind: str, cfg: Any, frames: int | None = None) -> float:
    import torch

    from playworld.train.registry import get_spec

    with torch.device("meta"):
        model = get_spec(kind).build_release(cfg.model)
    params = sum(p.numel() for p in model.parameters())
    return float(params) * int(cfg.model.tokens_per_frame) * (frames or _frames_per_step(cfg))


def steps_done(run_dir: Path) -> int:
    """Steps a run directory already holds: its latest resumable checkpoint's step, else the step its
    release config records (0 for a directory with neither)."""
    from playworld.train.checkpoint import CheckpointManager

    latest = CheckpointManager(run_dir).latest() if (run_dir / "checkpoints").is_dir() else None
    if latest is not None and (latest / "state.json").is_file():
        return int(_read(latest / "state.json").get("step", 0))
    config = run_dir / "config.json"
    if config.is_file():
        progress = _read(config).get("progress")
        if isinstance(progress, dict) and isinstance(progress.get("step"), int):
            return progress["step"]
    return 0


def measured_seconds_per_step(run_dir: Path) -> float | None:
    """Median seconds per step between consecutive training records of ``RUN/logs/metrics.jsonl`` (what
    an earlier call measured; the median skips the gap of a restart), or None without two records."""
    path = run_dir / "logs" / "metrics.jsonl"
    if not path.is_file():
        return None
    points = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the others still tell the rate
        if isinstance(rec, dict) and rec.get("split") == "train" and "loss" in rec:
            points.append((float(rec["step"]), float(rec["time"])))
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False)
             if s1 > s0 and t1 > t0]
    if not rates:
        return None
    rates.sort()
    return rates[len(rates) // 2]


def _read(path: Path) -> dict[str, Any]:
    from playworld.errors import CheckpointError
    from playworld.io import read_json

    data = read_json(path, CheckpointError, "run state")
    return data if isinstance(data, dict) else {}


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# ----------------------------------------------------------------------------- live display

class PipelineProgress:
    """Tracks a running pipeline and shows one overall line: a tqdm bar when ``stream`` is a terminal,
    else a plain line when a stage starts or ends and at most every ``log_every_s`` seconds between.

    Call :meth:`start_stage` before a stage's first step (with the steps it already holds),
    :meth:`on_step` after each step, :meth:`end_stage` after it, and :meth:`close` at the end."""

    def __init__(self, stages: Sequence[StageState], *, stream: TextIO | None = None, enabled: bool = True,
                 log_every_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.stages = list(stages)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.clock = clock
        self.started = clock()
        self._current: int | None = None
        self._first: tuple[float, int] | None = None  # (time, step) after the stage's first step here
        self._last_line = -math.inf
        self._last_draw = -math.inf
        self._bar: Any = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=1000, desc="", file=self.stream, dynamic_ncols=True,
                             bar_format="pipeline: {percentage:3.0f}%|{bar}| {desc}")

    def _index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise ConfigError(f"no stage {name!r} in this pipeline ({[s.name for s in self.stages]})")

    def estimate(self) -> PipelineEstimate:
        return estimate_pipeline(self.stages)

    def start_stage(self, name: str, done: int) -> None:
        i = self._index(name)
        self.stages[i] = replace(self.stages[i], done=done)
        self._current, self._first = i, None
        self._show(force=True, event=f"{name} from step {done}" if done else f"{name} starting")

    def on_step(self, step: int) -> None:
        assert self._current is not None, "start_stage first"
        i, now = self._current, self.clock()
        stage = self.stages[i]
        if self._first is None:
            self._first = (now, step)  # the first step here pays for start-up: rates start after it
            self.stages[i] = replace(stage, done=step)
        else:
            t0, s0 = self._first
            rate = (now - t0) / (step - s0) if step > s0 and now > t0 else stage.seconds_per_step
            self.stages[i] = replace(stage, done=step, seconds_per_step=rate)
        self._show()

    def end_stage(self, name: str, step: int) -> None:
        i = self._index(name)
        self.stages[i] = replace(self.stages[i], done=step)
        finished = step >= self.stages[i].steps
        self._show(force=True, event=f"{name} done" if finished else f"{name} stopped at step {step}")
        self._current = None

    def describe(self, event: str = "") -> str:
        est = self.estimate()
        parts = [f"{100 * est.fraction:.0f}%"]
        if self._current is not None:
            s = self.stages[self._current]
            parts.append(f"{s.name} {min(s.done, s.steps)}/{s.steps}")
        parts.append(f"elapsed {format_duration(self.clock() - self.started)}")
        parts.append(f"ETA {format_duration(est.eta_s)}" if est.eta_s is not None else "ETA after a few steps")
        text = ", ".join(parts)
        return f"{text} ({event})" if event else text

    def _show(self, force: bool = False, event: str = "") -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._bar is not None:
            if force or now - self._last_draw >= 0.5:
                self._last_draw = now
                self._bar.n = round(1000 * self.estimate().fraction)
                self._bar.set_description_str(self.describe(event).split(", ", 1)[1], refresh=True)
            return
        if force or now - self._last_line >= self.log_every_s:
            self._last_line = now
            print(f"pipeline: {self.describe(event)}", file=self.stream, flush=True)

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print ``message`` (to stdout by default) without breaking the bar on a terminal."""
        if self._bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(message, file=file or sys.stdout)
        else:
            print(message, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
