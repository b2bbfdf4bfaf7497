"""`train all`'s overall progress: the estimator as a pure function (cost weights before any
measurement, measured rates after, finished stages counted as done), the live tracker with a fake
clock, and a tiny `train all` resumed after its tokenizer that prints the overall line."""

from __future__ import annotations

import io
import re

import pytest

from playworld.cli import main
from playworld.errors import ConfigError
from playworld.presets import build_run_config
from playworld.train.progress import (
    PipelineProgress,
    StageState,
    estimate_pipeline,
    format_duration,
    step_cost,
)

from helpers import make_dataset


def test_before_any_measurement_steps_are_weighed_by_cost_and_there_is_no_eta():
    stages = [StageState("a", steps=100, done=100, cost=1.0), StageState("b", steps=100, done=0, cost=3.0)]
    est = estimate_pipeline(stages)
    assert est.fraction == pytest.approx(100 * 1 / (100 * 1 + 100 * 3))
    assert est.eta_s is None and est.total_s is None


def test_unmeasured_stages_are_timed_from_the_measured_stages():
    stages = [StageState("tok", steps=10, done=10, cost=2.0, seconds_per_step=4.0),
              StageState("lam", steps=20, done=5, cost=1.0, seconds_per_step=1.0),
              StageState("dyn", steps=30, done=0, cost=5.0)]
    est = estimate_pipeline(stages)
    per_unit = (4.0 + 1.0) / (2.0 + 1.0)  # seconds per cost unit, pooled over the measured stages
    assert est.seconds_per_step == pytest.approx((4.0, 1.0, 5.0 * per_unit))
    assert est.eta_s == pytest.approx(15 * 1.0 + 30 * 5.0 * per_unit)
    assert est.total_s == pytest.approx(10 * 4.0 + 20 * 1.0 + 30 * 5.0 * per_unit)
    assert est.fraction == pytest.approx((40 + 5) / est.total_s)
    # a stage before the measured one is timed from it too
    first_unmeasured = [StageState("tok", 10, 0, 2.0), StageState("lam", 20, 1, 1.0, seconds_per_step=0.5)]
    assert estimate_pipeline(first_unmeasured).seconds_per_step == (1.0, 0.5)


def test_finished_stages_count_as_done_and_overshoot_is_capped():
    stages = [StageState("tok", 10, 12, 1.0, 2.0), StageState("lam", 10, 0, 1.0)]
    est = estimate_pipeline(stages)
    assert est.fraction == pytest.approx(0.5) and est.eta_s == pytest.approx(20.0)
    assert estimate_pipeline([StageState("tok", 10, 10, 1.0, 2.0)]).eta_s == 0


def test_bad_stages_are_named():
    with pytest.raises(ConfigError, match="stage lam: cost per step"):
        StageState("lam", 10, 0, 0.0)
    with pytest.raises(ConfigError, match="at least one stage"):
        estimate_pipeline([])


def test_step_cost_grows_with_model_size_and_counts_frozen_models():
    tiny = build_run_config("tokenizer", "tiny")
    small = build_run_config("tokenizer", "small")
    assert step_cost("tokenizer", small) > 4 * step_cost("tokenizer", tiny)
    dyn, lam = build_run_config("dynamics", "tiny"), build_run_config("lam", "tiny")
    assert step_cost("dynamics", dyn, [tiny, lam]) > step_cost("dynamics", dyn)


@pytest.mark.parametrize(("kind", "sets", "tokens"), [
    ("tokenizer", [], 16 * 16), ("tokenizer", ["model.patch=8"], 8 * 8), ("lam", [], 8 * 8),
    ("lam", ["model.patch_size=16"], 4 * 4), ("dynamics", [], 16 * 16),
    ("dynamics", ["model.token_height=8", "model.token_width=4"], 8 * 4)])
def test_step_cost_counts_each_model_configs_tokens_per_frame(kind, sets, tokens):
    cfg = build_run_config(kind, "tiny", overrides=sets)
    assert cfg.model.tokens_per_frame == tokens
    base = build_run_config(kind, "tiny")
    # the cost is params x tokens: the same model on fewer tokens costs proportionally less
    if kind == "dynamics":  # (a patch size also changes the tokenizer's and the LAM's parameter counts)
        assert step_cost(kind, cfg) / step_cost(kind, base) == pytest.approx(tokens / base.model.tokens_per_frame)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tracker_measures_the_running_stage_and_logs_sparsely():
    clock, out = _Clock(), io.StringIO()
    tracker = PipelineProgress([StageState("tok", 10, 0, 1.0), StageState("lam", 10, 0, 1.0)], stream=out,
                               log_every_s=60.0, clock=clock)
    tracker.start_stage("tok", 0)
    for step in range(1, 11):
        clock.t += 10.0 if step == 1 else 2.0  # the first step pays for start-up and is not counted
        tracker.on_step(step)
    assert tracker.stages[0].seconds_per_step == pytest.approx(2.0)
    tracker.end_stage("tok", 10)
    est = tracker.estimate()
    assert est.fraction == pytest.approx(0.5) and est.eta_s == pytest.approx(20.0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("pipeline: 0%, tok 0/10") and "tok starting" in lines[0]
    assert lines[-1] == "pipeline: 50%, tok 10/10, elapsed 28s, ETA 20s (tok done)"
    assert len(lines) == 2  # 28 s of steps, a line a minute: only the stage's start and end
    # on a terminal the same state is one tqdm bar
    bar_out = _Tty()
    bar = PipelineProgress(tracker.stages, stream=bar_out, clock=clock)
    bar.start_stage("lam", 3)
    bar.close()
    assert re.search(r"pipeline:  65%\|.*lam 3/10", bar_out.getvalue())
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s"


def test_train_all_shows_the_pipeline_line_and_counts_a_finished_tokenizer(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", episodes=4, length=8, size=64)
    run = tmp_path / "run"
    common = ["--data", str(data), "--preset", "tiny", "--steps", "3", "--set", "data.clip_len=3",
              "--set", "data.batch_size=2", "--set", "train.val_every=0", "--set", "train.log_every=1"]
    assert main(["train", "tokenizer", "--out", str(run / "tokenizer"), *common, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "all", "--out", str(run), *common, "--allow-collapsed-lam"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pipeline: ")]
    # the tokenizer finished in an earlier call: counted as done, and its logged rate gives an ETA at once
    first = re.match(r"pipeline: (\d+)%, tokenizer 3/3, elapsed \d+s, ETA \d+s \(tokenizer from step 3\)", lines[0])
    assert first and 0 < int(first.group(1)) < 100, lines[0]
    assert any("(lam starting)" in line for line in lines) and any("(dynamics starting)" in line for line in lines)
    assert re.match(r"pipeline: 100%, dynamics 3/3, elapsed \d+s, ETA 0s \(dynamics done\)", lines[-1]), lines[-1]
