"""Smoke runs of the real entry points: `train all` (tokenizer, LAM, dynamics in turn) on a tiny
dataset, resume of a finished run, `playworld.load`, and `tokenize` encode/decode round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

import playworld
from playworld.cli import main
from playworld.video import read_video, write_video

from helpers import make_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_dataset(root / "ds", episodes=4, length=8, size=64)
    run = root / "run"
    # a 2-step LAM on squares that all move the same way is (rightly) collapsed: this fixture tests the
    # pipeline, so it trains the dynamics model anyway; the check is tested below
    args = ["train", "all", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "2",
            "--set", "data.clip_len=3", "--set", "data.batch_size=2", "--set", "train.val_every=0",
            "--no-progress", "--allow-collapsed-lam"]
    assert main(args) == 0
    return root, run, args


def test_train_all_writes_three_released_models(trained):
    _, run, _ = trained
    for part in ("tokenizer", "lam", "dynamics"):
        cfg = json.loads((run / part / "config.json").read_text())
        assert cfg["kind"] == part and cfg["train"]["steps"] == 2
        assert load_file(str(run / part / "model.safetensors"))
        assert (run / part / "logs" / "metrics.jsonl").read_text().count("\n") >= 1
    dyn = json.loads((run / "dynamics" / "config.json").read_text())
    tok = json.loads((run / "tokenizer" / "config.json").read_text())
    assert dyn["model"]["vocab_size"] == tok["model"]["num_codes"]
    assert dyn["deps"]["tokenizer"].endswith("tokenizer")
    assert not (run / "play_setting.json").exists()  # a two-pass world plays at play's own setting


def test_train_all_gives_a_one_pass_world_its_copy_penalty_and_keeps_a_chosen_one(tmp_path, capsys):
    from playworld.play_setting import (
        ONE_PASS_COPY_PENALTY,
        read_play_setting,
        save_play_setting,
        world_sampling,
    )

    data = make_dataset(tmp_path / "ds", episodes=4, length=8, size=64)
    run = tmp_path / "run"
    args = ["train", "all", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "1",
            "--set", "data.clip_len=3", "--set", "data.batch_size=2", "--set", "train.val_every=0",
            "--set", "dynamics.model.one_pass=true", "--no-progress", "--allow-collapsed-lam"]
    assert main(args) == 0
    assert read_play_setting(run) == {"copy_penalty": ONE_PASS_COPY_PENALTY}
    assert world_sampling(run).copy_penalty == ONE_PASS_COPY_PENALTY == 3.0
    assert "play setting:" in capsys.readouterr().out
    save_play_setting(run, note="chosen on this world's eval", copy_penalty=2.5)
    assert main(args) == 0  # a finished run re-run: the setting chosen since is kept
    assert read_play_setting(run) == {"copy_penalty": 2.5}


def test_rerun_of_a_finished_run_trains_nothing_more(trained, capsys):
    _, run, args = trained
    before = (run / "tokenizer" / "model.safetensors").read_bytes()
    assert main(args) == 0
    assert (run / "tokenizer" / "model.safetensors").read_bytes() == before


def _encoder_gives(monkeypatch, actions) -> None:
    """Make every LAM's encoder give ``actions(B, T-1) -> (B, T-1) long`` (a constructed collapse or health)."""
    from playworld.models.lam import LatentActionModel

    monkeypatch.setattr(LatentActionModel, "infer_actions",
                        lambda self, video: actions(video.shape[0], video.shape[1] - 1).to(video.device))


def test_train_all_stops_before_dynamics_when_the_lam_is_collapsed(tmp_path, monkeypatch, capsys):
    import shutil

    import torch

    data = make_dataset(tmp_path / "ds", episodes=6, length=8, size=64, val=0.34)
    run = tmp_path / "run"
    args = ["train", "all", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "1",
            "--set", "data.clip_len=3", "--set", "data.batch_size=2", "--set", "train.val_every=0",
            "--no-progress", "--no-lam-retry"]
    _encoder_gives(monkeypatch, lambda b, t: torch.full((b, t), 5, dtype=torch.long))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the latent action model has collapsed (fewer than 4 of 8 actions used)" in err
    assert "on 12 held-out clips of split 'val', the encoder uses 1 of 8 actions (perplexity 1.00" in err
    assert "agrees with the decoder's winner on" in err
    for hint in ("lam.train.steps", "lam.train.seed", "--policy-report", "lam.model.", "--allow-collapsed-lam"):
        assert hint in err
    assert (run / "lam" / "model.safetensors").is_file() and not (run / "dynamics").exists()
    # the escape hatch trains the dynamics model anyway, saying why it warns
    assert main([*args, "--allow-collapsed-lam"]) == 0
    out = capsys.readouterr()
    assert "--allow-collapsed-lam" in out.err and (run / "dynamics" / "model.safetensors").is_file()
    # a healthy encoder (the same tokenizer and LAM runs) passes the check without the flag
    healthy = tmp_path / "healthy"
    for part in ("tokenizer", "lam"):
        shutil.copytree(run / part, healthy / part)
    _encoder_gives(monkeypatch, lambda b, t: torch.arange(b * t).view(b, t) % 8)
    assert main([*args[:5], str(healthy), *args[6:]]) == 0
    out = capsys.readouterr()
    assert "lam: check passed: on 12 held-out clips of split 'val', the encoder uses 8 of 8 actions" in out.out
    assert (healthy / "dynamics" / "model.safetensors").is_file()


def _collapsed_unless_temperature(monkeypatch, healthy_at: float | None) -> None:
    """Every LAM's encoder gives one action, except a LAM whose assign_temperature is ``healthy_at``."""
    import torch

    from playworld.models.lam import LatentActionModel

    def infer(self, video):
        b, t = video.shape[0], video.shape[1] - 1
        if self.config.assign_temperature == healthy_at:
            return (torch.arange(b * t).view(b, t) % 8).to(video.device)
        return torch.full((b, t), 5, dtype=torch.long, device=video.device)

    monkeypatch.setattr(LatentActionModel, "infer_actions", infer)


def _retry_args(data, run) -> list[str]:
    return ["train", "all", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "1",
            "--set", "data.clip_len=3", "--set", "data.batch_size=2", "--set", "train.val_every=0", "--no-progress"]


def test_train_all_retries_a_collapsed_lam_once_and_keeps_the_first(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "ds", episodes=6, length=8, size=64, val=0.34)
    run = tmp_path / "run"
    args = _retry_args(data, run)
    _collapsed_unless_temperature(monkeypatch, healthy_at=0.3)
    assert main(args) == 0
    out = capsys.readouterr()
    assert "lam: collapsed (fewer than 4 of 8 actions used" in out.err and "kept as" in out.err
    assert "lam: check passed (the retry): on 12 held-out clips" in out.out
    first = json.loads((run / "lam-collapsed" / "config.json").read_text())
    second = json.loads((run / "lam" / "config.json").read_text())
    assert (first["model"]["assign_temperature"], first["train"]["seed"]) == (0.1, 0)
    assert (second["model"]["assign_temperature"], second["model"]["assign"], second["train"]["seed"]) == \
        (0.3, "balanced", 1)
    record = json.loads((run / "lam-retry.json").read_text())
    assert record["overrides"] == ["model.assign=balanced", "model.assign_temperature=0.3", "train.seed=1"]
    assert "uses 1 of 8 actions" in record["first_check"]
    assert json.loads((run / "dynamics" / "config.json").read_text())["deps"]["lam"] == str(run / "lam")
    # a re-run resumes the second LAM with its settings (no config clash) and retries nothing
    weights = {p: (run / p / "model.safetensors").read_bytes() for p in ("lam", "lam-collapsed", "dynamics")}
    assert main(args) == 0
    assert "collapsed" not in capsys.readouterr().err
    assert all((run / p / "model.safetensors").read_bytes() == b for p, b in weights.items())
    assert sorted(p.name for p in run.iterdir()) == ["dynamics", "lam", "lam-collapsed", "lam-retry.json",
                                                     "tokenizer"]


def test_train_all_stops_when_the_retried_lam_collapses_too(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "ds", episodes=6, length=8, size=64, val=0.34)
    run = tmp_path / "run"
    _collapsed_unless_temperature(monkeypatch, healthy_at=None)
    assert main(_retry_args(data, run)) == 2
    err = capsys.readouterr().err
    assert "This was the second LAM (with model.assign=balanced, model.assign_temperature=0.3, train.seed=1)" in err
    assert f"kept in {run / 'lam-collapsed'}, had collapsed too (on 12 held-out clips" in err
    assert str(run / "lam-retry.json") in err and not (run / "dynamics").exists()
    # asked again, it does not train a third LAM
    assert main(_retry_args(data, run)) == 2
    assert "This was the second LAM" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["lam", "lam-collapsed", "lam-retry.json", "tokenizer"]


def test_load_returns_all_models(trained):
    _, run, _ = trained
    loaded = playworld.load(run)
    assert loaded.tokenizer is not None and loaded.lam is not None and loaded.dynamics is not None
    assert loaded.configs["dynamics"].kind == "dynamics"
    single = playworld.load(run / "lam")
    assert single.lam is not None and single.tokenizer is None


def test_tokenize_round_trip(trained):
    root, run, _ = trained
    frames = np.zeros((6, 64, 64, 3), dtype=np.uint8)
    for t in range(6):
        frames[t, 10:30, 5 + 4 * t : 25 + 4 * t] = (240, 30, 30)
    write_video(root / "in.mp4", frames, fps=10)
    tokens = root / "in.tokens.safetensors"
    assert main(["tokenize", str(run), str(root / "in.mp4"), "--out", str(tokens), "--fps", "10",
                 "--recon", str(root / "recon.mp4")]) == 0
    idx = load_file(str(tokens))["indices"]
    assert tuple(idx.shape) == (6, 16, 16)
    assert main(["tokenize", str(run), "--decode", str(tokens), "--out", str(root / "dec.gif")]) == 0
    assert read_video(root / "dec.gif", fps=50).shape[1:] == (64, 64, 3)
    assert read_video(root / "recon.mp4", size=64, fps=10, fit="pad").shape[0] == 6


def test_bad_override_is_a_clear_error(trained, capsys):
    root, _, _ = trained
    code = main(["train", "tokenizer", "--data", str(root / "ds"), "--out", str(root / "x"),
                 "--set", "model.nonexistent=3"])
    assert code == 2
    assert "has no field 'nonexistent'" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_writes_a_checkpoint_exits_143_and_rerun_resumes(trained, tmp_path, workers):
    """SIGTERM to the trainer alone (workers=0) or, as ``timeout``, Slurm and ``kill -- -PGID`` send it, to
    its whole process group, data-loader workers included (workers=2): a checkpoint either way, not a
    crash on a worker killed by the signal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, _, _ = trained
    run = tmp_path / "sig"
    cmd = [sys.executable, "-m", "playworld", "train", "tokenizer", "--data", str(root / "ds"), "--out", str(run),
           "--preset", "tiny", "--steps", "100000", "--set", "data.clip_len=2", "--set", "data.batch_size=1",
           "--set", "train.val_every=0", "--set", "train.log_every=1", "--set", f"data.num_workers={workers}",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log = run / "logs" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    if workers:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out  # 128 + SIGTERM, as the shell reports a process that SIGTERM ended
    assert "checkpoint saved" in out
    step = int((run / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert step >= 2
    # the same command continues from there (a few more steps only)
    cmd[cmd.index("100000")] = str(step + 2)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"tokenizer: resuming from step {step} (" in again.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step + 2:08d}"


def test_the_command_line_builds_without_the_video_server_and_gym_packages():
    """`playworld train` runs where only torch and the training stack are installed (a GPU image without PyAV,
    FastAPI or Gymnasium): building the parser imports none of them; the commands that need one load it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('av', 'fastapi', 'uvicorn', 'gymnasium'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from playworld.cli import main\n"
        "main(['train', '--help'])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: playworld train" in proc.stdout


def test_a_relative_data_path_is_recorded_absolute(tmp_path, monkeypatch):
    """A run's config.json is read from other directories (eval, the LAM check, resumes): its data path
    must not depend on the directory training ran in."""
    from playworld.presets import build_run_config

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    by_flag = build_run_config("tokenizer", "tiny", data_path="../ds")
    by_set = build_run_config("lam", "tiny", overrides=["data.path=../ds"])
    dynamics = build_run_config("dynamics", "tiny", data_path="../ds", deps={"tokenizer": "../tok", "lam": "lam"})
    monkeypatch.chdir(tmp_path)
    for cfg in (by_flag, by_set, dynamics):
        assert cfg.data.path == str((tmp_path / "ds").resolve())
    assert dynamics.deps == {"tokenizer": str((tmp_path / "tok").resolve()),
                             "lam": str((tmp_path / "work" / "lam").resolve())}
