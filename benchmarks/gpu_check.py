"""The release-scale paths in one run: each model trained for a few hundred steps of the ``base`` preset
with a resume across a process restart, training throughput and model FLOPs utilisation, and play
frames/s. Run through ``benchmarks/gpu_check.sh`` (it bounds the time); figures go to OUT/gpu_check.json.

For each model (tokenizer, LAM, dynamics on the first two), in fresh processes:

- A: ``2N`` steps uninterrupted;
- B: the same run stopped after ``N`` steps (its checkpoint written), then resumed in a new process to ``2N``.

Reported per model: B's resume step (must be N), the final losses of A and B and the largest difference
between their release weights (relative to each tensor's largest value; on CPU they are bitwise equal;
CUDA kernels that accumulate in a varying order, e.g. atomics in backward, make them close rather than
equal), the first loss after the resume
against A's at that step, median steps/s and tokens/s of A's logged windows after the first (tokens:
clip frames x the model's tokens per frame: tokenizer patches, LAM patches, dynamics tokens), FLOP per
step (``torch.utils.flop_counter`` on one training step: every matmul and attention of the forward and
backward, the dynamics' frozen tokenizer and LAM included) and model FLOPs utilisation: achieved FLOP/s
over the GPU's dense bf16 peak (its datasheet figure for known GPUs, else ``--peak-tflops``; a measured
large bf16 matmul is reported beside it). Then play: ``World.step`` frames/s of A's three models at
batch 1 and 16 (``train.precision`` auto: bf16 autocast on CUDA; play in bf16 on CUDA). Optional stages,
each skipped when the time budget runs short: the tokenizer under ``train.strategy=fsdp`` (FSDP2 over a
NCCL group of one), stopped and resumed, against run A; and the tokenizer with ``train.compile=true``
for N steps (losses against A's, tokens/s once compiled; CUDA only unless ``--compile``).

On a machine without CUDA it falls back to the ``tiny`` preset, a few steps and CPU peaks measured
from a matmul, so that it can be tested anywhere.

    .venv/bin/python benchmarks/gpu_check.py --out OUT [--steps N] [--preset base] [--models ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Dense bf16 tensor-core peaks (datasheets, without sparsity), TFLOP/s, by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}
KINDS = ("tokenizer", "lam", "dynamics")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data

def make_dataset(out: Path, *, episodes: int, length: int, size: int = 64, seed: int = 0) -> Path:
    """Episodes of a coloured square moved by random actions (0 stay, 1-4 a step in a direction) over a
    textured background, in the layout `playworld collect` writes (with a val split)."""
    from playworld.data.format import DatasetWriter, EpisodeData
    from playworld.data.split import SplitRule

    if (out / "manifest.json").is_file() or (out / "dataset.json").is_file():
        return out
    rng = np.random.default_rng(seed)
    moves = np.array([[0, 0], [0, 4], [0, -4], [4, 0], [-4, 0]])
    writer = DatasetWriter(out, frame_shape=(size, size, 3), num_actions=5, source={"kind": "gpu_check"},
                           rule=SplitRule(by="episode", val=0.1, test=0.0))
    for i in range(episodes):
        background = rng.integers(0, 80, size=(size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        actions = rng.integers(0, 5, size=length)
        y, x = rng.integers(0, size - 8, size=2)
        colour = rng.integers(120, 256, size=3, dtype=np.uint8)
        video = np.empty((length, size, size, 3), dtype=np.uint8)
        for t in range(length):
            video[t] = background
            video[t, y:y + 8, x:x + 8] = colour
            dy, dx = moves[actions[t]]
            y, x = int(np.clip(y + dy, 0, size - 8)), int(np.clip(x + dx, 0, size - 8))
        writer.add(EpisodeData(video, actions.astype(np.int64), None, level_seed=None, source=f"square{i}"))
    writer.finalize()
    return out


# ----------------------------------------------------------------------------- one training process

def tokens_per_frame(model: torch.nn.Module) -> int:
    """Positions a model computes per frame (tokenizer patches, LAM patches, dynamics tokens), as its
    config declares them."""
    return int(model.config.tokens_per_frame)


def train_worker(spec: dict) -> dict:
    """Run one training process as ``spec`` says; returns what it measured."""
    from torch.utils.flop_counter import FlopCounterMode

    from playworld.presets import build_run_config
    from playworld.train import Trainer

    cfg = build_run_config(spec["kind"], spec["preset"], data_path=spec["data"], overrides=spec["overrides"],
                           deps=spec.get("deps") or {})
    out: dict = {}
    if spec.get("count_flops"):  # one step of a throwaway trainer of the same config
        probe = Trainer(cfg, Path(spec["run"]).with_name(Path(spec["run"]).name + "-flops"), progress=False)
        d = cfg.data
        size = (d.batch_size, d.clip_len, 64, 64, 3)
        batch = [torch.randint(0, 256, size, dtype=torch.uint8) for _ in range(2 * cfg.train.grad_accum)]
        feed = iter(batch)
        probe.model.train()
        probe._train_step(feed)  # warm-up (VQ init from data, allocations)
        with FlopCounterMode(display=False) as counter:
            probe._train_step(feed)
        out["flops_per_step"] = counter.get_total_flops()
        out["clips_per_step"] = d.batch_size * cfg.train.grad_accum
        out["tokens_per_step"] = out["clips_per_step"] * d.clip_len * tokens_per_frame(probe.release)
        out["precision"] = probe.precision
        out["params_m"] = sum(p.numel() for p in probe.release.parameters()) / 1e6
        del probe, feed, batch
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    trainer = Trainer(cfg, Path(spec["run"]), progress=False)
    start = time.perf_counter()
    result = trainer.fit(resume=True, stop_after=spec.get("stop_after"))
    out.update(step=result.step, first_step=result.step - len(result.losses), losses=result.losses,
               interrupted=result.interrupted, wall_s=time.perf_counter() - start)
    if torch.cuda.is_available():
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_worker(spec: dict, work: Path) -> dict:
    """``train_worker(spec)`` in a fresh Python process (a real restart between the halves of run B)."""
    name = f"{Path(spec['run']).parent.name}-{spec['kind']}-{spec.get('stop_after') or 'full'}"
    spec_file, result_file = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", str(spec_file), "--result", str(result_file)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"training process {name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return json.loads(result_file.read_text())


# ----------------------------------------------------------------------------- figures

def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Measured TFLOP/s of an n x n x n matmul on ``device`` (wall time; CPU: all its threads)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def logged_rates(run: Path) -> list[float]:
    """clips/s of each logged training window of a run but the first (warm-up, allocator, autotuning)."""
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["clips_per_s"] for r in rows if r.get("split", "train") == "train" and "clips_per_s" in r]
    return rates[1:] if len(rates) > 1 else rates


def max_weight_diff(a: Path, b: Path) -> float:
    """Largest difference between two releases' tensors, relative to each tensor's largest magnitude (so that
    a codebook's EMA counts, in the hundreds, weigh as much as a layer's weights); 0.0 when bitwise equal."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        return float("inf")
    return max((float((wa[k].float() - wb[k].float()).abs().max() / wa[k].float().abs().max().clamp_min(1e-12))
                for k in wa if wa[k].numel()), default=0.0)


def play_fps(root: Path, device: torch.device, batch: int, seconds: float) -> float:
    """Frames/s of ``World.step`` for a batch of ``batch`` worlds (frames = batch x steps), stepping back to back."""
    from playworld.world import World, WorldConfig

    world = World.load(root, WorldConfig(), device=device, precision="auto")
    side = world.tokenizer.config.image_size
    world.reset(torch.randint(0, 256, (side, side, 3), dtype=torch.uint8), seed=0, batch_size=batch)
    for i in range(3):  # warm-up
        world.step(i % world.num_actions)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        world.step(n % world.num_actions)
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * n / (time.perf_counter() - t0)


def check_model(kind: str, args: argparse.Namespace, data: Path, work: Path, deps: dict[str, str]) -> dict:
    from playworld.presets import build_run_config

    n = args.steps
    over = [f"train.steps={2 * n}", f"train.log_every={max(1, min(10, n // 4))}", "train.val_every=0",
            f"train.ckpt_every={10 * n}", f"train.device={args.device}", *args.device_set, *args.set]
    base = {"kind": kind, "preset": args.preset, "data": str(data), "overrides": over}
    log(f"{kind}: A, {2 * n} steps uninterrupted")
    spec_a = {**base, "run": str(work / "A" / kind), "count_flops": True,
              "deps": {k: str(work / "A" / k) for k in deps}}
    fitted = None
    try:
        a = run_worker(spec_a, work)
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        # the preset's batch does not fit: the same global batch as two accumulated halves
        cfg = build_run_config(kind, args.preset, overrides=over)
        fitted = [f"data.batch_size={max(1, cfg.data.batch_size // 2)}", f"train.grad_accum={2 * cfg.train.grad_accum}"]
        log(f"{kind}: out of memory at batch {cfg.data.batch_size}; again with {' '.join(fitted)}")
        for d in (work / "A" / kind, work / "A" / f"{kind}-flops"):
            shutil.rmtree(d, ignore_errors=True)
        over = over + fitted
        base = {**base, "overrides": over}
        a = run_worker({**spec_a, "overrides": over}, work)
    args.refit[kind] = fitted
    log(f"{kind}: B, {n} steps, stop")
    b1 = run_worker({**base, "run": str(work / "B" / kind), "stop_after": n,
                     "deps": {k: str(work / "A" / k) for k in deps}}, work)
    log(f"{kind}: B, resumed in a new process to {2 * n}")
    b2 = run_worker({**base, "run": str(work / "B" / kind), "deps": {k: str(work / "A" / k) for k in deps}}, work)
    rates = logged_rates(work / "A" / kind)
    steps_per_s = statistics.median(rates) / a["clips_per_step"] if rates else 0.0
    achieved = a["flops_per_step"] * steps_per_s
    losses_b = b1["losses"] + b2["losses"]
    diff = max_weight_diff(work / "A" / kind, work / "B" / kind)
    exact = losses_b == a["losses"] and diff == 0.0
    after, same_step = (b2["losses"] or [None])[0], (a["losses"][n] if len(a["losses"]) > n else None)
    step_ok = b1["step"] == n and b2["first_step"] == n and b2["step"] == 2 * n
    close = after is not None and same_step is not None and abs(after - same_step) <= 0.02 * abs(same_step)
    out = {
        "out_of_memory_refit": fitted,
        "params_m": round(a["params_m"], 2), "precision": a["precision"], "steps": 2 * n,
        "resumed_from_step": b2["first_step"], "resume_step_ok": step_ok,
        "final_loss_uninterrupted": a["losses"][-1], "final_loss_resumed": losses_b[-1],
        "first_loss_after_resume": after, "uninterrupted_loss_at_that_step": same_step,
        "max_weight_diff": diff, "bitwise_equal": exact,
        # CPU: bitwise; CUDA: the first step after the resume within 2% of the uninterrupted run's
        "resume_ok": step_ok and (exact if args.device == "cpu" else (exact or close)),
        "first_loss": a["losses"][0], "learned": a["losses"][-1] < a["losses"][0],
        "steps_per_s": steps_per_s, "tokens_per_step": a["tokens_per_step"],
        "tokens_per_s": steps_per_s * a["tokens_per_step"],
        "flops_per_step": a["flops_per_step"], "achieved_tflops": achieved / 1e12,
        "wall_s_uninterrupted": a["wall_s"],
    }
    if "max_memory_gib" in a:
        out["max_memory_gib"] = round(a["max_memory_gib"], 2)
    return out


def check_fsdp(args: argparse.Namespace, data: Path, work: Path) -> dict:
    """The tokenizer under train.strategy=fsdp (one rank: FSDP2 over a process group of one, NCCL on CUDA):
    N steps, stop, resume in a new process to 2N; its losses against run A's (same precision on CUDA)."""
    n = args.steps
    over = [f"train.steps={2 * n}", f"train.log_every={max(1, min(10, n // 4))}", "train.val_every=0",
            f"train.ckpt_every={10 * n}", f"train.device={args.device}", "train.strategy=fsdp", *args.device_set,
            *args.set, *(args.refit.get("tokenizer") or [])]
    base = {"kind": "tokenizer", "preset": args.preset, "data": str(data), "overrides": over,
            "run": str(work / "F" / "tokenizer")}
    log(f"tokenizer under FSDP: {n} steps, stop, resume in a new process to {2 * n}")
    first = run_worker({**base, "stop_after": n}, work)
    second = run_worker(base, work)
    a = json.loads((work / "A-tokenizer-full.result.json").read_text())
    losses = first["losses"] + second["losses"]
    return {"resumed_from_step": second["first_step"],
            "resume_step_ok": first["step"] == n and second["first_step"] == n and second["step"] == 2 * n,
            "final_loss": losses[-1], "final_loss_single_process": a["losses"][-1],
            "max_abs_loss_diff_vs_single_process": max(abs(x - y) for x, y in zip(losses, a["losses"])),
            "max_weight_diff_vs_single_process": max_weight_diff(work / "A" / "tokenizer", work / "F" / "tokenizer"),
            "release_files_verified": _verified(work / "F" / "tokenizer")}


def check_compile(args: argparse.Namespace, data: Path, work: Path) -> dict:
    """The tokenizer with train.compile=true for the first N steps of run A's schedule: its losses against
    A's (eager) and its tokens/s once compiled (logged windows after the first, which holds the compile)."""
    n = args.steps
    over = [f"train.steps={2 * n}", f"train.log_every={max(1, min(10, n // 4))}", "train.val_every=0",
            f"train.ckpt_every={10 * n}", f"train.device={args.device}", "train.compile=true", *args.device_set,
            *args.set, *(args.refit.get("tokenizer") or [])]
    log(f"tokenizer with torch.compile: {n} steps")
    c = run_worker({"kind": "tokenizer", "preset": args.preset, "data": str(data), "overrides": over,
                    "run": str(work / "C" / "tokenizer"), "stop_after": n}, work)
    a = json.loads((work / "A-tokenizer-full.result.json").read_text())
    rates = logged_rates(work / "C" / "tokenizer")
    clips_per_step = a["clips_per_step"]
    return {"steps": c["step"], "wall_s": c["wall_s"],
            "max_rel_loss_diff_vs_eager": max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(c["losses"], a["losses"])),
            "tokens_per_s": (statistics.median(rates) / clips_per_step * a["tokens_per_step"]) if rates else None,
            "tokens_per_s_eager": args.eager_tokens_per_s}


def _verified(model_dir: Path) -> bool:
    from playworld.train.checkpoint import read_release_config

    read_release_config(model_dir)  # raises CheckpointError on a size or sha256 mismatch
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="output directory")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda or cpu")
    p.add_argument("--preset", default=None, help="default: base on CUDA, tiny on CPU")
    p.add_argument("--steps", type=int, default=None, help="N: run A trains 2N steps, B stops at N "
                   "(default: 30 on CUDA, 2 on CPU)")
    p.add_argument("--models", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model, e.g. data.batch_size=8")
    p.add_argument("--play-seconds", type=float, default=None, help="per play measurement (default 10 CUDA, 2 CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--budget", type=float, default=480.0, help="seconds the whole check may take (gpu_check.sh "
                   "stops it there); optional stages are skipped when it runs short")
    p.add_argument("--compile", action="store_true", help="run the torch.compile stage on a CPU too")
    p.add_argument("--no-compile", action="store_true", help="skip the tokenizer run with train.compile=true "
                   "(on by default on CUDA only)")
    p.add_argument("--no-fsdp", action="store_true", help="skip the tokenizer run under train.strategy=fsdp")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = train_worker(json.loads(Path(args.worker).read_text()))
        Path(args.result).write_text(json.dumps(result))
        return
    cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        sys.exit("gpu_check: --device cuda, but torch sees no CUDA device")
    args.device = "cuda" if cuda else "cpu"
    args.preset = args.preset or ("base" if cuda else "tiny")
    args.steps = args.steps or (30 if cuda else 2)  # base preset on an H200: three models, resumes and FSDP in 8 min
    args.play_seconds = args.play_seconds or (10.0 if cuda else 2.0)
    args.no_compile = args.no_compile or not (cuda or args.compile)  # CPU: minutes of compiling on 2 cores
    # CUDA: loader workers keep the GPU fed. CPU: fp32 everywhere, so that the FSDP run (fp32 shards)
    # compares with the others like for like
    args.device_set = ["data.num_workers=4"] if cuda else ["train.precision=fp32"]
    t0 = time.monotonic()
    args.refit = {}
    out = Path(args.out)
    work = out / "work"
    for stale in ("A", "B", "F", "C"):  # runs of an earlier check would resume instead of training
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                    "preset": args.preset, "steps_N": args.steps, "overrides": args.set,
                    "threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cuda:
        name = report["device"]
        peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        report["bf16_peak_tflops"] = peak
        report["bf16_matmul_tflops_measured"] = matmul_tflops(device, torch.bfloat16, 8192, 20)
    else:
        report["bf16_peak_tflops"] = args.peak_tflops
        report["bf16_matmul_tflops_measured"] = matmul_tflops(device, torch.bfloat16, 1024, 4)
        report["fp32_matmul_tflops_measured"] = matmul_tflops(device, torch.float32, 1024, 4)
    log(f"{report['device']}, preset {args.preset}, N={args.steps}, out {out}")
    episodes, length = (48, 40) if args.preset == "base" else (12, 16)
    data = make_dataset(work / "data", episodes=episodes, length=length)
    report["models"] = {}
    for kind in args.models:
        deps = {"tokenizer": "", "lam": ""} if kind == "dynamics" else {}
        if deps and not {"tokenizer", "lam"} <= set(args.models):
            sys.exit("gpu_check: dynamics trains on the tokenizer and LAM of run A; include them in --models")
        missing = [k for k in deps if not (work / "A" / k / "model.safetensors").is_file()]
        if missing:
            report["models"][kind] = {"error": f"needs the {', '.join(missing)} of run A, which did not train"}
            continue
        try:
            report["models"][kind] = check_model(kind, args, data, work, deps)
        except RuntimeError as e:  # recorded; the other models are still checked
            log(f"{kind}: FAILED\n{e}")
            report["models"][kind] = {"error": str(e)[-3000:]}
        _write(out, report)
    if "tokenizer" in args.models and not args.no_fsdp and "error" not in report["models"]["tokenizer"]:
        if time.monotonic() - t0 < 0.6 * args.budget:
            try:
                report["fsdp"] = check_fsdp(args, data, work)
            except RuntimeError as e:
                log(f"FSDP: FAILED\n{e}")
                report["fsdp"] = {"error": str(e)[-3000:], "resume_step_ok": False}
        else:
            report["fsdp"] = {"skipped": f"over 60% of the {args.budget:.0f} s budget spent", "resume_step_ok": True}
        _write(out, report)
    checked = {k: m for k, m in report["models"].items() if "error" not in m}
    # CUDA: the datasheet's dense bf16 peak (else the measured bf16 matmul); CPU: it trains in fp32 here
    against = ("bf16_peak_tflops" if report["bf16_peak_tflops"] else "bf16_matmul_tflops_measured") if cuda \
        else "fp32_matmul_tflops_measured"
    peak = report[against]
    report["mfu_against"] = against
    for m in checked.values():
        m["mfu"] = m["achieved_tflops"] / peak
    if len(checked) == len(KINDS):
        report["play_fps"] = {}
        for batch in (1, 16):
            log(f"play: batch {batch}")
            seconds = min(args.play_seconds, max(1.0, (args.budget - (time.monotonic() - t0) - 30) / 4))
            report["play_fps"][str(batch)] = play_fps(work / "A", device, batch, seconds)
            _write(out, report)
    if "tokenizer" in checked and not args.no_compile:
        if args.budget - (time.monotonic() - t0) > 150:
            args.eager_tokens_per_s = checked["tokenizer"]["tokens_per_s"]
            try:
                report["compile"] = check_compile(args, data, work)
            except RuntimeError as e:
                log(f"torch.compile: FAILED\n{e}")
                report["compile"] = {"error": str(e)[-3000:]}
        else:
            report["compile"] = {"skipped": "under 150 s of the budget left"}
        _write(out, report)
    report["ok"] = len(checked) == len(report["models"]) and all(m["resume_ok"] for m in checked.values()) and \
        report.get("fsdp", {}).get("resume_step_ok", True)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(out, report)
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        sys.exit("gpu_check: a model did not resume exactly at its stopping step (see resume_ok in the JSON)")


def _write(out: Path, report: dict) -> None:
    from playworld.io import atomic_write_text

    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
