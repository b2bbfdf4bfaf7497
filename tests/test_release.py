"""Release weights prove they are intact: config.json records the sha256 and size of model.safetensors,
and every loader (load_model, playworld.load, World.load, train.init_from) checks them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import playworld
from playworld.errors import CheckpointError, UnfinishedRunWarning, UnverifiedWeightsWarning
from playworld.train.checkpoint import load_model, sha256_file
from playworld.world import World
from tiny_world import save_tiny_run

SHIPPED = Path(playworld.__file__).parent / "assets" / "coinrun"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return save_tiny_run(tmp_path / "run")


def test_save_release_records_the_size_and_sha256_of_the_weights(run):
    d = run / "lam"
    files = json.loads((d / "config.json").read_text())["files"]
    assert files == {"model.safetensors": {"sha256": sha256_file(d / "model.safetensors"),
                                           "bytes": (d / "model.safetensors").stat().st_size}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(d) is not None
        World.load(run)


def test_load_names_the_directory_each_model_came_from(run):
    world = playworld.load(run)
    assert world.dirs == {part: run / part for part in ("tokenizer", "lam", "dynamics")}
    single = playworld.load(run / "lam")  # one model's release, given directly
    assert single.dirs == {"lam": run / "lam"} and single.tokenizer is None


def test_a_flipped_byte_is_named(run):
    weights = run / "dynamics" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    weights.write_bytes(bytes(data))
    for load in (load_model, playworld.load):
        with pytest.raises(CheckpointError, match=r"dynamics/model\.safetensors: sha256 .* \(file corrupt or modified\)"):
            load(run / "dynamics")
    with pytest.raises(CheckpointError, match=r"dynamics/model\.safetensors: sha256"):
        World.load(run)


def test_a_truncated_file_is_named_by_its_size(run):
    weights = run / "tokenizer" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"tokenizer/model\.safetensors: {size - 10} bytes, but config.json "
                       rf"records {size}"):
        playworld.load(run)


def test_an_old_release_without_hashes_warns_naming_its_directory_and_loads(run):
    d = run / "lam"
    cfg = json.loads((d / "config.json").read_text())
    del cfg["files"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UnverifiedWeightsWarning, match=rf"{d}: config.json records no sha256"):
        assert load_model(d) is not None


def test_a_missing_config_is_named_as_such(run):
    (run / "lam" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"lam/config\.json: missing"):
        load_model(run / "lam")
    with pytest.raises(CheckpointError, match=r"lam/config\.json: missing beside"):
        playworld.load(run)


def test_a_malformed_files_entry_is_refused(run):
    d = run / "lam"
    cfg = json.loads((d / "config.json").read_text())
    for bad in ("abc", "z" * 64):
        cfg["files"]["model.safetensors"]["sha256"] = bad
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=r"lam/config\.json: files\.model\.safetensors must be"):
            load_model(d)


def test_the_shipped_world_records_its_hashes_and_loads_without_warning():
    for part in ("tokenizer", "lam", "dynamics"):
        files = json.loads((SHIPPED / part / "config.json").read_text())["files"]
        assert files["model.safetensors"]["sha256"] == sha256_file(SHIPPED / part / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        World.load(SHIPPED)


def _tokenizer_run(data: Path, steps: int):
    from playworld.models.tokenizer import TokenizerConfig
    from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig

    tok = TokenizerConfig(image_size=16, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2, num_codes=32, code_dim=8)
    return RunConfig(kind="tokenizer", model=tok, optim=OptimConfig(lr=1e-2, warmup_steps=1),
                     data=DataConfig(path=str(data), clip_len=4, batch_size=2),
                     train=TrainConfig(steps=steps, log_every=1, val_every=0, ckpt_every=1, seed=0))


def test_an_interrupted_run_never_passes_for_a_finished_one(tmp_path):
    from playworld.models.dynamics import DynamicsConfig
    from playworld.train import RunConfig, Trainer

    from helpers import make_dataset

    cfg = _tokenizer_run(make_dataset(tmp_path / "ds", episodes=3, length=6), steps=3)
    run = tmp_path / "tok"
    assert Trainer(cfg, run, progress=False).fit(stop_after=1).interrupted
    progress = json.loads((run / "config.json").read_text())["progress"]
    assert progress == {"step": 1, "steps": 3, "finished": False}
    with pytest.warns(UnfinishedRunWarning, match=rf"{run}: an unfinished run \(step 1 of 3\)"):
        load_model(run)
    dyn = RunConfig(kind="dynamics", model=DynamicsConfig(vocab_size=32, token_height=4, token_width=4, dim=32,
                                                           depth=1, heads=2),
                    data=cfg.data, deps={"tokenizer": str(run), "lam": str(tmp_path / "lam")})
    with pytest.raises(CheckpointError, match=rf"{run}: the tokenizer run is unfinished \(step 1 of 3\)"):
        Trainer(dyn, tmp_path / "dyn", progress=False)
    # re-running finishes it: the same directory now loads silently
    assert Trainer(cfg, run, progress=False).fit().step == 3
    assert json.loads((run / "config.json").read_text())["progress"] == {"step": 3, "steps": 3, "finished": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(run)


def test_the_cli_says_it_plays_an_unfinished_run(run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from playworld.cli import main

    d = run / "dynamics"
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "progress": {"step": 1, "steps": 3, "finished": False}}))
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "start.png")
    assert main(["rollout", str(run), "--image", str(tmp_path / "start.png"), "--actions", "1",
                 "--out", str(tmp_path / "out.gif"), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert f"playworld: warning: {d}: an unfinished run (step 1 of 3): these are its latest weights" in err


def test_init_from_checks_the_weights_it_starts_from(run, tmp_path):
    import dataclasses

    from playworld.train import Trainer

    weights = run / "tokenizer" / "model.safetensors"
    cfg = _tokenizer_run(tmp_path / "ds", steps=1)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(run / "tokenizer")))
    Trainer(cfg, tmp_path / "a", progress=False)  # intact: starts
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tokenizer/model\.safetensors: sha256"):
        Trainer(cfg, tmp_path / "b", progress=False)


ENGINE_MODULES = ("playworld.train.engine", "playworld.train.checkpoint", "playworld.train.distributed",
                  "playworld.train.fsdp", "playworld.train.logger", "playworld.train.mixed")


def test_loading_a_world_does_not_import_the_training_engine(run):
    """`playworld.world`, `playworld.api` and a World.load of a run read release weights beside the models
    (playworld.release), never through the engine (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, playworld.api, playworld.world\n"
            f"w = playworld.world.World.load({str(run)!r}, threads=0)\n"
            "assert w.dynamics is not None and playworld.api.load(" + repr(str(run / 'lam')) + ").lam is not None\n"
            f"print(sorted(m for m in {ENGINE_MODULES!r} if m in sys.modules))\n")
    src = str(Path(playworld.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"loading imported engine modules: {out.stdout.strip()}"
    # the old names still work from the engine's module (re-exported)
    from playworld.train import checkpoint

    assert checkpoint.load_model is load_model
