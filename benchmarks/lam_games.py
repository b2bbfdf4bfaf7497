"""Does the LAM recipe keep its actions alive on games other than CoinRun? Trains one LAM per dataset with
the same preset and steps (`playworld train lam`, nothing tuned per game), then measures on each
dataset's held-out split what play uses: the encoder's action usage, perplexity and agreement with the
decoder's winner (`playworld.train.lam_check`), and, where the data recorded true actions, how much the
latent actions say about them (best one-to-one mapping accuracy and NMI; evaluation only).

    .venv/bin/python benchmarks/lam_games.py data/coinrun data/bigfish data/starpilot \
        --preset tiny --steps 600 --out runs/lam-games --threads 1

Re-running resumes each unfinished run; a finished run is only measured again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from playworld.data.loader import ClipDataset
from playworld.eval.actions import best_mapping, confusion, key_classes, nmi
from playworld.models.base import to_unit
from playworld.train.checkpoint import load_model, read_checkpoint_config
from playworld.train.lam_check import measure_lam


def true_action_figures(lam_dir: Path, data: str, split: str, clip_len: int, max_clips: int,
                        merge: str = "") -> dict[str, float]:
    """Latent vs recorded true actions on up to ``max_clips`` clips of ``split``: mapping accuracy, NMI and
    the majority share (the accuracy of always answering the most common true action). ``merge`` "A=B,..."
    counts true action A as B (keys the game cannot tell apart, e.g. CoinRun's DOWN and NOOP)."""
    lam = load_model(lam_dir, torch.device("cpu"))
    clips = ClipDataset(data, clip_len=clip_len, split=split)
    n = min(max_clips, len(clips))
    idx = torch.linspace(0, len(clips) - 1, n).round().long().tolist()
    latent, true = [], []
    with torch.no_grad():
        for s in range(0, n, 16):
            batch = [clips[i] for i in idx[s:s + 16]]
            video = to_unit(torch.stack([c.frames for c in batch]))
            latent.append(lam.infer_actions(video).numpy())  # type: ignore[operator]
            true.append(torch.stack([c.actions[:-1] for c in batch]).numpy())  # action at t leads to t+1
    lat, tru = np.concatenate(latent).ravel(), np.concatenate(true).ravel()
    keep = tru >= 0
    if not keep.any():
        return {}
    lat, tru = lat[keep], tru[keep]
    if merge:
        tru = key_classes(merge, clips.dataset.num_actions)[1][tru]  # class indices
    conf = confusion(lat, tru, lam.num_actions, int(tru.max()) + 1)  # type: ignore[arg-type]
    _, acc = best_mapping(conf)
    return {"mapping_accuracy": acc, "nmi": nmi(conf), "majority": float(np.bincount(tru).max() / len(tru))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="dataset directories (split by level first)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to playworld train")
    p.add_argument("--out", default="runs/lam-games")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clips", type=int, default=128, help="held-out clips measured per game")
    p.add_argument("--split", default="", help="split measured (default: the run's validation split)")
    p.add_argument("--merge", default="", metavar="A=B,...",
                   help="count true action A as B (keys the game cannot tell apart), e.g. for CoinRun "
                        "0=1,3=4,6=7,9=4,10=4,11=4,12=4,13=4,14=4")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for data in args.data:
        run = Path(args.out) / Path(data).name
        cmd = [sys.executable, "-m", "playworld", "train", "lam", "--data", data, "--out", str(run),
               "--preset", args.preset, "--steps", str(args.steps), "--no-progress"]
        for s in args.set:
            cmd += ["--set", s]
        start = time.monotonic()
        subprocess.run(cmd, check=True, env=env)
        minutes = (time.monotonic() - start) / 60
        check = measure_lam(run, max_clips=args.clips, device="cpu")
        cfg = read_checkpoint_config(run)
        figs = true_action_figures(run, data, args.split or cfg["data"]["val_split"] or "train",
                                   cfg["data"]["clip_len"], args.clips, args.merge)
        u = check.usage
        rows.append((Path(data).name, u.encoder_used, u.num_actions, u.encoder_perplexity, u.agreement,
                     figs.get("mapping_accuracy", float("nan")), figs.get("majority", float("nan")),
                     figs.get("nmi", float("nan")), "COLLAPSED" if check.collapsed else "ok", minutes))
    print(f"\nLAM preset {args.preset}, {args.steps} steps, {args.threads} thread(s); held-out split, "
          f"{args.clips} clips per game")
    print("| data | encoder actions used | encoder perplexity | agreement | mapping acc. (majority) | NMI "
          "| check | train min |")
    print("|---|---|---|---|---|---|---|---|")
    for name, used, k, ppl, agr, acc, maj, nm, status, minutes in rows:
        print(f"| {name} | {used}/{k} | {ppl:.2f} | {agr:.2f} | {acc:.2f} ({maj:.2f}) | {nm:.3f} | {status} "
              f"| {minutes:.1f} |")


if __name__ == "__main__":
    main()
