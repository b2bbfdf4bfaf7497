"""MaskGIT dynamics model over video tokens, conditioned on latent actions (Genie, arXiv 2402.15391, sec. 2.3).

A causal ST-transformer reads token frames z_1..z_T (B, T, S) and predicts the masked tokens of every
frame. Frame t+1 carries the embedding of the latent action a_t that leads to it (Genie adds action
embeddings to the tokens; ``action_cond`` also offers per-block modulation, 'adaln', or the action as a
token of its own, 'token'); frame 1 carries a learned "no action" embedding. Training masks each
frame with a rate drawn uniformly from [0.5, 1] (Genie) and takes the cross-entropy on the masked
positions. Frame 1 is left unmasked by default: it is the context prompt at play time, where the
model never has to produce it (``mask_first_frame`` turns this off).

:class:`DynamicsTrainer` wraps the dynamics model with a frozen tokenizer and a frozen LAM so the
training engine can call ``compute_loss(video)`` on pixels; only ``trainable_module`` is optimised.

``one_pass`` (off by default) trains every frame after the first fully masked, so the frame's state in
the temporal KV cache is that of the pass that predicts it: play then needs one transformer pass per
frame instead of a decoding pass and a commit pass (docs/models.md, "One pass per frame").

Departures from Genie, measured on the sprite world with the true actions (d=64, 2 blocks, 600 steps
of batch 32; one-shot accuracy on frame 2 given frame 1): a learned absolute position table and
[MASK] inputs stayed at the background share (0.85, below copy-last in PSNR) for 800 steps;
2D rotary embeddings in spatial attention (``spatial_rope``: a shift is the same relative offset
anywhere) reached 0.92; adding to every token the embedding of the token at the same place in the
previous frame (``prev_frame_input``: the copy-last prior, so the model only has to learn what
moves) reached 0.999 (39.7 dB against copy-last 16.0 dB). Both are on by default.

Shapes: B batch, T frames, S = h*w tokens per frame, V tokenizer vocabulary, D width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from playworld.config import field
from playworld.errors import ConfigError
from playworld.maskgit import SamplingConfig, maskgit_decode, play_sampling
from playworld.models.base import LossOutput, TrainableModel
from playworld.nn.blocks import STTransformer, TemporalKVCache, init_weights

if TYPE_CHECKING:
    from playworld.data.loader import ClipLoader
    from playworld.data.token_cache import TokenCache, TokenClipLoader


@dataclass
class FlowConfig:
    """Settings of the flow backend (``dynamics.backend = "flow"``, :mod:`playworld.models.flow`); a MaskGIT
    run ignores them."""

    latent_dim: int = field(32, help="width E of the tokenizer's latents the flow model predicts (its code width; "
                            "set from the tokenizer run when training)")
    context_share: float = field(0.75, help="training: share of frames drawn as context, with light noise "
                                 "sigma ~ U[0, context_noise_max], the others as targets, sigma ~ U[0, 1]; each "
                                 "frame's level independent (diffusion forcing, arXiv 2407.01392); 0.75 beat 0.5 "
                                 "(docs/models.md)")
    context_noise_max: float = field(0.3, help="training: the most noise a context frame gets (GameNGen, DIAMOND: "
                                     "noise on the past so that the model recovers from its own errors)")
    context_noise: float = field(0.1, help="play: the noise level the model is told the committed past frames "
                                 "have (they are committed clean, so stepping stays deterministic for a seed)")
    snap: bool = field(True, help="play: round each sampled frame's latents to the nearest tokenizer code before "
                       "decoding and committing (keeps rollouts on the codes the decoder was trained on)")
    loss_first_frame: bool = field(False, help="training: also take the loss on frame 1, which play never samples")
    predict: Literal["velocity", "x1"] = field(
        "x1", help="what the network outputs: the clean latents x1 (loss on them; the velocity is "
        "(x1_hat - x_t) / (1 - t)), or the velocity x1 - x0 (loss on it). x1 measured far better at equal "
        "CPU time (benchmarks/flow_vs_maskgit.py: 1-step PSNR at t=1 24.9 vs 17.0 dB, docs/models.md)")

    def __post_init__(self) -> None:
        if isinstance(self.latent_dim, bool) or self.latent_dim < 1:
            raise ConfigError(f"dynamics.flow.latent_dim must be >= 1, got {self.latent_dim}")
        if self.predict not in ("velocity", "x1"):
            raise ConfigError(f"dynamics.flow.predict must be 'velocity' or 'x1', got {self.predict!r}")
        for name in ("context_share", "context_noise_max", "context_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"dynamics.flow.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class DynamicsConfig:
    """Size and masking of the dynamics model. Token grid and vocabulary must match the tokenizer's."""

    vocab_size: int = field(1024, help="number of tokenizer codes (the [MASK] id is vocab_size)")
    num_actions: int = field(8, help="number of latent actions |A| (must match the LAM)")
    token_height: int = field(16, help="rows of the tokenizer's token grid per frame")
    token_width: int = field(16, help="columns of the tokenizer's token grid per frame")
    dim: int = field(192, help="transformer width")
    depth: int = field(4, help="number of ST blocks")
    heads: int = field(6, help="attention heads (dim must be divisible, head width even for RoPE)")
    mlp_ratio: float = field(4.0, help="MLP hidden width / dim")
    dropout: float = field(0.0, help="dropout in attention and MLP")
    mask_rate_min: float = field(0.5, help="lowest per-frame masking rate during training (Genie: 0.5)")
    mask_rate_max: float = field(1.0, help="highest per-frame masking rate during training (Genie: 1.0)")
    spatial_rope: bool = field(True, help="2D rotary embeddings in spatial attention (else a learned table)")
    prev_frame_input: bool = field(True, help="each token also embeds the token at its place in the previous frame")
    mask_first_frame: bool = field(False, help="also mask frame 1 (default: it is the unmasked context)")
    clean_prefix: bool = field(False, help="training only: each clip leaves a random number c ~ U{1..T-1} of "
                               "leading frames unmasked, not only the first, so that the frame after them is "
                               "predicted from whole, unmasked past frames as at play time (Genie's masking "
                               "hides 50-100% of every context frame); the loss covers frames c+1..T")
    context_noise: float = field(0.0, help="training only: each clip replaces up to this share of its visible "
                                 "(unmasked) input tokens with random ones, a rate ~ U[0, context_noise] per "
                                 "clip, so that the model learns not to trust its context blindly and recovers "
                                 "from its own errors in long rollouts (GameNGen, DIAMOND; Jasmine's "
                                 "corrupt_context_factor 0.1); targets stay clean")
    self_forcing: float = field(0.0, help="training only: the share of training batches whose frames 2..k+1 "
                                "(k ~ U{1..T-2} per batch) are the model's own free-running frames, decoded "
                                "as play decodes them (one greedy pass, play's copy penalty, no gradient) from "
                                "real frame 1 and the clip's actions; the loss covers frames k+2..T, so the "
                                "model learns the next real frame from the kind of past a rollout gives it "
                                "(scheduled sampling, Bengio et al. 2015; Self Forcing, Huang et al. 2025); "
                                "costs about one extra forward pass of the clip on those batches (KV-cached)")
    self_forcing_start: float = field(0.0, help="training only: the share of train.steps after which "
                                      "self_forcing turns on (0: from the first step). One run then learns the "
                                      "game's motion from real frames first and its own rollouts last, as the "
                                      "shipped world's self-forced fine-tune did in a second run (docs/models.md)")
    self_forcing_copy_penalty: float | None = field(None, help="training only: the copy penalty that "
                                                    "self_forcing's rollouts decode with (None: play's default, "
                                                    "playworld.maskgit.PLAY_COPY_PENALTY). Set it to the one the "
                                                    "world will play at (its play_setting.json), so the past the "
                                                    "model learns from is the kind its own play makes")
    action_dropout: float = field(0.0, help="training only: each frame's action is replaced by the no-action id "
                                  "(the one frame 1 has) with this probability, so the model also learns the next "
                                  "frame without its action: the action-free model that action guidance then "
                                  "reads from one extra copy of the batch instead of |A| (classifier-free guidance's "
                                  "training, Ho & Salimans 2022)")
    change_weight: float = field(0.0, help="training only: a masked token that differs from the token at its "
                                 "place one frame earlier counts 1 + change_weight times in the cross-entropy "
                                 "(normalised by the summed weights), so the few tokens that move (a player's "
                                 "sprite, the keys' effect) are not drowned by the many that a copy predicts")
    action_cond: str = field("input", help="how the action reaches the model: 'input' (its embedding added to "
                             "the tokens of the frame it leads to, as Genie does), 'adaln' (also, in every "
                             "block, a second action embedding scales, shifts and gates each sub-layer, as DiT "
                             "conditions on its class; the modulation starts at the identity, so a model trained "
                             "with 'input' can be fine-tuned with it through train.init_from) or 'token' (instead "
                             "of being added, the embedding is one more token of its frame, which every token of "
                             "the frame attends to in spatial attention and the frames' action tokens to each "
                             "other in temporal attention, as Jasmine feeds its true actions)")
    one_pass: bool = field(False, help="every frame is predicted fully masked from the previous frame's tokens "
                           "(prev_frame_input) and the states of the frames before, in training as at play, so "
                           "a frame's keys/values are those of the very pass that predicts it: play writes them "
                           "while sampling, with no second (commit) pass per frame, about half of a step's "
                           "dynamics cost. A clip's first frame is then only the second's previous frame. Plays "
                           "with 1 MaskGIT step (play's setting); the mask rates are unused. A model trained without "
                           "it can be fine-tuned into it through train.init_from (the same parameters)")
    grad_checkpoint: bool = field(False, help="recompute block activations in backward to save memory")
    backend: str = field("maskgit", help="how a world makes the next frame with this model at play time "
                         "(playworld.backends: 'maskgit', or 'flow': a flow-matching model over the tokenizer's "
                         "continuous latents; runs written before this field play with maskgit)")
    flow: FlowConfig = field(default_factory=FlowConfig, help="the flow backend's settings (backend 'flow')")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_actions", "token_height", "token_width", "dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dynamics.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads or (self.dim // self.heads) % (4 if self.spatial_rope else 2):
            raise ConfigError(f"dynamics.dim {self.dim} / heads {self.heads} must be an integer divisible by "
                              f"{4 if self.spatial_rope else 2} (RoPE)")
        if not 0.0 < self.mask_rate_min <= self.mask_rate_max <= 1.0:
            raise ConfigError(
                f"dynamics mask rates need 0 < min <= max <= 1, got [{self.mask_rate_min}, {self.mask_rate_max}]")
        if not 0.0 <= self.action_dropout < 1.0:
            raise ConfigError(f"dynamics.action_dropout must be in [0, 1), got {self.action_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dynamics.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.context_noise < 1.0:
            raise ConfigError(f"dynamics.context_noise must be in [0, 1), got {self.context_noise}")
        if not 0.0 <= self.self_forcing <= 1.0:
            raise ConfigError(f"dynamics.self_forcing must be in [0, 1], got {self.self_forcing}")
        if not 0.0 <= self.self_forcing_start < 1.0:
            raise ConfigError(f"dynamics.self_forcing_start must be in [0, 1), got {self.self_forcing_start}")
        if self.self_forcing_copy_penalty is not None and not 0.0 <= self.self_forcing_copy_penalty < float("inf"):
            raise ConfigError("dynamics.self_forcing_copy_penalty must be a finite number >= 0 (or null: play's "
                              f"default), got {self.self_forcing_copy_penalty}")
        if not self.change_weight >= 0.0:
            raise ConfigError(f"dynamics.change_weight must be >= 0, got {self.change_weight}")
        if self.action_cond not in ("input", "adaln", "token"):
            raise ConfigError(f"dynamics.action_cond must be 'input', 'adaln' or 'token', got {self.action_cond!r}")
        if self.backend == "flow" and self.action_cond != "input":
            raise ConfigError(f"dynamics.action_cond={self.action_cond!r} is MaskGIT's; the flow backend conditions "
                              "at its input")
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigError(f"dynamics.backend must name a backend (e.g. 'maskgit'), got {self.backend!r}")
        if isinstance(self.flow, dict):
            self.flow = FlowConfig(**self.flow)
        if not isinstance(self.flow, FlowConfig):
            raise ConfigError(f"dynamics.flow must be a FlowConfig or a mapping, got {type(self.flow).__name__}")
        if self.one_pass and (not self.prev_frame_input or self.context_noise or self.clean_prefix
                              or self.mask_first_frame or self.backend != "maskgit"):
            raise ConfigError("dynamics.one_pass reads each frame's tokens only as the next frame's previous "
                              "frame: it needs prev_frame_input and the maskgit backend, and has no unmasked "
                              "inputs for context_noise, clean_prefix or mask_first_frame to act on")
        if self.backend == "flow" and (self.context_noise or self.clean_prefix or self.mask_first_frame
                                       or self.self_forcing or self.change_weight):
            raise ConfigError("dynamics.context_noise, clean_prefix, self_forcing, change_weight and "
                              "mask_first_frame are "
                              "MaskGIT's; the flow "
                              "backend's context noise is dynamics.flow.context_noise_max / context_noise")

    @property
    def num_tokens(self) -> int:
        return self.token_height * self.token_width

    @property
    def tokens_per_frame(self) -> int:
        """Tokens one frame makes (every model config declares it; training's cost estimate reads it)."""
        return self.num_tokens


def frame_actions(actions: Tensor, no_action_id: int) -> Tensor:
    """(B, T-1) transition actions -> (B, T) per-frame conditioning of either dynamics model: each frame
    is conditioned on the action that led to it, and frame 1, which none led to, on ``no_action_id``."""
    first = actions.new_full((actions.shape[0], 1), no_action_id)
    return torch.cat([first, actions], dim=1)


def guidance_actions(frame_actions: Tensor, model: nn.Module) -> Tensor:
    """(B, T) pressed actions -> (n, B, T): the pressed ones, then the action-free model's (either dynamics
    model): the no-action id for a model trained with ``action_dropout``, else each latent action in turn,
    whose predictions action guidance averages."""
    if model.config.action_dropout > 0:
        free = [model.no_action_id]
    else:
        free = list(range(model.config.num_actions))
    return torch.stack([frame_actions, *(torch.full_like(frame_actions, a) for a in free)])


def guide(outputs: Tensor, n: int, action_guidance: float) -> Tensor:
    """(n*B, ...) outputs for the n copies of :func:`guidance_actions` (the pressed action's first) -> (B, ...)
    guided ones: out_a + (g - 1) (out_a - out_free), out_free the mean over the action-free copies."""
    out, *free = outputs.chunk(n)
    return out + (action_guidance - 1.0) * (out - sum(free) / len(free))


def repeat_caches(cache: TemporalKVCache | Sequence[TemporalKVCache], n: int) -> list[TemporalKVCache]:
    """The caches of a batch repeated ``n`` times, for one uncommitted pass over ``n`` copies of its rows
    (each copy attends over the same past; nothing is committed, so sharing the caches is safe)."""
    return ([cache] if isinstance(cache, TemporalKVCache) else list(cache)) * n


def drop_actions(frame_actions: Tensor, model: nn.Module) -> Tensor:
    """(B, T) per-frame conditioning -> the same with each frame's action replaced by ``model.no_action_id``
    with probability ``model.config.action_dropout`` while ``model`` trains (either dynamics model; in
    evaluation, or without dropout, unchanged)."""
    rate = model.config.action_dropout
    if not (model.training and rate > 0):
        return frame_actions
    drop = torch.rand(frame_actions.shape, device=frame_actions.device) < rate
    return frame_actions.masked_fill(drop, model.no_action_id)


@dataclass
class MaskedBatch:
    """A masked training input: inputs (B, T, S) with [MASK] ids, mask (B, T, S) bool (True = masked)."""

    inputs: Tensor
    mask: Tensor


class DynamicsModel(nn.Module):
    """forward(tokens (B, T, S), frame_actions (B, T), cache=None, commit=False, prev=None) -> logits (B, T, S, V).

    ``frame_actions[:, t]`` is the action that leads *to* frame t (``no_action_id`` for a first frame);
    :meth:`frame_actions` builds it from per-transition actions (B, T-1). ``prev`` (B, S) is the frame
    before ``tokens[:, 0]`` (with a cache, the last committed frame); None means there is none.
    """

    # trained with bf16 weights (playworld.train.mixed), the output head stays fp32: bf16 logits of
    # magnitude ~10 would be rounded by ~0.03 before the cross-entropy
    keep_fp32 = ("head.",)

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        self.config = config
        self.mask_id = config.vocab_size
        self.no_action_id = config.num_actions
        self.token_emb = nn.Embedding(config.vocab_size + 1, config.dim)  # + [MASK]
        self.action_emb = nn.Embedding(config.num_actions + 1, config.dim)  # + "no action"
        # the token at the same place one frame earlier; id vocab_size = none (first frame) or [MASK]
        self.prev_emb = nn.Embedding(config.vocab_size + 1, config.dim) if config.prev_frame_input else None
        grid = (config.token_height, config.token_width) if config.spatial_rope else None
        # action_cond 'adaln': each block's modulation reads this second embedding of the frame's action
        self.action_mod = nn.Embedding(config.num_actions + 1, config.dim) if config.action_cond == "adaln" else None
        # action_cond 'token': the action is a trailing token of each frame (S + 1 places, not rotated by the
        # spatial RoPE), whose output the head skips
        self.action_tokens = 1 if config.action_cond == "token" else 0
        self.transformer = STTransformer(config.dim, config.depth, config.heads,
                                         config.num_tokens + self.action_tokens,
                                         config.mlp_ratio, config.dropout, causal=True,
                                         grad_checkpoint=config.grad_checkpoint, spatial_grid=grid,
                                         learned_pos=not config.spatial_rope, modulated=self.action_mod is not None)
        self.head = nn.Linear(config.dim, config.vocab_size)
        init_weights(self)
        self.progress = 0.0  # share of the run's steps done, set by the engine (set_progress); not saved

    def set_progress(self, step: int, total: int) -> None:
        """The training engine's position (``step`` of ``total``), before each step: what
        ``self_forcing_start`` is measured against. A resumed run sets it from its restored step."""
        self.progress = step / max(total, 1)

    def new_cache(self, max_frames: int) -> TemporalKVCache:
        """A bounded temporal KV cache holding at most ``max_frames`` frames (the context window)."""
        return self.transformer.new_cache(max_frames)

    def frame_actions(self, actions: Tensor) -> Tensor:
        """(B, T-1) transition actions -> (B, T) per-frame conditioning, frame 1 = no action."""
        return frame_actions(actions, self.no_action_id)

    def init_from_notes(self, source: DynamicsConfig) -> list[str]:
        """What ``train.init_from`` should say when it starts this model from a source of config ``source``
        that plays otherwise: a one_pass source trained on without ``one_pass`` becomes a two-pass model
        (legal, the same parameters, but rarely meant once a world plays one pass per frame)."""
        if source.one_pass and not self.config.one_pass:
            return ["a one_pass model (one pass per frame), but this run trains without model.one_pass, so the "
                    "result plays two passes per frame; add --set model.one_pass=true to keep one pass"]
        return []

    def init_from_optional(self) -> set[str]:
        """Parameters that ``train.init_from`` may find missing from a source model without changing what
        the model computes: the adaLN modulation (zero at init) and the embedding it reads."""
        if self.action_mod is None:
            return set()
        names = {"action_mod.weight"}
        for i, block in enumerate(self.transformer.blocks):
            names |= {f"transformer.blocks.{i}.modulation.{n}" for n, _ in block.modulation.named_parameters()}
        return names

    def block_cond(self, frame_actions: Tensor) -> Tensor | None:
        """frame_actions (B, T) -> the modulated blocks' conditioning (B, T, D), or None (action_cond 'input')."""
        return None if self.action_mod is None else self.action_mod(frame_actions)

    def embed(self, tokens: Tensor, frame_actions: Tensor, prev: Tensor | None = None) -> Tensor:
        """tokens (B, T, S), frame_actions (B, T), prev (B, S) or None -> (B, T, S, D): token + action
        (+ previous-frame token) embeddings; with action_cond 'token', (B, T, S + 1, D): token (+ previous-frame
        token) embeddings, then the action's embedding as the frame's last token."""
        if tokens.dim() != 3 or tokens.shape[2] != self.config.num_tokens:
            raise ValueError(f"dynamics expects tokens (B, T, {self.config.num_tokens}), got {tuple(tokens.shape)}")
        if frame_actions.shape != tokens.shape[:2]:
            raise ValueError(f"frame_actions must be {tuple(tokens.shape[:2])}, got {tuple(frame_actions.shape)}")
        act = self.action_emb(frame_actions)[:, :, None, :]  # (B, T, 1, D)
        # one_pass: every frame enters as [MASK]; its tokens reach the model as the next frame's prev only
        x = self.token_emb(torch.full_like(tokens, self.mask_id) if self.config.one_pass else tokens)
        if not self.action_tokens:
            x = x + act
        if self.prev_emb is not None:
            if prev is None:
                prev = tokens.new_full((tokens.shape[0], tokens.shape[2]), self.mask_id)
            elif prev.shape != (tokens.shape[0], tokens.shape[2]):
                raise ValueError(f"prev must be (B, S) = {(tokens.shape[0], tokens.shape[2])}, got {tuple(prev.shape)}")
            x = x + self.prev_emb(torch.cat([prev[:, None], tokens[:, :-1]], dim=1))
        return torch.cat([x, act], dim=2) if self.action_tokens else x

    def forward(self, tokens: Tensor, frame_actions: Tensor,
                cache: TemporalKVCache | Sequence[TemporalKVCache] | None = None,
                commit: bool = False, prev: Tensor | None = None) -> Tensor:
        x = self.embed(tokens, frame_actions, prev)  # (B, T, S (+ 1), D)
        cond = self.block_cond(frame_actions)  # (B, T, D) or None
        out = self.transformer(x, cache=cache, commit=commit, cond=cond)
        return self.head(out[:, :, : self.config.num_tokens])  # (B, T, S, V)

    def commit(self, tokens: Tensor, frame_actions: Tensor, cache: TemporalKVCache | Sequence[TemporalKVCache],
               prev: Tensor | None = None) -> None:
        """Append known frames (B, T, S) to ``cache`` (their keys/values), skipping everything after the
        last block's keys/values (its attention output and MLP, the final norm and the output head).
        ``one_pass`` without ``prev``: the first frame is only the next one's previous frame (as in
        training), so T - 1 frames are appended."""
        if self.config.one_pass and prev is None:
            if tokens.shape[1] < 2:  # nothing to write; the cache still learns its rows (batched stepping)
                if isinstance(cache, TemporalKVCache):
                    cache.reserve_rows(tokens.shape[0], tokens.device)
                return
            tokens, frame_actions, prev = tokens[:, 1:], frame_actions[:, 1:], tokens[:, 0]
        self.transformer.commit_frames(self.embed(tokens, frame_actions, prev), cache,
                                       cond=self.block_cond(frame_actions))

    def random_mask(self, tokens: Tensor, generator: torch.Generator | None = None) -> MaskedBatch:
        """Mask each frame's tokens i.i.d. with a rate ~ U[min, max] drawn per frame (Genie, sec. 2.3)."""
        b, t, s = tokens.shape
        lo, hi = self.config.mask_rate_min, self.config.mask_rate_max
        rate = lo + (hi - lo) * torch.rand(b, t, 1, device=tokens.device, generator=generator)
        mask = torch.rand(b, t, s, device=tokens.device, generator=generator) < rate
        if not self.config.mask_first_frame:
            mask[:, 0] = False
        if self.config.clean_prefix and self.training and t > 2:
            # c ~ U{1..T-1} clean frames per clip: frame index < c stays visible
            c = torch.randint(1, t, (b, 1, 1), device=tokens.device, generator=generator)
            mask &= torch.arange(t, device=tokens.device)[None, :, None] >= c
        return MaskedBatch(inputs=tokens.masked_fill(mask, self.mask_id), mask=mask)

    def corrupt(self, batch: MaskedBatch, generator: torch.Generator | None = None) -> Tensor:
        """Inputs (B, T, S) with a share r ~ U[0, context_noise] (per clip) of the *visible* tokens replaced
        by uniformly random token ids; [MASK] positions are left as they are. Training mode only, so
        validation losses stay comparable across settings."""
        inputs = batch.inputs
        if self.config.context_noise <= 0 or not self.training:
            return inputs
        b = inputs.shape[0]
        rate = self.config.context_noise * torch.rand(b, 1, 1, device=inputs.device, generator=generator)
        hit = (torch.rand(inputs.shape, device=inputs.device, generator=generator) < rate) & ~batch.mask
        noise = torch.randint(0, self.config.vocab_size, inputs.shape, device=inputs.device, generator=generator)
        return torch.where(hit, noise, inputs)

    def step_logits(self, frame: Tensor, frame_actions: Tensor,
                    cache: TemporalKVCache | Sequence[TemporalKVCache], prev: Tensor,
                    action_guidance: float = 1.0, commit: bool = False) -> Tensor:
        """One decoding pass of the frame after the cached ones: frame (B, S) tokens (masked = ``mask_id``),
        frame_actions (B, 1), prev (B, S) the frame before -> (B, S, V) fp32 logits; the cache is read, not
        written. With ``action_guidance`` g > 1 (``SamplingConfig.action_guidance``): log-probabilities
        lp_a + (g - 1) (lp_a - lp_free), where lp_free is the no-action id's for a model trained with
        ``action_dropout``, else the mean over the |A| latent actions; all in one pass of 2 (or |A| + 1)
        copies of the batch. ``commit`` (``one_pass`` models, whose frame state is this pass's): the pass also
        writes the frame to the cache (with guidance, one more pass of the pressed action writes it)."""
        if commit and not self.config.one_pass:
            raise ValueError("only a one_pass dynamics model commits the pass that predicts a frame")
        if action_guidance == 1.0:
            return self(frame[:, None], frame_actions, cache=cache, commit=commit, prev=prev)[:, 0].float()
        asked = guidance_actions(frame_actions, self)  # (n, B, 1): the pressed action first
        n = len(asked)
        lp = self(frame[:, None].repeat(n, 1, 1), rearrange(asked, "n b one -> (n b) one"),
                  cache=repeat_caches(cache, n), commit=False,
                  prev=prev.repeat(n, 1))[:, 0].float().log_softmax(-1)  # (n*B, S, V): one batched pass
        if commit:
            self.commit(frame[:, None], frame_actions, cache, prev=prev)
        return guide(lp, n, action_guidance)

    def check_one_pass_sampling(self, sampling: SamplingConfig) -> None:
        """A ``one_pass`` model predicts a frame in one pass from [MASK] inputs only: refuse more steps."""
        if self.config.one_pass and sampling.steps != 1:
            raise ConfigError(f"a one_pass dynamics model samples each frame in 1 MaskGIT step (it never sees "
                              f"unmasked inputs to refine), got steps={sampling.steps}")

    def forcing_sampling(self) -> SamplingConfig:
        """How self_forcing's rollouts decode: play's setting, at ``self_forcing_copy_penalty`` if set."""
        penalty = self.config.self_forcing_copy_penalty
        return play_sampling() if penalty is None else replace(play_sampling(), copy_penalty=penalty)

    @torch.no_grad()
    def free_run(self, tokens: Tensor, frame_actions: Tensor, frames: int,
                 sampling: SamplingConfig | None = None) -> Tensor:
        """tokens (B, T, S) with frame 1 real, frame_actions (B, T) -> (B, T, S): frames 2..``frames``+1
        replaced by the model's own, each decoded from the ones before it under ``sampling`` (default:
        play's setting), the rest left as given. As play steps: the past in a temporal KV cache, one
        one-frame pass per decoding step and one commit per frame."""
        sampling = sampling or play_sampling()
        self.check_one_pass_sampling(sampling)
        one = self.config.one_pass  # the decoding pass itself writes the frame to the cache
        out = tokens.clone()
        b, t, s = tokens.shape
        if not 0 <= frames < t:
            raise ValueError(f"free_run frames must be in [0, {t - 1}], got {frames}")
        if frames == 0:
            return out
        cache = self.new_cache(t)
        self.commit(out[:, :1], frame_actions[:, :1], cache)  # one_pass: nothing (frame 1 is only a prev)
        for j in range(1, frames + 1):  # frame j (0-based) from the committed frames < j
            prev, fa = out[:, j - 1], frame_actions[:, j : j + 1]  # (B, S), (B, 1)

            def logits_fn(frame: Tensor, prev: Tensor = prev, fa: Tensor = fa) -> Tensor:  # (B, S) -> (B, S, V)
                return self.step_logits(frame, fa, cache, prev, sampling.action_guidance, commit=one)

            out[:, j] = maskgit_decode(logits_fn, b, s, self.mask_id, sampling, device=tokens.device, prev=prev)
            if j < frames and not one:
                self.commit(out[:, j : j + 1], fa, cache, prev=prev)
        return out

    def compute_loss_tokens(self, tokens: Tensor, actions: Tensor) -> LossOutput:
        """tokens: (B, T, S) long in [0, V); actions: (B, T-1) long in [0, |A|) -> masked cross-entropy.

        metrics: ``ce`` (masked cross-entropy), ``accuracy`` (masked top-1), ``mask_rate``,
        ``changed_share`` (share of masked targets that differ from the token a frame earlier) and, where there
        are such, ``ce_changed`` / ``accuracy_changed`` on them (0 where none); with ``self_forcing``, ``self_forced`` (the
        share of the clip's frames that were the model's own). The loss is ``ce``, weighted by
        ``change_weight`` in training mode. Self-forcing starts once :attr:`progress` reaches
        ``self_forcing_start``.
        """
        if tokens.dim() != 3 or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be (B, T>=2, S), got {tuple(tokens.shape)}")
        if actions.shape != (tokens.shape[0], tokens.shape[1] - 1):
            raise ValueError(f"actions must be (B, T-1) = {(tokens.shape[0], tokens.shape[1] - 1)}, "
                             f"got {tuple(actions.shape)}")
        fa = drop_actions(self.frame_actions(actions), self)  # (B, T)
        t = tokens.shape[1]
        own = 0  # frames 2..own+1 are the model's own
        forcing = self.training and self.config.self_forcing > 0 and self.progress >= self.config.self_forcing_start
        if forcing and t > 2 and float(torch.rand(())) < self.config.self_forcing:
            own = int(torch.randint(1, t - 1, ()))
        if self.config.one_pass:  # frames 2..T, each fully masked, predicted from the one before
            # frames 2..own+1 the model's own
            known = self.free_run(tokens, fa, own, self.forcing_sampling()) if own else tokens
            mask = torch.ones_like(tokens, dtype=torch.bool)  # (B, T, S): the tokens the loss covers
            mask[:, : own + 1] = False  # frames own+2..T
            logits = self(known[:, 1:], fa[:, 1:], prev=known[:, 0])  # (B, T-1, S, V): frames 2..T
        else:
            batch = self.random_mask(tokens)
            inputs = self.corrupt(batch)
            mask = batch.mask
            if own:
                past = torch.arange(t, device=tokens.device)[None, :, None] <= own  # (1, T, 1)
                mask &= ~past  # the loss covers frames own+2..T
                inputs = torch.where(past, self.free_run(tokens, fa, own, self.forcing_sampling()), inputs)
            logits = self(inputs, fa)  # (B, T, S, V)
        if not mask.any():  # vanishingly rare; keep the loss defined
            mask[:, -1] = True
        skip = t - logits.shape[1]  # one_pass: frame 1 has no logits
        target, pred = tokens[mask], logits[mask[:, skip:]]  # (M,), (M, V)
        # (B, T, S): the token differs from the one at its place a frame earlier (frame 1: never)
        changed = torch.cat([torch.zeros_like(tokens[:, :1], dtype=torch.bool), tokens[:, 1:] != tokens[:, :-1]], 1)
        moved = changed[mask]  # (M,)
        per_token = F.cross_entropy(pred.float(), target, reduction="none")  # (M,)
        ce = per_token.mean()
        loss = ce
        if self.config.change_weight > 0 and self.training:
            weight = 1.0 + self.config.change_weight * moved.float()
            loss = (weight * per_token).sum() / weight.sum()
        with torch.no_grad():
            hit = pred.argmax(-1) == target  # (M,)
            acc = hit.float().mean()
            # how well the moving tokens are predicted (a copy gets none of them right); 0 where none moved,
            # so that every batch (and every DDP rank) logs the same keys
            n_moved = moved.sum().clamp(min=1)
            metrics = {"ce": ce.detach(), "accuracy": acc, "mask_rate": mask.float().mean(),
                       "changed_share": moved.float().mean(),
                       "ce_changed": (per_token.detach() * moved).sum() / n_moved,
                       "accuracy_changed": (hit & moved).sum() / n_moved}
        if self.config.self_forcing > 0 and self.training:
            metrics["self_forced"] = torch.tensor(own / t)
        return LossOutput(loss, metrics)


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients and put a module in eval mode (in place); returns it."""
    module.requires_grad_(False)
    return module.eval()


class FrozenModelsTrainer(TrainableModel):
    """A dynamics network (``dynamics``) trained beside a frozen tokenizer and a frozen LAM: the frozen
    models stay in eval mode even when the engine calls ``train()``, and ``trainable_module`` (the
    dynamics network) is all the engine optimises or weight-decays."""

    def __init__(self, config: DynamicsConfig, *, tokenizer: nn.Module, lam: nn.Module,
                 dynamics: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = freeze(tokenizer)
        self.lam = freeze(lam)
        self.dynamics = dynamics

    @property
    def trainable_module(self) -> nn.Module:
        return self.dynamics

    def train(self, mode: bool = True) -> FrozenModelsTrainer:
        super().train(mode)
        self.tokenizer.eval()
        self.lam.eval()
        return self

    def set_progress(self, step: int, total: int) -> None:
        if isinstance(self.dynamics, DynamicsModel):  # the MaskGIT model's self_forcing_start
            self.dynamics.set_progress(step, total)


class DynamicsTrainer(FrozenModelsTrainer):
    """Trains a :class:`DynamicsModel` from pixels with a frozen tokenizer and a frozen LAM.

    ``compute_loss(video (B, T, H, W, C) in [0, 1])`` tokenizes and infers latent actions under
    no_grad, then returns the dynamics loss. The frozen models stay in eval mode even when the engine
    calls ``train()``, and ``trainable_module`` (the dynamics model) is all the engine should optimise
    or weight-decay (jafar applied decay to frozen sub-models; this wrapper makes that impossible).
    """

    caches_tokens = True  # cached_loader: tokens and actions encoded once (data.precompute)

    def __init__(self, config: DynamicsConfig, *, tokenizer: nn.Module, lam: nn.Module,
                 weights_sha256: dict[str, str] | None = None) -> None:
        check_compatible(config, tokenizer, lam)
        super().__init__(config, tokenizer=tokenizer, lam=lam, dynamics=DynamicsModel(config))
        # sha256 of the frozen models' release weights ("tokenizer", "lam"): what a token cache is keyed by
        self.weights_sha256 = dict(weights_sha256 or {})
        self._token_caches: dict[tuple[str, str | None], TokenCache] = {}  # (cache dir, split) -> its cache

    dynamics: DynamicsModel

    @torch.no_grad()
    def tokens_and_actions(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, H, W, C) in [0, 1] -> tokens (B, T, S) long, actions (B, T-1) long."""
        indices = self.tokenizer.encode(video).indices  # type: ignore[operator]
        tokens = rearrange(indices, "b t h w -> b t (h w)")
        actions = self.lam.infer_actions(video)  # type: ignore[operator]
        return tokens, actions

    def compute_loss(self, batch: Tensor | tuple[Tensor, Tensor]) -> LossOutput:
        """batch: video (B, T, H, W, C) in [0, 1], or a
        :class:`~playworld.data.token_cache.TokenBatch` (tokens (B, T, S), actions (B, T-1)) from the cache."""
        if isinstance(batch, Tensor):
            tokens, actions = self.tokens_and_actions(batch)
        else:
            tokens, actions = batch
        return self.dynamics.compute_loss_tokens(tokens, actions)

    def cached_loader(self, loader: ClipLoader, directory: Path, *, progress: bool = True) -> TokenClipLoader:
        """``loader`` (a pixel :class:`~playworld.data.loader.ClipLoader`) as a
        :class:`~playworld.data.token_cache.TokenClipLoader` over the tokens and actions of its split,
        encoded once into ``directory`` (reused while the frozen models and the dataset are unchanged)."""
        from playworld.data.token_cache import TokenClipLoader, cache_keys, load_or_build, model_identity

        split = loader.clips.split
        key = (str(directory), split)
        if key not in self._token_caches:
            window = loader.clips.clip_len
            keys = cache_keys(tokenizer=model_identity(self.tokenizer, self.weights_sha256.get("tokenizer")),
                              lam=model_identity(self.lam, self.weights_sha256.get("lam")),
                              dataset_root=loader.clips.dataset.root, split=split, window=window)
            device = next(self.dynamics.parameters()).device
            self._token_caches[key] = load_or_build(Path(directory), loader, self.tokenizer, self.lam, keys=keys,
                                                    window=window, device=device, progress=progress)
        return TokenClipLoader(loader, self._token_caches[key])


def check_compatible(config: DynamicsConfig, tokenizer: nn.Module, lam: nn.Module) -> None:
    """Raise ConfigError unless the tokenizer's vocabulary and grid and the LAM's |A| match ``config``."""
    vocab = getattr(tokenizer, "num_codes", None)
    if vocab is not None and vocab != config.vocab_size:
        raise ConfigError(f"dynamics.vocab_size {config.vocab_size} != tokenizer codebook size {vocab}")
    grid = getattr(tokenizer, "grid", None)
    if grid is not None and tuple(grid) != (config.token_height, config.token_width):
        raise ConfigError(f"dynamics token grid {(config.token_height, config.token_width)} != "
                          f"tokenizer grid {tuple(grid)}")
    actions = getattr(lam, "num_actions", None)
    if actions is not None and actions != config.num_actions:
        raise ConfigError(f"dynamics.num_actions {config.num_actions} != LAM num_actions {actions}")
