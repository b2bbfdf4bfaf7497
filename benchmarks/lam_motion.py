"""What motion each latent action stands for: the LAM's action for the last transition of held-out clips,
beside that transition's real scene motion (global shift, docs/eval.md). A LAM whose actions are keys gives
each action several motions (a key does different things in the air and on the ground); a LAM whose actions
are motions gives each one motion, and gives the game's own physics (a fall) an action of its own.
Where the data recorded the keys: what the latents say about them (NMI, best one-to-one mapping accuracy),
over all transitions and over the falls alone (a LAM whose actions are keys says as much about the key
during a fall as elsewhere). For a LAM that carries the motion under way (``lam.carry_weight``): how well
its carried shift predicts the transition's real motion, beside carrying the last step's real motion on.

    .venv/bin/python benchmarks/lam_motion.py src/playworld/assets/coinrun --data data/coinrun-eval --split test \
        --merge 0=1,3=4,6=7,9=4,10=4,11=4,12=4,13=4,14=4     # CoinRun's keys that do the same
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from playworld.data.loader import ClipDataset
from playworld.eval.actions import best_mapping, confusion, key_classes, nmi
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
    p.add_argument("--merge", default="", help="A=B,... count recorded key A as key B (keys the game cannot "
                   "tell apart)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lam = load_model(f"{args.run}/lam", torch.device("cpu"))
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    idx = np.linspace(0, len(clips) - 1, min(args.clips, len(clips))).round().astype(int).tolist()
    motion = MotionEstimator()
    carries = getattr(lam, "carry", None) is not None
    latents, shifts, before, carried, keys = [], [], [], [], []
    for s in range(0, len(idx), 50):
        video = clips.get_batch(idx[s:s + 50])  # (B, T, H, W, C) uint8
        unit = video.float() / 255
        with torch.no_grad():
            actions = lam.infer_actions(unit).long()  # (B, T-1)
            if carries:
                carried.append(lam.past_shift(unit)[:, -1].numpy())
        latents.append(actions[:, -1].numpy())
        shifts.append(motion(video[:, -2], video[:, -1]).numpy())
        before.append(motion(video[:, -3], video[:, -2]).numpy())
        keys.append(np.array([int(clips[i].actions[-2]) for i in idx[s:s + 50]]))  # the key of frame T-1 -> T
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
    if carries:  # the shift the LAM's decoder carries from the past, against the real one
        carry, last = np.concatenate(carried), np.concatenate(before)
        for name, guess in (("carried shift", carry), ("the last step's real shift", last)):
            err = np.abs(guess - shift).mean(0)
            print(f"{name} as the next step's: mean abs error dy {err[0]:.2f}, dx {err[1]:.2f} px; "
                  f"correlation dy {np.corrcoef(guess[:, 0], shift[:, 0])[0, 1]:.2f}, "
                  f"dx {np.corrcoef(guess[:, 1], shift[:, 1])[0, 1]:.2f}")
    key = np.concatenate(keys)
    known = key >= 0
    if known.any():
        if args.merge:
            key[known] = key_classes(args.merge, clips.dataset.num_actions)[1][key[known]]
        num_keys = int(key[known].max()) + 1
        mapping, _ = best_mapping(confusion(lat[known], key[known], lam.num_actions, num_keys))
        mapped = np.array([mapping.get(int(a), -1) for a in lat])  # the key each latent stands for, on all
        for name, sel in (("all", known), (f"dy < -{args.moving:g} (falls: the scene moves up)", known & down),
                          (f"dy > +{args.moving:g} (rises)", known & up),
                          (f"|dy| <= {args.moving:g}", known & ~up & ~down)):
            if sel.sum() < 2:
                continue
            conf = confusion(lat[sel], key[sel], lam.num_actions, num_keys)
            share = np.bincount(key[sel]).max() / sel.sum()
            print(f"latent vs recorded key, {name}: {int(sel.sum())} transitions, NMI {nmi(conf):.3f}, "
                  f"accuracy of the mapping found on all {(mapped[sel] == key[sel]).mean():.2f} "
                  f"(commonest key {share:.2f})")


if __name__ == "__main__":
    main()
