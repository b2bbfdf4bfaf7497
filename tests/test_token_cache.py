"""The dynamics token/action cache: equal to on-the-fly encoding where the window covers the clip,
reused while the frozen models and data are unchanged, rebuilt (named) otherwise, and resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from playworld.data.loader import ClipLoader
from playworld.models.base import to_unit
from playworld.models.dynamics import DynamicsTrainer
from playworld.models.tokenizer import VideoTokenizer
from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig, Trainer
from tiny_world import tiny_models

from helpers import make_dataset

CLIP = 4


@pytest.fixture(scope="module")
def one_clip_episodes(tmp_path_factory) -> Path:
    """Episodes exactly one clip long: per-clip and per-episode encoding see the same frames."""
    return make_dataset(tmp_path_factory.mktemp("tc") / "short", episodes=8, length=CLIP, seed=1)


@pytest.fixture(scope="module")
def long_episodes(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tc") / "long", episodes=4, length=11, seed=2)


def _trainer(enc_depth: int = 1) -> DynamicsTrainer:
    tok, lam, dyn = tiny_models()
    if enc_depth != 1:
        tok = VideoTokenizer(dataclasses.replace(tok.config, enc_depth=enc_depth))
    return DynamicsTrainer(dyn.config, tokenizer=tok, lam=lam)


def _loader(data: Path, batch: int = 2, seed: int = 5) -> ClipLoader:
    return ClipLoader(data, clip_len=CLIP, batch_size=batch, seed=seed)


@pytest.mark.parametrize("enc_depth", [1, 3])
def test_cached_batches_equal_on_the_fly_encoding_when_the_window_covers_the_episode(one_clip_episodes, tmp_path,
                                                                                     enc_depth):
    model = _trainer(enc_depth)
    cached = iter(model.cached_loader(_loader(one_clip_episodes), tmp_path / "tc", progress=False))
    pixels = iter(_loader(one_clip_episodes))
    for _ in range(10):  # 2.5 epochs: every clip, in the same order
        batch = next(cached)
        tokens, actions = model.tokens_and_actions(to_unit(next(pixels)))
        assert torch.equal(batch.tokens, tokens)
        assert torch.equal(batch.actions, actions)
    assert batch.tokens.dtype == torch.long and batch.tokens.shape == (2, CLIP, 16)


def test_each_clips_last_frame_sees_the_same_past_as_per_clip_encoding(long_episodes, tmp_path):
    """With longer episodes the cache's frames see up to clip_len-1 frames of past, per-clip ones only the
    clip's: with a one-layer encoder the last frame of each clip agrees exactly, so do the LAM's
    transitions from w-2 on, and clips that start an episode agree everywhere."""
    model = _trainer()
    assert model.tokenizer.config.enc_depth == 1  # deeper encoders see further back through the layers
    w = model.lam.config.infer_window
    loader = _loader(long_episodes, batch=1)
    cached = model.cached_loader(loader, tmp_path / "tc", progress=False)
    clips = loader.clips
    differ = 0
    for i in range(len(clips)):
        got = cached.get_batch([i])
        tokens, actions = model.tokens_and_actions(to_unit(clips.get_batch([i])))
        assert torch.equal(got.tokens[:, -1], tokens[:, -1]), i
        assert torch.equal(got.actions[:, w - 2:], actions[:, w - 2:]), i
        if clips.locate(i)[1] == 0:
            assert torch.equal(got.tokens, tokens) and torch.equal(got.actions, actions), i
        differ += int((got.tokens != tokens).sum())
    assert differ > 0  # the windows do differ on this random tokenizer, so the checks above could fail


def _log(capsys) -> str:
    return capsys.readouterr().err


def test_the_cache_is_reused_and_rebuilt_when_the_tokenizer_changes(one_clip_episodes, tmp_path, capsys):
    where = tmp_path / "tc"
    first = next(iter(_trainer().cached_loader(_loader(one_clip_episodes), where, progress=False)))
    assert "encoding the train split" in _log(capsys)
    stamp = (where / "train.safetensors").stat().st_mtime_ns
    again = next(iter(_trainer().cached_loader(_loader(one_clip_episodes), where, progress=False)))
    assert _log(capsys) == "" and (where / "train.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(first.tokens, again.tokens)

    changed = _trainer()
    with torch.no_grad():
        changed.tokenizer.patch_in.weight.mul_(-1.0)
    batch = next(iter(changed.cached_loader(_loader(one_clip_episodes), where, progress=False)))
    assert "built for another tokenizer" in _log(capsys)
    assert not torch.equal(batch.tokens, first.tokens)
    tokens, _ = changed.tokens_and_actions(to_unit(next(iter(_loader(one_clip_episodes)))))
    assert torch.equal(batch.tokens, tokens)


def test_release_weights_key_the_cache_by_their_sha256(one_clip_episodes, tmp_path, capsys):
    tok, lam, dyn = tiny_models()
    where = tmp_path / "tc"
    DynamicsTrainer(dyn.config, tokenizer=tok, lam=lam, weights_sha256={"tokenizer": "a" * 64, "lam": "b" * 64}
                    ).cached_loader(_loader(one_clip_episodes), where, progress=False)
    assert '"weights": "' + "a" * 64 in (where / "train.json").read_text()
    _log(capsys)
    DynamicsTrainer(dyn.config, tokenizer=tok, lam=lam, weights_sha256={"tokenizer": "c" * 64, "lam": "b" * 64}
                    ).cached_loader(_loader(one_clip_episodes), where, progress=False)
    err = _log(capsys)
    assert "built for another tokenizer" in err and "lam" not in err.split("(")[0].split("another")[1]


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_a_bad_cache_file_is_named_and_rebuilt(one_clip_episodes, tmp_path, capsys, damage):
    where = tmp_path / "tc"
    good = next(iter(_trainer().cached_loader(_loader(one_clip_episodes), where, progress=False)))
    _log(capsys)
    path = where / "train.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
        expected = r"train\.safetensors: \d+ bytes, its manifest records \d+ \(truncated\?\); rebuilding"
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        expected = r"train\.safetensors: sha256 differs from its manifest .*; rebuilding"
    else:
        (where / "train.json").write_text("{not json")
        expected = r"train\.json: not valid JSON .*; rebuilding"
    rebuilt = next(iter(_trainer().cached_loader(_loader(one_clip_episodes), where, progress=False)))
    import re

    assert re.search(expected, _log(capsys))
    assert torch.equal(rebuilt.tokens, good.tokens) and torch.equal(rebuilt.actions, good.actions)
    _trainer().cached_loader(_loader(one_clip_episodes), where, progress=False)
    assert _log(capsys) == ""  # the rebuilt file is good


def _run_cfg(data: Path, precompute: bool = True, **train) -> RunConfig:
    _, _, dyn = tiny_models()
    t = {"steps": 6, "log_every": 1, "val_every": 0, "ckpt_every": 3, "seed": 3, "precision": "fp32", **train}
    return RunConfig(kind="dynamics", model=dyn.config, optim=OptimConfig(lr=1e-2, warmup_steps=2),
                     data=DataConfig(path=str(data), clip_len=CLIP, batch_size=2, precompute=precompute),
                     train=TrainConfig(**t))


def _fit(cfg: RunConfig, run: Path, **kw):
    torch.manual_seed(cfg.train.seed)
    return Trainer(cfg, run, model=_trainer(), progress=False).fit(**kw)


def test_an_interrupted_cached_dynamics_run_resumes_exactly(long_episodes, tmp_path, capsys):
    cfg = _run_cfg(long_episodes)
    full = _fit(cfg, tmp_path / "a")
    first = _fit(cfg, tmp_path / "b", stop_after=2)
    assert first.interrupted and (tmp_path / "b" / "token_cache" / "train.safetensors").is_file()
    _log(capsys)
    second = _fit(cfg, tmp_path / "b")
    assert "token cache" not in _log(capsys)  # reused, not rebuilt
    assert first.losses + second.losses == full.losses  # bitwise equal floats
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cached_and_on_the_fly_training_give_the_same_losses(one_clip_episodes, tmp_path):
    cached = _fit(_run_cfg(one_clip_episodes, steps=4), tmp_path / "cached")
    live = _fit(dataclasses.replace(_run_cfg(one_clip_episodes, precompute=False, steps=4)), tmp_path / "live")
    assert cached.losses == live.losses
    assert (tmp_path / "cached" / "token_cache").is_dir() and not (tmp_path / "live" / "token_cache").exists()


def _ddp_worker(rank: int, world: int, port: int, data: str, run: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = _fit(_run_cfg(Path(data), steps=2, ckpt_every=2), Path(run))
    assert result.step == 2
    from playworld.train.distributed import shutdown_distributed

    shutdown_distributed()


def test_under_ddp_rank_0_builds_the_cache_and_the_others_read_it(long_episodes, tmp_path, capfd):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(long_episodes), str(tmp_path / "ddp")), nprocs=2)
    err = capfd.readouterr().err
    assert err.count("encoding the train split") == 1  # built once, by rank 0; rank 1 found it valid
    assert (tmp_path / "ddp" / "token_cache" / "train.json").is_file()
