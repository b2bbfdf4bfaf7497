"""Reading and writing short videos: any input PyAV or Pillow reads, mp4 (H.264) or gif out.

Reading reuses the ingest path (resize by center-crop or pad, resample the frame rate); errors name
the file and the reason.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import GifImagePlugin, Image

from playworld.errors import DatasetError
from playworld.io import atomic_write

GIF_MIN_DELAY_CS = 2  # browsers show a delay under 2 centiseconds as 10: the shortest delay that plays as written
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
        def write(tmp: Path) -> None:
            tmp.write_bytes(gif_bytes(frames, fps))
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


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """A looping gif of (T, H, W, 3) uint8 frames holding all T frames, each shown 1/fps s (in whole centiseconds).

    Pillow's gif writer merges a frame identical to the one before into it (summing their durations), so a
    still stretch of a rollout decodes as fewer frames than were made. Here the stream is assembled from
    Pillow's per-frame helpers (``getheader`` / ``getdata``): every frame gets a graphic control extension
    with its delay and is drawn over the last one (disposal 1), as the rectangle that changed (one pixel
    when nothing did) with its own adaptive palette as a local color table.
    """
    delay_ms = max(int(round(100 / fps)), GIF_MIN_DELAY_CS) * 10
    first = Image.fromarray(frames[0]).convert("P", palette=Image.Palette.ADAPTIVE)
    header, _ = GifImagePlugin.getheader(first, None, {"loop": 0, "duration": delay_ms})
    chunks = list(header)
    for t, frame in enumerate(frames):
        top, left, bottom, right = 0, 0, 1, 1
        changed = np.argwhere((frame != frames[t - 1]).any(-1)) if t else np.argwhere(np.ones(frame.shape[:2]))
        if len(changed):
            (top, left), (bottom, right) = changed.min(0), changed.max(0) + 1
        patch = Image.fromarray(frame[top:bottom, left:right]).convert("P", palette=Image.Palette.ADAPTIVE)
        chunks += GifImagePlugin.getdata(patch, (int(left), int(top)), duration=delay_ms, disposal=1,
                                         include_color_table=True)
    chunks.append(b";")  # gif trailer
    return b"".join(chunks)
