"""The LAM retry record of `train all` (playworld.train.lam_retry): written before the collapsed LAM is
moved, so a run stopped between the two finishes the move when re-run, and never moves the second LAM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from playworld.errors import CheckpointError
from playworld.train.lam_retry import FALLBACK, RETRY_FILE, SET_ASIDE, read_retry, start_retry


def _lam_run(path, seed: int, temperature: float) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": "lam", "train": {"seed": seed},
                                                  "model": {"assign": "balanced", "assign_temperature": temperature}}))


def test_start_retry_records_then_moves_the_first_lam(tmp_path):
    _lam_run(tmp_path / "lam", seed=3, temperature=0.1)
    record = start_retry(tmp_path, "uses 1 of 8 actions", seed=3)
    assert record.overrides == (*FALLBACK, "train.seed=4")
    assert not (tmp_path / "lam").exists()
    assert json.loads((tmp_path / SET_ASIDE / "config.json").read_text())["train"]["seed"] == 3
    assert read_retry(tmp_path) == record
    with pytest.raises(CheckpointError, match="already retried its LAM once"):
        start_retry(tmp_path, "again", seed=3)


def test_a_stop_between_record_and_move_is_finished_on_read(tmp_path):
    _lam_run(tmp_path / "lam", seed=0, temperature=0.1)
    (tmp_path / RETRY_FILE).write_text(json.dumps({"overrides": [*FALLBACK, "train.seed=1"],
                                                   "first_check": "x", "set_aside": SET_ASIDE}))
    assert read_retry(tmp_path) is not None
    assert (tmp_path / SET_ASIDE / "config.json").is_file() and not (tmp_path / "lam").exists()


def test_the_second_lam_is_never_moved_aside(tmp_path):
    # the first LAM's directory was removed by hand after the retry: lam/ holds the retry's settings
    _lam_run(tmp_path / "lam", seed=1, temperature=0.3)
    (tmp_path / RETRY_FILE).write_text(json.dumps({"overrides": [*FALLBACK, "train.seed=1"],
                                                   "first_check": "x", "set_aside": SET_ASIDE}))
    read_retry(tmp_path)
    assert (tmp_path / "lam" / "config.json").is_file() and not (tmp_path / SET_ASIDE).exists()
    # an empty lam/ (the second LAM before its first checkpoint) stays too
    (tmp_path / "lam" / "config.json").unlink()
    read_retry(tmp_path)
    assert (tmp_path / "lam").is_dir() and not (tmp_path / SET_ASIDE).exists()


def test_a_malformed_record_is_named(tmp_path):
    (tmp_path / RETRY_FILE).write_text(json.dumps({"overrides": []}))
    with pytest.raises(CheckpointError, match=f"{RETRY_FILE}: not a LAM retry record"):
        read_retry(tmp_path)
    (tmp_path / RETRY_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=RETRY_FILE):
        read_retry(tmp_path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retry_rank(rank: int, port: int, out: str) -> None:
    import argparse
    import os

    from playworld.cli.train import _start_retry_on_rank0
    from playworld.train.distributed import shutdown_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    args = argparse.Namespace(preset="tiny", data=out, overrides=["lam.train.seed=5"], steps=None)
    record = _start_retry_on_rank0(Path(out), args, "uses 1 of 8 actions")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(list(record.overrides)))
    shutdown_distributed()


def test_under_torchrun_rank0_alone_records_and_moves(tmp_path):
    import torch.multiprocessing as mp

    _lam_run(tmp_path / "lam", seed=5, temperature=0.1)
    mp.spawn(_retry_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    expected = [*FALLBACK, "train.seed=6"]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)] == [expected, expected]
    assert (tmp_path / SET_ASIDE / "config.json").is_file() and not (tmp_path / "lam").exists()
