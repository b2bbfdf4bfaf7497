"""The training engine: exact resume, NaN stop, checkpoint corruption and config mismatch, schedule,
weight-decay groups, 2-process DDP (gloo) equivalence with one process at the same global batch, and DDP
training of either dynamics backend (MaskGIT, flow)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from playworld.errors import CheckpointError, TrainingError
from playworld.models.base import LossOutput, TrainableModel
from playworld.models.dynamics import DynamicsModel
from playworld.nn.vq import VectorQuantizer
from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig, Trainer
from playworld.train.engine import param_groups
from playworld.train.schedule import lr_at
from tiny_world import save_tiny_run, tiny_models

from helpers import make_dataset


@dataclasses.dataclass
class ToyConfig:
    hidden: int = 16
    dropout: float = 0.1
    nan_at_call: int = -1


class ToyModel(TrainableModel):
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_a_checkpoint_and_is_reported(dataset, tmp_path, capsys, signum):
    cfg = _cfg(dataset, steps=8)
    trainer = _trainer(cfg, tmp_path / "run")
    step = trainer._train_step

    def step_then_signal(batches):
        out = step(batches)
        if trainer.step == 1:  # the handler runs in this thread, before the loop checks its flag
            os.kill(os.getpid(), signum)
        return out

    trainer._train_step = step_then_signal
    before = signal.getsignal(signum)
    result = trainer.fit()
    assert result.interrupted and result.signal == signum and result.step == 2
    assert signal.getsignal(signum) is before  # the caller's handler is back
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert "resuming" not in capsys.readouterr().err
    assert _trainer(cfg, tmp_path / "run").fit().step == 8
    assert "tokenizer: resuming from step 2 (" in capsys.readouterr().err


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


def _groups_by_name(model: nn.Module) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


@pytest.mark.parametrize("which", ["tokenizer", "lam", "dynamics", "dynamics_learned_pos", "vq_learned"])
def test_weight_decay_by_module_type_in_the_real_models(which):
    """Only the weights of Linear layers are decayed (minGPT's configure_optimizers); embeddings
    (token_emb, action_emb, prev_emb), the LAM's identity-initialised kernels, position tables and
    learned codebooks are not, whatever they are called, and every parameter is in exactly one group."""
    tok, lam, dyn = tiny_models()
    model, expect_no_decay = {
        "tokenizer": (tok, []),
        "lam": (lam, ["kernels", "action_emb.weight"]),
        "dynamics": (dyn, ["token_emb.weight", "action_emb.weight", "prev_emb.weight"]),
        "dynamics_learned_pos": (DynamicsModel(dataclasses.replace(dyn.config, spatial_rope=False)),
                                 ["token_emb.weight", "transformer.pos_s"]),
        "vq_learned": (VectorQuantizer(8, 4, ema=False), ["codebook"]),
    }[which]
    decay, no_decay = _groups_by_name(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert set(expect_no_decay) <= no_decay
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    assert all(f"{n}.weight" in decay for n in linears)
    assert all(f"{n}.bias" in no_decay for n in linears if getattr(model.get_submodule(n), "bias", None) is not None)
    assert all(f"{n}.weight" in no_decay for n in norms)
    assert decay == {f"{n}.weight" for n in linears}


def test_weight_decay_names_an_undeclared_bare_parameter():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.table = nn.Parameter(torch.zeros(3, 2))

    with pytest.raises(TrainingError, match=r"'table'.*no_weight_decay"):
        param_groups(Odd(), 0.1)

    class Declared(Odd):
        def no_weight_decay(self) -> set[str]:
            return {"table"}

    assert "table" in _groups_by_name(Declared())[1]


def test_a_parameter_tied_across_groups_is_named():
    m = nn.ModuleDict({"emb": nn.Embedding(4, 3), "out": nn.Linear(3, 4)})
    m["out"].weight = m["emb"].weight
    with pytest.raises(TrainingError, match=r"'emb\.weight' is shared as 'out\.weight'.*both"):
        param_groups(m, 0.1)


def test_resume_names_optimizer_groups_that_changed(dataset, tmp_path):
    import json

    cfg = _cfg(dataset, steps=4)
    _trainer(cfg, tmp_path / "run").fit(stop_after=2)
    state_file = tmp_path / "run" / "checkpoints" / "step-00000002" / "state.json"
    state = json.loads(state_file.read_text())
    good = json.dumps(state)
    groups = state["optimizer"]["param_groups"]
    assert groups[0]["names"] == ["net.0.weight", "net.3.weight"]
    # a parameter that moved group between the run and its resumption is named
    groups[0]["names"], groups[1]["names"] = ["net.0.weight", "net.0.bias"], ["net.3.weight", "net.3.bias"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"'net\.0\.bias' is in group 0 of the checkpoint and group 1 now"):
        _trainer(cfg, tmp_path / "run").fit()
    # a checkpoint from before groups were named, with the old (by-name) layout: said so, not loaded wrongly
    state = json.loads(good)
    groups = state["optimizer"]["param_groups"]
    for g in groups:
        del g["names"]
    groups[1]["params"].insert(0, groups[0]["params"].pop())
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"sizes \[1, 3\] vs \[2, 2\].*before weight decay was decided"):
        _trainer(cfg, tmp_path / "run").fit()
    # the same layout without names (an old checkpoint whose groups did not change) still resumes
    state_file.write_text(json.dumps({**json.loads(good), "optimizer": {
        **json.loads(good)["optimizer"],
        "param_groups": [{k: v for k, v in g.items() if k != "names"}
                         for g in json.loads(good)["optimizer"]["param_groups"]]}}))
    assert _trainer(cfg, tmp_path / "run").fit().step == 4


def test_lam_validation_logs_the_encoders_held_out_usage_and_warns_when_collapsed(tmp_path, capsys):
    import json

    from playworld.models.lam import LAMConfig, LatentActionModel

    data = make_dataset(tmp_path / "ds", episodes=6, length=8, size=16, val=0.34)
    lam_cfg = LAMConfig(height=16, width=16, patch_size=8, num_actions=4, dim=32, heads=2, encoder_depth=1,
                        decoder_depth=1, kernel_radius=2)
    cfg = RunConfig(kind="lam", model=lam_cfg, optim=OptimConfig(lr=1e-4, warmup_steps=0),
                    data=DataConfig(path=str(data), clip_len=3, batch_size=2),
                    train=TrainConfig(steps=2, log_every=1, val_every=1, val_batches=2, ckpt_every=2))
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg)
    with torch.no_grad():  # an encoder that gives action 2 whatever it sees; one step of lr 1e-4 cannot undo it
        lam.to_logits.weight.zero_()
        lam.to_logits.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    Trainer(cfg, tmp_path / "run", model=lam, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val" and "loss" in r]
    assert [r["step"] for r in val] == [1, 2]
    for r in val:  # 2 batches x 2 clips x 2 transitions, all given action 2 by the encoder
        assert r["actions/encoder_used"] == 1 and r["actions/encoder_usage"] == 0.25
        assert r["actions/encoder_perplexity"] == pytest.approx(1.0) and r["actions/encoder_collapsed"] == 1
        assert 1 <= r["actions/decoder_used"] <= 4 and 0 <= r["actions/agreement"] <= 1
        assert "decoder_share/0" in r and "decoder_batch_perplexity" in r and "action_usage/0" not in r
    train = [r for r in records if r["split"] == "train"]
    assert train and all("encoder_batch_perplexity" in r and "decoder_share/3" in r for r in train)
    # throughput in tokens as the LAM's config counts them (4 patches a frame): once logged as nothing
    assert all(r["tokens_per_s"] == pytest.approx(r["clips_per_s"] * 3 * lam_cfg.tokens_per_frame) for r in train)
    warnings = [r for r in records if "warning" in r]
    assert [w["step"] for w in warnings] == [1, 2]
    assert "latent actions collapsed on held-out clips" in warnings[0]["warning"]
    assert "the encoder uses 1 of 4 actions" in warnings[0]["warning"]
    assert "warning: lam step 1: latent actions collapsed" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_ddp_cfg(data: str, precision: str) -> RunConfig:
    cfg = _cfg(Path(data), steps=4, ckpt_every=4, precision=precision)
    return dataclasses.replace(cfg, model=ToyConfig(dropout=0.0))


def _dynamics_ddp_cfg(data: str, world: str, backend: str) -> RunConfig:
    """A tiny dynamics run of ``backend`` on the tokenizer and LAM of the tiny world saved in ``world``."""
    return RunConfig(kind="dynamics", model=tiny_models(backend=backend)[2].config,
                     optim=OptimConfig(lr=1e-3, warmup_steps=0),
                     data=DataConfig(path=data, clip_len=3, batch_size=2),
                     train=TrainConfig(steps=3, log_every=1, val_every=0, ckpt_every=3, seed=3),
                     deps={"tokenizer": str(Path(world) / "tokenizer"), "lam": str(Path(world) / "lam")})


def _ddp_worker(rank: int, world: int, port: int, run: str, out: str, make_cfg, *cfg_args: str) -> None:
    """One rank of a 2-process gloo run of ``make_cfg(*cfg_args)``: rank 0 writes the losses to ``out``,
    every rank its trained weights to ``out.rank{rank}.safetensors``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = make_cfg(*cfg_args)
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, Path(run), progress=False, **({"model": ToyModel(cfg.model)}
                                                          if isinstance(cfg.model, ToyConfig) else {}))
    result = trainer.fit()
    if rank == 0:
        Path(out).write_text(",".join(repr(x) for x in result.losses))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trainer.release.state_dict().items()}, f"{out}.rank{rank}.safetensors")
    import gc

    from playworld.train.distributed import barrier, shutdown_distributed

    info = trainer.dist
    # free DDP's reducer while the process group is still registered: freed after destroy_process_group, it
    # destroys the gloo group inside its own deallocation, holding the GIL while it joins a gloo thread that
    # waits for the GIL (a deadlock seen at this point; the CLI frees its trainer before it leaves, as here)
    del trainer, result
    gc.collect()
    barrier(info)  # rank 0 holds the store: it must not leave while the other still writes
    shutdown_distributed()


def _spawn_ddp(run: Path, out: Path, make_cfg, *cfg_args: str) -> list[dict[str, torch.Tensor]]:
    """Run ``make_cfg(*cfg_args)`` on 2 gloo processes; returns each rank's trained weights."""
    from safetensors.torch import load_file

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(run), str(out), make_cfg, *cfg_args), nprocs=2)
    return [load_file(f"{out}.rank{r}.safetensors") for r in range(2)]


@pytest.mark.parametrize("precision", ["fp32", "bf16-weights"])
def test_two_process_ddp_matches_single_process_with_same_global_batch(dataset, tmp_path, precision):
    single_cfg = _toy_ddp_cfg(str(dataset), precision)
    single_cfg = dataclasses.replace(single_cfg, data=dataclasses.replace(single_cfg.data, batch_size=4))
    single = _trainer(single_cfg, tmp_path / "single").fit()
    out = tmp_path / "ddp_losses.txt"
    ranks = _spawn_ddp(tmp_path / "ddp", out, _toy_ddp_cfg, str(dataset), precision)
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
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


@pytest.mark.parametrize("backend", ["maskgit", "flow"])
def test_two_process_ddp_trains_the_dynamics_model_of_either_backend(dataset, tmp_path, backend):
    """DDP without find_unused_parameters: a parameter the loss leaves out would stop the second step
    ("Expected to have finished reduction"); ranks see different clips and must still end with the same
    weights (their gradients averaged), moved from the initial ones. (The masks and noise each rank draws
    differ from a single process's, so losses are not compared with one.)"""
    from safetensors.torch import load_file

    from playworld.train.registry import get_spec

    world = save_tiny_run(tmp_path / "world")
    cfg = _dynamics_ddp_cfg(str(dataset), str(world), backend)
    torch.manual_seed(cfg.train.seed)
    trainable = get_spec("dynamics").build_trainable(cfg, torch.device("cpu"))
    assert type(trainable).__name__ == ("FlowDynamicsTrainer" if backend == "flow" else "DynamicsTrainer")
    video = torch.rand(2, 3, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    trainable.compute_loss(video).loss.backward()
    unused = [n for n, p in trainable.trainable_module.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    init = {k: v.clone() for k, v in trainable.trainable_module.state_dict().items()}

    out = tmp_path / "ddp_losses.txt"
    ranks = _spawn_ddp(tmp_path / "ddp", out, _dynamics_ddp_cfg, str(dataset), str(world), backend)
    losses = [float(x) for x in out.read_text().split(",")]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    released = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert set(released) == set(init) and all(torch.equal(released[k], ranks[0][k]) for k in released)
    assert not torch.equal(released["head.weight"], init["head.weight"])
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["model"]["backend"] == backend


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




def test_init_from_starts_from_another_runs_release_weights(dataset, tmp_path):
    from safetensors.torch import load_file

    from playworld.models.lam import LAMConfig
    from playworld.models.tokenizer import TokenizerConfig

    tok = TokenizerConfig(image_size=16, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2, num_codes=32, code_dim=8)
    cfg = RunConfig(kind="tokenizer", model=tok, optim=OptimConfig(lr=1e-2, warmup_steps=1),
                    data=DataConfig(path=str(dataset), clip_len=4, batch_size=2),
                    train=TrainConfig(steps=2, log_every=1, val_every=0, ckpt_every=2, seed=0))
    Trainer(cfg, tmp_path / "a", progress=False).fit()
    saved = load_file(str(tmp_path / "a" / "model.safetensors"))
    again = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=5, init_from=str(tmp_path / "a")))
    started = Trainer(again, tmp_path / "b", progress=False).release.state_dict()
    assert all(torch.equal(started[k], saved[k]) for k in saved)
    fresh = Trainer(dataclasses.replace(again, train=dataclasses.replace(again.train, init_from="")), tmp_path / "c",
                    progress=False).release.state_dict()
    assert not all(torch.equal(fresh[k], saved[k]) for k in saved)  # so the equality above is the init's doing
    lam = RunConfig(kind="lam", model=LAMConfig(height=16, width=16, patch_size=4, dim=32, heads=2),
                    data=cfg.data, train=again.train)
    with pytest.raises(CheckpointError, match="a tokenizer run, but this run trains lam"):
        Trainer(lam, tmp_path / "d", progress=False)
    with pytest.raises(CheckpointError, match="config.json"):
        Trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(tmp_path / "nope"))),
                tmp_path / "e", progress=False)


def test_a_config_field_added_after_a_run_started_resumes_at_its_default():
    from playworld.models.dynamics import DynamicsConfig
    from playworld.train.engine import config_defaults, config_differences

    cfg = RunConfig(kind="dynamics", model=DynamicsConfig(dim=32, depth=1, heads=2))
    saved = cfg.to_dict()
    del saved["model"]["context_noise"]  # a checkpoint written before the field existed
    assert config_differences(saved, cfg.to_dict(), config_defaults(cfg)) == []
    changed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, context_noise=0.1))
    diffs = config_differences(saved, changed.to_dict(), config_defaults(changed))
    assert len(diffs) == 1 and diffs[0].startswith("model.context_noise: checkpoint 0.0 vs now 0.1")
    assert config_differences(saved, cfg.to_dict())  # without the defaults the missing key is a difference


def test_the_engine_trains_only_models_that_declare_its_interface(tmp_path):
    class Bare(nn.Module):  # a compute_loss alone is not enough: the hooks' defaults come from TrainableModel
        def __init__(self) -> None:
            super().__init__()
            self.config, self.lin = ToyConfig(), nn.Linear(2, 2)

        def compute_loss(self, video: torch.Tensor) -> LossOutput:
            return LossOutput(self.lin.weight.sum())

    with pytest.raises(TrainingError, match=r"Bare cannot be trained: .*TrainableModel"):
        Trainer(_cfg(tmp_path / "data"), tmp_path / "run", model=Bare(), progress=False)
    toy = ToyModel(ToyConfig())
    assert toy.trainable_module is toy and toy.held_out_stats(torch.zeros(1)) is None and not toy.caches_tokens


def test_the_engine_tells_the_model_where_the_run_is_also_after_a_resume(dataset, tmp_path):
    class Recorder(ToyModel):  # what a schedule inside a model (self_forcing_start) reads
        seen: list[tuple[int, int]] = []

        def set_progress(self, step, total):
            Recorder.seen.append((step, total))

    cfg = _cfg(dataset, steps=6)
    torch.manual_seed(0)
    Trainer(cfg, tmp_path / "run", model=Recorder(cfg.model), progress=False).fit(stop_after=2)
    Trainer(cfg, tmp_path / "run", model=Recorder(cfg.model), progress=False).fit()
    assert Recorder.seen == [(step, 6) for step in range(6)]
