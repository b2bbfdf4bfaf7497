"""Issue 5's quality bar on held-out levels: rollouts with LAM-inferred actions vs random latent
actions vs copying the last frame, PSNR at every horizon with 95% bootstrap intervals over clips,
plus a grid gif (rows: start frames, columns: latent actions, each pressed repeatedly).

    .venv/bin/python benchmarks/rollouts.py runs/coinrun --data data/coinrun-mix --split test \
        --clips 64 --horizon 8 --grid runs/coinrun/action_grid.gif

The full evaluation (SSIM, probes, consistency, report) is ``playworld eval`` (issue 6).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from playworld.data.loader import ClipDataset
from playworld.maskgit import SamplingConfig
from playworld.models.lam import check_action_usage
from playworld.video import write_video
from playworld.world import World, WorldConfig


def rollout_psnr(world: World, video_u8: torch.Tensor, actions: torch.Tensor, seed: int) -> np.ndarray:
    """video (B, 1+H, h, w, C) uint8, actions (B, H) -> per-clip PSNR at each horizon (B, H)."""
    world.reset(video_u8[:, :1], seed=seed)
    truth = video_u8[:, 1:].float() / 255
    out = []
    for t in range(actions.shape[1]):
        frame = world.step(actions[:, t]).float() / 255
        mse = (frame - truth[:, t]).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
        out.append((-10 * torch.log10(mse)).numpy())
    return np.stack(out, axis=1)


def interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    boot = [rng.choice(values, size=len(values)).mean() for _ in range(1000)]
    return float(values.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory with tokenizer/, lam/ and dynamics/")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="MaskGIT steps per frame")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default="", help="write the start-frame x action grid gif here")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    sampling = SamplingConfig(steps=args.steps, temperature=args.temperature)
    world = World.load(args.run, WorldConfig(sampling=sampling))
    clips = ClipDataset(args.data, clip_len=args.horizon + 1, split=args.split)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(clips), size=min(args.clips, len(clips)), replace=False))
    inferred, random_, copy, recon = [], [], [], []
    all_actions = []
    t0 = time.perf_counter()
    frames_made = 0
    for s in range(0, len(idx), args.batch):
        video = clips.get_batch(idx[s : s + args.batch].tolist())  # (B, 1+H, h, w, C) uint8
        unit = video.float() / 255
        with torch.no_grad():
            actions = world.lam.infer_actions(unit)  # (B, H)
            rec = world.tokenizer.reconstruct(unit) if hasattr(world.tokenizer, "reconstruct") else None
        all_actions.append(actions)
        g = torch.Generator().manual_seed(args.seed + s)
        rand = torch.randint(0, world.num_actions, actions.shape, generator=g)
        inferred.append(rollout_psnr(world, video, actions, args.seed))
        random_.append(rollout_psnr(world, video, rand, args.seed))
        frames_made += 2 * actions.numel()
        mse = (unit[:, 1:] - unit[:, :1]).square().mean(dim=(2, 3, 4)).clamp_min(1e-10)
        copy.append((-10 * torch.log10(mse)).numpy())
        if rec is not None:
            rmse = (rec.clamp(0, 1)[:, 1:] - unit[:, 1:]).square().mean(dim=(2, 3, 4)).clamp_min(1e-10)
            recon.append((-10 * torch.log10(rmse)).numpy())
    elapsed = time.perf_counter() - t0
    check_action_usage(torch.cat(all_actions), world.num_actions, f"{args.run} on {args.data}:{args.split}")
    inf, rnd, cp = np.concatenate(inferred), np.concatenate(random_), np.concatenate(copy)
    print(f"{len(idx)} clips of {args.split} split, horizon {args.horizon}, MaskGIT steps {args.steps}, "
          f"temperature {args.temperature}; {frames_made / elapsed:.1f} frames/s at batch {args.batch}")
    usage = torch.bincount(torch.cat(all_actions).flatten(), minlength=world.num_actions).tolist()
    print(f"latent action usage on these clips: {usage}")
    head = f"{'t':>3} {'inferred':>20} {'random':>20} {'copy-last':>20} {'dPSNR':>16}"
    if recon:
        head += f" {'tokenizer recon':>16}"
    print(head)
    rec_all = np.concatenate(recon) if recon else None
    for t in range(args.horizon):
        a, b, c = interval(inf[:, t], rng), interval(rnd[:, t], rng), interval(cp[:, t], rng)
        d = interval(inf[:, t] - rnd[:, t], rng)
        row = (f"{t + 1:>3} {a[0]:7.2f} ({a[1]:.2f}-{a[2]:.2f}) {b[0]:7.2f} ({b[1]:.2f}-{b[2]:.2f}) "
               f"{c[0]:7.2f} ({c[1]:.2f}-{c[2]:.2f}) {d[0]:5.2f} ({d[1]:.2f}-{d[2]:.2f})")
        if rec_all is not None:
            row += f" {rec_all[:, t].mean():16.2f}"
        print(row)
    if args.grid:
        write_grid(world, clips, rng, args.grid, args.seed)
        print(f"wrote {args.grid}")


def write_grid(world: World, clips: ClipDataset, rng: np.random.Generator, path: str, seed: int,
               rows: int = 8, length: int = 12) -> None:
    """Rows: start frames from different episodes; columns: latent actions pressed ``length`` times."""
    k = world.num_actions
    picks = rng.choice(len(clips), size=rows, replace=False)
    starts = clips.get_batch(sorted(picks.tolist()))[:, :1]  # (R, 1, h, w, C)
    prompt = starts.repeat_interleave(k, dim=0)  # (R*K, 1, h, w, C): row-major (start, action)
    first = world.reset(prompt, seed=seed)
    actions = torch.arange(k).repeat(rows)
    frames = [first]
    for _ in range(length):
        frames.append(world.step(actions))
    video = torch.stack(frames, 1)  # (R*K, L+1, h, w, C)
    h, w = video.shape[2:4]
    video = video.view(rows, k, length + 1, h, w, 3)
    pad = torch.full((rows, k, length + 1, h + 2, w + 2, 3), 255, dtype=torch.uint8)
    pad[:, :, :, 1:-1, 1:-1] = video
    grid = pad.permute(2, 0, 3, 1, 4, 5).reshape(length + 1, rows * (h + 2), k * (w + 2), 3)
    write_video(path, grid.numpy(), fps=6, scale=2)


if __name__ == "__main__":
    main()
