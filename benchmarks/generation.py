"""Play-time speed: ms per generated frame (batch 1) and frames/s (batch 16) for MaskGIT settings,
against one dynamics forward pass measured in the same run. A generated frame costs ``steps``
uncommitted dynamics passes against the cached context, one committed pass, and one cached
tokenizer-decoder pass for the new frame; its cost does not depend on how long one has played.

    .venv/bin/python benchmarks/generation.py [--presets tiny small] [--steps 1 2 4 8 25] [--frames 20]

Weights are random (speed only). Sizes: the tokenizer, LAM and dynamics of :mod:`playworld.presets`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from playworld.maskgit import SamplingConfig
from playworld.models.dynamics import DynamicsModel
from playworld.models.lam import LatentActionModel
from playworld.presets import build_run_config
from playworld.train.registry import get_spec
from playworld.world import World, WorldConfig


# Proposed model sizes for playworld.presets (64x64 frames, 16x16 tokens).
def build_world(preset: str, steps: int, context: int) -> World:
    torch.manual_seed(0)
    tok_cfg = build_run_config("tokenizer", preset).model
    tok = get_spec("tokenizer").build_release(tok_cfg)
    grid = tok_cfg.image_size // tok_cfg.patch
    lam = LatentActionModel(build_run_config("lam", preset).model)
    dyn_cfg = dataclasses.replace(build_run_config("dynamics", preset).model, vocab_size=tok.num_codes,
                                  token_height=grid, token_width=grid, num_actions=lam.num_actions)
    dyn = DynamicsModel(dyn_cfg)
    return World(tok, lam, dyn, WorldConfig(context_frames=context, decoder_context=context,
                                            sampling=SamplingConfig(steps=steps)))


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


@torch.inference_mode()
def forward_ms(world: World, batch: int) -> tuple[float, float]:
    """One dynamics forward of one frame without cache, and against a full cache (ms)."""
    cfg = world.dynamics.config
    tokens = torch.randint(0, cfg.vocab_size, (batch, 1, cfg.num_tokens))
    actions = torch.zeros(batch, 1, dtype=torch.long)
    bare = timed(lambda: world.dynamics(tokens, actions), 10)
    cache = world.dynamics.new_cache(world.config.context_frames)
    world.dynamics.commit(tokens.expand(batch, world.config.context_frames, -1).contiguous(),
                          actions.expand(batch, world.config.context_frames), cache)
    cached = timed(lambda: world.dynamics(tokens, actions, cache=cache), 10)
    return bare * 1e3, cached * 1e3


def frame_ms(world: World, batch: int, frames: int) -> float:
    size = world.tokenizer.config.image_size  # type: ignore[union-attr]
    prompt = torch.randint(0, 256, (batch, world.config.context_frames, size, size, 3), dtype=torch.uint8)
    world.reset(prompt, seed=0)
    return timed(lambda: world.step(0), frames) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8, 25])
    parser.add_argument("--frames", type=int, default=20, help="frames timed per setting (after 1 warm-up)")
    parser.add_argument("--batch", type=int, default=16, help="the batched measurement's batch size")
    parser.add_argument("--context", type=int, default=16, help="context window in frames (cache full)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, context {args.context} frames (full)")
    for preset in args.presets:
        world = build_world(preset, 1, args.context)
        params = sum(p.numel() for p in world.dynamics.parameters()) / 1e6
        bare1, cached1 = forward_ms(world, 1)
        bareb, cachedb = forward_ms(world, args.batch)
        print(f"\n[{preset}] dynamics {params:.2f}M params, {world.dynamics.config.num_tokens} tokens/frame; "
              f"one forward: {bare1:.1f} ms (no cache), {cached1:.1f} ms (cached) at batch 1; "
              f"{bareb:.1f} / {cachedb:.1f} ms at batch {args.batch}")
        print(f"{'steps':>5} {'ms/frame b1':>12} {'fps b1':>8} {'= forwards':>10} {'frames/s b' + str(args.batch):>14}")
        for steps in args.steps:
            world.config.sampling = SamplingConfig(steps=steps)
            ms1 = frame_ms(world, 1, args.frames)
            msb = frame_ms(world, args.batch, max(3, args.frames // 4))
            print(f"{steps:5d} {ms1:12.1f} {1e3 / ms1:8.1f} {ms1 / cached1:10.1f} {args.batch * 1e3 / msb:14.1f}")


if __name__ == "__main__":
    main()
