"""Labelled sample sheets: the picture holds every cell and draws every label; the LAM's and the dynamics'
sheets show the real frames, the inferred action and the predictions under it (and under the next
action), the dynamics' through either backend (MaskGIT, flow) as a world plays it; a tiny LAM and tiny
dynamics training runs of both backends write them to RUN/samples."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from playworld.maskgit import play_sampling
from playworld.models.dynamics import DynamicsTrainer
from playworld.models.flow import FlowDynamicsTrainer
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig, Trainer
from playworld.train.samples import BACKGROUND, SampleSheet, dynamics_samples, lam_samples, tokenizer_samples
from playworld.world import World, WorldConfig
from tiny_world import SIZE, save_tiny_run, tiny_models

from helpers import make_dataset

torch.set_num_threads(1)


def _video(b: int = 2, t: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, SIZE, SIZE, 3), generator=g, dtype=torch.uint8).float() / 255


def test_render_holds_every_cell_enlarged_and_draws_every_label():
    cells = np.zeros((2, 3, 8, 8, 3), np.uint8)
    cells[..., 0] = 200  # a colour the text never uses
    sheet = SampleSheet(cells, ["clip 0: action 1", "clip 1: action 3"], ["frame t", "real t+1", "decoder"])
    image = sheet.render()
    red = (image == (200, 0, 0)).all(-1)
    assert red.sum() == 2 * 3 * 64 * 64  # each 8x8 cell enlarged to 64x64, none covered by text
    rows, cols = np.nonzero(red)
    ink = (image != BACKGROUND).any(-1) & ~red  # text (antialiased)
    assert ink[: rows.min()].any() and ink[:, : cols.min()].any()  # column labels above, row labels left
    other = SampleSheet(cells, ["clip 0: action 1", "clip 1: action 2"], sheet.col_labels).render()
    assert other.shape == image.shape and not np.array_equal(other, image)  # the label is what is drawn
    with pytest.raises(ValueError, match="need 2 row and 3 column labels"):
        SampleSheet(cells, ["a"], ["x", "y", "z"])


def test_lam_sheet_shows_the_inferred_action_and_the_decoder_under_it():
    torch.manual_seed(0)
    lam = LatentActionModel(LAMConfig(height=SIZE, width=SIZE, patch_size=8, num_actions=4, dim=32, heads=2,
                                      encoder_depth=1, decoder_depth=1)).eval()
    with torch.no_grad():  # an encoder that always answers action 2
        lam.to_logits.weight.zero_()
        lam.to_logits.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    video = _video()
    sheet = lam_samples(lam, video)
    assert sheet.row_labels == ["clip 0: action 2", "clip 1: action 2"]
    u8 = (video * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(sheet.cells[:, 0], u8[:, -2]) and np.array_equal(sheet.cells[:, 1], u8[:, -1])
    for col, action in ((2, 2), (3, 3)):
        pred = lam.predict(video, torch.full((2, 3), action))[:, -1]
        assert np.array_equal(sheet.cells[:, col], (pred * 255).round().to(torch.uint8).numpy())
    assert not np.array_equal(sheet.cells[:, 2], sheet.cells[:, 3])
    assert lam_samples(torch.nn.Linear(2, 2), video) is None and tokenizer_samples(lam, video) is None


@pytest.mark.parametrize("backend", ["maskgit", "flow"])
def test_dynamics_sheet_predicts_what_the_world_would_play(backend):
    tok, lam, dyn = tiny_models(backend=backend)
    trainer_cls = FlowDynamicsTrainer if backend == "flow" else DynamicsTrainer
    trainer = trainer_cls(dyn.config, tokenizer=tok, lam=lam)
    trainer.dynamics.load_state_dict(dyn.state_dict())
    trainer.eval()
    video = (_video(t=4, seed=1) * 255).round() / 255  # frames a uint8 prompt can hold exactly
    sheet = dynamics_samples(trainer, video)
    actions = lam.infer_actions(video)
    assert sheet.row_labels == [f"clip {b}: action {a}" for b, a in enumerate(actions[:, -1].tolist())]
    assert sheet.cells.shape == (2, 5, SIZE, SIZE, 3)
    # the world started from the first 3 real frames and stepped with the LAM's last action plays column 4
    world = World(tok, lam, trainer.dynamics, WorldConfig(context_frames=4, decoder_context=4,
                                                          sampling=play_sampling()))
    assert world.backend.name == backend
    prompt = (video[:, :-1] * 255).round().to(torch.uint8)
    world.reset(prompt, seed=0)
    played = world.step(actions[:, -1]).numpy()
    assert np.abs(played.astype(int) - sheet.cells[:, 3]).max() <= 1
    world.reset(prompt, seed=0)
    other = world.step((actions[:, -1] + 1) % 4).numpy()
    assert np.abs(other.astype(int) - sheet.cells[:, 4]).max() <= 1
    assert not np.array_equal(sheet.cells[:, 3], sheet.cells[:, 4])  # so the action is what those columns show
    recon = tok.reconstruct(video)
    assert np.abs((recon[:, -1] * 255).round().numpy() - sheet.cells[:, 2]).max() <= 1
    tok_sheet = tokenizer_samples(tok, video)  # per clip: real frames over their reconstruction
    assert tok_sheet.row_labels == ["clip 0 real", "clip 0 tokens", "clip 1 real", "clip 1 tokens"]
    assert tok_sheet.col_labels == ["t=0", "t=1", "t=2", "t=3"]
    assert np.array_equal(tok_sheet.cells[1::2], (recon * 255).round().to(torch.uint8).numpy())


def test_lam_and_dynamics_training_of_either_backend_write_labelled_samples(tmp_path):
    data = make_dataset(tmp_path / "ds", episodes=6, length=8, size=SIZE, val=0.34)
    train = TrainConfig(steps=1, log_every=1, val_every=1, val_batches=1, ckpt_every=1)
    lam_cfg = LAMConfig(height=SIZE, width=SIZE, patch_size=8, num_actions=4, dim=32, heads=2, encoder_depth=1,
                        decoder_depth=1)
    dyn_cfg, flow_cfg = tiny_models()[2].config, tiny_models(backend="flow")[2].config
    world = save_tiny_run(tmp_path / "world")
    runs = {
        "lam": RunConfig(kind="lam", model=lam_cfg, optim=OptimConfig(lr=1e-4, warmup_steps=0),
                         data=DataConfig(path=str(data), clip_len=3, batch_size=2), train=train),
        "dynamics": RunConfig(kind="dynamics", model=dyn_cfg, optim=OptimConfig(lr=1e-4, warmup_steps=0),
                              data=DataConfig(path=str(data), clip_len=3, batch_size=2), train=train,
                              deps={"tokenizer": str(world / "tokenizer"), "lam": str(world / "lam")}),
    }
    runs["flow"] = dataclasses.replace(runs["dynamics"], model=flow_cfg)
    for kind, cfg in runs.items():
        Trainer(cfg, tmp_path / kind, progress=False).fit()
        pictures = sorted((tmp_path / kind / "samples").glob("val-*.png"))
        assert [p.name for p in pictures] == ["val-00000001.png"], kind
        image = np.asarray(Image.open(pictures[0]).convert("RGB"))
        columns = 4 if kind == "lam" else 5
        assert image.shape[1] > columns * 64 and (image[:8] != BACKGROUND).any(), kind  # 16 px frames drawn at 64
