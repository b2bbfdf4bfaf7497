"""Reconstruction PSNR of trained tokenizers on a held-out split (levels never trained on), with a
95% bootstrap interval over episodes (clips of one episode share a level, so episodes are what is
resampled, as in `playworld eval`), plus code usage and perplexity of the tokens each produces, and the
motion it keeps (shift between consecutive reconstructions regressed on the real shift, per axis;
docs/eval.md), and the pixel change it keeps and its PSNR on the pixels that move (playworld.eval.change:
what a fixed-screen game's small sprites need). Several tokenizers are measured on the same clips;
``--grid`` writes a PNG with, for a few clips, the real frame beside each tokenizer's reconstruction and
its error (x4), upscaled without smoothing, so fine detail (the agent's sprite, wall texture) can be judged by eye.

    .venv/bin/python benchmarks/tokenizer_psnr.py runs/coinrun/tokenizer --data data/coinrun-mix --split test
    .venv/bin/python benchmarks/tokenizer_psnr.py OLD NEW --data data/coinrun-eval --grid recon.png
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import playworld
from playworld.data.loader import ClipDataset
from playworld.eval.change import ChangeSums, change_kept, change_sums, moving_psnr
from playworld.eval.kept import motion_kept
from playworld.eval.motion import MotionEstimator
from playworld.eval.stats import bootstrap
from playworld.io import atomic_write
from playworld.models.base import psnr_from_mse


def by_episode(values: np.ndarray, episode: np.ndarray) -> np.ndarray:
    """values (N, ...) of N clips, episode (N,) -> their sums per episode (E, ...), in episode order."""
    ids, inverse = np.unique(episode, return_inverse=True)
    out = np.zeros((len(ids), *values.shape[1:]), dtype=np.float64)
    np.add.at(out, inverse, values)
    return out


def clip_mean(values: np.ndarray, episode: np.ndarray, seed: int):
    """The mean of per-clip ``values`` (N,) with an interval that resamples episodes (each keeps its clips)."""
    rows = by_episode(np.stack([values, np.ones_like(values)], 1), episode)  # (E, 2): sum, count
    return bootstrap(rows, seed=seed, resamples=2000, statistic=lambda v: float(v[:, 0].sum() / v[:, 1].sum()))


def measure(tok, clips: ClipDataset, idx: np.ndarray, episode: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
    """Figures of one tokenizer on clips ``idx`` of episodes ``episode`` (N,); also the reconstructions of
    the first batch (B, T, H, W, C)."""
    psnr, counts = [], torch.zeros(tok.num_codes)
    motion, real_shift, rec_shift, first, change = MotionEstimator(), [], [], None, []
    with torch.no_grad():
        for s in range(0, len(idx), 16):
            video = clips.get_batch(idx[s : s + 16].tolist()).float().div(255.0)  # (B, T, H, W, C)
            enc = tok.encode(video)
            recon = tok.decode(enc.indices)  # clamped to [0, 1]
            first = recon.numpy() if first is None else first
            mse = (recon - video).square().mean(dim=(1, 2, 3, 4))  # per clip
            psnr += psnr_from_mse(mse).tolist()
            real_shift.append(motion(video[:, :-1], video[:, 1:]).numpy())  # (B, T-1, 2) dy, dx
            rec_shift.append(motion(recon[:, :-1], recon[:, 1:]).numpy())
            change.append(change_sums(video[:, :-1], video[:, 1:], recon[:, :-1], recon[:, 1:]))
            counts += torch.bincount(enc.indices.flatten(), minlength=tok.num_codes).float()
    psnr_a = np.asarray(psnr)
    ci = clip_mean(psnr_a, episode, seed)
    prob = counts / counts.sum()
    real, rec = np.concatenate(real_shift), np.concatenate(rec_shift)  # (N, T-1, 2)
    kept = motion_kept(rec.reshape(-1, 2), real.reshape(-1, 2), np.repeat(episode, real.shape[1]),
                       seed=seed, resamples=1000)
    sums = ChangeSums.cat(change)  # per clip; summed per episode, so the ratios resample episodes
    sums = ChangeSums(*(by_episode(getattr(sums, f.name), episode) for f in dataclasses.fields(ChangeSums)))
    return {
        "clips": psnr_a, "psnr": ci.mean, "low": ci.low, "high": ci.high,
        "used": int((counts > 0).sum()), "codes": tok.num_codes,
        "ppl": float(torch.exp(-(prob[prob > 0] * prob[prob > 0].log()).sum())), "kept": kept,
        "change_kept": change_kept(sums, seed=seed, resamples=1000),
        "moving_psnr": moving_psnr(sums, seed=seed, resamples=1000),
    }, first


def write_grid(path: Path, real: np.ndarray, recons: list[np.ndarray], names: list[str], rows: int,
               scale: int = 3) -> None:
    """Rows of [real | recon_1 | error_1 | recon_2 | error_2 ...] for the last frame of the first ``rows``
    clips; frames (B, T, H, W, C) in [0, 1]. Written to a temporary name, then renamed."""
    tiles = []
    for i in range(min(rows, real.shape[0])):
        frame = real[i, -1]
        row = [frame]
        for r in recons:
            row += [r[i, -1], np.clip(np.abs(r[i, -1] - frame) * 4.0, 0, 1)]
        tiles.append(np.concatenate(row, axis=1))  # (H, W * n, C)
    image = (np.concatenate(tiles, axis=0) * 255).round().astype(np.uint8)
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    w = real.shape[3] * scale
    header = Image.new("RGB", (image.shape[1], 14), "white")
    draw = ImageDraw.Draw(header)
    labels = ["real"] + [x for n in names for x in (n, f"{n} error x4")]
    for j, label in enumerate(labels):
        draw.text((j * w + 3, 1), label[: w // 6], fill="black")
    out = Image.new("RGB", (image.shape[1], image.shape[0] + 14), "white")
    out.paste(header, (0, 0))
    out.paste(Image.fromarray(image), (0, 14))
    atomic_write(path, lambda tmp: out.save(tmp, format="PNG", optimize=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="runs or tokenizer directories, measured on the same clips")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--clip-len", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=Path, help="write a PNG of real frames beside each tokenizer's reconstruction")
    p.add_argument("--grid-rows", type=int, default=6, help="clips in the grid (from the first batch of 16)")
    p.add_argument("--grid-scale", type=int, default=3, help="pixels per frame pixel in the grid")
    p.add_argument("--names", nargs="+", help="column names in the grid (default: each run's folder name)")
    args = p.parse_args()
    names = args.names or [Path(r).name for r in args.runs]
    if len(names) != len(args.runs):
        p.error(f"--names gives {len(names)} names for {len(args.runs)} runs")
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(clips), size=min(args.clips, len(clips)), replace=False))
    episode = np.array([clips.locate(int(i))[0] for i in idx])  # (N,) dataset episode of each clip
    print(f"{args.split} split: {len(idx)} clips x {args.clip_len} frames from {len(np.unique(episode))} of its "
          f"{len(clips.dataset.episodes(args.split))} episodes (intervals resample episodes)")
    recons, first_clips = [], None
    for run, name in zip(args.runs, names):
        tok = playworld.load(run).tokenizer
        if tok is None:
            raise SystemExit(f"{run}: no tokenizer")
        f, first = measure(tok, clips, idx, episode, args.seed)
        recons.append(first)
        kept = f["kept"]
        print(f"{name}: reconstruction PSNR {f['psnr']:.2f} dB (95% CI {f['low']:.2f}-{f['high']:.2f}); "
              f"codes used {f['used']}/{f['codes']}, perplexity {f['ppl']:.1f}; motion kept dy / dx: "
              + " / ".join(f"{kept.slope[a]}" for a in ("dy", "dx"))
              + f" (correlation {' / '.join(f'{kept.correlation[a].mean:.2f}' for a in ('dy', 'dx'))})")
        ck, mp = f["change_kept"], f["moving_psnr"]
        print(f"  pixel change kept {ck.mean:.2f} [{ck.low:.2f}, {ck.high:.2f}]; PSNR on moving pixels "
              + ("- (nothing moved)" if mp is None else f"{mp.mean:.2f} dB [{mp.low:.2f}, {mp.high:.2f}]"))
        if first_clips is None:
            first_clips = f["clips"]
        else:  # paired over the same clips: far tighter than the two intervals above
            diff = f["clips"] - first_clips
            d = clip_mean(diff, episode, args.seed)
            print(f"  {name} - {names[0]}: {d.mean:+.2f} dB (paired 95% CI {d.low:+.2f} to {d.high:+.2f}; "
                  f"better on {(diff > 0).mean():.0%} of clips)")
    if args.grid:
        real = clips.get_batch(idx[:16].tolist()).float().div(255.0).numpy()
        write_grid(args.grid, real, recons, names, args.grid_rows, args.grid_scale)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
