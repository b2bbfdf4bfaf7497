"""Training-step speed of the tokenizer, LAM and dynamics model in each train.precision, against this
machine's matmul peaks measured in the same run.

For each model, one :class:`playworld.train.Trainer` per precision (fp32, bf16 autocast, bf16 weights
with fp32 masters) runs real engine steps (clipping, NaN check, optimizer, master-weight copies) on
the same random batches, interleaved A, B, C, A, B, C ... so that load from other jobs falls on all
alike. Reported per step: the median wall time, the median process CPU time (less sensitive to other
jobs; with one thread it is close to the compute time), both as ratios to fp32 measured in the same
run, and achieved GFLOP per CPU second (FlopCounterMode on one step, over the median CPU time) as a
fraction of a 2048x2048 matmul's, timed the same way, in the precision the matrices are multiplied in
(CPU time, not wall time, so that other jobs on the machine do not lower either). The dynamics step includes its frozen fp32 tokenizer
and LAM (tokens and latent actions are computed from pixels at every step, as in training).

    .venv/bin/python benchmarks/train_throughput.py [--models tokenizer lam dynamics] [--preset small]
        [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from playworld.precision import cpu_bf16_speedup
from playworld.presets import build_run_config
from playworld.train import Trainer
from playworld.train.mixed import CPU_PROBE_FLOOR, resolve_train_precision
from playworld.train.registry import get_spec

MODES = ("fp32", "bf16", "bf16-weights")
LABELS = {"fp32": "fp32", "bf16": "bf16 autocast", "bf16-weights": "bf16 weights"}


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOP per second of process CPU time of an n x n matmul (per core when threads > 1)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.process_time()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.process_time() - t)


def build_model(kind: str, preset: str) -> nn.Module:
    """A freshly initialised trainable module of ``kind`` at ``preset`` (dynamics: with frozen
    randomly initialised tokenizer and LAM of the same preset)."""
    cfg = build_run_config(kind, preset)
    if kind != "dynamics":
        return get_spec(kind).build_release(cfg.model)
    from playworld.models.dynamics import DynamicsTrainer

    tok = get_spec("tokenizer").build_release(build_run_config("tokenizer", preset).model).eval()
    lam = get_spec("lam").build_release(build_run_config("lam", preset).model).eval()
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.num_codes, token_height=tok.grid[0],
                                    token_width=tok.grid[1], num_actions=lam.num_actions)
    return DynamicsTrainer(model_cfg, tokenizer=tok, lam=lam)


def trainers(kind: str, preset: str, root: Path) -> dict[str, Trainer]:
    out = {}
    for mode in MODES:
        cfg = build_run_config(kind, preset, overrides=[f"train.precision={mode}", "train.device=cpu"])
        torch.manual_seed(0)
        model = build_model(kind, preset)
        out[mode] = Trainer(cfg, root / f"{kind}-{mode}", model=model, progress=False)
    return out


def batches(kind: str, preset: str, n: int = 4) -> list[torch.Tensor]:
    cfg = build_run_config(kind, preset)
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (cfg.data.batch_size, cfg.data.clip_len, 64, 64, 3), generator=g,
                          dtype=torch.uint8) for _ in range(n)]


def bench(kind: str, preset: str, rounds: int, root: Path) -> dict[str, dict[str, float]]:
    runs = trainers(kind, preset, root)
    data = batches(kind, preset)
    feed = {mode: iter(data * (rounds + 3)) for mode in MODES}
    for mode, tr in runs.items():  # warm-up (first-call allocations, VQ init from data)
        tr.model.train()
        tr._train_step(feed[mode])
    with FlopCounterMode(display=False) as counter:
        runs["fp32"]._train_step(feed["fp32"])
    flops = counter.get_total_flops()
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            w, c = time.perf_counter(), time.process_time()
            runs[mode]._train_step(feed[mode])
            wall[mode].append(time.perf_counter() - w)
            cpu[mode].append(time.process_time() - c)
    b = runs["fp32"].cfg.data
    return {m: {"wall": statistics.median(wall[m]), "cpu": statistics.median(cpu[m]), "flops": flops,
                "params_m": sum(p.numel() for p in runs[m].release.parameters()) / 1e6,
                "batch": b.batch_size, "frames": b.clip_len} for m in MODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tokenizer", "lam", "dynamics"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per precision")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, preset {args.preset}, "
          f"{args.rounds} interleaved steps per precision (medians)")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    for k, v in peaks.items():
        print(f"matmul peak {k}: {v / 1e9:.0f} GFLOP per CPU second (2048x2048)")
    probe = cpu_bf16_speedup()
    print(f"bf16 product probe: {probe:.2f}x fp32 -> train.precision=auto picks "
          f"{resolve_train_precision('auto', torch.device('cpu'), speedup=lambda: probe)} "
          f"(bf16-weights from {CPU_PROBE_FLOOR}x)")
    print(f"{'model':10} {'precision':14} {'params':>7} {'B x T':>6} {'ms/step':>8} {'speedup':>7} "
          f"{'CPU ms':>8} {'speedup':>7} {'GFLOP/cs':>8} {'of peak':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            r = bench(kind, args.preset, args.rounds, Path(tmp))
            base = r["fp32"]
            for mode in MODES:
                x = r[mode]
                gflops = x["flops"] / x["cpu"] / 1e9
                peak = peaks["fp32" if mode == "fp32" else "bf16"] / 1e9
                print(f"{kind:10} {LABELS[mode]:14} {x['params_m']:6.2f}M {x['batch']:>2}x{x['frames']:<3} "
                      f"{x['wall'] * 1e3:8.0f} {base['wall'] / x['wall']:6.2f}x {x['cpu'] * 1e3:8.0f} "
                      f"{base['cpu'] / x['cpu']:6.2f}x {gflops:8.1f} {gflops / peak:8.1%}")


if __name__ == "__main__":
    main()
