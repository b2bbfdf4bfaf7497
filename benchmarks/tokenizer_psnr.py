"""Reconstruction PSNR of a trained tokenizer on a held-out split (levels never trained on), with a
95% bootstrap interval over clips, plus code usage and perplexity of the tokens it produces, and the motion
it keeps (shift between consecutive reconstructions regressed on the real shift, per axis; docs/eval.md).

    .venv/bin/python benchmarks/tokenizer_psnr.py runs/coinrun/tokenizer --data data/coinrun-mix --split test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import playworld
from playworld.data.loader import ClipDataset
from playworld.eval.kept import motion_kept
from playworld.eval.motion import MotionEstimator
from playworld.models.base import psnr_from_mse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--clip-len", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tok = playworld.load(args.run).tokenizer
    assert tok is not None, f"{args.run}: no tokenizer"
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(clips), size=min(args.clips, len(clips)), replace=False))
    psnr, counts = [], torch.zeros(tok.num_codes)
    motion, real_shift, rec_shift = MotionEstimator(), [], []
    with torch.no_grad():
        for s in range(0, len(idx), 16):
            video = clips.get_batch(idx[s : s + 16].tolist()).float().div(255.0)  # (B, T, H, W, C)
            enc = tok.encode(video)
            recon = tok.decode(enc.indices)
            mse = (recon - video).square().mean(dim=(1, 2, 3, 4))  # per clip
            psnr += psnr_from_mse(mse).tolist()
            real_shift.append(motion(video[:, :-1], video[:, 1:]).numpy())  # (B, T-1, 2) dy, dx
            rec_shift.append(motion(recon[:, :-1], recon[:, 1:]).numpy())
            counts += torch.bincount(enc.indices.flatten(), minlength=tok.num_codes).float()
    psnr_a = np.asarray(psnr)
    boot = [rng.choice(psnr_a, size=len(psnr_a)).mean() for _ in range(2000)]
    prob = counts / counts.sum()
    ppl = float(torch.exp(-(prob[prob > 0] * prob[prob > 0].log()).sum()))
    print(f"{args.split} split: {len(psnr_a)} clips x {args.clip_len} frames from {len(clips.dataset.episodes(args.split))} episodes")
    print(f"reconstruction PSNR {psnr_a.mean():.2f} dB (95% CI {np.percentile(boot, 2.5):.2f}-{np.percentile(boot, 97.5):.2f})")
    print(f"codes used {int((counts > 0).sum())}/{tok.num_codes}, perplexity {ppl:.1f}")
    real, rec = np.concatenate(real_shift), np.concatenate(rec_shift)  # (N, T-1, 2)
    kept = motion_kept(rec.reshape(-1, 2), real.reshape(-1, 2), np.repeat(np.arange(len(real)), real.shape[1]),
                       seed=args.seed, resamples=1000)
    print("motion kept dy / dx: " + " / ".join(f"{kept.slope[a]}" for a in ("dy", "dx"))
          + f" (correlation {' / '.join(f'{kept.correlation[a].mean:.2f}' for a in ('dy', 'dx'))})")


if __name__ == "__main__":
    main()
