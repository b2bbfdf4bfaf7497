"""Reconstruction PSNR of a trained tokenizer on a held-out split (levels never trained on), with a
95% bootstrap interval over clips, plus code usage and perplexity of the tokens it produces.

    .venv/bin/python benchmarks/tokenizer_psnr.py runs/coinrun/tokenizer --data data/coinrun-mix --split test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import playworld
from playworld.data.loader import ClipDataset
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
    with torch.no_grad():
        for s in range(0, len(idx), 16):
            video = clips.get_batch(idx[s : s + 16].tolist()).float().div(255.0)  # (B, T, H, W, C)
            enc = tok.encode(video)
            recon = tok.decode(enc.indices)
            mse = (recon - video).square().mean(dim=(1, 2, 3, 4))  # per clip
            psnr += psnr_from_mse(mse).tolist()
            counts += torch.bincount(enc.indices.flatten(), minlength=tok.num_codes).float()
    psnr_a = np.asarray(psnr)
    boot = [rng.choice(psnr_a, size=len(psnr_a)).mean() for _ in range(2000)]
    prob = counts / counts.sum()
    ppl = float(torch.exp(-(prob[prob > 0] * prob[prob > 0].log()).sum()))
    print(f"{args.split} split: {len(psnr_a)} clips x {args.clip_len} frames from {len(clips.dataset.episodes(args.split))} episodes")
    print(f"reconstruction PSNR {psnr_a.mean():.2f} dB (95% CI {np.percentile(boot, 2.5):.2f}-{np.percentile(boot, 97.5):.2f})")
    print(f"codes used {int((counts > 0).sum())}/{tok.num_codes}, perplexity {ppl:.1f}")


if __name__ == "__main__":
    main()
