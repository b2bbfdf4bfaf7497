"""Metrics to JSONL and TensorBoard event files (rank 0 only); images to PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


class MetricsLogger:
    """Appends one JSON object per log call to ``RUN/logs/metrics.jsonl`` and mirrors scalars to
    TensorBoard (``RUN/logs``). A disabled logger (non-zero ranks) does nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.dir = Path(run_dir) / "logs"
        self._tb = None
        self._fh = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.dir))

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3), "split": prefix}
        record.update({k: float(v) for k, v in metrics.items()})
        assert self._fh is not None
        self._fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), step)

    def warning(self, step: int, message: str, prefix: str = "train") -> None:
        """Record a warning as ``{"step", "time", "split", "warning": message}`` in metrics.jsonl (and as
        TensorBoard text ``{prefix}/warning``); the engine prints it too."""
        if not self.enabled:
            return
        assert self._fh is not None
        record = {"step": step, "time": round(time.time(), 3), "split": prefix, "warning": message}
        self._fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb.add_text(f"{prefix}/warning", message, step)

    def image(self, step: int, name: str, image: np.ndarray) -> Path | None:
        """Save an (H, W, 3) uint8 image as ``RUN/samples/{name}-{step}.png`` (and to TensorBoard)."""
        if not self.enabled:
            return None
        from PIL import Image

        from playworld.io import atomic_write

        out = self.dir.parent / "samples" / f"{name}-{step:08d}.png"
        atomic_write(out, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
        if self._tb is not None:
            self._tb.add_image(f"samples/{name}", image, step, dataformats="HWC")
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
