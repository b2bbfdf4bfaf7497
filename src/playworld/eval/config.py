"""What `playworld eval` measures and how much of it: one flat, validated dataclass (the CLI's flags)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from playworld.config import Precision, field
from playworld.errors import ConfigError
from playworld.eval.motion import MotionEstimator
from playworld.maskgit import SamplingConfig
from playworld.play_setting import world_sampling

# settings an evaluation written before the field existed ran with: its value then (not today's default)
BEFORE_FIELD: dict[str, Any] = {"copy_penalty": 0.0, "action_guidance": 1.0, "real_key_starts": 0}
# settings that change how long an evaluation takes or what it draws, never which units or how they score
PRESENTATION = ("progress", "gif_clips", "grid_starts", "grid_steps", "speed_frames", "max_minutes",
                "allow_collapsed")


@dataclass
class EvalConfig:
    """Evaluation settings. Every figure is computed on held-out episodes with fixed seeds."""

    split: str = field("test", help="dataset split to evaluate on: 'test', 'val' or 'train' (held-out levels: test)")
    episodes: int = field(64, help="episodes to evaluate (one rollout clip each; the bootstrap resamples them)")
    context: tuple[int, ...] = field((1, 4), help="context frames given before each rollout (Genie: 1)")
    horizon: int = field(15, help="frames generated after the context")
    batch: int = field(16, help="worlds stepped together")
    maskgit_steps: int | None = field(None, help="MaskGIT iterations per generated frame (default: what "
                                      "`playworld play` uses for this world, its play_setting.json else 1, so the "
                                      "figures are what a player sees; Genie: 25)")
    temperature: float | None = field(None, help="MaskGIT sampling temperature (0 = greedy; default: play's for "
                                      "this world)")
    copy_penalty: float | None = field(None, help="logit taken from each place's previous token before "
                                       "sampling (default: play's for this world)")
    action_guidance: float | None = field(None, help="action guidance: 1 = off; g > 1 amplifies what the pressed "
                                          "latent action changes against the action-free prediction (each pass runs "
                                          "on 2 copies of the batch for a model trained with action dropout, else "
                                          "|A| + 1; docs/models.md; default: play's for this world)")
    precision: Precision = field(
        "fp32", help="dtype of the dynamics model and decoder: fp32, bf16, or auto (bf16 where it is faster)")
    seed: int = field(0, help="seed of the episode choice, random actions, sampling and the bootstrap")
    action_clips: int = field(4, help="non-overlapping clips per episode for the latent-vs-true action figures")
    consistency_starts: int = field(32, help="start frames from which every latent action is applied")
    consistency_steps: int = field(3, help="times each latent action is pressed when measuring its motion")
    memory_k: int = field(4, help="steps one way, then the same number back, in the memory test")
    memory_starts: int = field(16, help="start frames of the memory walk (model, and real env if it can replay)")
    opposites: str = field("", help="true actions that undo each other, 'a:b,c:d' (default: from the dataset's "
                           "game, e.g. CoinRun 7:1 = right:left; without true actions, from measured motion)")
    real_env: bool = field(True, help="also walk in the real environment (Procgen datasets) for the memory test")
    gif_clips: int = field(4, help="rollouts shown side by side in the report's gif")
    grid_starts: int = field(6, help="rows (start frames) of the start-frame x latent-action grid gif")
    grid_steps: int = field(10, help="frames per cell of the grid gif")
    key_starts: int = field(8, help="start frames from which every latent action is held (key response, liveness)")
    key_steps: int = field(100, help="steps each latent action is held (>= 30: early 2-8, late 20-30, far = the "
                           "last 10)")
    real_key_starts: int = field(16, help="settled start frames of evaluated levels from which both the world and "
                                 "the real game hold every latent action's mapped key for 30 steps (Procgen data; "
                                 "0 = skip)")
    real_hold: int = field(4, help="frames a true action must have been held for a real-game transition to count "
                           "as its steady motion")
    motion_cutoff: float = field(8.0, help="cycles per frame where the motion estimator's low-pass weighs e^-2 "
                                 "(0 = none; docs/eval.md)")
    motion_window: bool = field(True, help="Hann-window frames before measuring motion (off only for worlds that "
                                "wrap around)")
    speed_frames: int = field(16, help="frames timed at batch 1 for ms/frame")
    bootstrap: int = field(1000, help="bootstrap resamples per interval")
    max_minutes: float = field(0.0, help="stop taking new episodes after this many minutes (0 = no limit)")
    allow_collapsed: bool = field(False, help="record, instead of failing on, a LAM that uses under half its actions")
    progress: bool = field(True, help="show progress bars")

    def __post_init__(self) -> None:
        for name in ("episodes", "horizon", "batch", "action_clips", "consistency_starts",
                     "consistency_steps", "memory_k", "memory_starts",
                     "key_starts", "real_hold", "gif_clips", "grid_starts", "grid_steps",
                     "speed_frames", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"eval.split must be 'train', 'val' or 'test', got {self.split!r}")
        if not self.context or any(c < 1 for c in self.context):
            raise ConfigError(f"eval.context must be one or more frame counts >= 1, got {self.context}")
        self.context = tuple(sorted(set(self.context)))
        self.sampling()
        if self.real_key_starts < 0:
            raise ConfigError(f"eval.real_key_starts must be >= 0 (0 = skip), got {self.real_key_starts}")
        if self.key_steps < 30:
            raise ConfigError(f"eval.key_steps must be >= 30 (the late window is steps 20-30), got {self.key_steps}")
        if not self.motion_cutoff >= 0:
            raise ConfigError(f"eval.motion_cutoff must be >= 0 cycles per frame (0 = no low-pass), "
                              f"got {self.motion_cutoff}")
        if self.max_minutes < 0:
            raise ConfigError(f"eval.max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")
        self.opposite_pairs()  # validate the format now

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str = "metrics.json", **overrides: Any) -> EvalConfig:
        """The settings an evaluation recorded (``metrics["settings"]``) as an EvalConfig, so that a benchmark can
        choose the same clips and start frames again; ``overrides`` replace any of them. A field the file
        lacks takes the value evaluations had before the field existed (:data:`BEFORE_FIELD`: no copy
        penalty, no guidance, no real-start holds) or, for settings that choose no units
        (:data:`PRESENTATION`), today's default; any other missing or unknown setting is refused, naming
        ``where``, rather than guessed."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ConfigError(f"{where}: settings {unknown} are unknown to this playworld (written by a newer one?)")
        values = {**{k: v for k, v in BEFORE_FIELD.items() if k not in settings}, **settings, **overrides}
        missing = sorted(n for n in names if n not in values and n not in PRESENTATION)
        if missing:
            raise ConfigError(f"{where}: settings lack {missing} (written by an older playworld); pass them "
                              f"explicitly")
        if "context" in values:
            values["context"] = tuple(values["context"])
        return cls(**values)

    def sampling(self, run_dir: str | Path | None = None) -> SamplingConfig:
        """How the evaluated world decodes each new frame: the fields set here over the play setting of the
        world in ``run_dir`` (:mod:`playworld.play_setting`); its checks name this config's fields."""
        return world_sampling(run_dir, "eval", steps=self.maskgit_steps, temperature=self.temperature,
                              copy_penalty=self.copy_penalty, action_guidance=self.action_guidance)

    def resolved(self, sampling: SamplingConfig) -> EvalConfig:
        """These settings with the decoding fields left to the world filled in from ``sampling`` (what the
        world plays at), so that metrics.json records what was measured."""
        return dataclasses.replace(
            self, maskgit_steps=sampling.steps if self.maskgit_steps is None else self.maskgit_steps,
            temperature=sampling.temperature if self.temperature is None else self.temperature,
            copy_penalty=sampling.copy_penalty if self.copy_penalty is None else self.copy_penalty,
            action_guidance=sampling.action_guidance if self.action_guidance is None else self.action_guidance)

    @property
    def motion(self) -> MotionEstimator:
        """The motion estimator these settings describe."""
        return MotionEstimator(cutoff=self.motion_cutoff, window=self.motion_window)

    @property
    def clip_len(self) -> int:
        """Frames of a rollout clip: the longest context plus the horizon."""
        return max(self.context) + self.horizon

    def opposite_pairs(self) -> tuple[tuple[int, int], ...] | None:
        """``opposites`` parsed: ((a, b), ...) or None when not given."""
        if not self.opposites.strip():
            return None
        pairs = []
        for item in self.opposites.split(","):
            parts = item.strip().split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or parts[0] == parts[1]:
                raise ConfigError(f"eval.opposites: {item!r} is not 'a:b' with two different action numbers "
                                  f"(e.g. '7:1' for CoinRun right:left)")
            pairs.append((int(parts[0]), int(parts[1])))
        return tuple(pairs)
