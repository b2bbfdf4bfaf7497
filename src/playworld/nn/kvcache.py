"""Bounded temporal key/value cache for frame-by-frame generation with ST-transformers.

Every block keeps the temporal keys/values of past frames in a preallocated ring of ``max_frames``
slots per row: a frame at absolute position p lives in slot ``p % max_frames``. Temporal attention
uses rotary embeddings, so attention depends only on the distance between frames, never on where a
key sits in memory: nothing is shifted or concatenated while playing, and a step writes one slot.

A one-frame step (the hot path of play) writes its keys/values into its own slot before attending,
whether or not it commits. That slot held the frame ``max_frames`` steps back, which the new frame
may no longer see (a frame sees at most ``max_frames`` frames, itself included), so an uncommitted
MaskGIT pass loses nothing. A commit then records the slot's position, which makes it visible to
later frames.

Rows (batch entries, e.g. worlds) carry their own positions and their own frames, so one batch can
hold worlds that started at different times, and a step may commit only some rows
(:meth:`TemporalKVCache.put_rows`, ``commit`` as a (B,) mask).

Shapes: B rows, S spatial tokens per frame, N = B*S temporal sequences, H heads, C = max_frames
slots, K head width, T new frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from playworld.nn.rope import rope_angles


@dataclass
class LayerCache:
    """One block's ring of past temporal keys/values: k, v of shape (N, H, C, K), rows ordered (b s)."""

    k: Tensor | None = None
    v: Tensor | None = None


@dataclass
class TemporalStep:
    """What every block needs for one cached forward of T new frames (built once per forward).

    positions: (B, T) absolute positions of the new frames; rope: cos, sin (N, 1, T, K/2);
    mask: (N, 1, T, C) for T = 1 (the ring, own slot included) or (N, 1, T, C + T) (ring + new
    frames); slots: (B,) the one-frame step's slot per row, and ``uniform_slot`` when all rows share
    it; commit: (B,) bool rows whose new frames are kept.
    """

    positions: Tensor
    rope: tuple[Tensor, Tensor]
    mask: Tensor
    slots: Tensor
    uniform_slot: int | None
    commit: Tensor


@dataclass
class CachedRows:
    """One cache's share of a batched cached forward: batch rows [start, stop) and its step's plan."""

    cache: TemporalKVCache
    step: TemporalStep
    start: int
    stop: int


@dataclass
class TemporalKVCache:
    """Per-block temporal key/value rings, with each row's slot positions and next position.

    ``max_frames`` bounds the cache (a sliding context window): the cost of a step and the memory
    held never grow with how long one has played. ``slot_pos`` (B, C) holds the absolute position of
    the frame in each slot (-1: empty); ``next_pos`` (B,) each row's next position.
    """

    num_layers: int
    max_frames: int
    num_spatial: int
    layers: list[LayerCache] = field(default_factory=list)
    slot_pos: Tensor | None = None
    next_pos: Tensor | None = None

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not self.layers:
            self.layers = [LayerCache() for _ in range(self.num_layers)]

    # -- state ----------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Rows held (0 before the first frame)."""
        return 0 if self.slot_pos is None else self.slot_pos.shape[0]

    def row_frames(self) -> Tensor:
        """(B,) frames each row currently holds (<= max_frames)."""
        if self.slot_pos is None:
            return torch.zeros(0, dtype=torch.long)
        return (self.slot_pos >= 0).sum(1)

    @property
    def frames(self) -> int:
        """Frames held by the fullest row (<= max_frames)."""
        counts = self.row_frames()
        return int(counts.max()) if counts.numel() else 0

    @property
    def pos(self) -> int:
        """The absolute position of the next frame (rows must agree; see ``next_pos`` otherwise)."""
        if self.next_pos is None or not self.next_pos.numel():
            return 0
        if bool((self.next_pos != self.next_pos[0]).any()):
            raise ValueError(f"cache rows are at different positions {self.next_pos.tolist()}; read next_pos")
        return int(self.next_pos[0])

    def clone(self) -> TemporalKVCache:
        """A deep copy, rings included: the copy and this cache change apart from then on."""
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        out = TemporalKVCache(self.num_layers, self.max_frames, self.num_spatial,
                              [LayerCache(copy(x.k), copy(x.v)) for x in self.layers])
        out.slot_pos, out.next_pos = copy(self.slot_pos), copy(self.next_pos)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the rings and positions."""
        tensors = [t for x in self.layers for t in (x.k, x.v)] + [self.slot_pos, self.next_pos]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def reset(self) -> None:
        self.layers = [LayerCache() for _ in range(self.num_layers)]
        self.slot_pos = self.next_pos = None

    def allocate(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        """Preallocate empty rings for ``batch`` rows (otherwise the first forward does it)."""
        like = torch.zeros(batch * self.num_spatial, heads, 1, head_dim, dtype=dtype, device=device)
        for layer in self.layers:
            self._ring(layer, like)
        self._init_rows(batch, torch.device(device))

    def reserve_rows(self, batch: int, device: torch.device | str = "cpu") -> None:
        """Hold ``batch`` rows that have no frame yet (the rings are made by the first forward), so that the
        cache can be stepped together with others from its first frame on; a no-op once it holds rows."""
        if self.slot_pos is None:
            self._init_rows(batch, torch.device(device))

    def _init_rows(self, batch: int, device: torch.device) -> None:
        self.slot_pos = torch.full((batch, self.max_frames), -1, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)

    def _ring(self, layer: LayerCache, like: Tensor) -> tuple[Tensor, Tensor]:
        """``layer``'s rings (N, H, C, K), allocated empty on first use in the shape of ``like`` (N, H, T, K)."""
        if layer.k is None or layer.v is None:
            n, h, _, kd = like.shape
            layer.k = like.new_zeros(n, h, self.max_frames, kd)
            layer.v = torch.zeros_like(layer.k)
        return layer.k, layer.v

    def _row_view(self, x: Tensor) -> Tensor:
        return x.unflatten(0, (-1, self.num_spatial))  # (N, ...) -> (B, S, ...)

    def select(self, index: Tensor) -> None:
        """Keep only rows ``index`` (B',), in that order, e.g. to drop finished worlds."""
        for layer in self.layers:
            if layer.k is not None and layer.v is not None:
                layer.k = self._row_view(layer.k)[index].flatten(0, 1)
                layer.v = self._row_view(layer.v)[index].flatten(0, 1)
        if self.slot_pos is not None and self.next_pos is not None:
            self.slot_pos, self.next_pos = self.slot_pos[index], self.next_pos[index]

    def put_rows(self, index: Tensor, other: TemporalKVCache) -> None:
        """Overwrite rows ``index`` (B',) with all B' rows of ``other`` (same window and layers).

        How a batched player starts one world anew: fill a one-row cache from its prompt, then put it
        into its row. Both caches must already hold frames (or be allocated)."""
        if (other.max_frames, other.num_layers, other.num_spatial) != (
                self.max_frames, self.num_layers, self.num_spatial):
            raise ValueError("put_rows needs caches of the same max_frames, layers and spatial size")
        if self.slot_pos is None or other.slot_pos is None or self.next_pos is None or other.next_pos is None:
            raise ValueError("put_rows needs both caches allocated (call allocate() or run a frame first)")
        index = torch.as_tensor(index, dtype=torch.long, device=self.slot_pos.device)
        if index.numel() != other.batch_size:
            raise ValueError(f"put_rows: {index.numel()} rows given for a cache of {other.batch_size}")
        for mine, theirs in zip(self.layers, other.layers):
            assert mine.k is not None and mine.v is not None and theirs.k is not None and theirs.v is not None
            self._row_view(mine.k)[index] = self._row_view(theirs.k).to(mine.k)
            self._row_view(mine.v)[index] = self._row_view(theirs.v).to(mine.v)
        self.slot_pos[index] = other.slot_pos.to(self.slot_pos.device)
        self.next_pos[index] = other.next_pos.to(self.next_pos.device)

    # -- one forward ----------------------------------------------------------------------------------

    def plan(self, batch: int, frames: int, head_dim: int, causal: bool, commit: bool | Tensor,
             device: torch.device) -> TemporalStep:
        """Positions, rotary tables, masks and slots for ``frames`` new frames of ``batch`` rows."""
        if self.slot_pos is None or self.next_pos is None:
            self._init_rows(batch, device)
        assert self.slot_pos is not None and self.next_pos is not None
        if self.slot_pos.shape[0] != batch:
            raise ValueError(f"cache holds {self.slot_pos.shape[0]} rows, got a batch of {batch}")
        rows = torch.as_tensor(commit, dtype=torch.bool, device=device)
        if rows.dim() == 0:
            rows = rows.expand(batch)
        elif rows.shape != (batch,):
            raise ValueError(f"commit must be a bool or ({batch},) bool, got shape {tuple(rows.shape)}")
        c, s = self.max_frames, self.num_spatial
        positions = self.next_pos[:, None] + torch.arange(frames, device=device)  # (B, T)
        cos, sin = rope_angles(positions.flatten(), head_dim)  # (B*T, K/2)
        cos, sin = (x.view(batch, 1, frames, -1).repeat_interleave(s, 0) for x in (cos, sin))  # (N, 1, T, K/2)
        slot_pos = self.slot_pos[:, None, :]  # (B, 1, C)
        past_ok = (slot_pos >= 0) & (slot_pos > positions[:, :, None] - c)  # (B, T, C)
        slots = self.next_pos % c  # (B,)
        if frames == 1:  # the ring: the frame's own slot (written before attending) is visible
            mask = past_ok | (torch.arange(c, device=device) == slots[:, None])[:, None, :]
        else:
            i = torch.arange(frames, device=device)
            new_ok = (i[None, :] <= i[:, None]) if causal else torch.ones(frames, frames, dtype=torch.bool,
                                                                          device=device)
            new_ok = new_ok & (i[:, None] - i[None, :] < c)  # (T, T)
            mask = torch.cat([past_ok, new_ok.expand(batch, -1, -1)], dim=2)  # (B, T, C + T)
        mask = mask[:, None].repeat_interleave(s, 0)  # (N, 1, T, ·)
        uniform = int(slots[0]) if bool((slots == slots[0]).all()) else None
        return TemporalStep(positions, (cos, sin), mask, slots, uniform, rows)

    def attend(self, layer: int, q: Tensor | None, k: Tensor, v: Tensor, step: TemporalStep) -> Tensor | None:
        """Block ``layer``'s temporal attention of new frames (q, k, v: (N, H, T, K), rotated) over
        this cache's past and themselves, writing k, v to the ring. ``q`` None: only write."""
        ring = self.layers[layer]
        if k.shape[2] == 1:  # one new frame: write it into its slot, attend over the ring
            ring_k, ring_v = self.write_ring(ring, k, v, step)
            if q is None:
                return None
            scores = (q @ ring_k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (N, H, 1, C)
            return scores.masked_fill(~step.mask, float("-inf")).softmax(-1) @ ring_v  # (N, H, 1, K)
        ring_k, ring_v = self._ring(ring, k)
        out = None
        if q is not None:  # past ring + the new frames; the mask gives each frame its window
            keys, values = torch.cat([ring_k, k], dim=2), torch.cat([ring_v, v], dim=2)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask)
        self.write_chunk(ring, k, v, step)
        return out

    def write_ring(self, layer: LayerCache, k: Tensor, v: Tensor, step: TemporalStep) -> tuple[Tensor, Tensor]:
        """One-frame step: put k, v (N, H, 1, K) into each row's slot; returns the rings (N, H, C, K)."""
        ring_k, ring_v = self._ring(layer, k)
        if step.uniform_slot is not None:
            ring_k[:, :, step.uniform_slot] = k[:, :, 0]
            ring_v[:, :, step.uniform_slot] = v[:, :, 0]
        else:
            slot = step.slots.repeat_interleave(self.num_spatial)  # (N,)
            n = torch.arange(slot.shape[0], device=slot.device)
            ring_k[n, :, slot] = k[:, :, 0]
            ring_v[n, :, slot] = v[:, :, 0]
        return ring_k, ring_v

    def write_chunk(self, layer: LayerCache, k: Tensor, v: Tensor, step: TemporalStep) -> None:
        """Several new frames (N, H, T, K): keep the last ``max_frames`` of the committing rows."""
        ring_k, ring_v = self._ring(layer, k)
        rows = step.commit.repeat_interleave(self.num_spatial)  # (N,)
        n = torch.arange(rows.shape[0], device=rows.device)[rows]
        t = k.shape[2]
        for i in range(max(0, t - self.max_frames), t):
            slot = (step.positions[:, i] % self.max_frames).repeat_interleave(self.num_spatial)[rows]
            ring_k[n, :, slot] = k[rows, :, i]
            ring_v[n, :, slot] = v[rows, :, i]

    def advance(self, step: TemporalStep) -> None:
        """After every block has run: the committing rows' new frames become part of the past."""
        assert self.slot_pos is not None and self.next_pos is not None
        rows = step.commit
        if not bool(rows.any()):
            return
        t = step.positions.shape[1]
        for i in range(max(0, t - self.max_frames), t):
            pos = step.positions[:, i]
            slot = pos % self.max_frames
            b = torch.arange(slot.shape[0], device=slot.device)[rows]
            self.slot_pos[b, slot[rows]] = pos[rows]
        self.next_pos = torch.where(rows, self.next_pos + t, self.next_pos)
