"""FSDP (train.strategy=fsdp, PyTorch's FSDP2 fully_shard) with 2 CPU processes on gloo: the same losses
as one process at the same global batch, stop + resume equal to an uninterrupted run, checkpoints and
release weights in the single-process format, and the precision it refuses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from playworld.config import ConfigError
from playworld.models.base import LossOutput, TrainableModel
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.models.tokenizer import TokenizerConfig
from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig, Trainer
from playworld.train.checkpoint import verify_release_files

from helpers import make_dataset


@dataclasses.dataclass
class BlocksConfig:
    hidden: int = 12
    depth: int = 2


class BlocksModel(TrainableModel):
    """Predicts pooled frame t+1 from frame t through a stack of residual MLP blocks in an nn.ModuleList
    (each block its own FSDP unit), with a frozen layer and a buffer that forward updates."""

    def __init__(self, cfg: BlocksConfig) -> None:
        super().__init__()
        self.config = cfg
        self.inp = nn.Linear(3 * 4 * 4, cfg.hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden),
                                                  nn.GELU()) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.hidden, 3 * 4 * 4)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.register_buffer("calls", torch.zeros(()))

    def compute_loss(self, video: torch.Tensor) -> LossOutput:
        b, t = video.shape[:2]
        x = nn.functional.adaptive_avg_pool2d(video.flatten(0, 1).permute(0, 3, 1, 2), 4).reshape(b, t, -1)
        h = self.inp(x[:, :-1])  # (B, T-1, hidden)
        for block in self.blocks:
            h = h + block(h)
        loss = (self.out(h) - x[:, 1:]).square().mean()
        self.calls += 1
        return LossOutput(loss, {"mse": loss.detach()})


def _cfg(data: Path, *, batch: int = 2, **train) -> RunConfig:
    t = {"steps": 4, "log_every": 1, "val_every": 0, "ckpt_every": 2, "seed": 3, "precision": "fp32", **train}
    return RunConfig(kind="tokenizer", model=BlocksConfig(), optim=OptimConfig(lr=1e-2, warmup_steps=2),
                     data=DataConfig(path=str(data), clip_len=4, batch_size=batch), train=TrainConfig(**t))


def _lam_cfg(data: Path, **train) -> RunConfig:
    model = LAMConfig(height=16, width=16, patch_size=8, num_actions=4, dim=32, heads=2, encoder_depth=1,
                      decoder_depth=1, kernel_radius=2, dead_code_threshold=0.5)
    t = {"steps": 6, "log_every": 1, "val_every": 3, "val_batches": 1, "ckpt_every": 3, "seed": 5,
         "strategy": "fsdp", "precision": "fp32", "ema_decay": 0.9, "grad_accum": 2, **train}
    return RunConfig(kind="lam", model=model, optim=OptimConfig(lr=3e-3, warmup_steps=1),
                     data=DataConfig(path=str(data), clip_len=3, batch_size=2), train=TrainConfig(**t))


def _tokenizer_cfg(data: Path) -> RunConfig:
    model = TokenizerConfig(image_size=16, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2, num_codes=32,
                            code_dim=8)
    return RunConfig(kind="tokenizer", model=model, optim=OptimConfig(lr=3e-3, warmup_steps=1),
                     data=DataConfig(path=str(data), clip_len=3, batch_size=2),
                     train=TrainConfig(steps=3, log_every=1, val_every=3, val_batches=1, ckpt_every=3, seed=1,
                                       strategy="fsdp", precision="fp32"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fsdp") / "ds", episodes=6, length=12, val=0.34)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(cfg: RunConfig, run: Path) -> Trainer:
    torch.manual_seed(cfg.train.seed)
    model = BlocksModel(cfg.model) if cfg.kind == "tokenizer" else LatentActionModel(cfg.model)
    return Trainer(cfg, run, model=model, progress=False)


def _worker(rank: int, world: int, port: int, data: str, tmp: str) -> None:
    """Every run of the tests below in one pair of processes (a process group is costly to start)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out, root = {}, Path(tmp)
    out["blocks"] = _trainer(_cfg(Path(data), strategy="fsdp"), root / "fsdp").fit().losses
    out["tokenizer"] = Trainer(_tokenizer_cfg(Path(data)), root / "tokenizer", progress=False).fit().losses
    lam = _lam_cfg(Path(data))
    out["full"] = _trainer(lam, root / "lam_full").fit().losses
    first = _trainer(lam, root / "lam_resumed").fit(stop_after=2)
    out["first"], out["first_step"] = first.losses, first.step
    second = _trainer(lam, root / "lam_resumed").fit()
    out["second"], out["second_step"] = second.losses, second.step
    if rank == 0:
        (root / "losses.json").write_text(json.dumps(out))
    from playworld.train.distributed import shutdown_distributed

    shutdown_distributed()
    (root / f"left-{rank}").write_text("")  # this rank finished its runs and left the process group


@pytest.fixture(scope="module")
def two_ranks(dataset, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("ranks")
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(dataset), str(tmp)), nprocs=2)
    except mp.ProcessExitedException as e:  # say whether it died in the runs or after leaving cleanly (at exit)
        left = sorted(p.name for p in tmp.glob("left-*"))
        raise AssertionError(f"{e}; ranks that had left the process group: {left or 'none'}") from e
    return tmp, json.loads((tmp / "losses.json").read_text())


def test_fsdp_on_two_processes_matches_one_process_at_the_same_global_batch(dataset, two_ranks, tmp_path):
    tmp, out = two_ranks
    single = _trainer(_cfg(dataset, batch=4), tmp_path / "single").fit()
    assert len(out["blocks"]) == 4
    torch.testing.assert_close(torch.tensor(out["blocks"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    assert single.losses[-1] < single.losses[0]  # it learns, so the comparison is of a moving run
    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp / "fsdp" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape, k
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    config = json.loads((tmp / "fsdp" / "config.json").read_text())
    assert config["train"]["strategy"] == "fsdp" and config["progress"]["finished"]
    verify_release_files(tmp / "fsdp", config)  # the sha256 and size it records are the file's
    assert config["files"]["model.safetensors"]["bytes"] == (tmp / "fsdp" / "model.safetensors").stat().st_size


def test_fsdp_checkpoints_have_the_single_process_layout(dataset, two_ranks, tmp_path):
    tmp, _ = two_ranks
    _trainer(_cfg(dataset, batch=4), tmp_path / "single").fit()
    for name in ("model", "optimizer"):
        a = load_file(str(tmp_path / "single" / "checkpoints" / "step-00000004" / f"{name}.safetensors"))
        b = load_file(str(tmp / "fsdp" / "checkpoints" / "step-00000004" / f"{name}.safetensors"))
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}, name
    one, sharded = (json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())["optimizer"]
                    for run in (tmp_path / "single", tmp / "fsdp"))
    assert sharded == one  # parameter groups (names, indices, hyper-parameters) and scalars
    assert [len(g["params"]) for g in one["param_groups"]] == [4, 8]


def test_fsdp_stop_and_resume_equals_an_uninterrupted_run(two_ranks):
    """The LAM: its dead-action restarts write weights that FSDP keeps whole, its usage statistics are
    buffers, and EMA, gradient accumulation and validation (gathered weights) run too."""
    tmp, out = two_ranks
    assert out["first_step"] == 2 and out["second_step"] == 6
    assert out["first"] + out["second"] == out["full"]  # bitwise equal floats
    a = load_file(str(tmp / "lam_full" / "model.safetensors"))
    b = load_file(str(tmp / "lam_resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = load_file(str(tmp / "lam_full" / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert not torch.equal(full["kernels"], a["kernels"])  # the release holds the EMA, not the raw weights


def test_fsdp_refuses_bf16_weights_and_names_what_works():
    with pytest.raises(ConfigError, match="bf16-weights cannot train under train.strategy=fsdp"):
        TrainConfig(strategy="fsdp", precision="bf16-weights")
    with pytest.raises(ConfigError, match="train.strategy must be ddp or fsdp"):
        TrainConfig(strategy="zero")


def test_a_run_stopped_under_fsdp_resumes_in_one_process_without_it(dataset, tmp_path):
    """FSDP over a process group of one writes the single-process checkpoint, so the run goes on under DDP's
    one-process path with the losses an uninterrupted single-process run has."""
    from playworld.train.distributed import shutdown_distributed

    full = _trainer(_cfg(dataset, batch=4), tmp_path / "full").fit()
    try:
        first = _trainer(_cfg(dataset, batch=4, strategy="fsdp"), tmp_path / "run").fit(stop_after=2)
    finally:
        shutdown_distributed()
    assert first.interrupted and first.step == 2
    second = _trainer(_cfg(dataset, batch=4), tmp_path / "run").fit()
    assert second.step == 4
    torch.testing.assert_close(torch.tensor(first.losses + second.losses), torch.tensor(full.losses),
                               rtol=1e-6, atol=1e-7)


def test_a_bf16_weights_run_is_not_resumed_under_fsdp(dataset, tmp_path, monkeypatch):
    import playworld.train.engine as engine
    from playworld.train.distributed import shutdown_distributed

    monkeypatch.setattr(engine, "resolve_train_precision", lambda *a, **k: "bf16-weights")  # what auto chose
    _trainer(_cfg(dataset, precision="auto"), tmp_path / "run").fit(stop_after=1)
    try:
        with pytest.raises(ConfigError, match="trains in bf16-weights .* which train.strategy=fsdp cannot resume"):
            _trainer(_cfg(dataset, precision="auto", strategy="fsdp"), tmp_path / "run")
    finally:
        shutdown_distributed()


def test_the_tiny_tokenizer_trains_under_fsdp_on_two_processes(two_ranks):
    """VQ codebook and usage buffers (an EMA codebook, a bool 'initialized' flag) are broadcast by gloo;
    validation gathers the blocks' weights; the release holds every tensor of the model."""
    tmp, out = two_ranks
    assert len(out["tokenizer"]) == 3 and all(math.isfinite(x) for x in out["tokenizer"])
    weights = load_file(str(tmp / "tokenizer" / "model.safetensors"))
    from playworld.models.tokenizer import VideoTokenizer

    expected = VideoTokenizer(_tokenizer_cfg(Path(".")).model).state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in expected.items()}
    assert bool(weights["quantizer.initialized"])  # the codebook was initialised from data, on rank 0
    assert (tmp / "tokenizer" / "logs" / "metrics.jsonl").read_text().count('"split": "val"') >= 1
