"""What motion each latent action stands for: the LAM's action for the last transition of held-out clips,
beside that transition's real scene motion (global shift, docs/eval.md). A LAM whose actions are keys gives
each action several motions (a key does different things in the air and on the ground); a LAM whose actions
are motions gives each one motion, and gives the game's own physics (a fall) an action of its own.

    .venv/bin/python benchmarks/lam_motion.py src/playworld/assets/coinrun --data data/coinrun-eval --split test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from playworld.data.loader import ClipDataset
from playworld.eval.motion import MotionEstimator
from playworld.train.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory with lam/")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=400, help="held-out clips, spread evenly over the split")
    p.add_argument("--clip-len", type=int, default=4, help="frames per clip (the LAM's past, then the transition)")
    p.add_argument("--moving", type=float, default=1.0, help="px per frame above which a vertical motion counts")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lam = load_model(f"{args.run}/lam", torch.device("cpu"))
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    idx = np.linspace(0, len(clips) - 1, min(args.clips, len(clips))).round().astype(int).tolist()
    motion = MotionEstimator()
    latents, shifts = [], []
    for s in range(0, len(idx), 50):
        video = clips.get_batch(idx[s:s + 50])  # (B, T, H, W, C) uint8
        with torch.no_grad():
            actions = lam.infer_actions(video.float() / 255).long()  # (B, T-1)
        latents.append(actions[:, -1].numpy())
        shifts.append(motion(video[:, -2], video[:, -1]).numpy())
    lat, shift = np.concatenate(latents), np.concatenate(shifts)  # (N,), (N, 2) dy, dx
    up, down = shift[:, 0] > args.moving, shift[:, 0] < -args.moving
    still = (np.abs(shift) < 0.2).all(1)
    print(f"{args.run}/lam on {args.data}:{args.split}, {len(lat)} transitions (dy > 0: the scene moves down)")
    print("| latent | transitions | mean dy, dx (px) | dy > +m | dy < -m | still (< 0.2 px) |")
    print("|---|---|---|---|---|---|")
    for k in range(int(lat.max()) + 1):
        sel = lat == k
        if sel.any():
            print(f"| {k} | {sel.sum()} | {shift[sel, 0].mean():+.2f}, {shift[sel, 1].mean():+.2f} | "
                  f"{up[sel].mean():.2f} | {down[sel].mean():.2f} | {still[sel].mean():.2f} |")
    for name, sel in ((f"dy > +{args.moving:g}", up), (f"dy < -{args.moving:g}", down)):
        counts = np.bincount(lat[sel], minlength=int(lat.max()) + 1).tolist()
        print(f"transitions with {name}, by latent: {counts} (of {int(sel.sum())})")


if __name__ == "__main__":
    main()
