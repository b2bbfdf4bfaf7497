"""Latent action model (LAM): discrete actions learned from unlabeled video (Genie, arXiv 2402.15391, sec. 2.1).

As in Genie, an encoder reads frames x_1..x_{t+1} and gives the transition t -> t+1 one of |A| latent
actions (default 8), and a decoder that sees only x_1..x_t and a_t predicts x_{t+1} in pixels; the
tiny action set is the bottleneck that forces a_t to carry the change. Both are causal in time.

Where playworld departs from Genie, and why (measured on the 4-action sprite world of the tests,
where the true actions are known; see docs/models.md):

- **Winner-take-all assignment instead of VQ with a straight-through estimator.** The decoder
  predicts x_{t+1} under *every* action at once; the action whose prediction is closest is the
  transition's label a*_t, the decoder learns from that prediction (plus a small share ``wta_spread``
  of the others, so no hypothesis is left behind), and the encoder is trained as a classifier of
  a*_t. With 4-8 codes a straight-through VQ bottleneck either collapsed onto one code or split the
  clips by colour or position, not by motion, in every setting tried (best one-to-one accuracy
  0.27-0.50); the same encoder learns the true action in 100 steps when told it, and a decoder
  given the true action learns in 300, so the weak link was the straight-through gradient.
- **A motion prior in the decoder.** Each action owns a small pixel kernel (``kernel_radius``),
  initialised to the identity, that is convolved with x_t: a shift, a blur, a fade. The decoder's
  prediction is that linear transform of x_t plus a transformer's correction. A kernel cannot depend
  on what the frame shows, so an action means the same change from any start frame, which is the
  property Genie's latent actions need; without it the 4 codes carried the motion but with a
  different meaning for each colour pair.
- **Optionally, the motion under way is carried** (``carry_weight``, ``carry_from``; off by default): the
  kernels act on x_t moved by the global shift the past predicts (read by the trunk, which then also sees
  x_t - x_{t-1}, or the last step's measured shift plus the trunk's correction), so an action would pay
  only for the change the past does not predict. Measured on CoinRun in docs/models.md.
- **Relative positions only** (2D rotary embeddings in spatial attention, no absolute position
  table) and an attention-pooled summary over the frame (no position either): the encoder cannot
  name *where* the sprite is, only how things moved. ``frame_diff_input`` also gives every patch
  x_{t+1} - x_t, so motion is visible locally.
- Dead actions (usage share below ``dead_code_threshold`` of uniform) restart as a perturbed copy of
  the most used one, splitting it.

Shapes: B batch, T frames, H x W x C pixels, p patch side, S = (H/p)(W/p) patches, P = p*p*C,
D width, K = |A| actions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from playworld.config import field
from playworld.errors import ConfigError, TrainingError
from playworld.eval.motion import phase_correlation
from playworld.models.base import LossOutput, TrainableModel, psnr_from_mse
from playworld.nn.blocks import STTransformer, init_weights
from playworld.nn.quantize import code_counts, usage_and_perplexity


@dataclass
class LAMConfig:
    """Latent action model: frame size, patching, action count and the transformers' sizes."""

    height: int = field(64, help="frame height in pixels")
    width: int = field(64, help="frame width in pixels")
    channels: int = field(3, help="colour channels")
    patch_size: int = field(8, help="square patch side in pixels (must divide height and width)")
    num_actions: int = field(8, help="number of latent actions |A| (Genie: 8)")
    dim: int = field(128, help="width of encoder and decoder")
    encoder_depth: int = field(2, help="ST blocks in the encoder")
    decoder_depth: int = field(2, help="ST blocks in the decoder trunk that reads x_1..x_t")
    head_depth: int = field(1, help="spatial blocks of the action-conditioned head, run once per action")
    heads: int = field(4, help="attention heads (dim / heads must be divisible by 4, for 2D RoPE)")
    mlp_ratio: float = field(4.0, help="MLP hidden width / dim")
    frame_diff_input: bool = field(True, help="feed the encoder x_t - x_{t-1} alongside x_t")
    kernel_radius: int = field(4, help="radius in pixels of each action's motion kernel (0 = no kernel)")
    kernel_gate: bool = field(
        False, help="apply the action kernels only where a per-pixel gate, read by the decoder trunk from "
        "x_1..x_t, opens: x_t + g * (k_a * x_t - x_t). The gate does not see the action, so an action still "
        "means the same motion from any frame, but the motion can be local (a sprite on a fixed screen) "
        "as well as global (a scrolling camera)")
    carry_weight: float = field(
        0.0, help="0 = off. > 0: the action kernels act on x_t moved by a global shift that the decoder's trunk "
        "reads from x_1..x_t without the action (the motion the past already shows: a fall under way, a "
        "scroll that keeps going), and that shifted frame alone is trained towards x_{t+1} with this weight; "
        "an action then pays only for the change the past does not predict (a key, not gravity)")
    carry_from: Literal["trunk", "last_step"] = field(
        "trunk", help="carry_weight > 0: the carried shift is the trunk's reading alone (trunk), or the last "
        "step's measured global shift x_{t-1} -> x_t (phase correlation on low-passed frames, as playworld "
        "eval measures motion) plus the trunk's correction (last_step: constant velocity until the trunk "
        "learns better, e.g. gravity)")
    kernel_padding: Literal["replicate", "circular"] = field(
        "replicate", help="how the motion kernel sees past the frame's edge (circular for wrapping worlds)")
    wta_spread: float = field(0.05, help="share of the decoder loss given to the actions that lost")
    winner_by: Literal["prediction", "prior"] = field(
        "prediction", help="which error picks each transition's action: the whole prediction's, or the motion "
        "prior's alone (each action's kernel on x_t, without the transformer's correction), which the "
        "winner's prior then also learns from; the prior cannot fit what the action does not explain, so "
        "the correction's noise cannot pick the winner")
    assign: Literal["argmin", "balanced"] = field(
        "argmin", help="how each transition's action a* is picked from the per-action errors: the smallest "
        "error (argmin), or a balanced assignment (Sinkhorn-Knopp over the batch, as SwAV and SeLa cluster: "
        "every action takes about 1/|A| of the batch's transitions, each where its error is lowest relative "
        "to the others, and the encoder's own probabilities break near-ties so that a* is something the "
        "encoder can predict)")
    assign_temperature: float = field(
        0.1, help="balanced assignment: the relative error difference between two actions that is worth one "
        "nat of the encoder's belief; lower trusts the decoder's errors more (0.1: the highest that kept the "
        "sprite world's actions on two seeds; 0.01 collapsed CoinRun at the tiny preset, docs/models.md). "
        "argmin ignores it, and a balanced run records it, so older runs resume unchanged")
    pick_focus: Literal["frame", "change"] = field(
        "frame", help="where the error that picks a* is measured: the whole frame, or each patch weighted "
        "by how much it changed from x_t to x_{t+1} (so that a small moving sprite on a still screen, not "
        "the heads' noise over the static background, decides which action explains the transition)")
    encoder_weight: float = field(1.0, help="weight of the encoder's cross-entropy against a*")
    soft_decoder_weight: float = field(
        0.0, help="weight of the MSE of the prediction mixed by the encoder's own action probabilities "
        "(sum_k p_k pred_k): a reconstruction gradient into the encoder, beside the classification of a*, "
        "for when the winners are too close to call (0 = off)")
    marginal_entropy_weight: float = field(
        0.0, help="weight of a bonus for the entropy of the encoder's batch-mean action distribution, over "
        "log K (the information-maximising clustering term of Krause et al. 2010 / IIC, Ji et al. 2019): "
        "keeps the encoder from answering one action for every transition (0 = off)")
    usage_decay: float = field(0.95, help="EMA decay of the per-action usage shares")
    dead_code_threshold: float = field(
        0.1, help="restart an action whose usage share falls below this fraction of 1/|A| (0 = off)")
    label_weight: float = field(
        0.0, help="weight of recorded true actions in picking a* (0 = off, video alone, as Genie): for the "
        "transitions of a ``label_share`` of the training episodes, each action's score gains label_weight x "
        "log p(true action | latent action), counted from those transitions' a* (decayed by label_decay), and "
        "they weigh as much as all the others in the encoder's loss, so a few labels draw the latent actions "
        "towards what the player did rather than whatever changed most (Nikulin et al. 2025, 'Latent Action "
        "Learning Requires Supervision in the Presence of Distractors')")
    label_share: float = field(
        0.05, help="share of the training split's episodes whose recorded actions the LAM reads when "
        "label_weight > 0 (picked by the run's seed; the rest train it as video alone)")
    label_decay: float = field(
        0.99, help="per-step decay of the (latent action, recorded action) counts that give the label term")
    label_actions: int = field(
        0, help="size of the recorded action space the label table scores (0 = read from the dataset's "
        "manifest when label_weight > 0)")
    infer_window: int = field(
        4, help="frames the encoder reads per transition in infer_actions (at most the training clip length)")
    grad_checkpoint: bool = field(False, help="recompute block activations in backward to save memory")

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels", "patch_size", "dim", "encoder_depth", "decoder_depth",
                     "head_depth", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lam.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_actions < 2:
            raise ConfigError(f"lam.num_actions must be >= 2, got {self.num_actions}")
        if self.infer_window < 2:
            raise ConfigError(f"lam.infer_window must be >= 2 frames, got {self.infer_window}")
        if self.height % self.patch_size or self.width % self.patch_size:
            raise ConfigError(
                f"lam.patch_size {self.patch_size} must divide the frame size {self.height}x{self.width}")
        if self.dim % self.heads or (self.dim // self.heads) % 4:
            raise ConfigError(f"lam.dim {self.dim} / heads {self.heads} must be an integer divisible by 4 (2D RoPE)")
        if self.kernel_radius < 0 or 2 * self.kernel_radius >= min(self.height, self.width):
            raise ConfigError(f"lam.kernel_radius must be in [0, frame side / 2), got {self.kernel_radius}")
        if self.winner_by not in ("prediction", "prior"):
            raise ConfigError(f"lam.winner_by must be 'prediction' or 'prior', got {self.winner_by!r}")
        if self.winner_by == "prior" and self.kernel_radius == 0:
            raise ConfigError("lam.winner_by='prior' needs motion kernels (kernel_radius > 0)")
        if self.assign not in ("argmin", "balanced"):
            raise ConfigError(f"lam.assign must be 'argmin' or 'balanced', got {self.assign!r}")
        if self.assign_temperature <= 0:
            raise ConfigError(f"lam.assign_temperature must be > 0, got {self.assign_temperature}")
        if self.pick_focus not in ("frame", "change"):
            raise ConfigError(f"lam.pick_focus must be 'frame' or 'change', got {self.pick_focus!r}")
        if self.kernel_padding not in ("replicate", "circular"):
            raise ConfigError(f"lam.kernel_padding must be 'replicate' or 'circular', got {self.kernel_padding!r}")
        if not 0.0 <= self.wta_spread < 1.0:
            raise ConfigError(f"lam.wta_spread must be in [0, 1), got {self.wta_spread}")
        if self.carry_from not in ("trunk", "last_step"):
            raise ConfigError(f"lam.carry_from must be 'trunk' or 'last_step', got {self.carry_from!r}")
        for name in ("encoder_weight", "soft_decoder_weight", "marginal_entropy_weight", "carry_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"lam.{name} must be >= 0, got {getattr(self, name)}")
        if self.label_weight < 0:
            raise ConfigError(f"lam.label_weight must be >= 0, got {self.label_weight}")
        if not 0.0 < self.label_share <= 1.0:
            raise ConfigError(f"lam.label_share must be in (0, 1], got {self.label_share}")
        if not 0.0 < self.label_decay <= 1.0:
            raise ConfigError(f"lam.label_decay must be in (0, 1], got {self.label_decay}")
        if self.label_actions < 0:
            raise ConfigError(f"lam.label_actions must be >= 0, got {self.label_actions}")
        if not 0.0 < self.usage_decay < 1.0:
            raise ConfigError(f"lam.usage_decay must be in (0, 1), got {self.usage_decay}")
        if not 0.0 <= self.dead_code_threshold < 1.0:
            raise ConfigError(f"lam.dead_code_threshold must be in [0, 1), got {self.dead_code_threshold}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def reads_labels(self) -> bool:
        """Whether training reads recorded true actions (``label_weight`` > 0)."""
        return self.label_weight > 0

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens_per_frame(self) -> int:
        """Tokens one frame makes (every model config declares it; training's cost estimate reads it)."""
        return self.num_patches

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels


@dataclass
class LAMEncoding:
    """logits: (B, T-1, K) encoder scores of each transition; actions: (B, T-1) long argmax;
    features: (B, T-1, D) the attention-pooled encoder state the logits are read from."""

    logits: Tensor
    actions: Tensor
    features: Tensor | None = None


# An encoder is "collapsed" on a set of clips when it gives fewer than half of its actions (at least
# two; the rule of eval's check_action_usage) or when the perplexity of its action histogram is under
# MIN_ENCODER_PERPLEXITY, which two actions split 87%/13% reach, or 8 actions with one taking 95% (1.34);
# one taking 90% with the rest shared evenly (1.68) passes, as a game where the player mostly waits
# may. A dynamics model conditioned on a collapsed encoder's actions gives the same frame for every key.
MIN_ENCODER_PERPLEXITY = 1.5


def min_actions_used(num_actions: int) -> int:
    """Fewest distinct actions a healthy encoder gives on held-out clips: half of them, at least 2."""
    return max(2, math.ceil(num_actions / 2))


@dataclass
class ActionUsage:
    """How a LAM uses its K actions on a set of transitions, as additive counts.

    encoder_counts: (K,) float, transitions the encoder gave each action, through ``infer_actions``
        (what the dynamics model is trained on and what play's keys map to).
    decoder_counts: (K,) float, transitions whose winner-take-all label a* (the decoder's best
        prediction, what the encoder is trained to classify) is each action.
    agreed: () float, transitions where the encoder's action is the decoder's winner.
    """

    encoder_counts: Tensor
    decoder_counts: Tensor
    agreed: Tensor

    def __add__(self, other: ActionUsage) -> ActionUsage:
        return ActionUsage(self.encoder_counts + other.encoder_counts, self.decoder_counts + other.decoder_counts,
                           self.agreed + other.agreed)

    @property
    def num_actions(self) -> int:
        return int(self.encoder_counts.numel())

    @property
    def transitions(self) -> int:
        return int(self.encoder_counts.sum())

    @property
    def encoder_used(self) -> int:
        return int((self.encoder_counts > 0).sum())

    @property
    def decoder_used(self) -> int:
        return int((self.decoder_counts > 0).sum())

    @property
    def encoder_perplexity(self) -> float:
        return float(usage_and_perplexity(self.encoder_counts)[1])

    @property
    def agreement(self) -> float:
        """Share of transitions where the encoder's action is the decoder's winner."""
        return float(self.agreed) / max(self.transitions, 1)

    def collapse(self) -> str | None:
        """Why the encoder counts as collapsed (see MIN_ENCODER_PERPLEXITY), or None if it does not."""
        k, used, ppl = self.num_actions, self.encoder_used, self.encoder_perplexity
        if used < min_actions_used(k):
            return f"fewer than {min_actions_used(k)} of {k} actions used"
        if ppl < MIN_ENCODER_PERPLEXITY:
            return f"perplexity under {MIN_ENCODER_PERPLEXITY}"
        return None

    def describe(self) -> str:
        """e.g. 'the encoder uses 2 of 8 actions (perplexity 1.31; the decoder's winners use 8, perplexity
        6.90) and agrees with the decoder's winner on 12.5% of 480 transitions'."""
        _, dec_ppl = usage_and_perplexity(self.decoder_counts)
        return (f"the encoder uses {self.encoder_used} of {self.num_actions} actions (perplexity "
                f"{self.encoder_perplexity:.2f}; the decoder's winners use {self.decoder_used}, "
                f"perplexity {float(dec_ppl):.2f}) and agrees with the decoder's winner on {self.agreement:.1%} "
                f"of {self.transitions} transitions")

    def metrics(self) -> dict[str, float]:
        """Logged at every validation of a LAM run, on held-out clips (``actions/...`` in metrics.jsonl
        and TensorBoard)."""
        enc_usage, enc_ppl = usage_and_perplexity(self.encoder_counts)
        dec_usage, dec_ppl = usage_and_perplexity(self.decoder_counts)
        return {"actions/encoder_used": float(self.encoder_used), "actions/encoder_usage": float(enc_usage),
                "actions/encoder_perplexity": float(enc_ppl), "actions/agreement": self.agreement,
                "actions/decoder_used": float(self.decoder_used),
                "actions/decoder_usage": float(dec_usage), "actions/decoder_perplexity": float(dec_ppl),
                "actions/encoder_collapsed": float(self.collapse() is not None)}

    def warning(self) -> str | None:
        reason = self.collapse()
        if reason is None:
            return None
        return (f"latent actions collapsed on held-out clips ({reason}): {self.describe()}. Play would give "
                "(nearly) the same frame for every key; train longer, or see docs/models.md")


class LatentActionModel(TrainableModel):
    """``compute_loss(video (B, T, H, W, C) in [0, 1]) -> LossOutput``;
    ``infer_actions(video) -> (B, T-1)`` long in [0, num_actions);
    ``predict(video, actions) -> (B, T-1, H, W, C)``: x_2..x_T predicted from the past and the actions."""

    usage: Tensor
    steps_seen: Tensor
    # trained with bf16 weights (playworld.train.mixed), these stay fp32: the motion kernels (the
    # prediction's linear part) and the attention pooling and classifier that give the action logits
    keep_fp32 = ("kernels", "pool.", "to_logits.", "carry_pool.", "carry.")
    # weights that dead-action restarts write outside the optimizer: FSDP keeps them whole on every rank
    # (playworld.train.fsdp), as a write to a gathered shard would be lost
    written_in_forward = ("kernels", "action_emb.", "to_logits.")

    def __init__(self, config: LAMConfig) -> None:
        super().__init__()
        self.config = c = config
        s, k = c.num_patches, c.num_actions
        tr = {"mlp_ratio": c.mlp_ratio, "grad_checkpoint": c.grad_checkpoint, "spatial_grid": c.grid,
              "learned_pos": False}
        self.enc_in = nn.Linear(c.patch_dim * (2 if c.frame_diff_input else 1), c.dim)
        self.encoder = STTransformer(c.dim, c.encoder_depth, c.heads, s, causal=True, **tr)
        self.pool = nn.Linear(c.dim, 1)  # attention-pooling scores over a frame's patches
        self.to_logits = nn.Linear(c.dim, k)
        # with carry_weight > 0 the trunk also reads x_t - x_{t-1}: the motion under way, which it carries on
        self.dec_in = nn.Linear(c.patch_dim * (2 if c.carry_weight > 0 else 1), c.dim)
        self.trunk = STTransformer(c.dim, c.decoder_depth, c.heads, s, causal=True, **tr)
        self.action_emb = nn.Embedding(k, c.dim)
        self.head = STTransformer(c.dim, c.head_depth, c.heads, s, causal=True, **tr)
        self.dec_out = nn.Linear(c.dim, c.patch_dim)
        # per-pixel gate of the kernels, from the trunk (no action); None = kernels act on every pixel
        self.gate = nn.Linear(c.dim, c.patch_size * c.patch_size) if c.kernel_gate and c.kernel_radius else None
        # the carried shift (carry_weight > 0): attention pooling of the trunk over a frame -> (dy, dx) px
        self.carry_pool = nn.Linear(c.dim, 1) if c.carry_weight > 0 else None
        self.carry = nn.Linear(c.dim, 2) if c.carry_weight > 0 else None
        init_weights(self)
        if self.carry is not None:  # start still: the carried frame is x_t until the past says otherwise
            nn.init.zeros_(self.carry.weight)
            nn.init.zeros_(self.carry.bias)
        if self.gate is not None:  # start open (sigmoid(3) = 0.95): the global-kernel prior, then learn where
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 3.0)
        side = 2 * c.kernel_radius + 1
        kernels = torch.zeros(k, side, side)
        kernels[:, c.kernel_radius, c.kernel_radius] = 1.0  # identity: "copy x_t" before training
        self.kernels = nn.Parameter(kernels + 0.01 * torch.randn(k, side, side))
        # (K, label_actions) decayed counts of (a*, recorded action) over the labelled transitions
        # (label_weight > 0): p(true | latent) by counting, so the label term follows the winners at once
        self.label_counts: Tensor | None
        if not c.reads_labels:
            self.label_counts = None
        else:
            if c.label_actions < 1:
                raise ConfigError("lam.label_weight > 0 needs lam.label_actions, the size of the recorded action "
                                  "space (playworld train reads it from the dataset's manifest)")
            self.register_buffer("label_counts", torch.zeros(k, c.label_actions))
        self.register_buffer("usage", torch.full((k,), 1.0 / k))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    @property
    def num_actions(self) -> int:
        return self.config.num_actions

    def no_weight_decay(self) -> set[str]:
        """The motion kernels are not decayed: they start at the identity ("copy x_t"), and decay would
        pull every action towards a blank frame rather than towards no change."""
        return {"kernels"}

    # -- pixels <-> patches ---------------------------------------------------------------------------
    def patchify(self, video: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, S, P)."""
        c = self.config
        if video.dim() != 5 or tuple(video.shape[2:]) != (c.height, c.width, c.channels):
            raise ValueError(
                f"LAM expects video (B, T, {c.height}, {c.width}, {c.channels}), got {tuple(video.shape)}")
        if video.shape[1] < 2:
            raise ValueError(f"LAM needs at least 2 frames to infer an action, got T={video.shape[1]}")
        return rearrange(video, "b t (h p) (w q) c -> b t (h w) (p q c)", p=c.patch_size, q=c.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(..., S, P) -> (..., H, W, C)."""
        c = self.config
        return rearrange(patches, "... (h w) (p q c) -> ... (h p) (w q) c", h=c.grid[0], p=c.patch_size,
                         q=c.patch_size)

    # -- encoder ----------------------------------------------------------------------------------------
    def encode(self, video: Tensor) -> LAMEncoding:
        """video (B, T, H, W, C) in [0, 1] -> scores and actions of the T-1 transitions."""
        return self._encode_patches(self.patchify(video))

    def _encode_patches(self, patches: Tensor) -> LAMEncoding:
        x = with_change(patches) if self.config.frame_diff_input else patches  # (B, T, S, 2P or P)
        h = self.encoder(self.enc_in(x))[:, 1:]  # (B, T-1, S, D): frame t+1 has seen x_1..x_{t+1}
        weights = torch.softmax(self.pool(h).squeeze(-1).float(), dim=-1)  # (B, T-1, S), fp32
        pooled = torch.einsum("bts,btsd->btd", weights, h.to(weights.dtype))  # (B, T-1, D)
        logits = self.to_logits(pooled)  # (B, T-1, K)
        return LAMEncoding(logits=logits, actions=logits.argmax(-1), features=pooled)

    # -- decoder ----------------------------------------------------------------------------------------
    def carried_shift(self, h: Tensor, context: Tensor) -> Tensor:
        """h (B, T', S, D): the trunk's reading of x_1..x_t, context (B, T', S, P): their patches -> (B, T', 2)
        the global shift (dy, dx) in pixels (positive: content moves down / right) that the past predicts
        for the next frame, within +-``MAX_CARRY`` px: the trunk's reading, plus (``carry_from="last_step"``)
        the shift measured from x_{t-1} to x_t (none for the first frame). Needs ``carry_weight`` > 0."""
        assert self.carry_pool is not None and self.carry is not None
        weights = torch.softmax(self.carry_pool(h).squeeze(-1).float(), dim=-1)  # (B, T', S)
        pooled = torch.einsum("bts,btsd->btd", weights, h.float())  # (B, T', D)
        raw = self.carry(pooled.to(self.carry.weight.dtype)).float()
        if self.config.carry_from == "last_step":
            raw = raw + self._last_step_shift(context)
        return MAX_CARRY * torch.tanh(raw / MAX_CARRY)

    @torch.no_grad()
    def _last_step_shift(self, context: Tensor) -> Tensor:
        """context (B, T', S, P) -> (B, T', 2) the measured global shift from x_{t-1} to x_t, 0 at t = 1."""
        frames = self.unpatchify(context).float()  # (B, T', H, W, C)
        shift = torch.zeros(*frames.shape[:2], 2, device=frames.device)
        if frames.shape[1] > 1:
            shift[:, 1:] = phase_correlation(frames[:, :-1], frames[:, 1:]).to(shift)
        return shift

    def _carried(self, context: Tensor, h: Tensor) -> Tensor:
        """context (B, T', S, P), h (B, T', S, D) -> x_t moved by :meth:`carried_shift` (B, T', S, P)
        (bilinear, edges repeated); ``context`` itself when ``carry_weight`` is 0."""
        if self.carry is None:
            return context
        c = self.config
        b, t = context.shape[:2]
        img = rearrange(self.unpatchify(context), "b t h w c -> (b t) c h w")
        img = shift_frames(img.float(), rearrange(self.carried_shift(h, context), "b t two -> (b t) two"))
        img = rearrange(img, "(b t) c h w -> b t h w c", b=b, t=t)
        return rearrange(img, "b t (h p) (w q) c -> b t (h w) (p q c)", p=c.patch_size,
                         q=c.patch_size).to(context.dtype)

    def _kernel_prior(self, context: Tensor, h: Tensor | None = None) -> Tensor:
        """context (B, T', S, P) -> every action's kernel applied to each frame: (B, T', K, S, P).
        h (B, T', S, D): the trunk's reading of the context, for the gate (``kernel_gate``). With
        ``carry_weight`` > 0 pass the carried frames (:meth:`_carried`) as ``context``."""
        c = self.config
        b, t = context.shape[:2]
        if c.kernel_radius == 0:
            return context[:, :, None].expand(b, t, c.num_actions, *context.shape[2:])
        img = rearrange(self.unpatchify(context), "b t h w c -> (b t c) 1 h w")
        r = c.kernel_radius
        img = F.pad(img, (r, r, r, r), mode=c.kernel_padding)
        out = F.conv2d(img, self.kernels[:, None].to(img.dtype))  # (B*T'*C, K, H, W)
        out = rearrange(out, "(b t c) k h w -> b t k h w c", b=b, t=t)
        out = rearrange(out, "b t k (h p) (w q) c -> b t k (h w) (p q c)", p=c.patch_size, q=c.patch_size)
        if self.gate is None or h is None:
            return out
        gate = torch.sigmoid(self.gate(h).float()).to(out.dtype)  # (B, T', S, p*p)
        gate = gate.repeat_interleave(c.channels, dim=-1)[:, :, None]  # (B, T', 1, S, P), pixel-major like P
        x = context[:, :, None].to(out.dtype)
        return x + gate * (out - x)

    def _read_past(self, context: Tensor) -> Tensor:
        """context (B, T', S, P) -> the trunk's reading (B, T', S, D), causal in time; with ``carry_weight``
        > 0 each frame comes with its change from the one before (zero for the first)."""
        return self.trunk(self.dec_in(with_change(context) if self.carry is not None else context))

    def decode_all(self, context: Tensor) -> Tensor:
        """context: patches of x_1..x_{T-1} (B, T-1, S, P) -> predictions of x_2..x_T under every
        action (B, T-1, K, S, P)."""
        prior, delta, _ = self._decode_all_parts(context)
        return prior + delta

    def _decode_all_parts(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(motion prior, transformer correction) of :meth:`decode_all`, each (B, T-1, K, S, P), and the
        carried frames the prior's kernels act on (B, T-1, S, P; the context itself without ``carry_weight``)."""
        b, t = context.shape[:2]
        h = self._read_past(context)  # (B, T-1, S, D), causal: frame t saw x_1..x_t
        hk = h[:, :, None] + self.action_emb.weight[None, None, :, None, :]  # (B, T-1, K, S, D)
        out = self.head(rearrange(hk, "b t k s d -> (b t k) 1 s d"))
        delta = rearrange(self.dec_out(out), "(b t k) 1 s p -> b t k s p", b=b, t=t)
        base = self._carried(context, h)
        return self._kernel_prior(base, h), delta, base

    def decode(self, context: Tensor, actions: Tensor) -> Tensor:
        """context (B, T-1, S, P), actions (B, T-1) long -> predicted patches of x_2..x_T (B, T-1, S, P)."""
        b, t = context.shape[:2]
        trunk = self._read_past(context)  # (B, T-1, S, D)
        h = trunk + self.action_emb(actions)[:, :, None, :]
        delta = rearrange(self.dec_out(self.head(rearrange(h, "b t s d -> (b t) 1 s d"))),
                          "(b t) 1 s p -> b t s p", b=b)
        prior = self._kernel_prior(self._carried(context, trunk), trunk)  # (B, T-1, K, S, P)
        index = actions[:, :, None, None, None].expand(-1, -1, 1, *prior.shape[3:])
        return prior.gather(2, index).squeeze(2) + delta

    @torch.no_grad()
    def predict(self, video: Tensor, actions: Tensor) -> Tensor:
        """video (B, T, H, W, C), actions (B, T-1) -> the decoder's x_2..x_T (B, T-1, H, W, C) in [0, 1]."""
        patches = self.patchify(video)
        return self.unpatchify(self.decode(patches[:, :-1], actions)).clamp(0, 1)

    @torch.no_grad()
    def past_shift(self, video: Tensor) -> Tensor:
        """video (B, T, H, W, C) in [0, 1] -> (B, T-1, 2): the global shift (dy, dx, px) the decoder carries
        into each transition t -> t+1 from x_1..x_t alone (``carry_weight`` > 0)."""
        if self.carry is None:
            raise ValueError("this LAM carries no shift (lam.carry_weight = 0)")
        context = self.patchify(video)[:, :-1]
        return self.carried_shift(self._read_past(context), context)

    @torch.no_grad()
    def infer_actions(self, video: Tensor) -> Tensor:
        """video (B, T, H, W, C) float in [0, 1] -> (B, T-1) long latent actions (no state changes).

        Transition t -> t+1 is read from the last ``infer_window`` frames up to x_{t+1}, so clips longer
        than the ones trained on never put the causal encoder at temporal positions it has not seen.
        """
        return self._encode_windowed(video).actions

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """video (B, T, H, W, C) in [0, 1] -> (B, T-1, D) frozen pooled encoder features of each
        transition, read over the same windows as :meth:`infer_actions` (for linear probes)."""
        features = self._encode_windowed(video).features
        assert features is not None
        return features

    def _encode_windowed(self, video: Tensor) -> LAMEncoding:
        """Eval-mode encoding of every transition from at most ``infer_window`` frames up to x_{t+1}."""
        was_training = self.training
        self.eval()
        try:
            patches = self.patchify(video)  # (B, T, S, P)
            w, t = self.config.infer_window, patches.shape[1]
            if t <= w:
                return self._encode_patches(patches)
            head = self._encode_patches(patches[:, :w])  # (B, w-1): windows starting at frame 0
            windows = patches.unfold(1, w, 1)  # (B, T-w+1, S, P, w): frames i..i+w-1
            windows = rearrange(windows, "b n s p w -> (b n) w s p")
            tail = self._encode_patches(windows)  # the last transition of each window is new

            def join(a: Tensor, b: Tensor) -> Tensor:  # (B, w-1, ...), (B*(T-w+1), w-1, ...) -> (B, T-1, ...)
                return torch.cat([a, b[:, -1].view(patches.shape[0], -1, *b.shape[2:])[:, 1:]], dim=1)

            assert head.features is not None and tail.features is not None
            return LAMEncoding(logits=join(head.logits, tail.logits), actions=join(head.actions, tail.actions),
                               features=join(head.features, tail.features))
        finally:
            self.train(was_training)

    def training_loader(self, loader: Any, *, seed: int) -> Any:
        """With ``label_weight`` > 0: ``loader``'s batches beside the recorded actions of ``label_share`` of
        its episodes (:class:`~playworld.data.labels.LabelledClipLoader`); otherwise ``loader`` itself."""
        if self.label_counts is None:
            return loader
        from playworld.data.labels import LabelledClipLoader

        c = self.config
        return LabelledClipLoader(loader, share=c.label_share, seed=seed, num_actions=c.label_actions)

    @torch.no_grad()
    def label_log_probs(self) -> Tensor:
        """(K, label_actions) log p(recorded action | latent action) from the decayed counts, each count
        smoothed by half a transition (so an unseen pair is unlikely, not impossible)."""
        assert self.label_counts is not None
        counts = self.label_counts.float() + 0.5
        return counts.log() - counts.sum(-1, keepdim=True).log()

    @torch.no_grad()
    def held_out_stats(self, video: Tensor) -> ActionUsage:
        """video (B, T, H, W, C) in [0, 1] -> how the encoder (through :meth:`infer_actions`) and the
        decoder's winners use the actions on these clips; changes no state. The training engine calls it
        on every validation batch and logs :meth:`ActionUsage.metrics` of the sum."""
        actions = self.infer_actions(video)  # (B, T-1)
        patches = self.patchify(video)
        sq = (self.decode_all(patches[:, :-1]) - patches[:, 1:, None]).square().mean(-1)  # (B, T-1, K, S)
        best = self._pick_error(sq, patches).argmin(-1)  # (B, T-1): a*
        k = self.num_actions
        return ActionUsage(encoder_counts=code_counts(actions, k), decoder_counts=code_counts(best, k),
                           agreed=(actions == best).sum().float())

    # -- training -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _restart_dead_actions(self) -> None:
        """Re-seed every action whose usage share fell below the threshold as a perturbed copy of the
        most used action (kernel, embedding and encoder row), which the two then split. The noise
        comes from a generator seeded by the step, so data-parallel replicas stay identical."""
        c = self.config
        if c.dead_code_threshold <= 0:
            return
        dead = self.usage < c.dead_code_threshold / c.num_actions
        if not bool(dead.any()):
            return
        top = int(self.usage.argmax())
        g = torch.Generator(device="cpu").manual_seed(int(self.steps_seen))
        for k in dead.nonzero().flatten().tolist():
            for param in (self.kernels, self.action_emb.weight, self.to_logits.weight):
                noise = torch.randn(param[top].shape, generator=g).to(param)
                param[k] = param[top] + 0.02 * noise * param[top].std().clamp_min(1e-3)
            self.to_logits.bias[k] = self.to_logits.bias[top]
            self.usage[k] = self.usage[top] = self.usage[top] / 2
            if self.label_counts is not None:  # the two halves start with half of what the one had seen each
                self.label_counts[k] = self.label_counts[top] = self.label_counts[top] / 2

    def _pick_error(self, sq: Tensor, patches: Tensor) -> Tensor:
        """sq (B, T-1, K, S): each action's squared error per patch; patches (B, T, S, P) -> (B, T-1, K),
        the error that picks a*: the mean over patches, or (``pick_focus="change"``) the mean weighted by
        each patch's mean absolute change from x_t to x_{t+1} (plus 1e-3, so that a still transition weighs
        every patch alike), normalised to mean 1 per transition."""
        if self.config.pick_focus == "frame":
            return sq.mean(-1)
        change = (patches[:, 1:] - patches[:, :-1]).abs().mean(-1) + 1e-3  # (B, T-1, S); still frames: uniform
        weight = change / change.mean(-1, keepdim=True)
        return torch.einsum("btks,bts->btk", sq, weight.to(sq.dtype)) / sq.shape[-1]

    def compute_loss(self, batch: Tensor | tuple[Tensor, Tensor]) -> LossOutput:
        """batch: video (B, T, H, W, C) in [0, 1], or (video, recorded actions (B, T) long, ``actions[:, t]``
        taken at frame t, -1 where not read) from :class:`~playworld.data.labels.LabelledClipLoader` ->
        winner-take-all decoder MSE + encoder cross-entropy (labelled transitions weighed 1 / label_share).

        metrics: ``mse``/``psnr`` of the winning prediction, ``encoder_psnr`` (of the prediction under
        the encoder's own action, what inference gives), ``copy_psnr`` (repeating x_t: the baseline),
        ``encoder_agreement`` (encoder argmax == winner), ``encoder_batch_perplexity`` (of the encoder's
        batch histogram), ``decoder_batch_entropy`` (nats) and ``decoder_batch_perplexity`` (of the
        winners' batch histogram) and ``decoder_share/k`` (running shares of the winners, which drive the
        dead-action restarts). The winners are the decoder's picks: all K can be in use while the encoder,
        what play reads, gives only one or two (see :meth:`held_out_stats`). With labels (``label_weight``
        > 0): ``label_share`` (transitions of the batch with a recorded action) and ``label_accuracy`` (the
        counts' likeliest recorded action for the encoder's latent, against the recorded one).
        """
        c = self.config
        video, labels = (batch, None) if isinstance(batch, Tensor) else batch
        if labels is not None and self.label_counts is None:
            raise ValueError("this LAM was built without a label table (lam.label_weight = 0): pass video alone")
        if self.training:
            self._restart_dead_actions()
        patches = self.patchify(video)  # (B, T, S, P)
        context, target = patches[:, :-1], patches[:, 1:]
        prior, delta, base = self._decode_all_parts(context)  # (B, T-1, K, S, P) each; base (B, T-1, S, P)
        preds = prior + delta
        sq = (preds - target[:, :, None]).square().mean(-1)  # (B, T-1, K, S)
        err = sq.mean(-1)  # (B, T-1, K)
        enc = self._encode_patches(patches)
        pick_sq = sq
        if c.winner_by == "prior":
            pick_sq = (prior - target[:, :, None]).square().mean(-1)  # (B, T-1, K, S): a*, by the motion alone
            prior_err = pick_sq.mean(-1)
        pick_err = self._pick_error(pick_sq, patches)
        label_prior, label_mask, label_y = None, None, None
        if self.label_counts is not None:
            if labels is None:  # no recorded actions (validation, or video alone): no label term
                labels = torch.full(video.shape[:2], -1, dtype=torch.long, device=video.device)
            if labels.shape != video.shape[:2]:
                raise ValueError(f"labels {tuple(labels.shape)} must be (B, T) = {tuple(video.shape[:2])}")
            label_y = labels[:, :-1].long()  # (B, T-1): the recorded action that moved frame t to t+1
            label_mask = (label_y >= 0) & (label_y < c.label_actions)
            label_y = label_y.clamp(0, c.label_actions - 1)
            log_p = self.label_log_probs()  # (K, A)
            label_prior = c.label_weight * log_p.t()[label_y] * label_mask[..., None]  # (B, T-1, K), nats
        if c.assign == "balanced":
            best = balanced_assignment(pick_err.detach().float(), enc.logits.detach().float(),
                                       c.assign_temperature, prior=label_prior)  # (B, T-1): a*
        elif label_prior is not None:  # argmin, with each labelled transition's label term beside its errors
            best = (error_scores(pick_err.detach().float(), c.assign_temperature) + label_prior).argmax(-1)
        else:
            best = pick_err.detach().argmin(-1)  # (B, T-1): a*
        best_err = err.gather(-1, best[..., None]).squeeze(-1)
        dec_loss = (1 - c.wta_spread) * best_err.mean() + c.wta_spread * err.mean()
        if c.winner_by == "prior":
            dec_loss = dec_loss + prior_err.gather(-1, best[..., None]).mean()
        enc_ce = F.cross_entropy(enc.logits.flatten(0, 1).float(), best.flatten(), reduction="none")
        if label_mask is not None:  # the labelled transitions teach the encoder as much as all the others
            weight = 1.0 + (1.0 / c.label_share - 1.0) * label_mask.flatten().float()
            enc_loss = (enc_ce * weight).sum() / weight.sum()
        else:
            enc_loss = enc_ce.mean()
        loss = dec_loss + c.encoder_weight * enc_loss
        carry_mse = None
        if self.carry is not None:  # the carried frame alone, no action: what the past predicts
            carry_mse = (base.float() - target.float()).square().mean()
            loss = loss + c.carry_weight * carry_mse
        if c.soft_decoder_weight > 0 or c.marginal_entropy_weight > 0:
            probs = torch.softmax(enc.logits.float(), dim=-1)  # (B, T-1, K)
        if c.soft_decoder_weight > 0:
            mixed = torch.einsum("btk,btksp->btsp", probs, preds.float())
            loss = loss + c.soft_decoder_weight * (mixed - target.float()).square().mean()
        if c.marginal_entropy_weight > 0:
            marginal = probs.mean(dim=(0, 1))  # (K,)
            entropy = -(marginal * marginal.clamp_min(1e-12).log()).sum()
            loss = loss - c.marginal_entropy_weight * entropy / math.log(c.num_actions)
        label_metrics: dict[str, Tensor] = {}
        if self.label_counts is not None:
            assert label_mask is not None and label_y is not None
            with torch.no_grad():
                n = label_mask.sum()
                guess = self.label_counts.argmax(-1)[enc.actions]  # (B, T-1): the likeliest key of the encoder's latent
                label_metrics = {"label_share": n.float() / label_mask.numel(),
                                 "label_accuracy": ((guess == label_y) & label_mask).sum().float() / n.clamp_min(1)}
                if self.training:
                    seen = torch.zeros_like(self.label_counts)
                    seen.index_put_((best[label_mask], label_y[label_mask]),
                                    torch.ones((), device=seen.device), accumulate=True)
                    self.label_counts.mul_(c.label_decay).add_(seen)
        with torch.no_grad():
            counts = code_counts(best, c.num_actions)
            if self.training:
                self.usage.lerp_(counts / counts.sum(), 1 - c.usage_decay)
                self.steps_seen += 1
            _, perplexity = usage_and_perplexity(counts)
            _, enc_perplexity = usage_and_perplexity(code_counts(enc.actions, c.num_actions))
            mse = best_err.mean()
            enc_err = err.gather(-1, enc.actions[..., None]).mean()
            metrics = {
                "mse": mse,
                "psnr": psnr_from_mse(mse),
                "encoder_psnr": psnr_from_mse(enc_err),
                "copy_psnr": psnr_from_mse(F.mse_loss(context, target)),
                "encoder_ce": enc_loss.detach(),
                "encoder_agreement": (enc.actions == best).float().mean(),
                "encoder_batch_perplexity": enc_perplexity,
                "decoder_batch_entropy": perplexity.log(),
                "decoder_batch_perplexity": perplexity,
            }
            metrics.update({f"decoder_share/{k}": self.usage[k].clone() for k in range(c.num_actions)})
            metrics.update(label_metrics)
            if carry_mse is not None:
                metrics["carry_psnr"] = psnr_from_mse(carry_mse.detach())
        return LossOutput(loss, metrics)


def with_change(patches: Tensor) -> Tensor:
    """patches (B, T, S, P) -> (B, T, S, 2P): each frame beside its change from the frame before (zero for the
    first)."""
    diff = torch.cat([torch.zeros_like(patches[:, :1]), patches[:, 1:] - patches[:, :-1]], dim=1)
    return torch.cat([patches, diff], dim=-1)


MAX_CARRY = 16.0  # px: the largest carried shift (a quarter of a 64-pixel frame)


def shift_frames(img: Tensor, shift: Tensor) -> Tensor:
    """img (N, C, H, W), shift (N, 2) (dy, dx) in pixels -> img moved by the shift (content at (y, x) lands at
    (y + dy, x + dx)), bilinear, with the edge pixels repeated; differentiable in both."""
    n, _, height, width = img.shape
    theta = torch.zeros(n, 2, 3, dtype=img.dtype, device=img.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shift[:, 1].to(img.dtype) / width  # normalised units: 2 / side per pixel
    theta[:, 1, 2] = -2.0 * shift[:, 0].to(img.dtype) / height
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def error_scores(err: Tensor, temperature: float) -> Tensor:
    """err (..., K) each transition's error under each action -> (..., K) log-odds: the errors centred over
    the actions and divided by the mean error times ``temperature`` (a relative error difference of
    ``temperature`` is worth one nat), negated so that the smallest error scores highest."""
    return -(err - err.mean(-1, keepdim=True)) / (err.mean() * temperature + 1e-12)


def balanced_assignment(err: Tensor, logits: Tensor, temperature: float, iters: int = 3,
                        prior: Tensor | None = None) -> Tensor:
    """err (..., K): each transition's error under each action; logits (..., K): the encoder's scores ->
    (...,) the action of each transition under an (approximately) equal share of the batch per action.
    prior (..., K), optional: more log-odds per transition and action, added to the scores (the label
    term of ``lam.label_weight``).

    Log-domain Sinkhorn-Knopp (Cuturi 2013; as SwAV, Caron et al. 2020, and SeLa, Asano et al. 2020,
    assign clusters). The scores are each transition's errors centred over its actions and divided by
    the batch's mean error times ``temperature`` (so a relative error difference of ``temperature`` is
    worth one nat), plus the encoder's log-probabilities: where the decoder's errors nearly tie, the
    encoder's belief decides, so a* is something the encoder can learn to predict. Columns (actions)
    and rows (transitions) are normalised in turn so that every action holds about 1/K of the mass.
    Centring per transition makes only the differences between actions count, not how hard a
    transition is. Under DDP each rank balances its own batch."""
    k = err.shape[-1]
    scores = error_scores(err.reshape(-1, k), temperature) + torch.log_softmax(logits.reshape(-1, k), -1)
    if prior is not None:
        scores = scores + prior.reshape(-1, k).to(scores.dtype)
    log_q = scores
    for _ in range(iters):
        log_q = log_q - log_q.logsumexp(0, keepdim=True)  # each action: equal mass
        log_q = log_q - log_q.logsumexp(1, keepdim=True)  # each transition: one unit
    return log_q.argmax(-1).reshape(err.shape[:-1])


def check_action_usage(actions: Tensor, num_actions: int, where: str) -> None:
    """Raise TrainingError if fewer than :func:`min_actions_used` of the ``num_actions`` latent actions
    (half of them, at least 2: the rule of :meth:`ActionUsage.collapse`) occur in ``actions`` (a
    collapsed LAM: the world would not be controllable). ``where`` names the run or data."""
    used = int(torch.unique(actions).numel())
    if used < min_actions_used(num_actions):
        raise TrainingError(f"{where}: only {used} of {num_actions} latent actions are ever used; the latent "
                            f"action model has collapsed (retrain with more steps or a different seed)")
