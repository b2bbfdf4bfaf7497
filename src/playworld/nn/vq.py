"""Vector quantizer with an EMA or learned codebook, dead-code restarts and optional cosine codes.

VQ-VAE: van den Oord et al. 2017, arXiv 1711.00937 (straight-through estimator, commitment loss, EMA
codebook in appendix A.1). l2-normalised low-dimensional codes: Yu et al. 2021 (ViT-VQGAN), arXiv
2110.04627, sec. 3.2. Restarting dead codes from encoder outputs: Dhariwal et al. 2020 (Jukebox),
arXiv 2005.00341, sec. 3.1.

Shapes: N flattened vectors, K codes, D code width. Codebook statistics are per process: under data
parallelism each replica updates its own EMA (buffers are then broadcast from rank 0 by DDP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from playworld.nn.quantize import QuantizeOutput, code_counts, usage_and_perplexity


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization of (..., D) latents to a codebook of K codes.

    Forward, with z the (optionally l2-normalised) input and e the codebook:

        k = argmin_j ||z - e_j||^2,   q = e_k,   out = z + sg(q - z)          (straight-through)
        loss = beta * ||z - sg(q)||^2  [+ ||sg(z) - q||^2 when the codebook is learned, ema=False]

    With ``ema=True`` (default) the codebook is a buffer updated in training mode as an exponential
    moving average of the vectors assigned to each code (with Laplace smoothing of the counts):

        N_k <- decay N_k + (1 - decay) n_k,   m_k <- decay m_k + (1 - decay) sum_{i: k_i = k} z_i,
        e_k = m_k / N_k

    ``N_k`` (buffer ``cluster_size``) is kept in both modes: it is the running usage histogram (in
    vectors per batch) and drives dead-code restarts. A code is dead when its share of the vectors
    falls below ``dead_code_threshold`` times the uniform share, ``N_k < threshold * mean_j N_j`` (a
    relative test, so it means the same at any batch size or codebook size). In training mode, before
    quantizing, every dead code is moved onto a random vector of the current batch (drawn with torch's
    RNG, so runs are reproducible), where it wins at least that vector at once. With ``init_from_data``
    the first training batch initialises the whole codebook that way, so no code starts far from the
    data. Nothing changes in eval mode.

    With ``l2_normalize`` both z and the codes live on the unit sphere (nearest = highest cosine), which
    with a small D keeps codebook usage high.

    Quantization runs in float32 whatever the autocast state; the output has the input's dtype.
    """

    codebook: Tensor
    cluster_size: Tensor
    ema_sum: Tensor
    initialized: Tensor

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        commitment: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        dead_code_threshold: float = 0.03,
        l2_normalize: bool = False,
        init_from_data: bool = True,
        eps: float = 1e-5,
        chunk_size: int = 65_536,
    ) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, got {code_dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if commitment < 0:
            raise ValueError(f"commitment must be >= 0, got {commitment}")
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(f"dead_code_threshold must be in [0, 1) (0 disables restarts), got {dead_code_threshold}")
        self.num_codes, self.dim = num_codes, code_dim
        self.commitment, self.ema, self.decay = commitment, ema, decay
        self.dead_code_threshold, self.l2_normalize = dead_code_threshold, l2_normalize
        self.eps, self.chunk_size = eps, chunk_size

        init = torch.randn(num_codes, code_dim)  # (K, D)
        if l2_normalize:
            init = F.normalize(init, dim=-1)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_sum", init.clone())  # m_k, consistent with N_k = 1
        else:
            self.codebook = nn.Parameter(init)
        # a learned codebook is written outside the optimizer (init from data, dead-code restarts): FSDP
        # keeps it whole on every rank (playworld.train.fsdp); an EMA codebook is a buffer
        self.written_in_forward = () if ema else ("codebook",)
        self.register_buffer("cluster_size", torch.ones(num_codes))  # N_k, vectors per batch
        self.register_buffer("initialized", torch.tensor(not init_from_data))

    @property
    def code_dim(self) -> int:
        return self.dim

    def no_weight_decay(self) -> set[str]:
        """A learned codebook is not decayed: decay would pull every code towards the origin, where
        no latent is (see ``playworld.train.engine.param_groups``); an EMA codebook is a buffer."""
        return {"codebook"} if isinstance(self.codebook, nn.Parameter) else set()

    def codes(self) -> Tensor:
        """The effective codebook (K, D), unit-norm rows when ``l2_normalize``."""
        return F.normalize(self.codebook, dim=-1) if self.l2_normalize else self.codebook

    def usage_histogram(self) -> Tensor:
        """(K,) running share of the vectors assigned to each code (sums to 1); detached."""
        n = self.cluster_size.detach()
        return n / n.sum().clamp_min(self.eps)

    def lookup(self, indices: Tensor) -> Tensor:
        """indices (...) long in [0, K) -> codes (..., D) float32."""
        return F.embedding(indices, self.codes())

    def forward(self, z: Tensor) -> QuantizeOutput:
        """z: (..., D) -> QuantizeOutput(quantized (..., D), indices (...), loss (), usage, perplexity)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer expects (..., {self.dim}) inputs, got {tuple(z.shape)}")
        lead = z.shape[:-1]
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()  # (N, D)
            if self.l2_normalize:
                flat = F.normalize(flat, dim=-1)
            if self.training and flat.shape[0] > 0:
                if not bool(self.initialized):
                    self._init_from(flat.detach())
                elif self.dead_code_threshold > 0:
                    self._restart_dead_codes(flat.detach())
            codes = self.codes()  # (K, D)
            indices = self._nearest(flat.detach(), codes.detach())  # (N,)
            q = F.embedding(indices, codes)  # (N, D); carries the codebook gradient when learned
            loss = self.commitment * F.mse_loss(flat, q.detach())
            if not self.ema:
                loss = loss + F.mse_loss(q, flat.detach())
            counts = code_counts(indices, self.num_codes)  # (K,)
            if self.training and flat.shape[0] > 0:
                self._update(flat.detach(), indices, counts)
            out = flat + (q - flat).detach()  # straight-through: value q, gradient to z
        usage, perplexity = usage_and_perplexity(counts)
        return QuantizeOutput(
            quantized=out.reshape(*lead, self.dim).to(z.dtype),
            indices=indices.reshape(lead),
            loss=loss,
            usage=usage,
            perplexity=perplexity,
        )

    def _nearest(self, flat: Tensor, codes: Tensor) -> Tensor:
        """(N, D), (K, D) -> (N,) index of the nearest code, in row chunks to bound the (N, K) scores."""
        out = []
        for chunk in flat.split(self.chunk_size):
            if self.l2_normalize:  # unit vectors: nearest = largest dot product
                out.append((chunk @ codes.t()).argmax(dim=-1))
            else:  # ||z||^2 is the same for every code, so it is left out
                out.append(torch.addmm(codes.square().sum(-1), chunk, codes.t(), alpha=-2.0).argmin(dim=-1))
        return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)

    def _sample(self, flat: Tensor) -> Tensor:
        """(N, D) -> (K, D) rows of the batch drawn at random (without replacement when N >= K)."""
        n = flat.shape[0]
        if n >= self.num_codes:
            pick = torch.randperm(n, device=flat.device)[: self.num_codes]
        else:
            pick = torch.randint(0, n, (self.num_codes,), device=flat.device)
        return flat[pick]

    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        """Put every code on a random vector of the first training batch (N, D)."""
        samples = self._sample(flat)
        self.codebook.data.copy_(samples)
        self.cluster_size.fill_(flat.shape[0] / self.num_codes)
        if self.ema:
            self.ema_sum.copy_(samples * self.cluster_size[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        """Move codes whose usage share fell below the threshold onto random batch vectors (N, D).

        No host sync: a candidate is drawn for every code and kept only where the code is dead.
        """
        floor = self.dead_code_threshold * self.cluster_size.mean()
        dead = self.cluster_size < floor  # (K,)
        samples = self._sample(flat)  # (K, D)
        self.codebook.data.copy_(torch.where(dead[:, None], samples, self.codebook.data))
        self.cluster_size.copy_(torch.where(dead, floor, self.cluster_size))
        if self.ema:
            self.ema_sum.copy_(torch.where(dead[:, None], samples * floor, self.ema_sum))

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """EMA usage statistics and, when ``ema``, the codebook, from a batch (N, D)."""
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)  # (K, D)
            self.ema_sum.lerp_(sums, 1.0 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace
            codebook = self.ema_sum / smoothed[:, None]
            self.codebook.copy_(F.normalize(codebook, dim=-1) if self.l2_normalize else codebook)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, code_dim={self.dim}, ema={self.ema}, decay={self.decay}, "
                f"commitment={self.commitment}, dead_code_threshold={self.dead_code_threshold}, "
                f"l2_normalize={self.l2_normalize}")
