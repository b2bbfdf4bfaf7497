"""`--threads N` on every command that computes, and playworld's default thread count and OpenMP wait
policy (playworld.threads): one rule for the commands and World.load."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import playworld.threads as pthreads
from playworld.cli import build_parser, main
from playworld.threads import default_threads, prefer_passive_wait, resolve_threads
from playworld.world import World
from tiny_world import save_tiny_run

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
    assert parser.parse_args(COMMANDS[command]).threads == 0  # playworld's default
    with pytest.raises(SystemExit):
        parser.parse_args([*COMMANDS[command], "--threads", "-1"])
    assert "--threads: must be >= 0" in capsys.readouterr().err


@pytest.fixture
def four_cores(monkeypatch):
    """A machine of 4 usable cores with no OMP_NUM_THREADS set (the test runner sets it) and OpenMP's
    own (spinning) wait policy."""
    monkeypatch.setattr(pthreads, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_sets_torchs_thread_count(tmp_path, capsys, four_cores):
    args = ["train", "tokenizer", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--print-config"]
    torch.set_num_threads(4)
    assert main([*args, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert main(args) == 0  # torch is loaded here already: OpenMP spins, so the default leaves a core free
    assert "OMP_WAIT_POLICY" not in os.environ
    assert torch.get_num_threads() == 3


def test_default_threads_leave_a_core_free_unless_threads_sleep_while_waiting():
    assert [default_threads(c, passive=False) for c in (1, 2, 3, 8)] == [1, 1, 2, 7]
    assert [default_threads(c, passive=True) for c in (1, 2, 8)] == [1, 2, 8]
    # play (one frame at a time): a core stays free even when waiting threads sleep
    assert [default_threads(c, passive=True, latency=True) for c in (1, 2, 8)] == [1, 1, 7]
    assert resolve_threads(0, 2, {"OMP_WAIT_POLICY": "passive"}, latency=True) == 1
    assert resolve_threads(0, 2, {"OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "2"}, latency=True) == 2
    with pytest.raises(ValueError, match="cores must be >= 1"):
        default_threads(0, passive=True)


def test_resolve_threads_prefers_the_request_then_omp_num_threads():
    assert resolve_threads(5, 2, {"OMP_NUM_THREADS": "3"}) == 5
    assert resolve_threads(0, 8, {"OMP_NUM_THREADS": "3"}) == 3
    assert resolve_threads(None, 8, {"OMP_NUM_THREADS": "4,2"}) == 4  # nested levels: the outer one
    for unusable in ("", "0", "many", "-2"):
        assert resolve_threads(0, 8, {"OMP_NUM_THREADS": unusable}) == 7
    assert resolve_threads(0, 2, {}) == 1
    assert resolve_threads(0, 2, {"OMP_WAIT_POLICY": "passive"}) == 2
    assert resolve_threads(0, 2, {"OMP_WAIT_POLICY": "ACTIVE"}) == 1
    with pytest.raises(ValueError, match="threads must be >= 0"):
        resolve_threads(-1, 2, {})


def test_prefer_passive_wait_only_before_torch_and_keeps_a_policy_already_set(monkeypatch):
    env: dict[str, str] = {}
    assert prefer_passive_wait(env) is False and env == {}  # torch is loaded in this process: too late
    monkeypatch.delitem(sys.modules, "torch")
    assert prefer_passive_wait(env) is True and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    assert prefer_passive_wait(env) is False and env == {"OMP_WAIT_POLICY": "active"}


def test_the_command_starts_openmp_with_the_passive_wait_policy():
    """`playworld` sets the policy before torch loads OpenMP, which reads it once (its ICV display shows it)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "TRUE"
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                        env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-m", "playworld", "--version"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    if "OMP_WAIT_POLICY" not in res.stderr:
        pytest.skip("this torch build's OpenMP does not display its settings")
    assert re.search(r"OMP_WAIT_POLICY\s*=\s*'PASSIVE'", res.stderr), res.stderr


def test_world_load_applies_the_default_threads(tmp_path, four_cores):
    run = save_tiny_run(tmp_path / "run")
    torch.set_num_threads(1)
    World.load(run)
    assert torch.get_num_threads() == 3
    World.load(run, threads=2)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(4)
    World.load(run, threads=0)  # left as it is
    assert torch.get_num_threads() == 4
