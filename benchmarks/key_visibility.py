"""How much of the pressed key do the frames show? The ceiling on any latent action model's agreement with
the keys: the LAM's own encoder (same preset, same window of frames) trained directly to name the recorded
key of each transition t -> t+1 from x_{t-w+2}..x_{t+1}, on every labelled transition of the training split,
then scored on the held-out split (accuracy against always answering the commonest key, and recall per key).

    .venv/bin/python benchmarks/key_visibility.py data/coinrun-mix --eval-data data/coinrun-eval --split test \\
        --merge 0=1,3=4,6=7,9=4,10=4,11=4,12=4,13=4,14=4 --steps 1500 --threads 2

``--merge A=B`` counts key A as key B (keys the game cannot tell apart, e.g. CoinRun's DOWN and NOOP).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from playworld.data.loader import ClipDataset, ClipLoader
from playworld.eval.actions import key_classes
from playworld.models.base import to_unit
from playworld.models.lam import LatentActionModel
from playworld.presets import build_run_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="training dataset with recorded actions")
    p.add_argument("--eval-data", default="", help="dataset scored (default: the training one)")
    p.add_argument("--split", default="test")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--clips", type=int, default=512, help="held-out clips scored")
    p.add_argument("--merge", default="", metavar="A=B,...")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    cfg = build_run_config("lam", args.preset, data_path=args.data)
    clips_train = ClipDataset(args.data, clip_len=cfg.data.clip_len, split="train")
    n_keys = clips_train.dataset.num_actions
    if n_keys is None:
        raise SystemExit(f"{args.data}: no recorded actions")
    kept, classes = key_classes(args.merge, n_keys)
    to_class = torch.cat([torch.from_numpy(classes), torch.tensor([-1])])  # index -1 (no action recorded) -> -1
    model = LatentActionModel(dataclasses.replace(cfg.model, num_actions=len(kept)))
    encoder = [p for n, p in model.named_parameters() if n.startswith(("enc_in", "encoder", "pool", "to_logits"))]
    opt = torch.optim.AdamW(encoder, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay)
    loader = ClipLoader(args.data, clip_len=cfg.data.clip_len, batch_size=cfg.data.batch_size, seed=args.seed)
    for step, idx in zip(range(args.steps), loader.index_batches()):
        video = to_unit(loader.clips.get_batch(idx))
        keys = torch.from_numpy(np.stack([loader.clips.clip_actions(i) for i in idx]))[:, :-1]  # (B, T-1)
        target = to_class[keys]  # (B, T-1): the key that moved frame t to t+1
        lr = cfg.optim.lr * min(1.0, (step + 1) / cfg.optim.warmup_steps) * (
            0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(model.encode(video).logits.flatten(0, 1), target.flatten(), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder, cfg.optim.grad_clip)
        opt.step()
    test = ClipDataset(args.eval_data or args.data, clip_len=cfg.data.clip_len, split=args.split)
    idx = torch.linspace(0, len(test) - 1, min(args.clips, len(test))).round().long().tolist()
    pred, true = [], []
    with torch.no_grad():
        for s in range(0, len(idx), 32):
            batch = [test[i] for i in idx[s:s + 32]]
            pred.append(model.infer_actions(to_unit(torch.stack([c.frames for c in batch]))).flatten())
            true.append(to_class[torch.stack([c.actions[:-1] for c in batch])].flatten())
    pred, true = torch.cat(pred), torch.cat(true)
    pred, true = pred[true >= 0], true[true >= 0]
    acc = float((pred == true).float().mean())
    majority = float(torch.bincount(true).max()) / len(true)
    print(f"{args.data}, {args.preset} LAM encoder trained on every recorded key for {args.steps} steps "
          f"({time.perf_counter() - start:.0f} s); {len(true)} held-out transitions of "
          f"{args.eval_data or args.data}:{args.split}")
    print(f"accuracy {acc:.3f} (always the commonest key: {majority:.3f})")
    print("| key (merged) | share | recall |\n|---|---|---|")
    for c, key in enumerate(kept):
        sel = true == c
        if sel.any():
            print(f"| {key} | {float(sel.float().mean()):.3f} | {float((pred[sel] == c).float().mean()):.2f} |")


if __name__ == "__main__":
    main()
