"""Labelled sample sheets written to ``RUN/samples`` at each validation, one kind of sheet per model.

A :class:`SampleSheet` is a grid of frames with a label for every row and column; ``render()`` draws it
as one picture (Pillow's default font). What each model's sheet shows:

- tokenizer: per clip, a row of real frames over a row of their reconstructions through the tokens;
- LAM: per clip, its last transition: frame t, real t+1, the decoder's t+1 under the inferred action a
  and under the next action a+1 (if those two look alike, the decoder ignores its action);
- dynamics (either backend): per clip, its last transition: frame t, real t+1, the tokenizer's t+1 (the
  best the dynamics can do), and the world's t+1 sampled from the real context at play's setting under
  the LAM's action a and under a+1.

Each function takes the trained module and a batch (B, T, H, W, C) in [0, 1] and returns None for a
module it does not know (a model passed to the engine by hand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from playworld.models.base import to_uint8

MIN_CELL = 64  # frames are enlarged (nearest neighbour) to at least this many pixels wide
PAD = 3
BACKGROUND, INK = (24, 24, 24), (235, 235, 235)


@dataclass
class SampleSheet:
    """cells (R, C, H, W, 3) uint8; row_labels R strings; col_labels C strings."""

    cells: np.ndarray
    row_labels: list[str]
    col_labels: list[str]

    def __post_init__(self) -> None:
        if self.cells.ndim != 5 or self.cells.shape[-1] != 3 or self.cells.dtype != np.uint8:
            raise ValueError(f"cells must be (R, C, H, W, 3) uint8, got {self.cells.shape} {self.cells.dtype}")
        r, c = self.cells.shape[:2]
        if len(self.row_labels) != r or len(self.col_labels) != c:
            raise ValueError(f"{r} x {c} cells need {r} row and {c} column labels, "
                             f"got {len(self.row_labels)} and {len(self.col_labels)}")

    def render(self) -> np.ndarray:
        """The sheet as one (H', W', 3) uint8 picture: column labels on top, row labels on the left."""
        r, c, h, w, _ = self.cells.shape
        scale = max(1, math.ceil(MIN_CELL / w))
        font = ImageFont.load_default()
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

        def size(text: str) -> tuple[int, int]:
            left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
            return right - left, bottom - top

        text_h = max([size(t)[1] for t in [*self.row_labels, *self.col_labels, "Ag"]])
        col_w = max([w * scale, *(size(t)[0] + PAD for t in self.col_labels)]) + PAD
        row_h = max(h * scale, text_h) + PAD
        left = max(size(t)[0] for t in self.row_labels) + 2 * PAD
        top = text_h + 2 * PAD
        sheet = Image.new("RGB", (left + c * col_w, top + r * row_h), BACKGROUND)
        draw = ImageDraw.Draw(sheet)
        for j, label in enumerate(self.col_labels):
            draw.text((left + j * col_w + (col_w - size(label)[0]) // 2, PAD), label, fill=INK, font=font)
        for i, label in enumerate(self.row_labels):
            y = top + i * row_h
            draw.text((PAD, y + (h * scale - text_h) // 2), label, fill=INK, font=font)
            for j in range(c):
                cell = self.cells[i, j].repeat(scale, axis=0).repeat(scale, axis=1)
                sheet.paste(Image.fromarray(cell), (left + j * col_w + (col_w - w * scale) // 2, y))
        return np.asarray(sheet)


def _frames(x: Tensor) -> np.ndarray:
    """(..., H, W, C) float in [0, 1] -> uint8 numpy."""
    return to_uint8(x.float()).cpu().numpy()


@torch.no_grad()
def tokenizer_samples(model: nn.Module, video: Tensor) -> SampleSheet | None:
    from playworld.models.tokenizer import VideoTokenizer

    if not isinstance(model, VideoTokenizer):
        return None
    recon = model.reconstruct(video)  # (B, T, H, W, C)
    rows = rearrange(torch.stack([video.float(), recon.float()], dim=1), "b k t h w c -> (b k) t h w c")
    labels = [f"clip {b} {kind}" for b in range(len(video)) for kind in ("real", "tokens")]
    return SampleSheet(_frames(rows), labels, [f"t={t}" for t in range(video.shape[1])])


@torch.no_grad()
def lam_samples(model: nn.Module, video: Tensor) -> SampleSheet | None:
    from playworld.models.lam import LatentActionModel

    if not isinstance(model, LatentActionModel):
        return None
    k = model.config.num_actions
    actions = model.infer_actions(video)  # (B, T-1): what dynamics is trained on and play's keys map to
    shifted = actions.clone()
    shifted[:, -1] = (actions[:, -1] + 1) % k
    pred = model.predict(video, actions)[:, -1]  # (B, H, W, C): x_T under the inferred action
    other = model.predict(video, shifted)[:, -1]
    cells = torch.stack([video[:, -2].float(), video[:, -1].float(), pred.float(), other.float()], dim=1)
    a = actions[:, -1].tolist()
    return SampleSheet(_frames(cells), [f"clip {b}: action {a[b]}" for b in range(len(video))],
                       ["frame t", "real t+1", "LAM decoder, a", "LAM decoder, a+1"])


@torch.no_grad()
def dynamics_samples(model: nn.Module, video: Tensor) -> SampleSheet | None:
    """Through the run's dynamics backend (:func:`playworld.backends.make_backend`, as a world plays it:
    MaskGIT's tokens or flow's latents): the real frames x_1..x_{T-1} are committed to a fresh cache and
    x_T is sampled against it at play's setting, seeded, under the LAM's action a and under a+1."""
    from playworld.backends import make_backend
    from playworld.maskgit import play_sampling
    from playworld.models.dynamics import FrozenModelsTrainer

    if not isinstance(model, FrozenModelsTrainer):
        return None
    backend = make_backend(model.dynamics, model.tokenizer, model.lam)
    b, t = video.shape[:2]
    latents = backend.encode(video)  # (B, T, *L)
    actions = model.lam.infer_actions(video)  # type: ignore[operator]  # (B, T-1)
    frame_actions = backend.frame_actions(actions)  # (B, T)
    cache = backend.new_cache(t)
    backend.commit(latents[:, :-1], frame_actions[:, :-1], cache, None)
    decoder = model.tokenizer.new_cache(t)  # type: ignore[operator]
    recon = backend.decode(latents, decoder.clone())[:, -1]  # (B, H, W, C): the tokenizer's t+1
    backend.decode(latents[:, :-1], decoder)  # the decoder's past: x_1..x_{T-1}

    def predict_last(last_action: Tensor) -> Tensor:
        """The world's x_T under ``last_action`` (B,) -> (B, H, W, C)."""
        generator = torch.Generator(device=video.device).manual_seed(0)
        last = backend.sample(last_action[:, None], [cache.clone()], latents[:, -2], play_sampling(),
                              [(generator, b)])  # a copy: a one_pass model's sampling writes the frame
        return backend.decode(last[:, None], decoder.clone())[:, 0]

    a = actions[:, -1]
    cells = torch.stack([video[:, -2].float(), video[:, -1].float(), recon.float(), predict_last(a).float(),
                         predict_last((a + 1) % backend.num_actions).float()], dim=1)
    return SampleSheet(_frames(cells), [f"clip {i}: action {x}" for i, x in enumerate(a.tolist())],
                       ["frame t", "real t+1", "tokenizer t+1", "world t+1, a", "world t+1, a+1"])
