"""How well scene-cut detection recovers the episodes of game video played back to back.

Writes the first ``--episodes`` episodes of a dataset one after another into one mp4 (playworld.video,
at the dataset's frame size), decodes it as `playworld ingest` does, scores every consecutive frame pair
(playworld.data.ingest.cut_scores) and, for each threshold, counts the cuts, how many fall on a real
episode boundary, and the boundaries missed. The figures in docs/data.md ("Choosing --cut-threshold")
come from:

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ingest_cuts.py data/coinrun-mix --episodes 150
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from playworld.data.format import Dataset
from playworld.data.ingest import cut_scores
from playworld.video import read_video, write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="dataset directory")
    parser.add_argument("--episodes", type=int, default=150, help="episodes to join (the first N)")
    parser.add_argument("--fps", type=float, default=15.0, help="frame rate written and read back")
    parser.add_argument("--thresholds", default="10,15,20,25,30,40,60", help="comma-separated thresholds")
    args = parser.parse_args()

    ds = Dataset(args.data)
    episodes = ds.episodes()[: args.episodes]
    lengths = np.array([e.length for e in episodes])
    frames = np.concatenate([ds.frames(e) for e in episodes])  # (L, H, W, 3)
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "joined.mp4", frames, fps=args.fps)
        decoded = read_video(video, size=frames.shape[1], fps=args.fps)  # as `playworld ingest` decodes
    if len(decoded) != len(frames):
        raise SystemExit(f"decoded {len(decoded)} frames of {len(frames)} written; boundaries would not line up")
    scores = cut_scores(decoded)  # (L-1,): entry t-1 scores frames t-1 -> t
    boundary = np.zeros(len(scores), bool)
    boundary[np.cumsum(lengths)[:-1] - 1] = True
    real, inside = scores[boundary], scores[~boundary]
    print(f"{len(episodes)} episodes ({lengths.min()}-{lengths.max()} frames, median {np.median(lengths):.0f}), "
          f"{len(frames)} frames, {boundary.sum()} boundaries")
    print(f"scores at boundaries: min {real.min():.1f}, 5% {np.percentile(real, 5):.1f}, median {np.median(real):.1f}, "
          f"max {real.max():.1f}; inside episodes: median {np.median(inside):.1f}, 99% "
          f"{np.percentile(inside, 99):.1f}, max {inside.max():.1f}")
    print("threshold  cuts  on a boundary  inside an episode  boundaries missed")
    for t in (float(x) for x in args.thresholds.split(",")):
        cut = scores > t
        print(f"{t:9g}  {cut.sum():4d}  {(cut & boundary).sum():13d}  {(cut & ~boundary).sum():17d}  "
              f"{(~cut & boundary).sum():17d}")


if __name__ == "__main__":
    main()
