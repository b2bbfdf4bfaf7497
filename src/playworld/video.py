"""Reading and writing short videos: any input PyAV or Pillow reads, mp4 (H.264) or gif out.

Reading reuses the ingest path (resize by center-crop or pad, resample the frame rate); errors name
the file and the reason.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from playworld.errors import DatasetError
from playworld.io import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def read_video(path: str | Path, *, size: int = 64, fps: float = 15.0, fit: str = "crop") -> np.ndarray:
    """Decode a video file, an image, or a folder of images into (T, size, size, 3) uint8."""
    from playworld.data.ingest import IngestConfig, _read, _reason, fit_image

    path = Path(path)
    try:
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as img:
                return fit_image(img, size, fit)[None]
        return _read(path, IngestConfig(size=size, fps=fps, fit=fit))
    except Exception as e:  # noqa: BLE001 - every decoder failure becomes one named error
        raise DatasetError(f"{path}: {_reason(e)}") from e


def write_video(path: str | Path, frames: np.ndarray, *, fps: float = 15.0, scale: int = 1) -> Path:
    """Write (T, H, W, 3) uint8 frames to ``path`` (.mp4: H.264; .gif: looping gif) atomically.

    ``scale`` enlarges each pixel to a scale x scale block (nearest neighbour: no blur).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video expects (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        duration = max(int(round(1000 / fps)), 20)

        def write(tmp: Path) -> None:
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    elif suffix == ".mp4":
        def write(tmp: Path) -> None:
            with av.open(str(tmp), mode="w", format="mp4") as out:
                stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                h, w = frames.shape[1:3]
                stream.width, stream.height = w + w % 2, h + h % 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18", "preset": "veryfast"}
                for f in frames:
                    if w % 2 or h % 2:
                        f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                    for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
    else:
        raise ValueError(f"{path}: unsupported video format {suffix!r} (use .mp4 or .gif)")
    atomic_write(path, write)
    return path
