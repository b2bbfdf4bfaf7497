"""Turn video files (anything PyAV decodes: mp4, webm, gif, ...) and folders of images into a dataset.

Each input is resized to ``size x size`` keeping its aspect (center crop or pad), resampled to ``fps`` by
timestamps (the frame nearest each 1/fps tick is kept), cut into episodes at scene cuts and at
``max_episode_frames`` (or kept whole, one episode per input, with ``cuts=False``); episodes shorter than
``min_episode_frames`` are dropped. The report says how many cuts each input gave, the episode lengths,
and the largest frame-difference scores, so that a threshold can be chosen from the gap between the
scores of real cuts and the rest. Ingested episodes have no actions and no level seed; their source is
the input path, and they are split by episode.

A file that is empty, corrupt, truncated or unreadable is reported by name with the reason and skipped
(or aborts the whole ingest with ``strict``); the dataset is only renamed into place once complete.
Memory: one input at a time is held at the target size (64x64: 12 KiB a frame, ~660 MB per hour at 15 fps).
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
from PIL import Image

from playworld.bars import progress_bar
from playworld.config import field, to_dict
from playworld.data.format import MANIFEST, DatasetWriter, EpisodeData, partial_dir
from playworld.data.split import SplitRule
from playworld.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    import av

__all__ = ["IngestConfig", "FileResult", "IngestReport", "ingest", "fit_image", "resample", "scene_cuts",
           "cut_scores"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
T = TypeVar("T")
TOP_SCORES = 12  # frame-difference scores the report lists (the largest, over all inputs)
SCORE_LADDER = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 120.0)  # thresholds the report counts scores above


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How videos become episodes."""

    size: int = field(64, help="output frames are size x size RGB")
    fps: float = field(15.0, help="output frame rate; the frame nearest each 1/fps tick is kept")
    fit: Literal["crop", "pad"] = field("crop", help="keep aspect by center-cropping or by padding with black")
    cut_threshold: float = field(
        40.0, help="scene cut where the mean abs difference of consecutive 16x16 thumbnails (0-255) exceeds "
        "this; 0 disables. Choose it from ingest's report of the scores (docs/data.md)")
    cuts: bool = field(True, help="split inputs at scene cuts and every --max-episode-frames; --no-cuts keeps "
                       "each input whole, one episode per file (for sources already split into episodes)")
    max_episode_frames: int = field(1000, help="split longer runs into episodes of at most this length (0: no limit)")
    min_episode_frames: int = field(16, help="drop episodes shorter than this")
    image_fps: float | None = field(None, help="frame rate of image folders (default: --fps, every image kept)")
    shard_frames: int = field(8192, help="frames per shard (an episode is never split across shards)")
    strict: bool = field(False, help="abort on the first unreadable input instead of skipping it")

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"size={self.size} must be >= 8")
        for name in ("fps", "image_fps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value} must be > 0")
        if self.fit not in ("crop", "pad"):
            raise ConfigError(f"fit={self.fit!r} must be 'crop' or 'pad'")
        if self.cut_threshold < 0:
            raise ConfigError(f"cut_threshold={self.cut_threshold} must be >= 0 (0 disables cut detection)")
        if self.min_episode_frames < 1 or self.shard_frames < 1:
            raise ConfigError(f"min_episode_frames={self.min_episode_frames} and shard_frames={self.shard_frames} "
                              "must be >= 1")
        if self.max_episode_frames < 0 or 0 < self.max_episode_frames < self.min_episode_frames:
            raise ConfigError(f"max_episode_frames={self.max_episode_frames} must be 0 (no limit) or at least "
                              f"min_episode_frames={self.min_episode_frames}")


@dataclasses.dataclass(frozen=True)
class FileResult:
    path: str
    error: str | None = None  # why the input was skipped; None if it was read
    episodes: int = 0
    frames: int = 0
    dropped: int = 0  # episodes shorter than min_episode_frames
    cuts: int = 0  # scene cuts found
    length_splits: int = 0  # further splits at max_episode_frames
    lengths: tuple[int, ...] = ()  # frames of each kept episode


@dataclasses.dataclass(frozen=True)
class Score:
    """One frame-difference score: frames ``t-1`` and ``t`` (at the output fps) of input ``path``."""

    score: float
    path: str
    t: int


@dataclasses.dataclass(frozen=True)
class IngestReport:
    out: Path
    files: tuple[FileResult, ...]
    cfg: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    top_scores: tuple[Score, ...] = ()  # the largest frame-difference scores of all inputs, largest first
    above: tuple[tuple[float, int], ...] = ()  # (threshold, frame pairs of all inputs scoring above it)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.error is not None]

    def summary(self) -> str:
        ok = [f for f in self.files if f.error is None]
        lines = [f"ingested {len(ok)} of {len(self.files)} input(s) into {self.out}: "
                 f"{sum(f.episodes for f in ok)} episodes, {sum(f.frames for f in ok)} frames, "
                 f"{sum(f.dropped for f in ok)} short episode(s) dropped"]
        if ok:
            lines += self._cut_lines(ok)
            lines.append(_length_line([n for f in ok for n in f.lengths]))
            lines += self._score_lines()
        lines += [f"  skipped {f.path}: {f.error}" for f in self.failed]
        return "\n".join(lines)

    def _cut_lines(self, ok: list[FileResult]) -> list[str]:
        cfg = self.cfg
        if not cfg.cuts:
            return ["scene cuts: off (--no-cuts): one episode per input"]
        rule = f"--cut-threshold {cfg.cut_threshold:g}" if cfg.cut_threshold > 0 else "off (--cut-threshold 0)"
        lines = [f"scene cuts ({rule}): {sum(f.cuts for f in ok)} in {len(ok)} input(s); "
                 f"{sum(f.length_splits for f in ok)} more split(s) at --max-episode-frames {cfg.max_episode_frames}"]
        shown = ok if len(ok) <= 20 else sorted(ok, key=lambda f: -f.cuts)[:10]
        if len(ok) > 20:
            counts: dict[int, int] = {}
            for f in ok:
                counts[f.cuts] = counts.get(f.cuts, 0) + 1
            lines.append("  cuts per input: " + ", ".join(f"{n} cut(s): {k} input(s)" for n, k in sorted(counts.items())))
            lines.append("  most cuts:")
        lines += [f"  {f.path}: {f.cuts} cut(s) -> {f.episodes} episode(s) of {f.frames} frames" for f in shown]
        return lines

    def _score_lines(self) -> list[str]:
        """The largest frame-difference scores (with where they are, to look at) and how many frame pairs
        score above each of a ladder of thresholds: a range where that count stays flat is a gap between
        real cuts and the rest, and a threshold inside it is safe; a count that keeps growing means there
        is no clean gap (cuts will merge or split episodes)."""
        top = self.top_scores
        if not top:
            return []
        threshold = self.cfg.cut_threshold if self.cfg.cuts else 0.0
        mark = f" ('*': above --cut-threshold {threshold:g}, a cut)" if threshold > 0 else ""
        lines = [f"largest frame differences (mean abs difference of 16x16 thumbnails, 0-255){mark}:"]
        lines.append("  " + ", ".join(f"{s.score:.1f}{'*' if threshold > 0 and s.score > threshold else ''} "
                                      f"{Path(s.path).name} @{s.t / self.cfg.fps:.1f}s" for s in top))
        if self.above:
            lines.append("  frame pairs scoring above " + ", ".join(f"{t:g}: {n}" for t, n in self.above)
                         + " (where the count stays flat over a range, any threshold in it gives the same cuts)")
        return lines


def _length_line(lengths: list[int]) -> str:
    if not lengths:
        return "episode lengths: none kept"
    q = np.percentile(np.asarray(lengths), [0, 10, 50, 90, 100])
    return (f"episode lengths (frames): min {q[0]:.0f}, 10% {q[1]:.0f}, median {q[2]:.0f}, 90% {q[3]:.0f}, "
            f"max {q[4]:.0f}")


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img``. Pillow's own conversion clips 16- and 32-bit integer and float greyscale
    ("I;16", "I", "F": 16-bit PNGs, TIFFs) at 255, which turns most such images white; these are scaled to 8
    bits by their type's range first (integers above 255: 16 bits; floats: [0, 1] when no value exceeds 1)."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8))  # (H, W) uint8: "L"
    return img.convert("RGB")


def fit_image(img: Image.Image, size: int, fit: str) -> np.ndarray:
    """Resize keeping aspect: 'crop' fills size x size and center-crops, 'pad' fits inside and pads black.

    Returns (size, size, 3) uint8.
    """
    img = to_rgb(img)
    w, h = img.size
    if fit == "crop":
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0))
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0))
    return out


def resample(items: Iterable[tuple[float, T]], fps: float) -> Iterator[T]:
    """From ``(time, item)`` in time order, yield for each tick ``t0 + k / fps`` (t0 = first time, up to
    the last time) the item nearest to it; earlier on ties. Frames repeat if the source is slower."""
    t0: float | None = None
    prev: tuple[float, T] | None = None
    k = 0
    for t, item in items:
        if t0 is None:
            t0 = t
        if prev is not None:
            t = max(t, prev[0])  # tolerate a non-monotonic timestamp
        while t0 + k / fps <= t + 1e-9:
            tick = t0 + k / fps
            yield prev[1] if prev is not None and tick - prev[0] <= t - tick else item
            k += 1
        prev = (t, item)


def cut_scores(frames: np.ndarray) -> np.ndarray:
    """Frame-difference scores: frames (L, S, S, 3) uint8 -> (L-1,) float32; entry t-1 scores frames
    t-1 -> t as the mean abs difference (0-255) between their 16x16 block-mean thumbnails."""
    n, s = len(frames), frames.shape[1]
    if n < 2:
        return np.zeros(0, np.float32)
    b = max(1, s // 16)
    g = s // b
    thumbs = frames[:, :g * b, :g * b].reshape(n, g, b, g, b, 3).mean(axis=(2, 4), dtype=np.float32)  # (L,g,g,3)
    return np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2, 3))  # (L-1,)


def scene_cuts(frames: np.ndarray, threshold: float, scores: np.ndarray | None = None) -> list[int]:
    """Indices ``t`` where a new scene starts: frames (L, S, S, 3) uint8 -> sorted list of t in [1, L),
    where :func:`cut_scores` (or the given ``scores``) exceeds ``threshold`` (0 disables)."""
    if threshold <= 0 or len(frames) < 2:
        return []
    score = cut_scores(frames) if scores is None else scores
    return [int(t) + 1 for t in np.nonzero(score > threshold)[0]]


def _av() -> ModuleType:
    """PyAV, imported when a video is read (so that building the command line does not need it)."""
    import av

    return av


def _unreadable() -> tuple[type[BaseException], ...]:
    """What decoding a bad file can raise: FFmpeg errors, I/O errors, and Pillow's (SyntaxError, struct.error
    for broken PNG chunks). Anything else is a bug and propagates."""
    return (_av().error.FFmpegError, OSError, ValueError, EOFError, SyntaxError, struct.error,
            Image.DecompressionBombError)


def _decode_video(path: Path, cfg: IngestConfig) -> list[np.ndarray]:
    with _av().open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or cfg.fps)

        def timed() -> Iterator[tuple[float, av.VideoFrame]]:
            for i, frame in enumerate(container.decode(stream)):
                yield (frame.time if frame.time is not None else i / rate), frame

        frames, last = [], None
        for frame in resample(timed(), cfg.fps):
            frames.append(fit_image(frame.to_image(), cfg.size, cfg.fit))
            last = frame.time
        duration = container.duration / 1e6 if container.duration else None  # seconds
        start = container.start_time / 1e6 if container.start_time else 0.0
    if frames and duration is not None and last is not None and \
            (last - start) < duration - max(1.0, 0.05 * duration):
        raise ValueError(f"truncated: frames stop at {last - start:.2f} s of {duration:.2f} s")
    return frames


def _decode_images(folder: Path, cfg: IngestConfig) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    rate = cfg.image_fps or cfg.fps
    frames = []
    for p in resample(((i / rate, p) for i, p in enumerate(paths)), cfg.fps):
        try:
            with Image.open(p) as img:
                frames.append(fit_image(img, cfg.size, cfg.fit))
        except _unreadable() as e:
            raise ValueError(f"image {p.name}: {e}") from e
    return frames


@dataclasses.dataclass(frozen=True)
class _Split:
    kept: list[np.ndarray]
    dropped: int  # pieces shorter than min_episode_frames
    cuts: int  # scene cuts found
    length_splits: int  # further splits at max_episode_frames


def _episodes(frames: np.ndarray, cfg: IngestConfig, scores: np.ndarray) -> _Split:
    """Split (L, S, S, 3) at scene cuts (``scores``: :func:`cut_scores` of ``frames``) and every
    ``max_episode_frames``, or not at all without ``cfg.cuts``."""
    if not cfg.cuts:
        keep = len(frames) >= cfg.min_episode_frames
        return _Split([frames] if keep else [], 0 if keep else 1, 0, 0)
    cuts = scene_cuts(frames, cfg.cut_threshold, scores)
    bounds = [0, *cuts, len(frames)]
    kept, dropped, pieces = [], 0, 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        step = cfg.max_episode_frames or (b - a)
        for s in range(a, b, step):
            pieces += 1
            piece = frames[s:min(s + step, b)]
            if len(piece) >= cfg.min_episode_frames:
                kept.append(piece)
            else:
                dropped += 1
    return _Split(kept, dropped, len(cuts), pieces - len(cuts) - 1)


def _read(path: Path, cfg: IngestConfig) -> np.ndarray:
    """Decode one input to (L, S, S, 3) uint8, or raise ValueError or one of _unreadable() with the reason."""
    if not path.exists():
        raise FileNotFoundError("no such file or folder")
    if path.is_dir():
        frames = _decode_images(path, cfg)
    elif path.stat().st_size == 0:
        raise ValueError("empty file")
    else:
        frames = _decode_video(path, cfg)
    if not frames:
        raise ValueError("no frames could be decoded")
    return np.stack(frames)


def _reason(e: BaseException) -> str:
    if isinstance(e, _av().error.InvalidDataError):
        return f"cannot decode ({e.strerror}): corrupt, truncated or not a video"
    if isinstance(e, _av().error.FFmpegError):
        return f"cannot decode ({e.strerror})"
    return str(e) or type(e).__name__


def ingest(paths: Sequence[str | Path], out: str | Path, cfg: IngestConfig, *, overwrite: bool = False,
           progress: bool = True) -> IngestReport:
    """Ingest ``paths`` (video files and image folders) into the dataset directory ``out``."""
    out = Path(out)
    if not paths:
        raise ConfigError("ingest: no input paths given")
    if out.exists() and not overwrite:
        raise DatasetError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / MANIFEST).exists():
        raise DatasetError(f"{out}: exists and is not a playworld dataset; refusing to overwrite it")
    shutil.rmtree(partial_dir(out), ignore_errors=True)  # ingest does not resume: start clean
    writer = DatasetWriter(out, frame_shape=(cfg.size, cfg.size, 3), num_actions=None, source={},
                           rule=SplitRule(by="episode"), shard_frames=cfg.shard_frames)
    results: list[FileResult] = []
    top: list[Score] = []  # the TOP_SCORES largest frame-difference scores so far
    above = dict.fromkeys(sorted({*SCORE_LADDER, *([cfg.cut_threshold] if cfg.cut_threshold > 0 else [])}), 0)
    try:
        for raw in progress_bar(paths, desc="ingest", unit="file", disable=not progress):
            path = Path(raw)
            try:
                frames = _read(path, cfg)
            except _unreadable() as e:
                reason = _reason(e)
                if cfg.strict:
                    raise DatasetError(f"{path}: {reason} (--strict: nothing was written)") from e
                results.append(FileResult(str(path), error=reason))
                continue
            scores = cut_scores(frames)
            top.extend(Score(float(scores[t]), str(path), int(t) + 1) for t in np.argsort(-scores)[:TOP_SCORES])
            top = sorted(top, key=lambda x: -x.score)[:TOP_SCORES]
            for t in above:
                above[t] += int((scores > t).sum())
            split = _episodes(frames, cfg, scores)
            kept = split.kept
            results.append(FileResult(str(path), None, len(kept), sum(len(k) for k in kept), split.dropped,
                                      split.cuts, split.length_splits, tuple(len(k) for k in kept)))
            for ep in kept:
                writer.add(EpisodeData(ep, None, None, level_seed=None, source=str(path)))
        report = IngestReport(out, tuple(results), cfg, tuple(top), tuple(above.items()))
        if not any(f.episodes for f in results):
            raise DatasetError(f"{out}: no episodes to write\n{report.summary()}")
        writer.source = {"kind": "ingest", "config": to_dict(cfg),
                         "files": [f.path for f in results if f.error is None],
                         "cuts": [f.cuts for f in results if f.error is None],
                         "skipped": [[f.path, f.error] for f in report.failed]}
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return report
