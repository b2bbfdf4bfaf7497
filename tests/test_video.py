"""Written gifs keep every frame and its duration, still stretches included (Pillow alone merges repeats),
as Pillow and PyAV (ffmpeg) decode them."""

import av
import numpy as np
import pytest
from PIL import Image, ImageSequence

from playworld.video import write_video
from tiny_world import decode_video


def _clip(rng: np.random.Generator) -> np.ndarray:
    """21 frames (16, 16, 3): a still start, a small change, still again, a whole new frame, still to the end."""
    palette = rng.integers(0, 256, (12, 3), dtype=np.uint8)  # few colours: a gif holds them exactly
    frames = np.repeat(palette[rng.integers(0, 12, (1, 16, 16))], 21, axis=0)
    frames[6:, 3:5, 9:12] = palette[0]
    frames[7:] = frames[7:, ::-1]
    frames[12:] = palette[rng.integers(0, 12, (1, 16, 16))]
    return frames


@pytest.mark.parametrize("fps, delay_ms", [(15, 70), (6, 170), (100, 20)])
def test_gif_holds_every_frame_with_its_duration(tmp_path, fps, delay_ms):
    frames = _clip(np.random.default_rng(fps))
    path = write_video(tmp_path / "clip.gif", frames, fps=fps)
    assert np.array_equal(decode_video(path), frames)  # Pillow: all 21, pixel for pixel
    with Image.open(path) as im:
        assert im.n_frames == 21 and im.info["loop"] == 0
        assert [f.info["duration"] for f in ImageSequence.Iterator(im)] == [delay_ms] * 21
    with av.open(str(path)) as container:  # ffmpeg, as browsers and players read it
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.array_equal(decoded, frames)


def test_gif_of_an_unchanging_world_and_of_many_colours(tmp_path):
    still = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8), 21, axis=0)
    path = write_video(tmp_path / "still.gif", still, fps=15, scale=3)
    assert decode_video(path).shape == (21, 24, 24, 3)
    assert path.stat().st_size < 3 * 1024  # a repeat costs a one-pixel frame, not a whole image
    noisy = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # > 256 colours: quantised
    decoded = decode_video(write_video(tmp_path / "noisy.gif", noisy, fps=15)).astype(int)
    assert decoded.shape == noisy.shape and np.abs(decoded - noisy).mean() < 20
