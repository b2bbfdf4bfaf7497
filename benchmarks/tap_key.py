"""Tap a key, then let go: does the world carry on as the game does (a jump's arc, a fall), or only move
while a latent action says so? From the settled real starts an evaluation used (docs/eval.md, "Key response
from real starts"), the real game presses true key ``--key`` for ``--taps`` steps and then NOOP, and the world
presses the latent action mapped to that key for as many steps and then its stillest latent action (the one
whose world changed the fewest pixels from real starts in that evaluation: what a player would press for
"nothing"). Prints the vertical and horizontal scene motion per step, and its running sum, on both sides.

    .venv/bin/python benchmarks/tap_key.py src/playworld/assets/coinrun --data data/coinrun-eval \\
        --eval runs/eval-shipped --key 8 --taps 1 --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from playworld.data.loader import ClipDataset
from playworld.eval.clips import choose_clips
from playworld.eval.config import EvalConfig
from playworld.eval.envwalk import PROCGEN_NOOP, procgen_play
from playworld.eval.evaluate import Evaluation
from playworld.eval.motion import MotionEstimator
from playworld.eval.schema import load_metrics
from playworld.world import World


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory with tokenizer/, lam/ and dynamics/")
    p.add_argument("--data", required=True, help="the Procgen dataset the evaluation used")
    p.add_argument("--eval", required=True, help="a `playworld eval` of this run on --data, with real starts")
    p.add_argument("--key", type=int, required=True, help="the true Procgen key to tap (CoinRun: 8 = RIGHT+UP)")
    p.add_argument("--taps", type=int, default=1, help="steps the key is pressed before NOOP")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = load_metrics(args.eval)
    part, s = m["motion"]["keys"]["real_starts"], m["settings"]
    if not part["available"]:
        raise SystemExit(f"{args.eval}: no real starts: {part['reason']}")
    if args.key not in part["true_actions"]:
        raise SystemExit(f"{args.eval}: no latent action is mapped to key {args.key} ({part['true_actions']})")
    tap = part["true_actions"].index(args.key)
    stay = int(np.argmin(part["per_action"]["early"]["world_change"]))
    cfg = EvalConfig.from_settings(s, args.eval, progress=False)
    world = World.load(args.run)
    ev = Evaluation(world, ClipDataset(args.data, clip_len=cfg.clip_len, split=cfg.split), cfg)
    ev.chosen, ev.done = choose_clips(ev.clips, cfg.episodes, cfg.action_clips, cfg.seed), m["counts"]["episodes"]
    pressed = np.array([args.key] * args.taps + [PROCGEN_NOOP] * (args.steps - args.taps))[:, None]  # (L, 1)
    real = procgen_play(ev.clips.dataset.manifest.source, ev.level_seeds(cfg.real_key_starts), pressed,
                        max(cfg.context))
    prompt = torch.from_numpy(real.prompts)
    frames = [world.reset(prompt, seed=cfg.seed)]
    for t in range(args.steps):
        frames.append(world.step(torch.full((len(prompt),), tap if t < args.taps else stay)))
    generated, real_video = torch.stack(frames, 1), torch.from_numpy(real.frames[:, 0])
    motion = MotionEstimator()
    live = real.alive[:, 0].astype(np.float64)  # (S, L)
    n = np.maximum(live.sum(0), 1.0)
    sides = {"real game": motion(real_video[:, :-1], real_video[:, 1:]).numpy(),
             "world": motion(generated[:, :-1], generated[:, 1:]).numpy()}  # (S, L, 2)
    print(f"{args.run}: {len(prompt)} settled real starts; the game presses key {args.key} x{args.taps} then NOOP, "
          f"the world latent {tap} x{args.taps} then latent {stay} (its stillest)")
    np.set_printoptions(precision=1, suppress=True, linewidth=220)
    for axis, name in ((0, "dy"), (1, "dx")):
        for side, shift in sides.items():
            per_step = (shift[..., axis] * live).sum(0) / n
            print(f"{side:9s} {name} per step {per_step}")
            print(f"{side:9s} {name} summed   {np.cumsum(per_step)}")


if __name__ == "__main__":
    main()
