"""Iterative MaskGIT decoding of one frame of tokens (MaskGIT, Chang et al. 2022, arXiv 2202.04200;
as used by Genie's dynamics model, arXiv 2402.15391, sec. 2.3).

Start with every token of the frame masked. At iteration i of ``steps``: predict all tokens, sample
the masked ones (temperature, top-k), score each sampled token by its log-probability plus Gumbel
noise whose scale anneals linearly to 0, keep the most confident and re-mask the rest so that
``n_i = floor(S * gamma((i + 1) / steps))`` tokens stay masked, with gamma(r) = cos(pi r / 2) (cosine
schedule) or 1 - r (linear). The last iteration leaves nothing masked. Tokens once kept never change.

Sampling draws every random number from a caller's ``torch.Generator``, so a seed fixes the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from playworld.config import field
from playworld.errors import ConfigError


@dataclass
class SamplingConfig:
    """How a new frame's tokens are decoded. Fast settings: steps 1, 2, 4, 8 (Genie: 25)."""

    steps: int = field(4, help="MaskGIT iterations per frame (each is one dynamics forward pass)")
    temperature: float = field(1.0, help="softmax temperature for sampling tokens; 0 = greedy argmax")
    top_k: int = field(0, help="sample among the k most likely tokens only; 0 = all")
    choice_temperature: float = field(
        1.0, help="scale of the Gumbel noise added to confidences, annealed linearly to 0 over the steps")
    schedule: Literal["cosine", "linear"] = field("cosine", help="fraction of tokens still masked vs progress")
    copy_penalty: float = field(
        0.0, help="subtracted from the logit of the token that held each place in the previous frame before "
        "sampling: a repetition penalty (Keskar et al. 2019) against the copy-last mode that greedy decoding "
        "settles into; 0 = off")
    action_guidance: float = field(
        1.0, help="1 = off. g > 1: each token's log-probabilities under the pressed action are moved away from "
        "the action-free model's, lp_a + (g - 1) (lp_a - lp_free): classifier-free guidance (Ho & Salimans "
        "2022), so that what the pressed action changes is amplified. lp_free is the no-action prediction of a "
        "model trained with dynamics.action_dropout (a second copy of the batch in each decoding pass), else the "
        "mean over every latent action (|A| more copies). The flow backend guides its velocity the same way")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"sampling.steps must be >= 1, got {self.steps}")
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.choice_temperature < 0:
            raise ConfigError(f"sampling.choice_temperature must be >= 0, got {self.choice_temperature}")
        if not 0.0 <= self.copy_penalty < float("inf"):
            raise ConfigError(f"sampling.copy_penalty must be a finite number >= 0, got {self.copy_penalty}")
        if not 1.0 <= self.action_guidance < float("inf"):
            raise ConfigError(f"sampling.action_guidance must be a finite number >= 1 (1 = off), "
                              f"got {self.action_guidance}")
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"sampling.schedule must be 'cosine' or 'linear', got {self.schedule!r}")


# What a player sees: `playworld play`, `playworld rollout`, the Gymnasium env and `playworld eval` all
# default to this one setting, so a headline figure measures the frames a player gets: 1 greedy step
# (the only MaskGIT setting fast enough to play on 2 CPU cores) with a copy penalty of 2, chosen on the
# motion figures of held-out CoinRun (docs/models.md, "Why a held key stops moving"): greedy decoding
# alone froze a held key after 10-20 steps (late key response 0.02, liveness 0.04); a penalty of 2 kept
# it moving (0.71, 0.31) at the same realism and cost, and raised rollout PSNR and ΔPSNR; 3-4 made the
# world livelier but less faithful to the key. Other settings stay one flag away (--steps /
# --maskgit-steps, --temperature, --copy-penalty).
PLAY_STEPS = 1
PLAY_TEMPERATURE = 0.0
PLAY_COPY_PENALTY = 2.0


def play_sampling() -> SamplingConfig:
    """A fresh :class:`SamplingConfig` of play's setting (``PLAY_STEPS`` greedy steps, ``PLAY_COPY_PENALTY``)."""
    return SamplingConfig(steps=PLAY_STEPS, temperature=PLAY_TEMPERATURE, copy_penalty=PLAY_COPY_PENALTY)


def masked_counts(num_tokens: int, steps: int, schedule: str = "cosine") -> list[int]:
    """Number of tokens left masked after each iteration: strictly decreasing, ending at 0.

    Each iteration reveals at least one token, so ``steps`` larger than ``num_tokens`` is clipped.
    """
    counts = []
    prev = num_tokens
    for i in range(steps):
        r = (i + 1) / steps
        gamma = math.cos(math.pi / 2 * r) if schedule == "cosine" else 1.0 - r
        n = min(int(math.floor(num_tokens * gamma)), prev - 1)
        n = max(n, 0)
        counts.append(n)
        prev = n
        if n == 0:
            break
    return counts


def sample_tokens(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> Tensor:
    """logits: (N, V) -> sampled indices (N,) long; greedy when ``temperature`` is 0."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


RowGenerators = Sequence[tuple["torch.Generator | None", int]]
"""(generator, rows) per group of consecutive batch rows: worlds stepped together, each with its own seed."""


def _by_group(groups: list[tuple[torch.Generator | None, int]],
              draw: Callable[[torch.Generator | None, int, int], Tensor]) -> Tensor:
    """Concatenate ``draw(generator, first_row, end_row)`` over the groups (one call when there is one)."""
    parts, lo = [], 0
    for g, n in groups:
        parts.append(draw(g, lo, lo + n))
        lo += n
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def maskgit_decode(
    logits_fn: Callable[[Tensor], Tensor],
    batch: int,
    num_tokens: int,
    mask_id: int,
    config: SamplingConfig,
    generator: torch.Generator | RowGenerators | None = None,
    device: torch.device | str = "cpu",
    prev: Tensor | None = None,
) -> Tensor:
    """Decode one frame of ``num_tokens`` tokens for ``batch`` worlds.

    logits_fn: tokens (B, S) long, masked positions = ``mask_id`` -> logits (B, S, V) over real tokens.
    Returns (B, S) long, no ``mask_id`` left. Calls ``logits_fn`` exactly ``config.steps`` times
    (fewer if steps > S). ``generator``: one for the whole batch, or (generator, rows) groups in
    row order; each group draws exactly the numbers it would draw if decoded alone. ``prev`` (B, S):
    the previous frame's tokens, whose logits ``config.copy_penalty`` lowers (required when it is on).
    """
    device = torch.device(device)
    groups = [(generator, batch)] if generator is None or isinstance(generator, torch.Generator) else list(generator)
    if sum(n for _, n in groups) != batch:
        raise ValueError(f"generator groups cover {sum(n for _, n in groups)} rows, expected {batch}")
    penalty = None
    if config.copy_penalty > 0:
        if prev is None or prev.shape != (batch, num_tokens):
            raise ValueError(f"copy_penalty needs prev (B, S) = {(batch, num_tokens)}, got "
                             f"{None if prev is None else tuple(prev.shape)}")
        penalty = prev[..., None]  # (B, S, 1)
    tokens = torch.full((batch, num_tokens), mask_id, dtype=torch.long, device=device)
    counts = masked_counts(num_tokens, config.steps, config.schedule)
    for i, n_left in enumerate(counts):
        logits = logits_fn(tokens)
        if logits.shape[:2] != (batch, num_tokens):
            raise ValueError(f"logits_fn returned {tuple(logits.shape)}, expected ({batch}, {num_tokens}, V)")
        if penalty is not None:  # (B, S, V): the previous frame's token at each place loses copy_penalty
            logits = logits.scatter_add(-1, penalty, logits.new_full(penalty.shape, -config.copy_penalty))
        masked = tokens == mask_id  # (B, S)
        flat = logits.reshape(batch * num_tokens, -1)
        sampled = _by_group(groups, lambda g, lo, hi, flat=flat: sample_tokens(
            flat[lo * num_tokens:hi * num_tokens], config.temperature, config.top_k, g)).view(batch, num_tokens)
        sampled = torch.where(masked, sampled, tokens)
        if n_left == 0:
            return sampled
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, sampled[..., None]).squeeze(-1)  # (B, S)
        noise_scale = config.choice_temperature * (1.0 - (i + 1) / len(counts))
        if noise_scale > 0:
            noise = _by_group(groups, lambda g, lo, hi: gumbel_noise(torch.Size((hi - lo, num_tokens)), g, device))
            logp = logp + noise_scale * noise
        confidence = logp.masked_fill(~masked, float("inf"))  # kept tokens are never re-masked
        remask_idx = confidence.topk(n_left, dim=-1, largest=False).indices  # (B, n_left)
        remask = torch.zeros_like(masked).scatter_(1, remask_idx, True)
        tokens = sampled.masked_fill(remask, mask_id)
    return tokens  # unreachable: the last count is 0
