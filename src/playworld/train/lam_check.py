"""Is a trained LAM's encoder collapsed on held-out clips? `playworld train all` asks between the LAM and
the dynamics model, so that a LAM whose encoder gives one or two actions (every key would play the same
frame) stops the run before its slowest stage rather than after it, at `playworld eval`.

The LAM's training log can look healthy while this happens: its winner-take-all decoder may use all K
actions while the encoder, the only part that play and the dynamics model read, uses two. So the check
counts what :meth:`~playworld.models.lam.LatentActionModel.infer_actions` gives on the validation split
(the training split when there is none), with the thresholds of :class:`~playworld.models.lam.ActionUsage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from playworld.errors import DatasetError, TrainingError
from playworld.models.base import to_unit
from playworld.models.lam import MIN_ENCODER_PERPLEXITY, ActionUsage, min_actions_used
from playworld.train.lam_retry import RETRY_FILE, LAMRetry


@dataclass
class LAMCheck:
    """usage: action counts on ``clips`` clips of split ``split`` (``held_out``: False when the data has
    no validation clips and the training split was measured instead)."""

    usage: ActionUsage
    split: str
    clips: int
    held_out: bool

    @property
    def collapsed(self) -> bool:
        return self.usage.collapse() is not None

    def describe(self) -> str:
        where = "held-out" if self.held_out else "training (no held-out clips to measure)"
        return f"on {self.clips} {where} clips of split {self.split!r}, {self.usage.describe()}"


@torch.no_grad()
def measure_lam(lam_dir: Path, *, max_clips: int = 128, batch_size: int = 16,
                device: str | torch.device | None = None) -> LAMCheck:
    """Action usage of the released LAM in ``lam_dir`` (its EMA weights if it kept them) on up to
    ``max_clips`` clips, spread evenly over the validation split of the data it was trained on, at the
    clip length it was trained on."""
    from playworld.data.loader import ClipDataset
    from playworld.release import read_run_config
    from playworld.train.checkpoint import load_model
    from playworld.train.engine import pick_device

    lam_dir = Path(lam_dir)
    cfg = read_run_config(lam_dir)
    device = torch.device(device) if device is not None else pick_device(cfg.train.device)
    lam = load_model(lam_dir, device)
    clips, split, held_out = None, cfg.data.val_split, True
    if split:
        try:
            clips = ClipDataset(cfg.data.path, clip_len=cfg.data.clip_len, split=split)
        except DatasetError:
            clips = None
    if clips is None or len(clips) == 0:
        split, held_out = cfg.data.split, False
        clips = ClipDataset(cfg.data.path, clip_len=cfg.data.clip_len, split=split)
    if len(clips) == 0:
        raise DatasetError(f"{cfg.data.path}: no clips of {cfg.data.clip_len} frames in split {split!r} to "
                           f"check the LAM in {lam_dir} on")
    n = min(max_clips, len(clips))
    indices = torch.linspace(0, len(clips) - 1, n).round().long().tolist()
    usage: ActionUsage | None = None
    for s in range(0, n, batch_size):
        video = to_unit(clips.get_batch(indices[s:s + batch_size]).to(device))  # (B, T, H, W, C)
        part = lam.held_out_stats(video)  # type: ignore[operator]
        usage = part if usage is None else usage + part
    assert usage is not None
    return LAMCheck(usage=usage, split=split, clips=n, held_out=held_out)


def require_healthy_lam(check: LAMCheck, lam_dir: Path, retried: LAMRetry | None = None) -> None:
    """Raise TrainingError if ``check`` found the encoder collapsed, saying what was measured and what to try
    (``retried``: the retry `train all` already made, whose first LAM and settings the message names)."""
    reason = check.usage.collapse()
    if reason is None:
        return
    k = check.usage.num_actions
    lam_dir = Path(lam_dir)
    if retried is not None:
        before = (f"This was the second LAM (with {', '.join(retried.overrides)}); the first, kept in "
                  f"{lam_dir.parent / retried.set_aside}, had collapsed too ({retried.first_check}). ")
        new_run = (f"A new seed, temperature or model needs {lam_dir}, {lam_dir.parent / retried.set_aside} and "
                   f"{lam_dir.parent / RETRY_FILE} removed first.")
        tie_hint = ("on a fixed screen where the player is a few pixels no setting measured in docs/models.md kept "
                    "the actions alive (maze, heist), so a game whose camera follows the player may suit it better; ")
    else:
        before, new_run = "", f"A new seed, temperature or model needs {lam_dir} removed first."
        tie_hint = ("a LAM that trusts its own encoder more when the actions' predictions nearly tie, as on a fixed "
                    "screen where the player is a few pixels (--set lam.model.assign_temperature=0.3: in "
                    "docs/models.md it kept every game's actions alive but maze's and heist's, with less meaning "
                    "on CoinRun); ")
    raise TrainingError(
        f"{lam_dir}: the latent action model has collapsed ({reason}): {check.describe()}. {before}Its encoder "
        f"is what the dynamics model learns from and what play's keys choose, so that world would give (nearly) "
        f"the same frame for every key; the dynamics model was not trained. A healthy encoder uses at least "
        f"{min_actions_used(k)} of {k} actions with perplexity >= {MIN_ENCODER_PERPLEXITY}. Try: more LAM steps "
        f"(--set lam.train.steps=N, then re-run: the LAM continues); a different seed (--set lam.train.seed=N); "
        f"more varied data, or a policy that moves more (playworld collect procgen --policy-report compares "
        f"them); {tie_hint}a different LAM (e.g. --set "
        f"lam.model.num_actions=4 or lam.model.kernel_radius=R). {new_run} To train the dynamics model anyway: "
        f"--allow-collapsed-lam.")
