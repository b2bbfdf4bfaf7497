"""A LAM that reads the recorded actions of a few episodes (``lam.label_weight`` > 0): which episodes are
read, the labelled stream and its resume, the label term deciding a labelled transition's action, the
counts it learns from, and the errors for data without actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from playworld.data.labels import LabelledBatch, LabelledClipLoader, labelled_episodes
from playworld.data.loader import ClipLoader
from playworld.errors import ConfigError, DatasetError
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.presets import build_run_config
from playworld.train import Trainer

from helpers import make_dataset


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 255, (10, 8, 16, 16, 3), dtype=np.uint8)
    actions = rng.integers(0, 4, (10, 7))
    return make_dataset(tmp_path_factory.mktemp("labels") / "ds", videos=videos, actions=actions)


def test_labelled_episodes_are_a_fixed_share_drawn_by_the_seed_alone():
    episodes = list(range(100, 140))
    a = labelled_episodes(episodes, 0.1, seed=3)
    assert len(a) == 4 and a <= set(episodes)
    assert labelled_episodes(episodes, 0.1, seed=3) == a
    assert labelled_episodes(episodes, 0.1, seed=4) != a
    assert len(labelled_episodes(episodes, 0.01, seed=3)) == 1  # at least one (ceil)
    assert labelled_episodes(episodes, 1.0, seed=0) == set(episodes)
    with pytest.raises(ValueError, match="share"):
        labelled_episodes(episodes, 0.0, seed=0)


def test_the_labelled_stream_reads_actions_of_chosen_episodes_only_and_resumes(labelled_data):
    loader = LabelledClipLoader(ClipLoader(labelled_data, clip_len=4, batch_size=3, seed=1), share=0.3, seed=5,
                                num_actions=4)
    assert len(loader.labelled) == 3
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    plain = iter(ClipLoader(labelled_data, clip_len=4, batch_size=3, seed=1))
    for batch in batches:
        assert isinstance(batch, LabelledBatch) and batch.actions.shape == (3, 4)
        assert torch.equal(batch.video, next(plain))  # the same clips, in the same order
    indices = ClipLoader(labelled_data, clip_len=4, batch_size=3, seed=1).batch_indices(0, 0)
    for i, row in zip(indices, batches[0].actions):
        episode, _ = loader.clips.locate(i)
        expected = loader.clips.clip_actions(i) if episode in loader.labelled else np.full(4, -1)
        assert row.tolist() == expected.tolist()
    seen = torch.cat([b.actions for b in batches])
    assert (seen >= 0).any() and (seen == -1).any()
    # resume at batch 4: the same next batch, labels included
    again = LabelledClipLoader(ClipLoader(labelled_data, clip_len=4, batch_size=3, seed=1), share=0.3, seed=5,
                               num_actions=4)
    again.load_state_dict({"epoch": 0, "batch": 4})
    nxt = next(iter(again))
    assert torch.equal(nxt.video, batches[4].video) and torch.equal(nxt.actions, batches[4].actions)
    moved = nxt.to("cpu")
    assert moved.video.dtype == torch.float32 and float(moved.video.max()) <= 1.0


def test_data_without_actions_or_with_another_action_space_is_refused_by_name(labelled_data, tmp_path):
    bare = make_dataset(tmp_path / "bare")
    with pytest.raises(DatasetError, match=r"bare.*has none"):
        LabelledClipLoader(ClipLoader(bare, clip_len=4, batch_size=2), share=0.5, seed=0, num_actions=4)
    with pytest.raises(DatasetError, match=r"ds.*4 actions.*label table 15"):
        LabelledClipLoader(ClipLoader(labelled_data, clip_len=4, batch_size=2), share=0.5, seed=0, num_actions=15)
    with pytest.raises(ConfigError, match=r"bare.*label_weight at 0"):
        build_run_config("lam", "tiny", data_path=str(bare), overrides=["model.label_weight=1"])
    cfg = build_run_config("lam", "tiny", data_path=str(labelled_data), overrides=["model.label_weight=1"])
    assert cfg.model.label_actions == 4  # read from the manifest
    with pytest.raises(ConfigError, match="label_actions"):
        LatentActionModel(LAMConfig(height=16, width=16, patch_size=8, dim=32, heads=2, label_weight=1.0))
    with pytest.raises(ConfigError, match="label_share"):
        LAMConfig(label_share=0.0)


def _lam(**kw) -> LatentActionModel:
    torch.manual_seed(0)
    return LatentActionModel(LAMConfig(height=16, width=16, patch_size=8, num_actions=4, dim=32, heads=2,
                                       encoder_depth=1, decoder_depth=1, label_actions=3, **kw))


@pytest.mark.parametrize("assign", ["argmin", "balanced"])
def test_a_strong_label_term_gives_each_labelled_transition_its_keys_latent(assign):
    """Counts that tie recorded action 1 to latent 2 send every transition labelled 1 to latent 2, whatever the
    decoder's errors say; unlabelled transitions only decay the counts."""
    m = _lam(label_weight=100.0, assign=assign).train()
    with torch.no_grad():
        m.label_counts.zero_()
        m.label_counts[2, 1] = 50.0
    video = torch.rand(4, 3, 16, 16, 3)
    labels = torch.tensor([[1, 1, -1], [1, 1, -1], [-1, -1, -1], [1, -1, -1]])  # (B, T): 5 labelled transitions
    out = m.compute_loss((video, labels))
    assert float(out.metrics["label_share"]) == pytest.approx(5 / 8)
    assert float(m.label_counts[2, 1]) == pytest.approx(50.0 * 0.99 + 5)
    assert float(m.label_counts.sum()) == pytest.approx(50.0 * 0.99 + 5)
    before = m.label_counts.clone()
    m.compute_loss(video)  # video alone: no label term, the counts only decay
    assert torch.allclose(m.label_counts, before * 0.99)
    m.eval()
    m.compute_loss((video, labels))  # evaluation counts nothing
    assert torch.allclose(m.label_counts, before * 0.99)


def test_without_labels_a_label_lam_picks_as_a_plain_one():
    plain, labelled = _lam(assign="balanced"), _lam(assign="balanced", label_weight=10.0)
    assert labelled.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["label_counts"]
    video = torch.rand(3, 3, 16, 16, 3)
    a, b = plain.train().compute_loss(video), labelled.train().compute_loss((video, torch.full((3, 3), -1)))
    assert torch.equal(a.loss, b.loss)
    with pytest.raises(ValueError, match="without a label table"):
        plain.compute_loss((video, torch.zeros(3, 3, dtype=torch.long)))


def test_train_lam_with_labels_logs_them_and_keeps_the_counts(labelled_data, tmp_path):
    cfg = build_run_config("lam", "tiny", data_path=str(labelled_data),
                           overrides=["model.label_weight=10", "model.label_share=0.5", "train.steps=6",
                                      "train.log_every=1", "train.val_every=0", "train.ckpt_every=3",
                                      "data.batch_size=4", "model.dim=32", "model.heads=2", "model.height=16",
                                      "model.width=16"])
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result.step == 6
    lines = (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert any('"label_share"' in line for line in lines)
    from safetensors.torch import load_file

    counts = load_file(str(tmp_path / "run" / "model.safetensors"))["label_counts"]
    assert counts.shape == (8, 4) and float(counts.sum()) > 0


def test_a_stopped_labelled_lam_resumes_exactly(labelled_data, tmp_path):
    """The labelled stream's position and the label counts come back with the checkpoint: 3 + 3 steps
    give the losses and weights of 6 straight."""
    cfg = build_run_config("lam", "tiny", data_path=str(labelled_data),
                           overrides=["model.label_weight=10", "model.label_share=0.5", "train.steps=6",
                                      "train.log_every=1", "train.val_every=0", "train.ckpt_every=3",
                                      "data.batch_size=4", "model.dim=32", "model.heads=2", "model.height=16",
                                      "model.width=16", "train.precision=fp32"])
    torch.manual_seed(cfg.train.seed)
    full = Trainer(cfg, tmp_path / "full", progress=False).fit()
    torch.manual_seed(cfg.train.seed)
    first = Trainer(cfg, tmp_path / "run", progress=False).fit(stop_after=3)
    torch.manual_seed(cfg.train.seed)
    second = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert first.step == 3 and second.step == 6
    assert first.losses + second.losses == full.losses
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("full", "run"))
    assert torch.equal(a["label_counts"], b["label_counts"]) and float(a["label_counts"].sum()) > 0
