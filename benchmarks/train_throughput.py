"""Training throughput of the tokenizer presets against this machine's matmul peak, measured in the
same run: tokens/s, achieved FLOP/s (counted with torch's FlopCounterMode on one real step) and
that as a fraction of the peak of a large fp32 (and bf16) matmul.

    .venv/bin/python benchmarks/train_throughput.py [--presets tiny small] [--steps 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from playworld.presets import build_run_config
from playworld.train.registry import get_spec


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench(preset: str, steps: int, batch: int | None, clip_len: int | None, bf16: bool) -> dict[str, float]:
    cfg = build_run_config("tokenizer", preset)
    b = batch or cfg.data.batch_size
    t = clip_len or cfg.data.clip_len
    torch.manual_seed(0)
    model = get_spec("tokenizer").build_release(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg.model.image_size
    video = torch.rand(b, t, size, size, 3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = model.compute_loss(video).loss
        loss.backward()
        opt.step()

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - start) / steps
    tokens = b * t * model.tokens_per_frame
    params = sum(p.numel() for p in model.parameters())
    return {"s_per_step": dt, "tokens_per_s": tokens / dt, "flops_per_s": flops / dt,
            "clips_per_s": b / dt, "params_m": params / 1e6, "batch": b, "frames": t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's batch size")
    parser.add_argument("--clip-len", type=int, default=None, help="default: the preset's clip length")
    parser.add_argument("--no-bf16", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    peaks = {"fp32": matmul_peak(torch.float32)}
    if not args.no_bf16:
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    for k, v in peaks.items():
        print(f"matmul peak {k}: {v / 1e9:.0f} GFLOP/s (2048x2048)")
    print(f"{'preset':8} {'prec':5} {'params':>8} {'B x T':>7} {'s/step':>8} {'clips/s':>8} {'tokens/s':>10} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    for preset in args.presets:
        for prec in peaks:
            r = bench(preset, args.steps, args.batch, args.clip_len, prec == "bf16")
            frac = r["flops_per_s"] / peaks[prec]
            print(f"{preset:8} {prec:5} {r['params_m']:7.2f}M {r['batch']:>3}x{r['frames']:<3} {r['s_per_step']:8.3f} "
                  f"{r['clips_per_s']:8.2f} {r['tokens_per_s']:10.0f} {r['flops_per_s'] / 1e9:8.1f} {frac:8.1%}")


if __name__ == "__main__":
    main()
