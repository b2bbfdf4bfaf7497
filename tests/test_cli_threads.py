"""`--threads N` on every command that computes: one shared option that sets torch's CPU threads."""

from __future__ import annotations

import pytest
import torch

from playworld.cli import build_parser, main

COMMANDS = {
    "train": ["train", "tokenizer", "--data", "d", "--out", "o"],
    "eval": ["eval", "run", "--data", "d"],
    "rollout": ["rollout", "run", "--prompt", "p.png", "--actions", "1", "--out", "o.mp4"],
    "tokenize": ["tokenize", "run", "clip.mp4", "--out", "t.safetensors"],
    "play": ["play"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_computing_command_takes_threads(command, capsys):
    parser = build_parser()
    assert parser.parse_args([*COMMANDS[command], "--threads", "1"]).threads == 1
    assert parser.parse_args(COMMANDS[command]).threads == 0  # torch's default
    with pytest.raises(SystemExit):
        parser.parse_args([*COMMANDS[command], "--threads", "-1"])
    assert "--threads: must be >= 0" in capsys.readouterr().err


def test_threads_sets_torchs_thread_count(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["train", "tokenizer", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--threads", "1", "--print-config"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["train", "tokenizer", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--print-config"]) == 0
        assert torch.get_num_threads() == 2  # 0 leaves it alone
    finally:
        torch.set_num_threads(before)
