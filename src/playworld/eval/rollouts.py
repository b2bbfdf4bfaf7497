"""Per-clip figures of one batch: tokenizer reconstruction and world rollouts.

Rollouts (Genie, arXiv 2402.15391, sec. 3 "Metrics"): from ``c`` real context frames the world
generates ``horizon`` frames driven by (a) the latent actions the LAM infers from the true future,
(b) uniformly random latent actions; the copy-last baseline repeats the last context frame. Every
context length predicts the same target frames (the clip's last ``horizon``), so the curves compare.
Delta PSNR_t = PSNR_t(a) - PSNR_t(b), per clip, at every horizon t (Genie reports t = 4).

Motion kept: the global shift between consecutive real frames, between their tokenizer
reconstructions, and from a real frame to the world's teacher-forced prediction of the next one (real
context, the LAM-inferred action), so that :mod:`playworld.eval.kept` can say how much of the real
motion each stage keeps.

Shapes: B clips, T = max(context) + horizon frames, H x W x C pixels, K codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from playworld.eval.change import ChangeSums, change_sums
from playworld.eval.motion import MotionEstimator
from playworld.eval.stats import psnr, ssim

KINDS = ("inferred", "random", "copy_last")


class EvalWorld(Protocol):
    """What evaluation needs of a world (:class:`playworld.world.World`, or a test's oracle)."""

    tokenizer: Any  # encode(video01).indices, decode(indices) or reconstruct(video01), num_codes
    lam: Any  # infer_actions(video01) -> (B, T-1); optionally features(video01) -> (B, T-1, D)

    @property
    def num_actions(self) -> int: ...

    def reset(self, prompt: Tensor, seed: int | None = None) -> Tensor: ...

    def step(self, actions: Tensor) -> Tensor: ...


def device_of(module: Any) -> torch.device:
    """Where a model's parameters live (CPU for a parameter-free stand-in)."""
    params = getattr(module, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def reconstruct(tokenizer: Any, video: Tensor) -> Tensor:
    """video (B, T, H, W, C) in [0, 1] -> the tokenizer's reconstruction, clamped to [0, 1]."""
    if hasattr(tokenizer, "reconstruct"):
        return tokenizer.reconstruct(video).clamp(0, 1)
    return tokenizer.decode(tokenizer.encode(video).indices).clamp(0, 1)


def rollout(world: EvalWorld, prompt: Tensor, actions: Tensor, seed: int) -> tuple[Tensor, float]:
    """prompt uint8 (B, c, H, W, C), actions (B, L) -> generated uint8 (B, L, H, W, C) and the seconds
    spent in ``step``."""
    world.reset(prompt, seed=seed)
    frames, spent = [], 0.0
    for t in range(actions.shape[1]):
        start = time.perf_counter()
        frames.append(world.step(actions[:, t]).cpu())
        spent += time.perf_counter() - start
    return torch.stack(frames, 1), spent


@dataclass
class BatchFigures:
    """Per-clip numbers of one batch. recon_psnr/ssim: (B,); code_counts: (B, K); psnr/ssim[c][kind]:
    (B, horizon); inferred: (B, T-1) latent actions; frames: (B, horizon, H, W, C) uint8 per kind, of
    the longest context (for gifs); step_seconds / frames_stepped: time inside ``World.step``;
    real_shift / recon_shift: (B, T-1, 2) (dy, dx) between consecutive real / reconstructed frames;
    tf_real_shift / tf_shift: (B, horizon, 2) from real frame t-1 to real frame t / to the world's
    teacher-forced prediction of frame t, for t = max(context) .. T-1; recon_change / tf_change / copy_change:
    the pixel change kept by the reconstructions / by the teacher-forced predictions / by a copy of frame t-1
    in their place (the baseline of their moving PSNR) (:mod:`playworld.eval.change`)."""

    recon_psnr: np.ndarray
    recon_ssim: np.ndarray
    code_counts: np.ndarray
    psnr: dict[int, dict[str, np.ndarray]]
    ssim: dict[int, dict[str, np.ndarray]]
    inferred: np.ndarray
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    step_seconds: float = 0.0
    frames_stepped: int = 0
    real_shift: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    recon_shift: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    tf_real_shift: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    tf_shift: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    recon_change: ChangeSums | None = None
    tf_change: ChangeSums | None = None
    copy_change: ChangeSums | None = None


def teacher_forced(world: EvalWorld, video: Tensor, actions: Tensor, context: int, seed: int) -> Tensor:
    """video uint8 (B, T, H, W, C), actions (B, T-1) -> (B, T-context, H, W, C) uint8: frame t predicted
    from the real frames t-context .. t-1 and action t-1, for t = context .. T-1 (one step each)."""
    out = []
    for t in range(context, video.shape[1]):
        world.reset(video[:, t - context:t], seed=seed)
        out.append(world.step(actions[:, t - 1]).cpu())
    return torch.stack(out, 1)


@torch.no_grad()
def evaluate_batch(world: EvalWorld, video: Tensor, context: tuple[int, ...], horizon: int,
                   seed: int, motion: MotionEstimator | None = None) -> BatchFigures:
    """video uint8 (B, T, H, W, C) with T = max(context) + horizon -> :class:`BatchFigures`."""
    b, t = video.shape[:2]
    cmax = max(context)
    if t != cmax + horizon:
        raise ValueError(f"clips of {t} frames, expected max(context) + horizon = {cmax + horizon}")
    unit = video.float() / 255  # (B, T, H, W, C)
    target = unit[:, cmax:]  # (B, horizon, H, W, C)
    tok_in = unit.to(device_of(world.tokenizer))
    rec = reconstruct(world.tokenizer, tok_in).cpu()
    codes = world.tokenizer.encode(tok_in).indices.reshape(b, -1).long().cpu()  # (B, T*h*w)
    k = int(world.tokenizer.num_codes)
    counts = torch.zeros(b, k, dtype=torch.long).scatter_add_(1, codes, torch.ones_like(codes))
    inferred = world.lam.infer_actions(unit.to(device_of(world.lam))).long().cpu()  # (B, T-1): s -> s+1
    future = inferred[:, cmax - 1:]  # (B, horizon): the actions that lead to the target frames
    gen = torch.Generator().manual_seed(seed)
    random = torch.randint(0, world.num_actions, future.shape, generator=gen)
    copy = unit[:, cmax - 1:cmax].expand_as(target)
    out = BatchFigures(recon_psnr=psnr(rec, unit).mean(1).numpy(), recon_ssim=ssim(rec, unit).mean(1).numpy(),
                       code_counts=counts.numpy(), psnr={}, ssim={}, inferred=inferred.numpy())
    for c in context:
        prompt = video[:, cmax - c:cmax]  # (B, c, H, W, C)
        out.psnr[c], out.ssim[c] = {}, {}
        for kind, acts in (("inferred", future), ("random", random)):
            frames, spent = rollout(world, prompt, acts, seed)
            out.step_seconds += spent
            out.frames_stepped += acts.numel()
            pred = frames.float() / 255
            out.psnr[c][kind], out.ssim[c][kind] = psnr(pred, target).numpy(), ssim(pred, target).numpy()
            if c == cmax:
                out.frames[kind] = frames.numpy()
        out.psnr[c]["copy_last"], out.ssim[c]["copy_last"] = psnr(copy, target).numpy(), ssim(copy, target).numpy()
    out.frames["truth"] = video[:, cmax:].numpy()
    motion = motion or MotionEstimator()
    out.real_shift = motion(unit[:, :-1], unit[:, 1:]).numpy()
    out.recon_shift = motion(rec[:, :-1], rec[:, 1:]).numpy()
    pred = teacher_forced(world, video, inferred, cmax, seed).float() / 255  # (B, horizon, H, W, C)
    out.tf_real_shift = out.real_shift[:, cmax - 1:]
    out.tf_shift = motion(unit[:, cmax - 1:-1], pred).numpy()
    out.recon_change = change_sums(unit[:, :-1], unit[:, 1:], rec[:, :-1], rec[:, 1:])
    before, after = unit[:, cmax - 1:-1], unit[:, cmax:]  # (B, horizon, H, W, C): real t-1 and t
    out.tf_change = change_sums(before, after, before, pred)
    out.copy_change = change_sums(before, after, before, before)
    return out
