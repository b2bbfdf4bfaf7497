"""Carry a dynamics model over to a new tokenizer's vocabulary (a warm start, not a finished model).

A dynamics model reads and predicts token ids, so a new tokenizer (better reconstructions, the same token
grid) makes its token embeddings and output head meaningless: the new tokenizer's code 17 is not the old
one's. Everything between them (attention over space and time, the action pathway) still describes the
same video. This module maps the vocabulary through what both tokenizers say about the same frames:

1. encode the same clips with both tokenizers and count, at every token place, which new code sits where
   which old code sits: counts[j, o] (``code_cooccurrence``);
2. rebuild the vocabulary rows (``transplant_vocabulary``):
   - input embeddings (``token_emb``, ``prev_emb``): new code j gets sum_o P(o | j) * E_old[o], the
     old embeddings of what it stands for, weighted by how often;
   - output head: new code j takes the old row of its most frequent old code m(j) and a bias of
     b_old[m(j)] + log P(j | m(j)), so that a frame the old model would predict as m(j) spreads its
     probability over the new codes in proportion to how the new tokenizer splits that old code.
   A new code never seen in the clips gets the old vocabulary's frequency-weighted mean embedding and a
   head row whose bias makes it unlikely until training says otherwise.

When the new vocabulary is a relabelling of the old one (the same code book, permuted) the transplanted
model is the old model, exactly, under the relabelling (tested). For a different tokenizer it is a start
that training then fine-tunes (``train.init_from``); vocabulary transfer for language models (WECHSEL,
Minixhofer et al. 2022; FOCUS, Dobler and de Melo 2023) initialises new token embeddings the same way, from
the old embeddings of what each new token overlaps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from playworld.errors import ConfigError
from playworld.models.tokenizer import VideoTokenizer

# the dynamics model's vocabulary tensors: rows indexed by token id (the embeddings' last row is [MASK])
EMBEDDINGS = ("token_emb.weight", "prev_emb.weight")
HEAD = ("head.weight", "head.bias")


def _check_grids(old: VideoTokenizer, new: VideoTokenizer) -> None:
    if old.grid != new.grid:
        raise ConfigError(f"the tokenizers' token grids differ (old {old.grid}, new {new.grid}): a dynamics model "
                          "predicts one token per place, so only a tokenizer with the same grid can replace its own")
    if old.config.image_size != new.config.image_size or old.config.channels != new.config.channels:
        raise ConfigError("the tokenizers read different frames (image size or channels differ)")


@torch.no_grad()
def code_cooccurrence(old: VideoTokenizer, new: VideoTokenizer, clips: Iterable[Tensor]) -> Tensor:
    """counts (V_new, V_old) float64: how often new code j and old code o sit at the same place of the same
    frame; clips (B, T, H, W, C) in [0, 1]."""
    _check_grids(old, new)
    old.eval()
    new.eval()
    v_new, v_old = new.num_codes, old.num_codes
    counts = torch.zeros(v_new * v_old, dtype=torch.float64)
    for video in clips:
        o = old.encode(video).indices.reshape(-1)  # (B*T*h*w,)
        j = new.encode(video).indices.reshape(-1)
        counts += torch.bincount(j * v_old + o, minlength=v_new * v_old).to(torch.float64)
    return counts.view(v_new, v_old)


@torch.no_grad()
def transplant_vocabulary(state: dict[str, Tensor], counts: Tensor,
                          unseen_log_prob: float = -9.0) -> dict[str, Tensor]:
    """A dynamics state dict over the old vocabulary -> the same over the new (see the module docstring).
    counts (V_new, V_old) from ``code_cooccurrence``; other tensors are returned unchanged (shared)."""
    v_new, v_old = counts.shape
    if EMBEDDINGS[0] not in state:
        raise ConfigError(f"no {EMBEDDINGS[0]}: only a MaskGIT dynamics model (token ids in and out) can be "
                          "carried over to another tokenizer's codes")
    for name in EMBEDDINGS + HEAD:
        if name in state and state[name].shape[0] not in (v_old, v_old + 1):
            raise ConfigError(f"{name}: {state[name].shape[0]} rows, but the old tokenizer has {v_old} codes "
                              "(was the dynamics model trained on that tokenizer?)")
    if counts.sum() <= 0:
        raise ConfigError("no token places were counted: give the transplant some clips")
    counts = counts.to(torch.float64)
    old_freq = counts.sum(0) / counts.sum()  # (V_old,) P(o)
    seen = counts.sum(1) > 0  # (V_new,)
    # P(o | j): each new code's old codes; an unseen code takes the old marginal
    p_old_given_new = torch.where(seen[:, None], counts / counts.sum(1, keepdim=True).clamp_min(1e-12),
                                  old_freq[None, :])  # (V_new, V_old)
    out = dict(state)
    for name in EMBEDDINGS:
        if name not in state:
            continue
        w = state[name]  # (V_old + 1, D): the last row is [MASK], kept
        rows = (p_old_given_new @ w[:v_old].to(torch.float64)).to(w.dtype)  # (V_new, D)
        out[name] = torch.cat([rows, w[v_old:]], dim=0)
    if HEAD[0] in state:
        m = counts.argmax(1)  # (V_new,) most frequent old code of each new code
        m = torch.where(seen, m, old_freq.argmax().expand_as(m))
        # P(j | m(j)): how the new tokenizer splits old code m(j)
        p_new_given_old = counts[torch.arange(v_new), m] / counts[:, m].sum(0).clamp_min(1e-12)  # (V_new,)
        log_split = torch.where(seen, p_new_given_old.clamp_min(1e-12).log(),
                                torch.full_like(p_new_given_old, unseen_log_prob))
        weight = state[HEAD[0]]
        out[HEAD[0]] = weight[m].clone()
        if HEAD[1] in state:
            bias = state[HEAD[1]]
            out[HEAD[1]] = (bias[m].to(torch.float64) + log_split).to(bias.dtype)
    return out
