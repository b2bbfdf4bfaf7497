"""Where a dynamics model starts on a new tokenizer: its masked-token loss on held-out clips before any
fine-tuning, carried over by `playworld retoken` against the same weights with the old vocabulary rows
(what `train.init_from` alone gives) and against the world on its own tokenizer (docs/models.md,
"A world on a new tokenizer").

    .venv/bin/python benchmarks/retoken_start.py src/playworld/assets/coinrun runs/retok --tokenizer runs/tok \
        --data data/coinrun-eval --split val

Every model sees the same clips, the same latent actions (the world's LAM) and the same random masks.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from einops import rearrange

import playworld
from playworld.data.loader import ClipDataset
from playworld.eval.stats import bootstrap


@torch.no_grad()
def tokens_of(tokenizer, videos: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each clip (1, T, H, W, C) -> its tokens (1, T, S)."""
    return [rearrange(tokenizer.encode(v).indices, "b t h w -> b t (h w)") for v in videos]


@torch.no_grad()
def losses(dynamics, tokens: list[torch.Tensor], actions: list[torch.Tensor], seed: int) -> dict[str, np.ndarray]:
    """Per-clip masked cross-entropy and accuracy (on all masked tokens and on those that change)."""
    dynamics.eval()
    out: dict[str, list[float]] = {"ce": [], "accuracy": [], "ce_changed": [], "accuracy_changed": []}
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for t, a in zip(tokens, actions):
            metrics = dynamics.compute_loss_tokens(t, a).metrics
            for k in out:
                out[k].append(float(metrics[k]))
    finally:
        torch.random.set_rng_state(gen_state)
    return {k: np.array(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", help="the world whose dynamics model was carried over")
    p.add_argument("retokened", help="the dynamics release `playworld retoken` wrote")
    p.add_argument("--tokenizer", required=True, help="the new tokenizer")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    world = playworld.load(args.world)
    new_tok = playworld.load(args.tokenizer).tokenizer
    carried = playworld.load(args.retokened).dynamics
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(clips), size=min(args.clips, len(clips)),
                                                          replace=False))
    videos = [clips.get_batch([int(i)]).float().div(255.0) for i in idx]
    with torch.no_grad():  # encoded once each: the same actions and tokens for every row that reads them
        actions = [world.lam.infer_actions(v) for v in videos]
    old_tokens, new_tokens = tokens_of(world.tokenizer, videos), tokens_of(new_tok, videos)
    rows = [("world on its own tokenizer", world.dynamics, old_tokens),
            ("old vocabulary rows on the new tokenizer (init_from alone)", world.dynamics, new_tokens),
            ("carried over by retoken, on the new tokenizer", carried, new_tokens)]
    print(f"{args.split} split: {len(idx)} clips x {args.clip_len} frames; masked-token figures, 95% intervals "
          "over clips")
    for name, dyn, tokens in rows:
        f = losses(dyn, tokens, actions, args.seed)
        parts = []
        for k in ("ce", "accuracy", "ce_changed", "accuracy_changed"):
            b = bootstrap(f[k], seed=args.seed)
            parts.append(f"{k} {b.mean:.3f} [{b.low:.3f}, {b.high:.3f}]")
        print(f"{name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
