"""Decoding settings judged from real starts: for each setting, the world and the real game hold every latent
action's mapped key for 30 steps from the same settled frames of held-out levels (docs/eval.md, "Key
response from real starts"), beside a world that returns its input (copy-last: every figure 0).

Needs an existing `playworld eval` of the run on the same data, for its latent -> true mapping and its
evaluated levels (the same episodes are chosen again from its settings), so each setting here measures
exactly the figures that evaluation's `motion.keys.real_starts` would at that setting.

    .venv/bin/python benchmarks/real_starts.py runs/e2e --data data/coinrun-eval --eval runs/eval-e2e \\
        --copy-penalty 0 1 2 3 4 --threads 2          # or --guidance 1 2 3 (action guidance)
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from motion import CopyLast  # a sibling script (benchmarks/ is the script's own path)
from playworld.data.loader import ClipDataset
from playworld.eval.clips import choose_clips
from playworld.eval.config import EvalConfig
from playworld.eval.evaluate import Evaluation
from playworld.eval.schema import load_metrics
from playworld.maskgit import PLAY_COPY_PENALTY, PLAY_STEPS, PLAY_TEMPERATURE, SamplingConfig
from playworld.world import World, WorldConfig

FIGURES = (("response", "key response"), ("agreement", "agreement"), ("liveness", "liveness"),
           ("contrast.agreement", "key contrast"), ("contrast.ratio", "contrast ratio"))


def figure(part: dict, path: str, window: str) -> str:
    value = part
    for key in path.split("."):
        value = (value or {}).get(key)
    e = (value or {}).get(window)
    return "—" if e is None else f"{e['mean']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory with tokenizer/, lam/ and dynamics/")
    p.add_argument("--data", required=True, help="the Procgen dataset the evaluation used")
    p.add_argument("--eval", required=True, help="a `playworld eval` of this run on --data (its metrics.json)")
    p.add_argument("--maskgit-steps", type=int, nargs="+", default=[PLAY_STEPS])
    p.add_argument("--temperature", type=float, nargs="+", default=[PLAY_TEMPERATURE])
    p.add_argument("--copy-penalty", type=float, nargs="+", default=[PLAY_COPY_PENALTY])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="action guidance (1 = off)")
    p.add_argument("--context-frames", type=int, nargs="+", default=[WorldConfig.context_frames],
                   help="frames the dynamics model attends to (default: %(default)s, the world's)")
    p.add_argument("--decoder-context", type=int, nargs="+", default=[WorldConfig.decoder_context],
                   help="frames the tokenizer's decoder attends to (default: %(default)s, the world's)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = load_metrics(args.eval)
    mapping = {int(a): int(b) for a, b in (metrics["actions"]["mapping"] or [])}
    s = metrics["settings"]
    cfg = EvalConfig.from_settings(s, args.eval, real_key_starts=s.get("real_key_starts", 16), progress=False)
    clips = ClipDataset(args.data, clip_len=cfg.clip_len, split=cfg.split)
    chosen = choose_clips(clips, cfg.episodes, cfg.action_clips, cfg.seed)
    rows = []

    def measure(world, name: str) -> None:
        start = time.perf_counter()
        ev = Evaluation(world, clips, cfg)
        ev.chosen, ev.done, ev.mapping = chosen, metrics["counts"]["episodes"], mapping
        part = ev.real_keys_part()
        if not part["available"]:
            raise SystemExit(f"{args.eval}: no real starts here: {part['reason']}")
        rows.append((name, part))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)

    for steps, temperature, penalty, guidance, context, decoder in itertools.product(
            args.maskgit_steps, args.temperature, args.copy_penalty, args.guidance, args.context_frames,
            args.decoder_context):
        sampling = SamplingConfig(steps=steps, temperature=temperature, copy_penalty=penalty,
                                  action_guidance=guidance)
        world = World.load(args.run, WorldConfig(context_frames=context, decoder_context=decoder, sampling=sampling))
        default_windows = (context, decoder) == (WorldConfig.context_frames, WorldConfig.decoder_context)
        windows = "" if default_windows else f", context {context} / decoder {decoder}"
        measure(world, f"{steps} step(s), temperature {temperature:g}, copy penalty {penalty:g}, "
                       f"guidance {guidance:g}{windows}")
    measure(CopyLast(world), "copy-last")  # a world that returns its input
    levels = rows[0][1]["levels"]
    print(f"\n{args.run} on {args.data}:{cfg.split}, {levels} settled real starts x {len(mapping)} keys x 30 steps "
          "(the real game itself scores 1 on every figure)")
    head = [f"{label} {w}" for _, label in FIGURES for w in ("early", "late")]
    print("| setting | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for name, part in rows:
        cells = [figure(part, path, w) for path, _ in FIGURES for w in ("early", "late")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
