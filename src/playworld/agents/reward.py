"""Rewards inside a learned world: a reward head learned from a dataset's recorded rewards, or the user's
function of frames.

A world has no reward of its own. For Procgen data the default is a small CNN on (frame t, frame t+1)
trained on the rewards the dataset recorded (a learned reward model, as DIAMOND and Dreamer 4 train
inside their worlds). Procgen's rewards are sparse (CoinRun pays 10 on reaching the coin and nothing
else), so the head classifies ``reward > 0`` with the positives weighted by the negatives-to-positives
ratio (balanced binary cross-entropy) and pays ``scale``, the mean positive reward of the data, on a
transition whose (balanced) probability of ``reward > 0`` passes ``threshold``, and 0 elsewhere: a
fixed payment, as the game's is (an expected reward ``scale * p`` summed over a long in-world episode
would pay more for lingering near coin-like frames than for reaching the coin). The reward of an episode's last frame, whose outcome frame was never
recorded (Procgen resets on the coin), is credited to the transition into that frame.

``--reward-fn module:function`` names a user function ``fn(obs, action, next_obs) -> float`` on uint8
(H, W, 3) frames, :data:`playworld.env.RewardFn`'s signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from playworld.bars import progress_bar
from playworld.config import field, from_dict, to_dict
from playworld.data.format import Dataset
from playworld.errors import CheckpointError, ConfigError, DatasetError
from playworld.io import atomic_write_text, read_json
from playworld.release import check_state_dict, load_tensors, save_tensors

BatchReward = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(obs (N, H, W, 3) uint8, actions (N,) int64, next_obs (N, H, W, 3) uint8) -> rewards (N,) float."""

WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass(frozen=True)
class RewardHeadConfig:
    """The reward head and its fit on a dataset's recorded rewards."""

    channels: int = field(16, help="channels of the first conv layer (the next two have twice as many)")
    steps: int = field(1500, help="optimiser steps")
    batch: int = field(64, help="transitions per step")
    lr: float = field(1e-3, help="Adam learning rate")
    seed: int = field(0, help="seed of the weights and the batches")
    threshold: float = field(0.5, help="balanced P(reward > 0) above which a transition pays `scale`")

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"reward head: threshold={self.threshold} must lie in (0, 1)")
        for name in ("channels", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"reward head: {name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"reward head: lr={self.lr} must be > 0")


class RewardHead(nn.Module):
    """(frame t, frame t+1), each (B, H, W, 3) uint8 -> logit of ``reward > 0``, (B,)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(6, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * c * 16, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        if obs.shape != next_obs.shape or obs.ndim != 4 or obs.shape[-1] != 3:
            raise ValueError(f"reward head: frames must both be (B, H, W, 3), got {tuple(obs.shape)} and "
                             f"{tuple(next_obs.shape)}")
        x = torch.cat([obs, next_obs], -1).float() / 255  # (B, H, W, 6)
        return self.net(rearrange(x, "b h w c -> b c h w"))[:, 0]


@dataclass
class RewardModel:
    """A trained reward head as a batched reward: ``scale`` where ``sigmoid(logit) > threshold``, else 0."""

    head: RewardHead
    scale: float
    frame_size: tuple[int, int]
    threshold: float = 0.5

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        if tuple(obs.shape[1:3]) != self.frame_size:
            raise ConfigError(f"reward head: trained on {self.frame_size} frames, given {tuple(obs.shape[1:3])}")
        logit = self.head(torch.from_numpy(np.ascontiguousarray(obs)), torch.from_numpy(np.ascontiguousarray(next_obs)))
        return (self.scale * (torch.sigmoid(logit) > self.threshold)).numpy().astype(np.float64)


@dataclass(frozen=True)
class RewardPairs:
    """frames (F, H, W, 3) uint8; index (N,) of each transition's frame t in ``frames`` (t+1 follows it);
    reward (N,) float32 credited to that transition."""

    frames: Tensor
    index: Tensor
    reward: Tensor


def read_reward_pairs(data: str | Path, split: str = "train", max_episodes: int | None = None,
                      progress: bool = True) -> RewardPairs:
    """Transitions (t -> t+1) of ``split`` with the reward earned at t; the last frame's reward goes to the
    transition into it (its own outcome frame was never recorded)."""
    ds = Dataset(data)
    episodes = [e for e in ds.episodes(split) if e.length >= 2][:max_episodes]
    if not episodes:
        raise DatasetError(f"{ds.root}: no episode of split {split!r} has 2 frames or more")
    frames, index, reward, offset = [], [], [], 0
    for ep in progress_bar(episodes, desc=f"read rewards ({split})", unit="episode", disable=not progress):
        video = torch.from_numpy(np.array(ds.frames(ep)))  # (L, H, W, 3)
        r = torch.from_numpy(np.array(ds.rewards(ep), dtype=np.float32))  # (L,)
        n = len(video) - 1
        credit = r[:n].clone()
        credit[-1] += r[n]
        frames.append(video)
        index.append(offset + torch.arange(n))
        reward.append(credit)
        offset += len(video)
    return RewardPairs(torch.cat(frames), torch.cat(index), torch.cat(reward))


@dataclass(frozen=True)
class RewardHeadResult:
    path: Path
    positives: int  # training transitions with reward > 0
    transitions: int
    scale: float
    accuracy: dict[str, float]  # on the val split (train split when the data has none): on positives, negatives
    seconds: float


def balanced_accuracy(model: RewardModel, pairs: RewardPairs, batch: int = 512) -> dict[str, float]:
    """Fraction of positive (reward > 0) and of zero-reward transitions the head classifies right."""
    hits, pos = [], pairs.reward > 0
    for s in range(0, len(pairs.index), batch):
        i = pairs.index[s:s + batch]
        r = model(pairs.frames[i].numpy(), np.zeros(len(i), np.int64), pairs.frames[i + 1].numpy())
        hits.append(torch.from_numpy(r > 0) == pos[s:s + batch])
    h = torch.cat(hits)
    return {"positives": float(h[pos].float().mean()) if pos.any() else float("nan"),
            "negatives": float(h[~pos].float().mean()) if (~pos).any() else float("nan"),
            "val_positives": int(pos.sum())}


def train_reward_head(data: str | Path, out: str | Path, cfg: RewardHeadConfig, *, max_episodes: int | None = None,
                      progress: bool = True) -> RewardHeadResult:
    """Fit a reward head on the train split's recorded rewards into ``out`` (``model.safetensors`` +
    ``config.json``). Raises when the data records no positive reward."""
    out, t0 = Path(out), time.perf_counter()
    pairs = read_reward_pairs(data, max_episodes=max_episodes, progress=progress)
    pos = pairs.reward > 0
    n_pos = int(pos.sum())
    if n_pos == 0:
        raise DatasetError(f"{data}: no transition of the train split has a reward > 0 (of {len(pos)}); a reward "
                           f"head cannot learn from it; give --reward-fn module:function instead")
    scale = float(pairs.reward[pos].mean())
    pos_weight = torch.tensor((len(pos) - n_pos) / n_pos)
    torch.manual_seed(cfg.seed)
    head = RewardHead(cfg.channels)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    bar = progress_bar(range(cfg.steps), desc="reward head", unit="step", disable=not progress)
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        b = torch.randint(len(pairs.index), (cfg.batch,), generator=g)  # (B,)
        i = pairs.index[b]
        logit = head(pairs.frames[i], pairs.frames[i + 1])
        loss = F.binary_cross_entropy_with_logits(logit, pos[b].float(), pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    head.eval()
    size = (int(pairs.frames.shape[1]), int(pairs.frames.shape[2]))
    model = RewardModel(head, scale, size, cfg.threshold)
    has_val = any(e.length >= 2 for e in Dataset(data).episodes("val"))
    check = read_reward_pairs(data, "val", progress=False) if has_val else pairs
    acc = {**balanced_accuracy(model, check), "split": "val" if has_val else "train"}
    save_tensors(out / WEIGHTS, head.state_dict())
    meta = {"kind": "reward_head", "config": to_dict(cfg), "scale": scale, "frame_size": list(size),
            "data": str(Path(data).resolve()), "max_episodes": max_episodes, "positives": n_pos,
            "transitions": len(pos), "accuracy": acc}
    atomic_write_text(out / CONFIG, json.dumps(meta, indent=2) + "\n")
    return RewardHeadResult(out, n_pos, len(pos), scale, acc, time.perf_counter() - t0)


def load_reward_head(path: str | Path) -> RewardModel:
    """A reward head saved by :func:`train_reward_head`."""
    path = Path(path)
    meta = read_json(path / CONFIG, CheckpointError, "reward head config")
    if not isinstance(meta, dict) or meta.get("kind") != "reward_head":
        raise CheckpointError(f"{path / CONFIG}: not a reward head (no kind 'reward_head')")
    cfg = from_dict(RewardHeadConfig, meta["config"], where=str(path / CONFIG))
    head = RewardHead(cfg.channels)
    state = load_tensors(path / WEIGHTS)
    check_state_dict(head, state, str(path / WEIGHTS))
    head.load_state_dict(state)
    size = meta["frame_size"]
    return RewardModel(head.eval(), float(meta["scale"]), (int(size[0]), int(size[1])), cfg.threshold)


def load_reward_fn(spec: str) -> Callable[..., Any]:
    """``module:function`` -> the function (``module`` importable, or a path to a ``.py`` file)."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"--reward-fn {spec!r}: expected module:function (e.g. mypkg.rewards:coin)")
    try:
        if module_name.endswith(".py"):
            if not Path(module_name).is_file():
                raise ConfigError(f"--reward-fn {spec!r}: file {module_name} not found")
            loaded = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            assert loaded is not None and loaded.loader is not None
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--reward-fn {spec!r}: cannot import {module_name} ({e})") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"--reward-fn {spec!r}: {module_name} has no function {name!r}")
    return fn


def batched(fn: Callable[[np.ndarray, int, np.ndarray], float]) -> BatchReward:
    """A per-transition ``fn(obs, action, next_obs) -> float`` as a :data:`BatchReward`."""
    def reward(obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        out = np.array([float(fn(obs[i], int(actions[i]), next_obs[i])) for i in range(len(actions))])
        if not np.isfinite(out).all():
            raise ConfigError(f"reward function {getattr(fn, '__name__', fn)!r} returned {out.tolist()}")
        return out

    return reward


__all__ = ["RewardHeadConfig", "RewardHead", "RewardModel", "train_reward_head", "load_reward_head",
           "load_reward_fn", "batched", "BatchReward", "read_reward_pairs"]
