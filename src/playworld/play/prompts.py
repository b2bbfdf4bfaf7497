"""Where a world starts: an uploaded picture, a dataset frame, or the shipped default world.

Pictures of any size and any format Pillow reads are center-cropped (or padded) to the model's frame
size. Untrusted bytes are checked before decoding: a byte limit and a pixel limit (decompression bombs).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from playworld.data.ingest import to_rgb
from playworld.errors import DatasetError, PlayworldError


class ImageError(PlayworldError, ValueError):
    """An uploaded or given picture cannot be used (too large, not an image, corrupt)."""


def image_to_frame(data: bytes, size: tuple[int, int], *, fit: str = "crop", max_bytes: int = 8 << 20,
                   max_pixels: int = 40_000_000, name: str = "image") -> np.ndarray:
    """Decode picture bytes -> (H, W, 3) uint8 at ``size`` = (H, W), keeping aspect by crop or pad.

    Raises :class:`ImageError` naming ``name`` when the bytes exceed ``max_bytes``, the picture has more
    than ``max_pixels`` pixels, or Pillow cannot read it.
    """
    if fit not in ("crop", "pad"):
        raise ImageError(f"{name}: fit must be 'crop' or 'pad', got {fit!r}")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes exceeds the upload limit of {max_bytes} bytes")
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(f"{name}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels}")
                img.seek(0)  # first frame of an animation
                return fit_frame(img, size, fit)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: too many pixels ({_clean(e)})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a readable picture ({_unknown_format(data)})") from e
    except Exception as e:  # noqa: BLE001 - any decoder failure on untrusted bytes is one named error
        raise ImageError(f"{name}: not a readable picture ({_clean(e) or type(e).__name__})") from e


def _clean(error: BaseException) -> str:
    """An error's text without object reprs (``<_io.BytesIO object at 0x...>``), at most 200 characters."""
    return re.sub(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>", "", str(error))[:200].strip()


def _unknown_format(data: bytes) -> str:
    """Why bytes that no decoder recognised are not a picture."""
    try:
        text = data[:256].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        return "it is text, not a picture; SVG is not supported"
    return "not in an image format this server reads, such as PNG, JPEG, GIF, WebP or BMP"


def fit_frame(img: Image.Image, size: tuple[int, int], fit: str) -> np.ndarray:
    """Resize keeping aspect to (H, W): 'crop' fills and center-crops, 'pad' fits inside on black."""
    h, w = size
    if img.mode in ("RGBA", "LA", "P"):  # transparent areas become white, as on a page
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    img = to_rgb(img)  # 16-bit and float greyscale scaled, not clipped to white
    iw, ih = img.size
    if fit == "crop":
        scale = max(w / iw, h / ih)
        cw, ch = w / scale, h / scale
        box = ((iw - cw) / 2, (ih - ch) / 2, (iw + cw) / 2, (ih + ch) / 2)
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0))
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    out = np.zeros((h, w, 3), dtype=np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0))
    return out


def world_frame_size(world: object) -> tuple[int, int]:
    """(H, W) of a :class:`~playworld.world.World`'s frames (its tokenizer's image size)."""
    side = int(world.tokenizer.config.image_size)  # type: ignore[attr-defined]
    return side, side


def fit_frames(frames: np.ndarray, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """(T, h, w, 3) uint8 -> (T, H, W, 3) uint8 at ``size``; frames already that size are returned as is."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return np.stack([fit_frame(Image.fromarray(f), size, fit) for f in frames])


def read_image(path: str | Path, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """A picture file -> (H, W, 3) uint8; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
    return image_to_frame(data, size, fit=fit, max_bytes=1 << 30, name=str(path))


@dataclass
class DatasetPrompts:
    """Prompt clips of ``frames`` consecutive frames from a dataset directory (all splits)."""

    root: Path
    frames: int = 1

    def __post_init__(self) -> None:
        from playworld.data.loader import ClipDataset

        self.clips = ClipDataset(self.root, clip_len=self.frames, split=None)
        if len(self.clips) == 0:
            raise DatasetError(f"{self.root}: no episode has {self.frames} frames for a prompt")
        self._check_shards()

    def _check_shards(self) -> None:
        """Every shard that holds a prompt exists with the size its manifest records and opens with the
        expected shape (no checksum: that reads every byte; `playworld data verify` does it). Raises
        DatasetError naming the file, so that a server never starts with prompts it cannot show."""
        ds = self.clips.dataset
        for index in sorted({e.shard for e in self.clips.episodes}):
            for f in ds.manifest.shards[index].files().values():
                path = self.root / f.path
                if not path.is_file():
                    raise DatasetError(f"{path}: shard file missing (the manifest lists it); the dataset "
                                       f"{self.root} is incomplete")
                if (size := path.stat().st_size) != f.bytes:
                    raise DatasetError(f"{path}: {size} bytes, the manifest records {f.bytes} (truncated or replaced)")
            ds.shard_arrays(index)

    def __len__(self) -> int:
        """Prompts: clips of ``frames`` consecutive frames (one per frame of each episode when frames=1)."""
        return len(self.clips)

    @property
    def episodes(self) -> int:
        return len(self.clips.dataset)

    @property
    def num_frames(self) -> int:
        return self.clips.dataset.manifest.num_frames

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.clips.dataset.frame_shape)  # type: ignore[return-value]

    def get(self, index: int) -> np.ndarray:
        """Prompt clip ``index`` in [0, len): (T0, H, W, C) uint8."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.root}: prompt index {index} out of range [0, {len(self)})")
        return self.clips.get_batch([index])[0].numpy()

    def frame(self, episode: int, frame: int) -> np.ndarray:
        """The ``frames`` frames of ``episode`` ending at ``frame``: (T0, H, W, C) uint8."""
        ds = self.clips.dataset
        if not 0 <= episode < len(ds):
            raise DatasetError(f"{self.root}: episode {episode} out of range [0, {len(ds)})")
        video = ds.frames(episode)
        if not 0 <= frame < len(video):
            raise DatasetError(f"{self.root}: frame {frame} out of range [0, {len(video)}) of episode {episode}")
        return np.asarray(video[max(frame - self.frames + 1, 0):frame + 1])
