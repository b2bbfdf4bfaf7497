"""Video tokenizer: the ST-ViViT VQ-VAE of Genie (arXiv 2402.15391, sec. 2.1 and appendix).

Frames are cut into p x p patches, embedded, encoded by a spatio-temporal transformer that is causal
in time, projected to a small code width and quantized (VQ, or FSQ: arXiv 2309.15505); the codes are
projected back up and decoded by a second causal ST-transformer into patch pixels. Because both
transformers are causal, the tokens and the reconstruction of frame t depend on frames <= t only, so
frames can be encoded and decoded one at a time with a temporal KV cache (``encode_step`` /
``decode_step``), which is what play time does.

Pixels: inputs are (B, T, H, W, C) float in [0, 1]; the network sees them mapped to [-1, 1]; the
decoder predicts [-1, 1] values, mapped back to [0, 1] (and clamped only when decoding for use). The
reconstruction loss is the MSE in [0, 1] units, so ``recon_mse`` and ``psnr = -10 log10(recon_mse)``
are the usual 8-bit-image figures.

Shapes: B batch, T frames, H x W pixels, C channels, p patch, h x w = H/p x W/p token grid,
S = h*w tokens per frame, D model width, E code width (``code_dim`` for VQ, len(fsq_levels) for FSQ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from playworld.config import field
from playworld.errors import CheckpointError, ConfigError
from playworld.eval.change import batch_change, moving_mask
from playworld.models.base import LossOutput, TrainableModel, psnr_from_mse
from playworld.nn.blocks import STTransformer, TemporalKVCache, init_weights
from playworld.nn.convstem import ConvHead, ConvStem
from playworld.nn.fsq import FSQ
from playworld.nn.quantize import QuantizeOutput
from playworld.nn.vq import VectorQuantizer


@dataclass
class TokenizerConfig:
    """Size and quantizer of the video tokenizer. Defaults are the ``small`` CPU recipe."""

    image_size: int = field(64, help="frame height and width in pixels (square frames)")
    channels: int = field(3, help="colour channels per pixel")
    patch: int = field(4, help="patch side in pixels; one token per patch (64 / 4 -> 16 x 16 tokens)")
    stem: Literal["linear", "conv"] = field(
        "linear", help="pixels <-> tokens: 'linear' (one linear map per patch, ViViT) or 'conv' (residual "
        "convolutions at full and half resolution around the transformers: keeps texture across patch borders)")
    stem_features: int = field(32, help="conv stem: channels at full resolution (doubled at each stride-2 stage)")
    dim: int = field(128, help="transformer width")
    enc_depth: int = field(3, help="ST-transformer blocks in the encoder")
    dec_depth: int = field(3, help="ST-transformer blocks in the decoder")
    heads: int = field(4, help="attention heads (dim / heads must be even: temporal RoPE)")
    mlp_ratio: float = field(4.0, help="MLP hidden width as a multiple of dim")
    quantizer: Literal["vq", "fsq"] = field("vq", help="'vq' (learned codebook) or 'fsq' (fixed grid)")
    num_codes: int = field(1024, help="VQ codebook size (FSQ: prod(fsq_levels) instead)")
    code_dim: int = field(32, help="VQ code width (FSQ: len(fsq_levels) instead)")
    l2_codes: bool = field(True, help="VQ: l2-normalise latents and codes (cosine similarity; keeps usage high)")
    ema_codebook: bool = field(True, help="VQ: update the codebook by EMA (else learn it with a codebook loss)")
    ema_decay: float = field(0.95, help="VQ: EMA decay of the codebook and usage statistics (0.95 lets the "
                             "codebook follow the encoder, and dead codes restart, within a short CPU run; "
                             "0.99 is the usual choice for long GPU runs)")
    commitment: float = field(0.25, help="VQ: weight of the commitment loss ||z - sg(q)||^2")
    dead_code_threshold: float = field(0.03, help="VQ: restart codes used less than this fraction of the "
                                       "uniform share (0 disables restarts)")
    fsq_levels: tuple[int, ...] = field((8, 5, 5, 5), help="FSQ: levels per channel (8,5,5,5 -> 1000 codes)")
    dropout: float = field(0.0, help="dropout in attention and MLPs")
    edge_weight: float = field(0.0, help="weight of the L1 error of spatial pixel differences (sharp edges and "
                               "texture; 0 = off)")
    temporal_weight: float = field(0.0, help="weight of the MSE of differences between consecutive frames "
                                   "(motion; 0 = off)")
    moving_weight: float = field(0.0, help="weight of the MSE on the pixels that changed since the frame before "
                                 "(any channel by > 0.1; frames 2.. of a clip): a sprite of a few pixels on a "
                                 "fixed screen counts as much as the still background (0 = off)")
    grad_checkpoint: bool = field(False, help="recompute blocks in backward to save activation memory")
    decoder_only: bool = field(
        False, help="train the decoder half alone (codes -> pixels); the stem, encoder and codebook stay as "
        "train.init_from loads them, so the tokens, and every LAM and dynamics model trained on them, stay valid")

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch", "dim", "enc_depth", "dec_depth", "heads", "code_dim",
                     "stem_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tokenizer.{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch:
            raise ConfigError(f"tokenizer.image_size {self.image_size} is not divisible by patch {self.patch}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ConfigError(f"tokenizer.dim {self.dim} / heads {self.heads} must be an even integer "
                              "(per-head width, rotary embeddings)")
        if self.stem not in ("linear", "conv"):
            raise ConfigError(f"tokenizer.stem must be 'linear' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and self.patch & (self.patch - 1):
            raise ConfigError(f"tokenizer.patch {self.patch} must be a power of two with stem 'conv'")
        if self.quantizer not in ("vq", "fsq"):
            raise ConfigError(f"tokenizer.quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.num_codes < 2:
            raise ConfigError(f"tokenizer.num_codes must be >= 2, got {self.num_codes}")
        self.fsq_levels = tuple(self.fsq_levels)
        if not self.fsq_levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 2
                                      for v in self.fsq_levels):
            raise ConfigError(f"tokenizer.fsq_levels must be integers >= 2, got {self.fsq_levels}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"tokenizer.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.commitment < 0:
            raise ConfigError(f"tokenizer.commitment must be >= 0, got {self.commitment}")
        if not 0.0 <= self.dead_code_threshold < 1.0:
            raise ConfigError(f"tokenizer.dead_code_threshold must be in [0, 1), got {self.dead_code_threshold}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"tokenizer.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"tokenizer.dropout must be in [0, 1), got {self.dropout}")
        for name in ("edge_weight", "temporal_weight", "moving_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"tokenizer.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def tokens_per_frame(self) -> int:
        """Tokens one frame makes (every model config declares it; training's cost estimate reads it)."""
        return (self.image_size // self.patch) ** 2

    @property
    def codebook_size(self) -> int:
        """Number of distinct tokens (the dynamics model's vocabulary)."""
        return self.num_codes if self.quantizer == "vq" else math.prod(self.fsq_levels)


@dataclass
class TokenizerEncoding:
    """indices: (B, T, h, w) long token ids; quantized: (B, T, h*w, E) their codes (straight-through)."""

    indices: Tensor
    quantized: Tensor


@dataclass
class TokenizerCache:
    """Temporal KV caches for frame-by-frame encoding and decoding (from ``VideoTokenizer.new_cache``)."""

    encoder: TemporalKVCache
    decoder: TemporalKVCache

    def clone(self) -> TokenizerCache:
        """A deep copy of both caches."""
        return TokenizerCache(self.encoder.clone(), self.decoder.clone())

    @property
    def nbytes(self) -> int:
        return self.encoder.nbytes + self.decoder.nbytes


class VideoTokenizer(TrainableModel):
    """ST-ViViT VQ-VAE over (B, T, H, W, C) videos in [0, 1]; causal in time.

    encode(video) -> TokenizerEncoding; decode(indices) -> video; compute_loss(video) -> LossOutput.
    ``encode``, ``decode``, ``reconstruct`` and the ``*_step`` methods run without gradients and never
    update the quantizer's statistics; call ``eval()`` first to disable dropout.
    """

    # trained with bf16 weights (playworld.train.mixed), these stay fp32: the quantizer and the
    # projection that feeds it, so that latents and codebook distances are fp32
    keep_fp32 = ("to_code.", "quantizer.")

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        c = self.config = config
        h = w = c.image_size // c.patch
        self.grid = (h, w)
        self.tokens_per_frame = h * w
        patch_dim = c.patch * c.patch * c.channels
        self.patch_in: nn.Module
        self.patch_out: nn.Module
        if c.stem == "conv":
            self.patch_in = ConvStem(c.channels, c.stem_features, c.patch, c.dim)
            self.patch_out = ConvHead(c.channels, c.stem_features, c.patch, c.dim, self.grid)
        else:
            self.patch_in, self.patch_out = nn.Linear(patch_dim, c.dim), nn.Linear(c.dim, patch_dim)
        self.encoder = STTransformer(c.dim, c.enc_depth, c.heads, h * w, c.mlp_ratio, c.dropout, causal=True,
                                     grad_checkpoint=c.grad_checkpoint)
        self.quantizer: VectorQuantizer | FSQ
        if c.quantizer == "vq":
            self.quantizer = VectorQuantizer(c.num_codes, c.code_dim, commitment=c.commitment, ema=c.ema_codebook,
                                             decay=c.ema_decay, dead_code_threshold=c.dead_code_threshold,
                                             l2_normalize=c.l2_codes)
        else:
            self.quantizer = FSQ(c.fsq_levels)
        self.to_code = nn.Linear(c.dim, self.quantizer.dim)
        self.from_code = nn.Linear(self.quantizer.dim, c.dim)
        self.decoder = STTransformer(c.dim, c.dec_depth, c.heads, h * w, c.mlp_ratio, c.dropout, causal=True,
                                     grad_checkpoint=c.grad_checkpoint)
        init_weights(self)
        # unit-variance latents at init (the encoder ends in a LayerNorm): FSQ's grid then starts spread
        # over its levels instead of every latent rounding to the centre code
        nn.init.normal_(self.to_code.weight, std=c.dim**-0.5)
        if c.decoder_only:  # frozen: no gradient, not in the optimizer, not averaged, kept fp32, eval mode
            for part in self.encoder_half():
                part.requires_grad_(False).eval()

    def encoder_half(self) -> tuple[nn.Module, ...]:
        """The modules that make the tokens (pixels -> codes): frozen under ``decoder_only``."""
        return (self.patch_in, self.encoder, self.to_code, self.quantizer)

    def train(self, mode: bool = True) -> VideoTokenizer:
        """Set training mode; under ``decoder_only`` the encoder half stays in eval mode (no dropout, the
        codebook's statistics and dead-code restarts untouched), so its tokens are those ``encode`` makes."""
        super().train(mode)
        if self.config.decoder_only:
            for part in self.encoder_half():
                part.eval()
        return self

    def _decoder_block_names(self) -> list[set[str]]:
        """Per decoder block, the names of its tensors in this model's state dict."""
        return [{f"decoder.blocks.{i}.{n}" for n in block.state_dict()} for i, block in enumerate(self.decoder.blocks)]

    def init_from_optional(self) -> set[str]:
        """What ``train.init_from`` may find missing from the source tokenizer: under ``decoder_only``, decoder
        blocks after the source's own (a deeper decoder, ``dec_depth`` above the source's); they start as the
        identity (:meth:`init_from_missing`), so the fine-tune starts from the source's reconstructions."""
        return set().union(*self._decoder_block_names()) if self.config.decoder_only else set()

    def init_from_missing(self, missing: set[str], where: str) -> None:
        """Start the decoder blocks that the source at ``where`` lacked (``missing``: their tensor names) as
        the identity: each residual branch's output projection zero. Only whole blocks after the source's
        last may be missing."""
        blocks, names = self.decoder.blocks, self._decoder_block_names()
        absent = [i for i, block_names in enumerate(names) if block_names & missing]
        partial = [i for i in absent if not names[i] <= missing]
        if partial or absent != list(range(len(blocks) - len(absent), len(blocks))):
            raise CheckpointError(f"{where}: a deeper decoder adds whole blocks after the source's, but decoder "
                                  f"block(s) {partial or absent} of {len(blocks)} are missing from it")
        with torch.no_grad():
            for i in absent:
                for proj in (blocks[i].attn_s.proj, blocks[i].attn_t.proj, blocks[i].mlp.fc2):
                    proj.weight.zero_()
                    proj.bias.zero_()

    @property
    def num_codes(self) -> int:
        """Number of distinct tokens, in [0, num_codes)."""
        return self.quantizer.num_codes

    # -- shapes ---------------------------------------------------------------------------------------

    def _check_video(self, video: Tensor) -> None:
        c = self.config
        if video.ndim != 5 or tuple(video.shape[2:]) != (c.image_size, c.image_size, c.channels):
            raise ValueError(f"VideoTokenizer expects video (B, T, {c.image_size}, {c.image_size}, {c.channels}), "
                             f"got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise TypeError(f"VideoTokenizer expects a float video in [0, 1], got {video.dtype} "
                            "(use playworld.models.base.to_unit for uint8)")

    def _check_indices(self, indices: Tensor) -> None:
        h, w = self.grid
        if indices.ndim != 4 or tuple(indices.shape[2:]) != (h, w):
            raise ValueError(f"VideoTokenizer expects indices (B, T, {h}, {w}), got {tuple(indices.shape)}")
        if indices.dtype != torch.long:
            raise TypeError(f"VideoTokenizer expects long indices, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"token ids must lie in [0, {self.num_codes}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")

    def patchify(self, video: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, S, p*p*C)."""
        p = self.config.patch
        return rearrange(video, "b t (h p1) (w p2) c -> b t (h w) (p1 p2 c)", p1=p, p2=p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, T, S, p*p*C) -> (B, T, H, W, C)."""
        p, (h, w) = self.config.patch, self.grid
        return rearrange(patches, "b t (h w) (p1 p2 c) -> b t (h p1) (w p2) c", h=h, w=w, p1=p, p2=p)

    # -- the two halves -------------------------------------------------------------------------------

    def _latents(self, video: Tensor, cache: TemporalKVCache | None = None, commit: bool = True) -> Tensor:
        """(B, T, H, W, C) in [0, 1] -> pre-quantization latents (B, T, S, E)."""
        self._check_video(video)
        x = self.embed(video * 2.0 - 1.0)  # (B, T, S, D)
        return self.to_code(self.encoder(x, cache=cache, commit=commit))  # (B, T, S, E)

    def _pixels(self, codes: Tensor, cache: TemporalKVCache | Sequence[TemporalKVCache] | None = None,
                commit: bool = True) -> Tensor:
        """codes (B, T, S, E) -> unclamped video (B, T, H, W, C), ~[0, 1]."""
        x = self.decoder(self.from_code(codes.to(self.from_code.weight.dtype)), cache=cache, commit=commit)  # (B, T, S, D)
        return self.paint(x).float() * 0.5 + 0.5

    def embed(self, video: Tensor) -> Tensor:
        """(B, T, H, W, C) in [-1, 1] -> tokens (B, T, S, D) through the stem."""
        if self.config.stem == "linear":
            return self.patch_in(self.patchify(video))
        b = video.shape[0]
        tokens = self.patch_in(rearrange(video, "b t h w c -> (b t) h w c"))  # (B*T, S, D)
        return rearrange(tokens, "(b t) s d -> b t s d", b=b)

    def paint(self, x: Tensor) -> Tensor:
        """Decoder tokens (B, T, S, D) -> pixels (B, T, H, W, C) in ~[-1, 1] through the head."""
        if self.config.stem == "linear":
            return self.unpatchify(self.patch_out(x))
        b = x.shape[0]
        return rearrange(self.patch_out(rearrange(x, "b t s d -> (b t) s d")), "(b t) h w c -> b t h w c", b=b)

    def _quantize(self, latents: Tensor) -> QuantizeOutput:
        """Quantize (B, T, S, E) without touching the quantizer's statistics (inference paths)."""
        was_training = self.quantizer.training
        self.quantizer.eval()
        try:
            return self.quantizer(latents)
        finally:
            self.quantizer.train(was_training)

    def _encoding(self, q: QuantizeOutput) -> TokenizerEncoding:
        h, w = self.grid
        return TokenizerEncoding(indices=rearrange(q.indices, "b t (h w) -> b t h w", h=h, w=w),
                                 quantized=q.quantized)

    # -- public API -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: Tensor) -> TokenizerEncoding:
        """video (B, T, H, W, C) float in [0, 1] -> indices (B, T, h, w), quantized (B, T, h*w, E)."""
        return self._encoding(self._quantize(self._latents(video)))

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """indices (B, T, h, w) long -> video (B, T, H, W, C) float in [0, 1] (clamped)."""
        self._check_indices(indices)
        codes = self.quantizer.lookup(rearrange(indices, "b t h w -> b t (h w)"))  # (B, T, S, E)
        return self._pixels(codes).clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, video: Tensor) -> Tensor:
        """video (B, T, H, W, C) in [0, 1] -> its reconstruction through the tokens, clamped to [0, 1]."""
        return self._pixels(self._quantize(self._latents(video)).quantized).clamp(0.0, 1.0)

    def cast_decoder(self, dtype: torch.dtype) -> VideoTokenizer:
        """Put the decoder half (codes -> pixels) in ``dtype``, e.g. bf16 for play; the encoder and the
        quantizer keep theirs. Decoded pixels come back in fp32 either way."""
        for part in (self.from_code, self.decoder, self.patch_out):
            part.to(dtype)
        return self

    def new_cache(self, max_frames: int) -> TokenizerCache:
        """Empty caches for ``encode_step``/``decode_step``; each frame sees at most ``max_frames``
        frames (itself included). With max_frames >= the clip length, steps equal the full pass."""
        return TokenizerCache(encoder=self.encoder.new_cache(max_frames), decoder=self.decoder.new_cache(max_frames))

    @torch.no_grad()
    def encode_step(self, frames: Tensor, cache: TokenizerCache, commit: bool = True) -> TokenizerEncoding:
        """The next frames (B, T', H, W, C) after those in ``cache.encoder`` -> their encoding (T' often 1).

        With ``commit`` the frames' keys/values are appended to the cache.
        """
        return self._encoding(self._quantize(self._latents(frames, cache.encoder, commit)))

    @torch.no_grad()
    def decode_step(self, indices: Tensor, cache: TokenizerCache | Sequence[TokenizerCache],
                    commit: bool = True) -> Tensor:
        """Tokens (B, T', h, w) of the next frames after those in ``cache.decoder`` -> frames (B, T', H, W, C).

        ``cache`` may be several caches (each holding its rows already) whose rows are stacked in order."""
        self._check_indices(indices)
        codes = self.quantizer.lookup(rearrange(indices, "b t h w -> b t (h w)"))
        decoder = cache.decoder if isinstance(cache, TokenizerCache) else [c.decoder for c in cache]
        return self._pixels(codes, decoder, commit).clamp(0.0, 1.0)

    def _frozen_codes(self, video: Tensor) -> QuantizeOutput:
        """The tokens of ``video`` as ``encode`` makes them (the encoder half is kept in eval mode by
        :meth:`train`; no gradient), for training the decoder alone; the quantizer loss is 0."""
        with torch.no_grad():
            q = self.quantizer(self._latents(video))
        return replace(q, loss=q.quantized.new_zeros((), dtype=torch.float32))

    def compute_loss(self, video: Tensor) -> LossOutput:
        """video (B, T, H, W, C) in [0, 1] -> LossOutput(MSE in [0, 1] units + quantizer loss).

        metrics: recon_mse, psnr (dB, of the clamped reconstruction), quant_loss, codebook_usage
        (fraction of codes used in the batch), perplexity (of the batch's code histogram); with
        ``edge_weight`` / ``temporal_weight`` / ``moving_weight`` also edge_loss (L1 of spatial pixel
        differences), temporal_loss (MSE of frame-to-frame differences) and moving_loss (MSE on the pixels that
        changed since the frame before), each added to the loss at its weight; for clips of
        2+ frames change_kept and moving_psnr (:func:`playworld.eval.change.batch_change`). With
        ``decoder_only`` the tokens come from the frozen encoder and codebook, unchanged by training.
        """
        q = self._frozen_codes(video) if self.config.decoder_only else \
            self.quantizer(self._latents(video))  # updates codebook statistics in training mode
        recon = self._pixels(q.quantized).float()  # (B, T, H, W, C)
        video = video.float()
        mse = F.mse_loss(recon, video)
        loss, extra = mse + q.loss, {}
        c = self.config
        if c.edge_weight > 0:  # L1 of horizontal and vertical pixel differences: sharp edges, fine texture
            edge = sum(F.l1_loss(torch.diff(recon, dim=d), torch.diff(video, dim=d)) for d in (2, 3)) / 2
            loss, extra["edge_loss"] = loss + c.edge_weight * edge, edge.detach()
        if c.temporal_weight > 0 and video.shape[1] > 1:  # MSE of frame-to-frame change: motion
            temporal = F.mse_loss(torch.diff(recon, dim=1), torch.diff(video, dim=1))
            loss, extra["temporal_loss"] = loss + c.temporal_weight * temporal, temporal.detach()
        if c.moving_weight > 0 and video.shape[1] > 1:  # MSE where the frame changed: small moving sprites
            moving = moving_mask(video[:, :-1], video[:, 1:])  # (B, T-1, H, W, C)
            err = (recon[:, 1:] - video[:, 1:]).square()
            moved = (err * moving).sum() / moving.sum().clamp_min(1)
            loss, extra["moving_loss"] = loss + c.moving_weight * moved, moved.detach()
        with torch.no_grad():
            clamped = recon.clamp(0.0, 1.0)
            psnr = psnr_from_mse(F.mse_loss(clamped, video))
            if video.shape[1] > 1:  # what a fixed-screen game's small sprites need (playworld.eval.change)
                kept, moving_mse = batch_change(video, clamped)
                extra["change_kept"], extra["moving_psnr"] = kept, psnr_from_mse(moving_mse)
        return LossOutput(
            loss=loss,
            metrics={"recon_mse": mse.detach(), "psnr": psnr, "quant_loss": q.loss.detach(),
                     "codebook_usage": q.usage, "perplexity": q.perplexity, **extra},
        )
