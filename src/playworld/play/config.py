"""Settings of `playworld play` and of one play session (typed, validated; the CLI flags come from here).

Kept apart from the server so that building the command line imports neither FastAPI nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from playworld.config import Precision, field
from playworld.errors import ConfigError
from playworld.maskgit import SamplingConfig
from playworld.play_setting import world_sampling


@dataclass
class SessionLimits:
    """How much one session may hold."""

    max_history: int = field(64, help="actions that undo can take back (at least max_history - checkpoint_every)")
    checkpoint_every: int = field(32, help="snapshot the world every this many actions: an undo replays fewer "
                                  "steps than this; each snapshot copies the world's caches (36 MB for the shipped world)")
    max_record_frames: int = field(900, help="frames kept for the recording download (the last ones)")
    max_replay: int = field(2000, help="longest action string one replay message may ask for")

    def __post_init__(self) -> None:
        for name in ("max_history", "checkpoint_every", "max_record_frames", "max_replay"):
            if getattr(self, name) < 1:
                raise ConfigError(f"session.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every > self.max_history:
            raise ConfigError(f"session.checkpoint_every ({self.checkpoint_every}) must be <= max_history "
                              f"({self.max_history})")


@dataclass
class PlayConfig:
    """Settings of `playworld play` (each is a command-line flag)."""

    host: str = field("127.0.0.1", help="address to listen on; anything but localhost exposes the server")
    port: int = field(8000, help="TCP port")
    max_sessions: int = field(8, help="players at once; more get an error and are closed")
    max_upload_bytes: int = field(4 << 20, help="largest uploaded picture, in bytes")
    max_pixels: int = field(40_000_000, help="largest uploaded picture, in pixels (decompression bombs)")
    rate: float = field(60.0, help="messages per second a session may send, sustained")
    burst: int = field(120, help="messages a session may send at once above the sustained rate")
    max_queued: int = field(8, help="requests one session may have waiting or running (start, step, undo, restart, "
                            "replay, record); more get an error reply and are dropped")
    idle_timeout_s: float = field(900.0, help="close a session after this long without a message")
    window_ms: float = field(2.0, help="how long the scheduler waits to gather other sessions' steps")
    precision: Precision = field(
        "auto", help="dtype of the dynamics model and decoder: auto = bf16 where this machine multiplies bf16 "
        "faster (~1.2x per frame on CPUs with AVX512-BF16/AMX), else fp32")
    defer_commit: bool = field(True, help="send each frame before writing it to the model's memory (the write "
                               "runs while the frame travels; a key pressed meanwhile waits for it)")
    steps: int | None = field(None, help="MaskGIT iterations per frame (default: the world's play setting, "
                              "play_setting.json, else 1: 30-35 frames/s for the shipped world on 2 cores in bf16, "
                              "and as accurate as 4 or 8; see docs/play.md)")
    temperature: float | None = field(None, help="sampling temperature (0 = greedy: the same keys give the same "
                                      "frames; 1 = sampled, more varied; default: the world's play setting, else 0)")
    copy_penalty: float | None = field(None, help="logit taken from the token each place held in the previous "
                                       "frame before sampling: counters greedy decoding settling into a still "
                                       "picture (default: the world's play setting, else 2)")
    action_guidance: float | None = field(None, help="1 = off; g > 1 amplifies what the pressed latent action "
                                          "changes against the action-free prediction: each pass runs on 2 copies of "
                                          "the batch for a model trained with action dropout, else |A| + 1 "
                                          "(docs/models.md; default: the world's play setting, else 1)")
    context_frames: int = field(16, help="frames the dynamics model and decoder attend to")
    prompt_frames: int = field(1, help="frames of a dataset prompt (context before the start frame)")
    max_history: int = field(64, help="actions undo can take back per session (at least max_history - "
                             "checkpoint_every of them)")
    checkpoint_every: int = field(32, help="world snapshots per session every this many actions (an undo replays "
                                  "fewer steps than this; 36 MB each for the shipped world)")
    max_record_frames: int = field(900, help="frames a session's recording keeps (the last ones)")
    max_replay: int = field(2000, help="longest action string one replay may play")
    record_fps: float = field(15.0, help="frame rate of downloaded recordings")
    record_scale: int = field(4, help="pixel enlargement of downloaded recordings")

    def __post_init__(self) -> None:
        for name in ("port", "max_sessions", "max_upload_bytes", "max_pixels", "burst", "max_queued",
                     "context_frames", "prompt_frames", "record_scale"):
            if getattr(self, name) < (0 if name == "port" else 1):
                raise ConfigError(f"play.{name} must be positive, got {getattr(self, name)}")
        for name in ("rate", "idle_timeout_s", "record_fps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"play.{name} must be > 0, got {getattr(self, name)}")
        if self.window_ms < 0:
            raise ConfigError(f"play.window_ms must be >= 0, got {self.window_ms}")
        self.sampling()
        self.session_limits()

    def sampling(self, run_dir: str | Path | None = None) -> SamplingConfig:
        """How each new frame is decoded: the fields set here over the play setting of the world in
        ``run_dir`` (:mod:`playworld.play_setting`); its checks name this config's fields."""
        return world_sampling(run_dir, "play", steps=self.steps, temperature=self.temperature,
                              copy_penalty=self.copy_penalty, action_guidance=self.action_guidance)

    def session_limits(self) -> SessionLimits:
        return SessionLimits(self.max_history, self.checkpoint_every, self.max_record_frames, self.max_replay)

    @property
    def max_served_chars(self) -> int:
        """The longest message the server answers: a picture of ``max_upload_bytes`` in base64 and its JSON
        envelope. A longer one (up to :attr:`max_message_chars`) gets an error reply; the session goes on."""
        return (self.max_upload_bytes + 2) // 3 * 4 + 4096

    @property
    def max_message_chars(self) -> int:
        """The transport's limit on one WebSocket message, in bytes (`playworld play` gives it to uvicorn as
        ``ws_max_size``): a longer message closes the connection with code 1009 before the server sees it,
        without a reply. Twice :attr:`max_served_chars` and 1 MiB, so that a message somewhat over what is
        served (a picture over the upload limit) gets an error reply instead."""
        return 2 * self.max_served_chars + (1 << 20)
