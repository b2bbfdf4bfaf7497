"""Latent action model (LAM): discrete actions learned from unlabeled video (Genie, arXiv 2402.15391, sec. 2.1).

Encoder: a causal ST-transformer reads the pixel patches of frames x_1..x_T plus one learned action
token per frame; the action token's output at frame t+1 becomes the latent action of the transition
t -> t+1, quantized to one of |A| codes (default 8). Decoder: a causal ST-transformer reads the patches
of x_1..x_t with the embedding of a_t added to every token of frame t and predicts x_{t+1} in pixels
(MSE). The tiny codebook is the bottleneck that forces a_t to hold "what changed", not the frame.
Both transformers are causal in time, so a_t depends only on frames <= t+1.

Choices for consistent actions on small compute (departures from Genie, which feeds raw frames):
- ``frame_diff_input``: each encoder token also gets the patch difference x_t - x_{t-1}, so motion is
  visible locally without the encoder having to learn a temporal difference first.
- ``predict_delta``: the decoder predicts x_{t+1} - x_t (added to x_t), so copying the frame is free
  and the whole loss is about the change, which is what the action must explain.
- a small code width with l2-normalised codes (cosine VQ, ViT-VQGAN sec. 3.2), EMA codebook and
  dead-code restarts from the shared :class:`~playworld.nn.vq.VectorQuantizer`.

Shapes: B batch, T frames, H x W x C pixels, p patch size, S = (H/p)(W/p) patches, D width, E code width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from playworld.config import field
from playworld.errors import ConfigError
from playworld.models.base import LossOutput, psnr_from_mse
from playworld.nn.blocks import STTransformer, init_weights
from playworld.nn.vq import VectorQuantizer


@dataclass
class LAMConfig:
    """Latent action model: frame size, patching, codebook and the two transformers' sizes."""

    height: int = field(64, help="frame height in pixels")
    width: int = field(64, help="frame width in pixels")
    channels: int = field(3, help="colour channels")
    patch_size: int = field(8, help="square patch side in pixels (must divide height and width)")
    num_actions: int = field(8, help="number of latent actions |A| (codebook size; Genie: 8)")
    code_dim: int = field(16, help="width of the latent action codes (small: a tight, consistent bottleneck)")
    dim: int = field(128, help="width of encoder and decoder")
    encoder_depth: int = field(2, help="ST blocks in the encoder")
    decoder_depth: int = field(2, help="ST blocks in the decoder")
    heads: int = field(4, help="attention heads (dim / heads must be even, for RoPE)")
    mlp_ratio: float = field(4.0, help="MLP hidden width / dim")
    frame_diff_input: bool = field(True, help="feed the encoder x_t - x_{t-1} alongside x_t")
    predict_delta: bool = field(True, help="decoder predicts x_{t+1} - x_t instead of x_{t+1}")
    l2_codes: bool = field(True, help="l2-normalise latents and codes (cosine-similarity VQ)")
    commitment: float = field(0.25, help="VQ commitment weight beta")
    vq_decay: float = field(0.99, help="EMA decay of the action codebook")
    dead_code_threshold: float = field(
        0.1, help="restart a code whose running usage falls below this fraction of the uniform share (0 = off)")
    encoder_shift: int = field(
        0, help="training: roll the encoder's view of each batch by up to this many pixels (0 = off)")
    continuous_warmup: int = field(
        0, help="training steps at the start in which the decoder gets the unquantized latent (0 = off)")
    grad_checkpoint: bool = field(False, help="recompute block activations in backward to save memory")

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels", "patch_size", "code_dim", "dim", "encoder_depth",
                     "decoder_depth", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lam.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_actions < 2:
            raise ConfigError(f"lam.num_actions must be >= 2, got {self.num_actions}")
        if self.height % self.patch_size or self.width % self.patch_size:
            raise ConfigError(
                f"lam.patch_size {self.patch_size} must divide the frame size {self.height}x{self.width}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ConfigError(f"lam.dim {self.dim} / heads {self.heads} must be an even integer (RoPE)")
        if not 0.0 < self.vq_decay < 1.0:
            raise ConfigError(f"lam.vq_decay must be in (0, 1), got {self.vq_decay}")
        if self.commitment < 0:
            raise ConfigError(f"lam.commitment must be >= 0, got {self.commitment}")
        if not 0.0 <= self.dead_code_threshold < 1.0:
            raise ConfigError(f"lam.dead_code_threshold must be in [0, 1), got {self.dead_code_threshold}")

    @property
    def num_patches(self) -> int:
        return (self.height // self.patch_size) * (self.width // self.patch_size)

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels


@dataclass
class LAMEncoding:
    """latents: (B, T-1, E) pre-quantization; quantized: (B, T-1, E) straight-through codes;
    actions: (B, T-1) long code indices; vq_loss: () commitment loss."""

    latents: Tensor
    quantized: Tensor
    actions: Tensor
    vq_loss: Tensor


class LatentActionModel(nn.Module):
    """Encoder + VQ + decoder. ``compute_loss(video (B, T, H, W, C) in [0, 1]) -> LossOutput``;
    ``infer_actions(video) -> (B, T-1)`` long in [0, num_actions)."""

    def __init__(self, config: LAMConfig) -> None:
        super().__init__()
        self.config = c = config
        s = c.num_patches
        enc_in = c.patch_dim * (2 if c.frame_diff_input else 1)
        self.enc_in = nn.Linear(enc_in, c.dim)
        self.action_token = nn.Parameter(torch.zeros(1, 1, 1, c.dim))
        self.encoder = STTransformer(c.dim, c.encoder_depth, c.heads, s + 1, c.mlp_ratio, causal=True,
                                     grad_checkpoint=c.grad_checkpoint)
        self.to_code = nn.Linear(c.dim, c.code_dim)
        self.quantizer = VectorQuantizer(c.num_actions, c.code_dim, commitment=c.commitment, decay=c.vq_decay,
                                         dead_code_threshold=c.dead_code_threshold, l2_normalize=c.l2_codes)
        self.dec_in = nn.Linear(c.patch_dim, c.dim)
        self.from_code = nn.Linear(c.code_dim, c.dim)
        self.decoder = STTransformer(c.dim, c.decoder_depth, c.heads, s, c.mlp_ratio, causal=True,
                                     grad_checkpoint=c.grad_checkpoint)
        self.dec_out = nn.Linear(c.dim, c.patch_dim)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        init_weights(self)
        nn.init.trunc_normal_(self.action_token, std=0.02)

    @property
    def num_actions(self) -> int:
        return self.config.num_actions

    def patchify(self, video: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, S, p*p*C)."""
        c = self.config
        if video.dim() != 5 or tuple(video.shape[2:]) != (c.height, c.width, c.channels):
            raise ValueError(
                f"LAM expects video (B, T, {c.height}, {c.width}, {c.channels}), got {tuple(video.shape)}")
        if video.shape[1] < 2:
            raise ValueError(f"LAM needs at least 2 frames to infer an action, got T={video.shape[1]}")
        return rearrange(video, "b t (h p) (w q) c -> b t (h w) (p q c)", p=c.patch_size, q=c.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, T, S, p*p*C) -> (B, T, H, W, C)."""
        c = self.config
        return rearrange(patches, "b t (h w) (p q c) -> b t (h p) (w q) c", h=c.height // c.patch_size,
                         p=c.patch_size, q=c.patch_size)

    def encode(self, video: Tensor) -> LAMEncoding:
        """video (B, T, H, W, C) in [0, 1] -> latent actions of the T-1 transitions."""
        patches = self.patchify(video)  # (B, T, S, P)
        return self._encode_patches(patches)

    def _encode_patches(self, patches: Tensor) -> LAMEncoding:
        b, t = patches.shape[:2]
        x = patches
        if self.config.frame_diff_input:
            diff = torch.cat([torch.zeros_like(patches[:, :1]), patches[:, 1:] - patches[:, :-1]], dim=1)
            x = torch.cat([patches, diff], dim=-1)  # (B, T, S, 2P)
        x = self.enc_in(x)  # (B, T, S, D)
        tok = repeat(self.action_token, "1 1 1 d -> b t 1 d", b=b, t=t)
        h = self.encoder(torch.cat([x, tok], dim=2))  # (B, T, S+1, D)
        latents = self.to_code(h[:, 1:, -1])  # (B, T-1, E): action token of frame t+1 -> a_t
        q = self.quantizer(latents)
        return LAMEncoding(latents=latents, quantized=q.quantized, actions=q.indices, vq_loss=q.loss)

    def decode(self, context: Tensor, quantized: Tensor) -> Tensor:
        """context: patches of x_1..x_{T-1} (B, T-1, S, P); quantized: (B, T-1, E) -> predicted patches
        of x_2..x_T (B, T-1, S, P)."""
        x = self.dec_in(context) + self.from_code(quantized)[:, :, None, :]  # (B, T-1, S, D)
        out = self.dec_out(self.decoder(x))  # (B, T-1, S, P)
        return context + out if self.config.predict_delta else out

    @torch.no_grad()
    def infer_actions(self, video: Tensor) -> Tensor:
        """video (B, T, H, W, C) float in [0, 1] -> (B, T-1) long latent actions (no codebook update)."""
        was_training = self.training
        self.eval()
        try:
            return self.encode(video).actions
        finally:
            self.train(was_training)

    def compute_loss(self, video: Tensor) -> LossOutput:
        """video (B, T, H, W, C) in [0, 1] -> MSE of the predicted next frames + VQ commitment.

        metrics: ``mse``, ``psnr`` (of the predicted next frames), ``copy_psnr`` (of repeating x_t,
        the baseline the actions must beat), ``vq_loss``, ``action_entropy`` (nats, batch histogram),
        ``action_perplexity`` and ``action_usage/k`` (share of transitions assigned to code k).
        """
        patches = self.patchify(video)  # (B, T, S, P)
        shift = self.config.encoder_shift
        if self.training and shift > 0:
            dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
            enc = self._encode_patches(self.patchify(torch.roll(video, (dy, dx), dims=(2, 3))))
        else:
            enc = self._encode_patches(patches)
        code = enc.quantized
        if self.training:
            if self.steps_seen < self.config.continuous_warmup:
                code = F.normalize(enc.latents, dim=-1) if self.config.l2_codes else enc.latents
            self.steps_seen += 1
        pred = self.decode(patches[:, :-1], code)  # (B, T-1, S, P)
        target = patches[:, 1:]
        mse = F.mse_loss(pred, target)
        loss = mse + enc.vq_loss
        with torch.no_grad():
            copy_mse = F.mse_loss(patches[:, :-1], target)
            counts = torch.bincount(enc.actions.flatten(), minlength=self.num_actions).float()
            share = counts / counts.sum()
            entropy = -(share * share.clamp_min(1e-12).log()).sum()
            metrics = {
                "mse": mse.detach(),
                "psnr": psnr_from_mse(mse.detach()),
                "copy_psnr": psnr_from_mse(copy_mse),
                "vq_loss": enc.vq_loss.detach(),
                "action_entropy": entropy,
                "action_perplexity": entropy.exp(),
            }
            metrics.update({f"action_usage/{k}": share[k] for k in range(self.num_actions)})
        return LossOutput(loss, metrics)
