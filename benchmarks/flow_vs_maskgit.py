"""MaskGIT vs flow dynamics at equal CPU training time on the same data: rollout PSNR and frames/s.

A toy world made here (a 4x4 square, one of two colours, on one of two 16x16 backgrounds, that moves two
pixels per step in the direction of its action, 4 actions, wrapping at the borders): a tiny VQ tokenizer is trained on its frames
for ``--tok-seconds``, then each dynamics backend (same width and depth) for ``--seconds`` of wall-clock
time on the same clips with the true actions (no LAM, so that the comparison is the dynamics alone). Each
world then plays held-out episodes from their first frame under the true actions, and the frames are
compared with the real ones (PSNR of the mean MSE over episodes per horizon, with a 95% interval) and timed
(frames/s at batch 1, sampling steps 1/2/4). The tokenizer's own PSNR on the same frames is the ceiling.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flow_vs_maskgit.py --threads 1 [--seconds 60]

Toy-sized on purpose (a shared 2-core machine): it compares the two backends' mechanics at equal cost,
not their quality on CoinRun.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

from playworld.config import from_dict
from playworld.maskgit import SamplingConfig
from playworld.models.base import psnr_from_mse
from playworld.models.dynamics import DynamicsConfig, DynamicsModel, FlowConfig
from playworld.models.flow import FlowDynamicsModel, latent_space
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer
from playworld.world import World, WorldConfig

SIZE, SQUARE, ACTIONS = 16, 4, 4
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # action -> (dy, dx), times SPEED pixels
SPEED = 2  # on a 2-pixel grid, so that a 4-pixel patch tokenizer sees few distinct patches
BACKGROUNDS = torch.tensor([(20, 20, 60), (70, 20, 30)]) / 255.0
SPRITES = torch.tensor([(240, 200, 40), (60, 220, 255)]) / 255.0


def toy_episodes(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n episodes -> video (n, length, 16, 16, 3) float in [0, 1], actions (n, length - 1) long."""
    g = torch.Generator().manual_seed(seed)
    video = torch.zeros(n, length, SIZE, SIZE, 3)
    actions = torch.randint(0, ACTIONS, (n, length - 1), generator=g)
    for i in range(n):
        video[i, :] = BACKGROUNDS[int(torch.randint(0, 2, (1,), generator=g))]
        colour = SPRITES[int(torch.randint(0, 2, (1,), generator=g))]
        y, x = (SPEED * int(v) for v in torch.randint(0, SIZE // SPEED, (2,), generator=g))
        for t in range(length):
            if t:
                dy, dx = MOVES[int(actions[i, t - 1])]
                y, x = (y + SPEED * dy) % SIZE, (x + SPEED * dx) % SIZE
            rows, cols = [(y + k) % SIZE for k in range(SQUARE)], [(x + k) % SIZE for k in range(SQUARE)]
            video[i, t, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = colour
    return video, actions


def clips(video: torch.Tensor, actions: torch.Tensor, batch: int, clip_len: int, g: torch.Generator):
    """A random batch of clips: video (B, clip_len, H, W, C), actions (B, clip_len - 1)."""
    n, t = video.shape[:2]
    ep = torch.randint(0, n, (batch,), generator=g)
    start = torch.randint(0, t - clip_len + 1, (batch,), generator=g)
    idx = start[:, None] + torch.arange(clip_len)
    return video[ep[:, None], idx], actions[ep[:, None], idx[:, :-1]]


def train_for(seconds: float, step_fn, params) -> int:
    """AdamW steps (lr 1e-3 after 50 warmup steps, gradients clipped to norm 1, as the engine does) of
    ``step_fn() -> loss`` until ``seconds`` have passed; returns the step count."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    steps, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        loss = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        steps += 1
    return steps


def rollout_psnr(world: World, video: torch.Tensor, actions: torch.Tensor, horizons: list[int]) -> dict[int, list]:
    """MSE of the world's frame t against the real one, per episode, for each horizon t."""
    out: dict[int, list] = {h: [] for h in horizons}
    for i in range(video.shape[0]):
        world.reset((video[i, :1] * 255).round().to(torch.uint8), seed=i)
        for t in range(1, max(horizons) + 1):
            frame = world.step(int(actions[i, t - 1]))[0].float() / 255.0
            if t in out:
                out[t].append(float((frame - video[i, t]).pow(2).mean()))
    return out


def fps(world: World, frames: int = 30) -> float:
    world.reset(torch.zeros(1, SIZE, SIZE, 3, dtype=torch.uint8), seed=0)
    world.step(0)
    start = time.perf_counter()
    for t in range(frames):
        world.step(t % ACTIONS)
    return frames / (time.perf_counter() - start)


def mean_ci(mses: list[float]) -> str:
    """PSNR of the mean MSE over episodes (dB; averaging dB would let a perfect frame's 100 dB dominate),
    with the 95% interval of that mean carried to dB."""
    m = sum(mses) / len(mses)
    se = math.sqrt(sum((v - m) ** 2 for v in mses) / max(1, len(mses) - 1) / len(mses))

    def db(x: float) -> float:
        return float(psnr_from_mse(torch.tensor(max(x, 1e-10))))

    return f"{db(m):4.1f} [{db(m + 1.96 * se):4.1f}, {db(max(m - 1.96 * se, 1e-10)):5.1f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--seconds", type=float, default=60.0, help="training seconds per dynamics backend")
    p.add_argument("--tok-seconds", type=float, default=40.0, help="training seconds of the shared tokenizer")
    p.add_argument("--episodes", type=int, default=16, help="held-out episodes rolled out")
    p.add_argument("--dim", type=int, default=64, help="dynamics width (both backends)")
    p.add_argument("--depth", type=int, default=2, help="dynamics ST blocks (both backends)")
    p.add_argument("--backends", nargs="+", default=["maskgit", "flow"], choices=["maskgit", "flow"])
    p.add_argument("--flow", nargs="*", default=[], metavar="KEY=VALUE",
                   help="flow settings (playworld.models.dynamics.FlowConfig), e.g. predict=x1 context_share=0.8")
    p.add_argument("--tokenizer-state", default="", help="reuse the tokenizer weights saved here (trained and "
                   "saved on first use), so that repeated comparisons share one tokenizer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    horizons = [1, 4, 8]
    train_video, train_actions = toy_episodes(64, 16, seed=0)
    test_video, test_actions = toy_episodes(args.episodes, max(horizons) + 1, seed=1)
    g = torch.Generator().manual_seed(0)

    tok = VideoTokenizer(TokenizerConfig(image_size=SIZE, patch=4, dim=64, enc_depth=2, dec_depth=2, heads=4,
                                         num_codes=64, code_dim=8))
    if args.tokenizer_state and Path(args.tokenizer_state).is_file():
        tok.load_state_dict(load_file(args.tokenizer_state))
        tok_steps = 0
    else:
        tok_steps = train_for(args.tok_seconds, lambda: tok.compute_loss(
            clips(train_video, train_actions, 16, 2, g)[0]).loss, tok.parameters())
        if args.tokenizer_state:
            save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, args.tokenizer_state)
    tok.eval()
    with torch.no_grad():
        ceiling = float(psnr_from_mse((tok.reconstruct(test_video) - test_video).pow(2).mean()))
    trained = f"{tok_steps} steps in {args.tok_seconds:.0f} s" if tok_steps else f"loaded from {args.tokenizer_state}"
    print(f"tokenizer: {trained}, reconstruction PSNR {ceiling:.1f} dB (the ceiling); threads {args.threads}")

    base = DynamicsConfig(vocab_size=tok.num_codes, num_actions=ACTIONS, token_height=4, token_width=4,
                          dim=args.dim, depth=args.depth, heads=4)
    maskgit = DynamicsModel(base)
    flow_cfg = from_dict(FlowConfig, {"latent_dim": 8, **dict(kv.split("=", 1) for kv in args.flow)})
    flow = FlowDynamicsModel(dataclasses.replace(base, backend="flow", flow=flow_cfg))
    print(f"flow: {flow_cfg}")

    def maskgit_loss():
        video, actions = clips(train_video, train_actions, 8, 4, g)
        tokens = rearrange(tok.encode(video).indices, "b t h w -> b t (h w)")
        return maskgit.compute_loss_tokens(tokens, actions).loss

    def flow_loss():
        video, actions = clips(train_video, train_actions, 8, 4, g)
        with torch.no_grad():
            latents = latent_space(tok, tok._latents(video))
        return flow.compute_loss_latents(latents, actions).loss

    lam = LatentActionModel(LAMConfig(height=SIZE, width=SIZE, patch_size=8, num_actions=ACTIONS, dim=32, heads=2,
                                      encoder_depth=1, decoder_depth=1))  # untrained: prompts are one frame
    print(f"{'backend':8} {'train steps':>11} {'steps':>5} " + " ".join(f"{'PSNR t=' + str(h):>18}" for h in horizons)
          + f" {'frames/s':>9}")
    for name, model, loss_fn in (("maskgit", maskgit, maskgit_loss), ("flow", flow, flow_loss)):
        if name not in args.backends:
            continue
        model.train()
        n = train_for(args.seconds, loss_fn, model.parameters())
        for steps in (1, 2, 4):
            sampling = SamplingConfig(steps=steps, temperature=0.0 if name == "maskgit" else 1.0)
            world = World(tok, lam, model, WorldConfig(context_frames=8, decoder_context=8, sampling=sampling))
            with torch.inference_mode():
                scores = rollout_psnr(world, test_video, test_actions, horizons)
                speed = fps(world)
            print(f"{name:8} {n:11d} {steps:5d} " + " ".join(f"{mean_ci(scores[h]):>18}" for h in horizons)
                  + f" {speed:9.0f}")
    copy = {h: [float((test_video[i, 0] - test_video[i, h]).pow(2).mean())
                for i in range(args.episodes)] for h in horizons}
    print(f"{'copy-first':8} {'':11} {'':5} " + " ".join(f"{mean_ci(copy[h]):>18}" for h in horizons))


if __name__ == "__main__":
    main()
