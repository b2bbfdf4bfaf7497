"""How many bits a frame needs: a tokenizer's bits per frame and PSNR beside JPEG and WebP at the same
byte budgets, on held-out frames.

A discrete tokenizer spends at most ``tokens x log2(codes)`` bits on a frame (16 x 16 tokens of 1,024 codes:
2,560 bits, 320 bytes), fewer after entropy coding (``log2(perplexity)`` bits per token). Classical image
codecs at the same number of bytes show how much detail that budget can hold for these frames, which is
what a PSNR target has to be weighed against: a tokenizer that matches WebP at its own budget is doing
well; one asked to beat WebP at a budget where WebP itself falls short is asked for the impossible.

    .venv/bin/python benchmarks/rate_distortion.py --data data/coinrun --split test \\
        --tokenizer src/playworld/assets/coinrun/tokenizer
"""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
from PIL import Image

from playworld.data.loader import ClipDataset


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (of the mean squared error over all pixels and channels)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def encode_at_most(frame: np.ndarray, fmt: str, budget: int) -> tuple[np.ndarray, int] | None:
    """The best-quality ``fmt`` encoding of ``frame`` whose size is within ``budget`` bytes, decoded,
    with its size; None if even the lowest quality is larger. Binary search over the quality setting."""
    img = Image.fromarray(frame)
    best = None
    lo, hi = 1, 100
    while lo <= hi:
        q = (lo + hi) // 2
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=q)
        if buf.tell() <= budget:
            best = (np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), buf.tell())
            lo = q + 1
        else:
            hi = q - 1
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--budgets", type=int, nargs="+", default=[160, 320, 480, 640, 960, 1280, 1920, 2560])
    p.add_argument("--tokenizer", default=None, help="a tokenizer run to place on the curve")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    clips = ClipDataset(args.data, clip_len=1, split=args.split)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(clips), size=min(args.frames, len(clips)), replace=False)).tolist()
    frames = clips.get_batch(idx)[:, 0].numpy()  # (N, H, W, C) uint8
    print(f"{len(frames)} frames of the {args.split} split of {args.data}, {frames.shape[1]}x{frames.shape[2]}")
    print(f"raw: {frames[0].size} bytes per frame")
    print("| codec | byte budget | mean bytes | PSNR dB [95% CI] | frames that fit |")
    print("|---|---|---|---|---|")
    for fmt in ("JPEG", "WEBP"):
        for budget in args.budgets:
            scores, sizes = [], []
            for f in frames:
                got = encode_at_most(f, fmt, budget)
                if got is None:
                    continue
                scores.append(psnr(f, got[0]))
                sizes.append(got[1])
            if not scores:
                print(f"| {fmt} | {budget} | - | no frame fits | 0 |")
                continue
            s = np.asarray(scores)
            boot = [rng.choice(s, size=len(s)).mean() for _ in range(1000)]
            print(f"| {fmt} | {budget} | {np.mean(sizes):.0f} | {s.mean():.2f} "
                  f"[{np.percentile(boot, 2.5):.2f}, {np.percentile(boot, 97.5):.2f}] | {len(s)}/{len(frames)} |")

    if args.tokenizer:
        import torch

        import playworld
        from playworld.models.base import psnr_from_mse

        tok = playworld.load(args.tokenizer).tokenizer
        with torch.no_grad():
            scores, counts = [], torch.zeros(tok.num_codes)
            for s in range(0, len(frames), 32):
                video = torch.from_numpy(frames[s : s + 32]).float().div(255.0)[:, None]  # (B, 1, H, W, C)
                enc = tok.encode(video)
                recon = tok.decode(enc.indices).clamp(0, 1).mul(255).round().div(255)
                scores += psnr_from_mse((recon - video).square().mean(dim=(1, 2, 3, 4))).tolist()
                counts += torch.bincount(enc.indices.flatten(), minlength=tok.num_codes).float()
        per_frame = enc.indices[0, 0].numel()
        prob = counts / counts.sum()
        entropy = float(-(prob[prob > 0] * prob[prob > 0].log2()).sum())
        print(f"tokenizer {args.tokenizer}: {per_frame} tokens x log2({tok.num_codes}) = "
              f"{per_frame * math.log2(tok.num_codes) / 8:.0f} bytes per frame "
              f"({per_frame * entropy / 8:.0f} after entropy coding at {entropy:.2f} bits per token); "
              f"PSNR {np.mean(scores):.2f} dB")


if __name__ == "__main__":
    main()
