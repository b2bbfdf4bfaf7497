"""Video ingest: mp4/gif/PNG folders, resampling, fit, scene cuts, bad files reported, --strict, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from playworld.cli import main
from playworld.data.format import Dataset, partial_dir
from playworld.data.ingest import IngestConfig, fit_image, ingest, resample, scene_cuts
from playworld.data.verify import verify_dataset
from playworld.errors import ConfigError, DatasetError


def square_frames(n: int, w: int = 96, h: int = 72, background: int = 0) -> list[np.ndarray]:
    """A red 16x16 square moving right by 1 px per frame over a grey background."""
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), background, np.uint8)
        img[28:44, 10 + i:26 + i] = (230, 30, 30)
        frames.append(img)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: int = 30, codec: str = "libx264") -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width, _ = frames[0].shape
        stream.pix_fmt = "yuv420p"
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    mp4 = write_video(root / "square.mp4", square_frames(60, background=60))  # 2 s at 30 fps
    gif = root / "anim.gif"
    pil = [Image.fromarray(f) for f in square_frames(20, w=48, h=48)]
    pil[0].save(gif, save_all=True, append_images=pil[1:], duration=100, loop=0)  # 2 s at 10 fps
    folder = root / "pngs"
    folder.mkdir()
    for i, f in enumerate(square_frames(24, w=64, h=80)):
        Image.fromarray(f).save(folder / f"frame_{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    corrupt = root / "x.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    empty = root / "empty.mp4"
    empty.touch()
    truncated = root / "truncated.mp4"
    truncated.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # loses the index (moov atom)
    mkv = write_video(root / "long.mkv", square_frames(90), codec="mpeg4")  # 3 s
    cut_mkv = root / "cut.mkv"
    cut_mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])  # decodes, but stops early
    return {"mp4": mp4, "gif": gif, "pngs": folder, "corrupt": corrupt, "empty": empty, "truncated": truncated,
            "cut_mkv": cut_mkv}


def test_ingest_good_and_bad_inputs(inputs: dict[str, Path], tmp_path: Path) -> None:
    cfg = IngestConfig(fps=15, min_episode_frames=8)
    order = ["mp4", "corrupt", "gif", "empty", "pngs", "truncated", "cut_mkv"]
    report = ingest([inputs[k] for k in order], tmp_path / "ds", cfg, progress=False)
    failed = {Path(f.path).name: f.error for f in report.failed}
    assert set(failed) == {"x.mp4", "empty.mp4", "truncated.mp4", "cut.mkv"}
    assert failed["cut.mkv"].startswith("truncated: frames stop at")
    assert "corrupt" in failed["x.mp4"] and failed["empty.mp4"] == "empty file" and "cannot decode" in failed[
        "truncated.mp4"]
    assert "skipped" in report.summary() and str(inputs["corrupt"]) in report.summary()
    assert verify_dataset(tmp_path / "ds") == []
    ds = Dataset(tmp_path / "ds")
    eps = ds.episodes()
    assert [Path(e.source).name for e in eps] == ["square.mp4", "anim.gif", "pngs"]
    assert [e.length for e in eps] == [30, 29, 24]  # 2 s of 30 fps -> 15 fps; 10 fps gif upsampled; 1 png = 1 frame
    assert all(not e.has_actions and e.level_seed is None for e in eps)
    assert ds.manifest.split_rule.by == "episode" and ds.manifest.source["skipped"]
    frames = np.asarray(ds.frames(eps[0]))  # (30, 64, 64, 3)
    assert frames.shape == (30, 64, 64, 3)
    red = (frames[..., 0] > 150) & (frames[..., 1] < 100)
    xs = [np.nonzero(r)[1].mean() for r in red]
    assert all(b > a for a, b in zip(xs, xs[1:])), "the square must move right in every kept frame"


def test_strict_aborts_and_leaves_nothing(inputs: dict[str, Path], tmp_path: Path) -> None:
    cfg = IngestConfig(strict=True, min_episode_frames=8)
    with pytest.raises(DatasetError, match="x.mp4.*--strict"):
        ingest([inputs["mp4"], inputs["corrupt"]], tmp_path / "ds", cfg, progress=False)
    assert not (tmp_path / "ds").exists() and not partial_dir(tmp_path / "ds").exists()
    with pytest.raises(DatasetError, match="no episodes"):
        ingest([inputs["empty"], inputs["corrupt"]], tmp_path / "ds", IngestConfig(), progress=False)
    assert not (tmp_path / "ds").exists() and not partial_dir(tmp_path / "ds").exists()


def test_existing_output_needs_overwrite(inputs: dict[str, Path], tmp_path: Path) -> None:
    cfg = IngestConfig(min_episode_frames=8)
    ingest([inputs["gif"]], tmp_path / "ds", cfg, progress=False)
    with pytest.raises(DatasetError, match="--overwrite"):
        ingest([inputs["mp4"]], tmp_path / "ds", cfg, progress=False)
    ingest([inputs["mp4"]], tmp_path / "ds", cfg, overwrite=True, progress=False)
    assert [Path(e.source).name for e in Dataset(tmp_path / "ds").episodes()] == ["square.mp4"]


def test_scene_cuts_max_and_min_episode_frames(tmp_path: Path) -> None:
    scenes = square_frames(45, background=30) + square_frames(45, background=220) + square_frames(6)
    video = write_video(tmp_path / "cuts.mp4", scenes)  # 3.2 s, two hard cuts
    cfg = IngestConfig(fps=30, max_episode_frames=20, min_episode_frames=8)
    report = ingest([video], tmp_path / "ds", cfg, progress=False)
    lengths = [e.length for e in Dataset(tmp_path / "ds").episodes()]
    assert lengths == [20, 20, 20, 20] and report.files[0].dropped == 3  # 45 = 20+20+5; the 6-frame scene
    no_cuts = IngestConfig(fps=30, cut_threshold=0, max_episode_frames=0, min_episode_frames=8)
    ingest([video], tmp_path / "ds2", no_cuts, progress=False)
    assert [e.length for e in Dataset(tmp_path / "ds2").episodes()] == [96]


def test_resample_keeps_nearest_frame() -> None:
    times = [0.0, 0.04, 0.07, 0.11, 0.2, 0.21]
    assert list(resample(zip(times, range(6)), fps=10)) == [0, 3, 4]  # ticks 0.0, 0.1 (0.11 nearest), 0.2
    assert list(resample(((i / 10, i) for i in range(3)), fps=20)) == [0, 0, 1, 1, 2]  # upsampling repeats
    assert list(resample(iter([]), fps=10)) == []


def test_fit_crop_and_pad() -> None:
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20] = 255  # left quarter white
    crop = fit_image(Image.fromarray(wide), 16, "crop")
    pad = fit_image(Image.fromarray(wide), 16, "pad")
    assert crop.shape == pad.shape == (16, 16, 3)
    assert crop.mean() < 10, "center crop drops the white left quarter"
    assert pad[:4].max() == 0 and pad[-4:].max() == 0 and pad[8, 0].min() > 200, "pad keeps it, black bars"


def test_16_bit_and_float_greyscale_images_are_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    from playworld.play.prompts import fit_frame

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)  # a 16-bit PNG's full range
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
        assert np.asarray(img.convert("RGB")).mean() > 250  # what Pillow alone gives: nearly all white
        for frame in (fit_image(img, 32, "crop"), fit_frame(img, (32, 32), "crop")):
            assert frame.shape == (32, 32, 3)
            assert abs(frame.mean() - 127.5) < 3 and frame.min() < 5 and frame.max() > 250
    half = Image.fromarray(np.full((8, 8), 0.5, np.float32))  # mode "F" in [0, 1]
    assert fit_image(half, 8, "crop")[0, 0].tolist() == [128, 128, 128]


def test_scene_cut_score() -> None:
    frames = np.zeros((5, 64, 64, 3), np.uint8)
    frames[3:] = 200
    assert scene_cuts(frames, 40.0) == [3] and scene_cuts(frames, 0) == []


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="fps=0"):
        IngestConfig(fps=0)
    with pytest.raises(ConfigError, match="max_episode_frames=4 must be 0 \\(no limit\\) or at least"):
        IngestConfig(max_episode_frames=4, min_episode_frames=8)


def test_cli_ingest(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "cli")
    args = ["ingest", str(inputs["gif"]), str(inputs["corrupt"]), "--out", out, "--size", "32", "--fps", "10",
            "--fit", "pad", "--min-episode-frames", "4", "--no-progress"]
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().err and Dataset(out).frame_shape == (32, 32, 3)
    assert main(["data", "verify", out, "--no-progress"]) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--strict"]) == 2 and "x.mp4" in capsys.readouterr().err
    assert os.path.exists(out), "a failed --strict run must not remove the dataset it would replace"


def scenes_video(path: Path, backgrounds: list[int], frames_each: int = 20) -> Path:
    """A 64x64 video at 15 fps of one scene per background (a grey level), a square moving in each;
    written with playworld.video, so the cuts are at multiples of ``frames_each``."""
    from playworld.video import write_video as write

    frames = np.zeros((len(backgrounds) * frames_each, 64, 64, 3), np.uint8)
    for k, grey in enumerate(backgrounds):
        for i in range(frames_each):
            t = k * frames_each + i
            frames[t] = grey
            frames[t, 20:36, 4 + 2 * i:20 + 2 * i] = (230, 30, 30)
    return write(path, frames, fps=15)


def test_ingest_reports_the_cuts_it_found(tmp_path: Path) -> None:
    video = scenes_video(tmp_path / "four.mp4", [20, 200, 90, 250])  # cuts at frames 20, 40, 60
    report = ingest([video], tmp_path / "ds", IngestConfig(fps=15, min_episode_frames=8), progress=False)
    (result,) = report.files
    assert (result.cuts, result.episodes, result.lengths, result.length_splits) == (3, 4, (20, 20, 20, 20), 0)
    assert sorted(s.t for s in report.top_scores[:3]) == [20, 40, 60] and report.top_scores[2].score > 40
    assert report.top_scores[2].t == 40  # 200 -> 90, the smallest of the three jumps in grey level
    assert report.top_scores[3].score < 10  # the moving square: far below any cut
    text = report.summary()
    assert "scene cuts (--cut-threshold 40): 3 in 1 input(s); 0 more split(s) at --max-episode-frames 1000" in text
    assert f"{video}: 3 cut(s) -> 4 episode(s) of 80 frames" in text
    assert "episode lengths (frames): min 20, 10% 20, median 20, 90% 20, max 20" in text
    assert "* four.mp4 @2.7s" in text  # the weakest cut, where it is
    assert "frame pairs scoring above 5: 3, 10: 3, 15: 3, 20: 3, 30: 3, 40: 3, 60: 3, 80: 3, 120: 2 (" in text  # 200 -> 90 scores under 120
    assert Dataset(tmp_path / "ds").manifest.source["cuts"] == [3]
    # a threshold above the weakest cut (200 -> 90: 110 grey levels) merges those scenes, and says so
    high = ingest([video], tmp_path / "ds2", IngestConfig(fps=15, min_episode_frames=8,
                                                          cut_threshold=report.top_scores[2].score + 1),
                  progress=False)
    assert high.files[0].cuts == 2 and high.files[0].lengths == (20, 40, 20)


def test_no_cuts_keeps_one_episode_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = scenes_video(tmp_path / "a.mp4", [20, 200, 90])
    b = scenes_video(tmp_path / "b.mp4", [250, 20], frames_each=40)  # 80 frames: longer than the max below
    out = tmp_path / "ds"
    assert main(["ingest", str(a), str(b), "--out", str(out), "--no-cuts", "--max-episode-frames", "30",
                 "--min-episode-frames", "8", "--no-progress"]) == 0
    assert [(Path(e.source).name, e.length) for e in Dataset(out).episodes()] == [("a.mp4", 60), ("b.mp4", 80)]
    text = capsys.readouterr().out
    assert "scene cuts: off (--no-cuts): one episode per input" in text and "2 episodes, 140 frames" in text
    assert "largest frame differences" in text and "'*'" not in text  # scores shown, none marked as a cut
