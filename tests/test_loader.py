"""Clip loader: clips never cross episodes, uniform epochs, rank sharding, workers == in-process, exact resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from playworld.data.format import Dataset
from playworld.data.loader import ClipDataset, ClipLoader
from playworld.data.split import SplitRule
from playworld.errors import ConfigError, DatasetError
from test_data_format import synthetic

LENGTHS = [20, 5, 33, 16, 9, 40, 17, 3, 25, 30, 12, 28]  # 5, 9, 3 are shorter than a clip of 10


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Episode i has red = i and green = frame index, in shards of ~60 frames; everything in train."""
    out = tmp_path_factory.mktemp("loader") / "ds"
    synthetic(out, LENGTHS, shard_frames=60, rule=SplitRule(by="episode", val=0.0, test=0.0))
    return out


def take(loader: ClipLoader, n: int) -> list[torch.Tensor]:
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("clip_len, stride", [(10, 1), (4, 3)])
def test_every_clip_lies_in_one_episode(root: Path, clip_len: int, stride: int) -> None:
    clips = ClipDataset(root, clip_len=clip_len, stride=stride, split=None)
    span = (clip_len - 1) * stride + 1
    assert len(clips) == sum(max(n - span + 1, 0) for n in LENGTHS)
    assert clips.num_short == sum(n < span for n in LENGTHS)
    seen = set()
    for i in range(len(clips)):
        clip = clips[i]
        frames = clip.frames.numpy()  # (T, 8, 8, 3)
        assert frames.shape == (clip_len, 8, 8, 3) and frames.dtype == np.uint8
        assert (frames[..., 0] == clip.episode).all(), f"clip {i} mixes episodes"
        assert (frames[:, 0, 0, 1] == clip.start + stride * np.arange(clip_len)).all()
        assert clip.start + span <= LENGTHS[clip.episode]
        expected = (clip.episode + clip.start + stride * np.arange(clip_len)) % 15
        np.testing.assert_array_equal(clips.clip_actions(i), expected)
        np.testing.assert_array_equal(clip.actions.numpy(), expected)
        seen.add((clip.episode, clip.start))
    assert len(seen) == len(clips), "every (episode, start) is exactly one clip"
    batch = next(iter(torch.utils.data.DataLoader(clips, batch_size=3)))  # default collate works on Clip
    assert batch.frames.shape == (3, clip_len, 8, 8, 3)


def test_epoch_follows_the_documented_permutation(root: Path) -> None:
    loader = ClipLoader(root, clip_len=10, batch_size=4, seed=7)
    n, bpe = loader.clips_per_epoch, loader.batches_per_epoch
    assert bpe == n // 4
    clips = ClipDataset(root, clip_len=10)
    batches = take(loader, 2 * bpe)
    for epoch in range(2):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(7 * 1_000_003 + epoch))
        for k in range(bpe):
            idx = perm[k * 4:(k + 1) * 4].tolist()
            assert loader.batch_indices(epoch, k) == idx
            assert torch.equal(batches[epoch * bpe + k], clips.get_batch(idx))
    first = torch.cat([torch.tensor(loader.batch_indices(0, k)) for k in range(bpe)])
    assert len(set(first.tolist())) == bpe * 4, "no clip twice in an epoch"
    assert loader.state_dict() == {"epoch": 2, "batch": 0}


def test_ranks_are_disjoint_and_make_up_the_big_batch(root: Path) -> None:
    single = ClipLoader(root, clip_len=10, batch_size=6, seed=1)
    ranks = [ClipLoader(root, clip_len=10, batch_size=2, seed=1, rank=r, world_size=3) for r in range(3)]
    assert all(r.batches_per_epoch == single.batches_per_epoch for r in ranks)
    big = take(single, single.batches_per_epoch + 2)
    per_rank = [take(r, single.batches_per_epoch + 2) for r in ranks]
    for k, whole in enumerate(big):
        parts = [per_rank[r][k] for r in range(3)]
        idx = [set(ranks[r].batch_indices(k // single.batches_per_epoch, k % single.batches_per_epoch))
               for r in range(3)]
        assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2]), "ranks must be disjoint"
        for r in range(3):
            assert torch.equal(parts[r], whole[r::3])


def test_workers_give_the_same_batches(root: Path) -> None:
    n = ClipLoader(root, clip_len=10, batch_size=4).batches_per_epoch + 3  # crosses an epoch boundary
    inproc = take(ClipLoader(root, clip_len=10, batch_size=4, seed=3), n)
    workers = ClipLoader(root, clip_len=10, batch_size=4, seed=3, num_workers=2)
    got = take(workers, n)
    assert all(torch.equal(a, b) for a, b in zip(inproc, got)) and len(got) == n


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_resumes_exactly(root: Path, num_workers: int) -> None:
    kwargs = dict(clip_len=10, batch_size=4, seed=5, num_workers=num_workers)
    ref = ClipLoader(root, **kwargs)
    bpe = ref.batches_per_epoch
    stream = iter(ref)
    head = [next(stream) for _ in range(bpe - 2)]
    state = ref.state_dict()
    assert state == {"epoch": 0, "batch": bpe - 2}, "counts batches handed out, not prefetched ones"
    tail = [next(stream) for _ in range(5)]
    resumed = ClipLoader(root, **kwargs)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(tail, take(resumed, 5)))
    assert resumed.state_dict() == ref.state_dict() == {"epoch": 1, "batch": 3}
    assert len(head) == bpe - 2


def test_split_selection(tmp_path: Path) -> None:
    synthetic(tmp_path / "ds", [12] * 30, rule=SplitRule(by="episode", val=0.3, test=0.2))
    val = {e.index for e in Dataset(tmp_path / "ds").episodes("val")}
    assert 0 < len(val) < 30
    loader = ClipLoader(tmp_path / "ds", clip_len=4, batch_size=2, split="val")
    for batch in take(loader, loader.batches_per_epoch):
        assert set(batch[..., 0].unique().tolist()) <= val


def test_bad_arguments_are_explained(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="shorter than a clip of 10 frames"):
        ClipLoader(root, clip_len=10, batch_size=2, drop_short=False)
    with pytest.raises(ConfigError, match="rank=2"):
        ClipLoader(root, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        ClipLoader(root, batch_size=0)
    with pytest.raises(DatasetError, match="fewer than one global batch"):
        ClipLoader(root, clip_len=10, batch_size=1000)
    loader = ClipLoader(root, clip_len=10, batch_size=2)
    with pytest.raises(ConfigError, match="out of range"):
        loader.load_state_dict({"epoch": 0, "batch": loader.batches_per_epoch})
    with pytest.raises(ConfigError, match="must be"):
        loader.load_state_dict({"step": 3})
    with pytest.raises(DatasetError, match="no manifest"):
        ClipLoader(tmp_path, batch_size=2)
