"""The LAM's motion kernels as a hint at play time (docs/models.md, "The LAM's motion as a hint"; measured, not
kept): before each greedy MaskGIT step, the last frame is moved by the pressed latent action's motion kernel
(the LAM decoder's prior, ``LatentActionModel.kernels``), tokenized, and each place's token of that moved frame
gets ``bonus`` added to its logit, at every place (``--everywhere``) or only where it differs from the last
frame's token (the motion, without a second copy bonus against the copy penalty). Measured with
benchmarks/real_starts.py's figures (key response, agreement, liveness, contrast from settled real starts).

    .venv/bin/python benchmarks/kernel_hint.py src/playworld/assets/coinrun --data data/coinrun-eval \\
        --eval runs/eval-shipped --bonus 0 2 4 --threads 1
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

import real_starts  # benchmarks/real_starts.py (a sibling script)
from playworld.api import load
from playworld.backends import maskgit as maskgit_backend


def moved_tokens(tokenizer, lam, prev: Tensor, actions: Tensor) -> Tensor:
    """prev (B, S) tokens, actions (B,) -> tokens (B, S) of the decoded frame moved by each action's kernel."""
    b, s = prev.shape
    side = int(s ** 0.5)
    frames = tokenizer.decode(prev.reshape(b, 1, side, side))[:, 0]  # (B, H, W, C) in [0, 1]
    r = lam.config.kernel_radius
    img = F.pad(rearrange(frames, "b h w c -> 1 (b c) h w"), (r, r, r, r), mode=lam.config.kernel_padding)
    weight = lam.kernels[actions].float().repeat_interleave(frames.shape[-1], 0)[:, None]  # (B*C, 1, k, k)
    moved = rearrange(F.conv2d(img, weight, groups=weight.shape[0]), "1 (b c) h w -> b 1 h w c", b=b)
    return tokenizer.encode(moved.clamp(0, 1)).indices.reshape(b, s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--bonus", type=float, nargs="+", default=[0.0, 2.0], help="logit bonus (0 = play as is)")
    p.add_argument("--everywhere", action="store_true", help="the bonus at every place, not only where it moves")
    args, rest = p.parse_known_args()
    run = load(args.run)
    tokenizer, lam = run.tokenizer.eval(), run.lam.eval()
    state = {"bonus": 0.0}
    sample = maskgit_backend.MaskGITBackend.sample

    def hinted(self, frame_actions, caches, prev, sampling, generators):  # (B, 1) actions, (B, S) prev
        if state["bonus"] == 0:
            return sample(self, frame_actions, caches, prev, sampling, generators)
        hint = moved_tokens(tokenizer, lam, prev, frame_actions[:, 0])
        where = torch.ones_like(hint, dtype=torch.bool) if args.everywhere else hint != prev
        step_logits = self.model.step_logits

        def logits(*a, **kw):
            out = step_logits(*a, **kw)  # (B, S, V)
            return out.scatter_add(-1, hint[..., None], where[..., None].to(out.dtype) * state["bonus"])

        self.model.step_logits = logits
        try:
            return sample(self, frame_actions, caches, prev, sampling, generators)
        finally:
            del self.model.step_logits

    maskgit_backend.MaskGITBackend.sample = hinted
    for bonus in args.bonus:
        state["bonus"] = bonus
        print(f"==== kernel hint, bonus {bonus:g} ({'every place' if args.everywhere else 'where it moves'})",
              flush=True)
        sys.argv = ["real_starts.py", args.run, *rest]
        real_starts.main()


if __name__ == "__main__":
    main()
