"""The training engine: exact resume, NaN stop, checkpoint corruption and config mismatch, schedule,
weight-decay groups, and 2-process DDP (gloo) equivalence with one process at the same global batch."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from playworld.errors import CheckpointError, TrainingError
from playworld.models.base import LossOutput
from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig, Trainer
from playworld.train.engine import param_groups
from playworld.train.schedule import lr_at

from helpers import make_dataset


@dataclasses.dataclass
class ToyConfig:
    hidden: int = 16
    dropout: float = 0.1
    nan_at_call: int = -1


class ToyModel(nn.Module):
    """Predicts frame t+1 from frame t through a small MLP on 8x8-pooled pixels (with dropout, so
    that resume must restore the RNG to match)."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.net = nn.Sequential(nn.Linear(3 * 4 * 4, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, 3 * 4 * 4))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.calls = 0

    def compute_loss(self, video: torch.Tensor) -> LossOutput:
        b, t, h, w, c = video.shape
        x = nn.functional.adaptive_avg_pool2d(video.flatten(0, 1).permute(0, 3, 1, 2), 4)  # (B*T, C, 4, 4)
        x = x.reshape(b, t, -1)
        pred = self.net(x[:, :-1])
        loss = (pred - x[:, 1:]).square().mean()
        self.calls += 1
        if self.calls == self.config.nan_at_call:
            loss = loss * float("nan")
        return LossOutput(loss, {"mse": loss.detach()})


def _cfg(data: Path, **train) -> RunConfig:
    t = {"steps": 8, "log_every": 1, "val_every": 0, "ckpt_every": 4, "seed": 3, **train}
    return RunConfig(kind="tokenizer", model=ToyConfig(), optim=OptimConfig(lr=1e-2, warmup_steps=2),
                     data=DataConfig(path=str(data), clip_len=4, batch_size=2), train=TrainConfig(**t))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("engine") / "ds", episodes=6, length=12)


def _trainer(cfg: RunConfig, run: Path, **kw) -> Trainer:
    torch.manual_seed(cfg.train.seed)
    return Trainer(cfg, run, model=ToyModel(cfg.model), progress=False, **kw)


@pytest.mark.parametrize("precision,ema,accum", [("fp32", 0.0, 1), ("bf16-weights", 0.9, 2)])
def test_interrupted_and_resumed_run_matches_uninterrupted(dataset, tmp_path, precision, ema, accum):
    cfg = _cfg(dataset, precision=precision, ema_decay=ema, grad_accum=accum)
    full = _trainer(cfg, tmp_path / "a").fit()
    first = _trainer(cfg, tmp_path / "b").fit(stop_after=3)
    assert first.interrupted and first.step == 3
    second = _trainer(cfg, tmp_path / "b").fit()
    assert second.step == 8
    assert first.losses + second.losses == full.losses  # bitwise equal floats
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert a[k].dtype == torch.float32, k  # release weights are fp32 whatever the training precision
    # resume state holds fp32 weights and optimizer moments: the masters, not their bf16 rounding
    ckpt = tmp_path / "b" / "checkpoints" / "step-00000008"
    for name in ("model", "optimizer") + (("ema",) if ema else ()):
        assert {v.dtype for v in load_file(str(ckpt / f"{name}.safetensors")).values()} == {torch.float32}, name


def test_bf16_weights_train_in_bf16_with_fp32_masters_and_learn_like_fp32(dataset, tmp_path):
    """The weights a step multiplies are bf16, the optimizer's are fp32; 24 steps of the toy task end
    within 10% of fp32's loss, and both end well below their first."""
    cfg = _cfg(dataset, steps=24, ckpt_every=24)
    cfg = dataclasses.replace(cfg, model=ToyConfig(dropout=0.0))
    runs = {}
    for precision in ("fp32", "bf16-weights"):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
        trainer = _trainer(c, tmp_path / precision)
        runs[precision] = trainer.fit().losses
    w = trainer.model.net[0].weight
    assert w.dtype == torch.bfloat16 and trainer.model.frozen.weight.dtype == torch.float32
    stepped = trainer.optimizer.param_groups[0]["params"]
    assert all(p.dtype == torch.float32 for p in stepped) and all(p is not w for p in stepped)
    fp32, bf16 = runs["fp32"], runs["bf16-weights"]
    assert fp32[-1] < 0.5 * fp32[0] and bf16[-1] < 0.5 * bf16[0], runs
    assert abs(sum(bf16[-4:]) / sum(fp32[-4:]) - 1) < 0.1, runs


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(dataset, tmp_path):
    cfg = _cfg(dataset, steps=8, ckpt_every=2)
    cfg = dataclasses.replace(cfg, model=ToyConfig(nan_at_call=4))
    with pytest.raises(TrainingError, match=r"non-finite loss at step 4.*step-00000002"):
        _trainer(cfg, tmp_path / "run").fit()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000002"]


def test_corrupted_checkpoint_is_named(dataset, tmp_path):
    cfg = _cfg(dataset, steps=4)
    _trainer(cfg, tmp_path / "run").fit(stop_after=2)
    f = tmp_path / "run" / "checkpoints" / "step-00000002" / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optimizer.safetensors: checksum mismatch"):
        _trainer(cfg, tmp_path / "run").fit()


def test_config_mismatch_on_resume_is_named(dataset, tmp_path):
    cfg = _cfg(dataset, steps=4)
    _trainer(cfg, tmp_path / "run").fit(stop_after=2)
    other = dataclasses.replace(cfg, optim=OptimConfig(lr=5e-3, warmup_steps=2))
    with pytest.raises(CheckpointError, match=r"optim\.lr: checkpoint 0\.01 vs now 0\.005"):
        _trainer(other, tmp_path / "run").fit()
    # a longer schedule is allowed: continue to more steps
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=5))
    assert _trainer(longer, tmp_path / "run").fit().step == 5


def test_schedule_warmup_then_cosine_to_floor():
    lrs = [lr_at(s, lr=1.0, warmup=10, total=110, min_ratio=0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_weight_decay_skips_frozen_norms_biases_and_embeddings():
    m = nn.ModuleDict({"lin": nn.Linear(4, 4), "norm": nn.LayerNorm(4), "embed": nn.Embedding(3, 4),
                       "frozen": nn.Linear(4, 4)})
    m["frozen"].requires_grad_(False)
    decay, no_decay = param_groups(m, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert decay["params"][0] is m["lin"].weight
    ids = {id(p) for p in no_decay["params"]}
    assert id(m["frozen"].weight) not in ids and id(m["frozen"].weight) not in {id(p) for p in decay["params"]}
    assert id(m["embed"].weight) in ids and id(m["norm"].weight) in ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, run: str, out: str, precision: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = _cfg(Path(data), steps=4, ckpt_every=4, precision=precision)
    cfg = dataclasses.replace(cfg, model=ToyConfig(dropout=0.0))
    result = _trainer(cfg, Path(run)).fit()
    if rank == 0:
        Path(out).write_text(",".join(repr(x) for x in result.losses))
    from playworld.train.distributed import shutdown_distributed

    shutdown_distributed()


@pytest.mark.parametrize("precision", ["fp32", "bf16-weights"])
def test_two_process_ddp_matches_single_process_with_same_global_batch(dataset, tmp_path, precision):
    single_cfg = _cfg(dataset, steps=4, ckpt_every=4, precision=precision)
    single_cfg = dataclasses.replace(single_cfg, model=ToyConfig(dropout=0.0),
                                     data=dataclasses.replace(single_cfg.data, batch_size=4))
    single = _trainer(single_cfg, tmp_path / "single").fit()
    out = tmp_path / "ddp_losses.txt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(dataset), str(tmp_path / "ddp"), str(out), precision),
             nprocs=2)
    ddp = [float(x) for x in out.read_text().split(",")]
    assert len(ddp) == 4
    # bf16 weights: the two ranks' bf16 gradients are averaged by all-reduce, a different rounding
    # from one process's gradient of the whole batch
    rtol, atol = (1e-5, 1e-6) if precision == "fp32" else (2e-2, 1e-4)
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single.losses), rtol=rtol, atol=atol)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4 if precision == "fp32" else 2e-2,
                                   atol=1e-6 if precision == "fp32" else 1e-3)


def test_auto_measures_once_and_a_resumed_run_keeps_its_choice(dataset, tmp_path, monkeypatch):
    import playworld.train.mixed as mixed

    cfg = _cfg(dataset, precision="auto")
    monkeypatch.setattr(mixed, "cpu_bf16_speedup", lambda: 3.0)  # a CPU that multiplies bf16 fast
    first = _trainer(cfg, tmp_path / "run")
    assert first.precision == "bf16-weights" and first.model.net[0].weight.dtype == torch.bfloat16
    first.fit(stop_after=2)
    monkeypatch.setattr(mixed, "cpu_bf16_speedup", lambda: 1.0)  # the probe now says otherwise
    resumed = _trainer(cfg, tmp_path / "run")
    assert resumed.precision == "bf16-weights"
    assert _trainer(cfg, tmp_path / "fresh").precision == "fp32"
