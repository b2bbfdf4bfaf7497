"""Frames/s of each dynamics backend (MaskGIT, flow) for each sampling step count, at batch 1 and batch B,
as play runs them: the play precision (``--precision``, default play's: bf16 where this CPU multiplies bf16
faster, :mod:`playworld.precision`), a full context window, the deferred commit off (a step pays for its
commit). Batch 1 is one world stepping alone; batch B is B one-player worlds stepped together with
:meth:`~playworld.world.World.step_many`, the way the play server serves B players. Every figure is also
given as a ratio to MaskGIT at 1 step (play's setting) measured in the same process on the same tokenizer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/backends_fps.py --threads 1 [RUN ...]
        [--tokenizer DIR --lam DIR] [--steps 1 2 4 8] [--guidance 1 3] [--batch 16] [--frames 10] [--no-twin]

Each RUN is a world (``RUN/{tokenizer,lam,dynamics}``, what `playworld train all` writes; default: the
shipped CoinRun world) or a dynamics run directory, whose tokenizer and LAM are ``--tokenizer`` and
``--lam`` or else its siblings ``../tokenizer`` and ``../lam``. The backend is the one the dynamics run's
config names. Unless ``--no-twin``, each run's dynamics model is also timed against a random-weight
model of the other backend with the same width, depth and token grid on the same tokenizer and LAM (a
"twin": its speed, not its frames, is meaningful), so one run gives both backends.

Wall-clock timings on a shared machine: the load average is printed first; compare figures of one
invocation with each other, and repeat a run before trusting a small difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch
from torch import nn

from playworld.api import DEFAULT_RUN
from playworld.maskgit import play_sampling
from playworld.models.dynamics import DynamicsModel, FlowConfig
from playworld.models.flow import FlowDynamicsModel
from playworld.play.config import PlayConfig
from playworld.precision import cast_for_play, resolve_precision
from playworld.release import load_model
from playworld.world import World, WorldConfig


@dataclasses.dataclass
class Models:
    """A tokenizer, LAM and dynamics model to time, and what to call them in the table."""

    label: str
    tokenizer: nn.Module
    lam: nn.Module
    dynamics: nn.Module

    @property
    def backend(self) -> str:
        return self.dynamics.config.backend  # type: ignore[union-attr]


def load_models(run: Path, tokenizer: Path | None, lam: Path | None) -> Models:
    """A world directory, or a dynamics run with its tokenizer and LAM given or beside it (see the docstring)."""
    if (run / "dynamics").is_dir():
        dyn_dir, tok_dir, lam_dir = run / "dynamics", run / "tokenizer", run / "lam"
    else:
        dyn_dir, tok_dir, lam_dir = run, run.parent / "tokenizer", run.parent / "lam"
    tok_dir, lam_dir = tokenizer or tok_dir, lam or lam_dir
    for part, d in (("dynamics", dyn_dir), ("tokenizer", tok_dir), ("lam", lam_dir)):
        if not (d / "model.safetensors").is_file():
            raise SystemExit(f"{d}: no released {part} here (model.safetensors + config.json); give a world "
                             "directory, or a dynamics run with --tokenizer and --lam")
    label = "shipped coinrun" if run.resolve() == DEFAULT_RUN.resolve() else \
        run.name if dyn_dir != run else f"{run.parent.name}/{run.name}"
    return Models(label, load_model(tok_dir), load_model(lam_dir), load_model(dyn_dir))


def twin(models: Models) -> Models | None:
    """A random-weight dynamics model of the other backend, same size and grid, on the same tokenizer and
    LAM (None where that backend cannot play the tokenizer: flow needs a VQ tokenizer)."""
    config = models.dynamics.config  # type: ignore[union-attr]
    torch.manual_seed(0)
    if models.backend == "flow":
        dynamics: nn.Module = DynamicsModel(dataclasses.replace(config, backend="maskgit"))
    else:
        if getattr(models.tokenizer.config, "quantizer", None) != "vq":  # type: ignore[union-attr]
            return None
        width = models.tokenizer.quantizer.dim  # type: ignore[union-attr]
        dynamics = FlowDynamicsModel(dataclasses.replace(
            config, backend="flow", flow=FlowConfig(latent_dim=width), context_noise=0.0, clean_prefix=False,
            mask_first_frame=False))
    return Models(f"{models.label} (twin)", models.tokenizer, models.lam, dynamics)


@torch.inference_mode()
def frames_per_second(models: Models, steps: int, batch: int, frames: int, context: int,
                      guidance: float = 1.0) -> float:
    """Frames/s of ``batch`` one-player worlds stepped together for ``frames`` steps after a warm-up one,
    each started from ``context`` random frames (a full cache: a step's cost no longer grows), decoded with
    action guidance ``guidance`` (1 = off)."""
    config = WorldConfig(context_frames=context, decoder_context=context,
                         sampling=dataclasses.replace(play_sampling(), steps=steps, action_guidance=guidance))
    worlds = [World(models.tokenizer, models.lam, models.dynamics, config) for _ in range(batch)]
    size = models.tokenizer.config.image_size  # type: ignore[union-attr]
    g = torch.Generator().manual_seed(0)
    for i, w in enumerate(worlds):
        w.reset(torch.randint(0, 256, (context, size, size, 3), dtype=torch.uint8, generator=g), seed=i)
    actions = worlds[0].num_actions
    World.step_many(worlds, [0] * batch)  # warm-up
    start = time.perf_counter()
    for t in range(frames):
        World.step_many(worlds, [(t + i) % actions for i in range(batch)])
    return batch * frames / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="worlds or dynamics runs (default: the shipped world)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer run of a dynamics run given alone")
    p.add_argument("--lam", type=Path, default=None, help="LAM run of a dynamics run given alone")
    p.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8], help="sampling step counts")
    p.add_argument("--guidance", nargs="+", type=float, default=[1.0],
                   help="action guidance values (1 = off; a guided step is one pass over 2 copies of the batch "
                   "for a model trained with action dropout, else |A| + 1)")
    p.add_argument("--batch", type=int, default=16, help="worlds stepped together in the batched measurement")
    p.add_argument("--frames", type=int, default=10, help="steps timed at batch 1 (at batch B: a quarter, >= 2)")
    p.add_argument("--context", type=int, default=WorldConfig().context_frames, help="context window (frames)")
    p.add_argument("--precision", default=PlayConfig().precision, choices=["fp32", "bf16", "auto"],
                   help="dtype of the dynamics model and decoder (default: play's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--no-twin", dest="twin", action="store_false", help="time only the runs' own models")
    args = p.parse_args()
    if args.batch < 1 or args.frames < 1 or any(s < 1 for s in args.steps) or any(g < 1 for g in args.guidance):
        raise SystemExit("--batch, --frames, every --steps and every --guidance must be >= 1")
    torch.set_num_threads(args.threads)
    dtype = resolve_precision(args.precision)
    print(f"torch {torch.__version__}, threads {args.threads}, {str(dtype).removeprefix('torch.')}, context "
          f"{args.context} frames, load average {os.getloadavg()[0]:.2f}")

    loaded = [load_models(run, args.tokenizer, args.lam) for run in args.runs or [DEFAULT_RUN]]
    head = f"{'run':28} {'backend':8} {'steps':>5} {'guid':>4} {'fps b1':>8} {'x mg1':>6} {'fps b' + str(args.batch):>9} {'x mg1':>6}"
    print(head)
    for models in loaded:
        cast_for_play(models.tokenizer, models.dynamics, dtype)
        group = [models]
        other = twin(models) if args.twin else None
        if other is not None:
            other.dynamics.to(dtype)
            group.append(other)
        group.sort(key=lambda m: m.backend != "maskgit")  # MaskGIT first: the reference
        b_frames = max(2, args.frames // 4)

        def measure(m: Models, steps: int, guidance: float = 1.0) -> tuple[float, float]:
            return (frames_per_second(m, steps, 1, args.frames, args.context, guidance),  # noqa: B023
                    frames_per_second(m, steps, args.batch, b_frames, args.context, guidance))  # noqa: B023

        reference: tuple[float, float] | None = None  # MaskGIT at 1 step unguided, batch 1 and batch B
        if group[0].backend == "maskgit" and not (1 in args.steps and 1.0 in args.guidance):
            reference = measure(group[0], 1)
        for m in group:
            for steps in args.steps:
                for guidance in args.guidance:
                    fps1, fpsb = measure(m, steps, guidance)
                    if m.backend == "maskgit" and steps == 1 and guidance == 1.0:
                        reference = (fps1, fpsb)
                    r1, rb = ((f"{fps1 / reference[0]:6.2f}", f"{fpsb / reference[1]:6.2f}") if reference
                              else ("-", "-"))
                    print(f"{m.label[:28]:28} {m.backend:8} {steps:5d} {guidance:4g} {fps1:8.1f} {r1:>6} "
                          f"{fpsb:9.1f} {rb:>6}", flush=True)


if __name__ == "__main__":
    main()
