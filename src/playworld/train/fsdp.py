"""Fully sharded data parallel training (``train.strategy=fsdp``) with PyTorch's FSDP2 ``fully_shard``.

Zhao et al. 2023, "PyTorch FSDP" (arXiv 2304.11277); ZeRO stage 3 (Rajbhandari et al. 2020, arXiv
1910.02054). Each rank holds a 1/world slice of every sharded parameter, of its gradient and of its AdamW
moments; a block's full weights exist only while it computes (all-gather before, reduce-scatter of the
gradients after). Each trainable block of a ``nn.ModuleList`` (the transformers' layers) is its own
unit, the rest of the model one more unit at the root.

What this module adds so that a sharded run trains, checkpoints and resumes as a single process does:

- **Weights a model writes outside the optimizer** (a module's ``written_in_forward``: name prefixes, as
  ``keep_fp32`` in :mod:`playworld.train.mixed`; the LAM's dead-action restarts, a VQ's learned codebook)
  are left out of the shards (``ignored_params``): a write to a gathered weight would be lost when it is
  resharded. They stay whole on every rank, their gradients are averaged here, and rank 0's copy is
  broadcast before each forward, as are all buffers (VQ codebooks and usage statistics), which is what
  DDP's ``broadcast_buffers`` does.
- **Checkpoints in the single-process format**: full state dicts are gathered to CPU on rank 0
  (``get_model_state_dict`` / ``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``)
  and the optimizer state is re-keyed from parameter names to indices, so a checkpoint and release weights
  written under FSDP are the same files one process writes; on resume every rank reads the full state and
  takes its shard (``set_model_state_dict`` / ``set_optimizer_state_dict``).
- **Gradient clipping** over sharded and whole gradients together (the squared norm of each rank's
  shards is summed over ranks; whole gradients count once).

Precision: parameters, gradients and optimizer moments are fp32; ``bf16`` autocasts the compute.
``bf16-weights`` (bf16 weights with fp32 masters beside them) is refused: FSDP's sharded parameters are
the masters, and its ``MixedPrecisionPolicy`` would cast norms and quantizers to bf16 as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from playworld.models.base import WritesInForward

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def written_in_forward(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that a sub-module declares it writes outside the optimizer (its
    ``written_in_forward`` name prefixes, relative to itself), each once."""
    found: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        prefixes = tuple(sub.written_in_forward) if isinstance(sub, WritesInForward) else ()
        if not prefixes:
            continue
        for pname, p in sub.named_parameters():
            if pname.startswith(prefixes):
                found[id(p)] = p
    return list(found.values())


def _units(module: nn.Module) -> Iterator[nn.Module]:
    """Elements of every ``nn.ModuleList`` in ``module`` holding trainable parameters (transformer blocks)."""
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                if any(p.requires_grad for p in block.parameters()):
                    yield block


class Sharding:
    """``root`` (the module whose ``forward`` computes the loss; ``model`` is its sub-module whose
    parameters the optimizer steps) sharded over the default process group, and the collectives that
    a training step and a checkpoint need around it."""

    def __init__(self, root: nn.Module, model: nn.Module, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError("train.strategy=fsdp needs a process group (playworld.train.distributed)")
        self.model = model
        self.device = device
        self.replicated = written_in_forward(model)
        ignored = set(self.replicated)
        for block in _units(model):
            if not any(p in ignored for p in block.parameters()):
                fully_shard(block, ignored_params=ignored or None)
        fully_shard(root, ignored_params=ignored or None)
        self.root = root
        self.world = dist.get_world_size()

    # ------------------------------------------------------------------ a step
    def fsdp_modules(self) -> list[FSDPModule]:
        return [m for m in self.root.modules() if isinstance(m, FSDPModule)]

    def gradient_sync(self, enabled: bool) -> None:
        """Reduce-scatter gradients after this backward (the last micro-batch), or keep accumulating."""
        self.root.set_requires_gradient_sync(enabled)  # type: ignore[operator]

    @torch.no_grad()
    def before_forward(self) -> None:
        """Rank 0's buffers and whole (written-in-forward) weights on every rank."""
        if self.world == 1:
            return
        for t in [*self.model.buffers(), *self.replicated]:
            dist.broadcast(t.data, src=0)

    @torch.no_grad()
    def after_backward(self) -> None:
        """Average the gradients of the whole weights (FSDP averages the sharded ones)."""
        if self.world == 1:
            return
        for p in self.replicated:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world

    @torch.no_grad()
    def clip_grad_norm(self, params: Iterable[Tensor], max_norm: float) -> float:
        """Scale the gradients of ``params`` so that their global L2 norm is at most ``max_norm`` (as
        :func:`torch.nn.utils.clip_grad_norm_` does in one process); returns the norm before clipping."""
        grads = [p.grad for p in params if p.grad is not None]
        sq = torch.zeros((), dtype=torch.float32, device=self.device)
        for g in grads:  # this rank's shards
            if isinstance(g, DTensor):
                sq += g.to_local().float().square().sum()
        if self.world > 1:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        for g in grads:  # whole gradients, the same on every rank: counted once
            if not isinstance(g, DTensor):
                sq += g.float().square().sum()
        norm = float(sq.sqrt())
        if math.isfinite(norm) and max_norm < math.inf:
            coef = min(max_norm / (norm + 1e-6), 1.0)
            for g in grads:
                g.mul_(coef)
        return norm

    # ------------------------------------------------------------------ validation
    def unshard_all(self) -> None:
        """Gather every unit's full weights and keep them until :meth:`reshard_all` (for calls that do not
        go through ``forward``: validation, samples)."""
        for m in self.fsdp_modules():
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()

    def reshard_all(self) -> None:
        for m in self.fsdp_modules():
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)

    # ------------------------------------------------------------------ checkpoints
    def full_state(self, module: nn.Module) -> dict[str, Tensor]:
        """``module``'s full state dict on CPU (rank 0; an empty dict elsewhere). Every rank must call it."""
        return get_model_state_dict(module, options=_FULL)

    @staticmethod
    def full_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each sharded tensor of ``tensors`` gathered whole, on CPU (every rank must call it)."""
        out = {}
        for k in sorted(tensors):
            v = tensors[k]
            out[k] = (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
        return out

    @staticmethod
    def shard_like(full: dict[str, Tensor], like: dict[str, Tensor]) -> dict[str, Tensor]:
        """``full`` tensors with each one whose counterpart in ``like`` is sharded cut to this rank's shard
        (every rank holds the whole of ``full``, so nothing is sent)."""
        out = {}
        for k, v in full.items():
            ref = like.get(k)
            if isinstance(ref, DTensor):
                v = distribute_tensor(v.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)
            out[k] = v
        return out

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full state dict on rank 0, keyed by parameter index as
        ``torch.optim.Optimizer.state_dict`` keys it in one process (an empty dict elsewhere)."""
        named = get_optimizer_state_dict(self.model, optimizer, options=_FULL)
        if not named:
            return {}
        index: dict[str, int] = {}
        groups = []
        for group in named["param_groups"]:
            ids = []
            for fqn in group["params"]:
                index.setdefault(fqn, len(index))
                ids.append(index[fqn])
            groups.append({**group, "params": ids})
        return {"state": {index[fqn]: st for fqn, st in named["state"].items()}, "param_groups": groups}

    def load(self, weights: dict[str, Tensor], optimizer: torch.optim.Optimizer,
             optimizer_state: dict[str, Any]) -> None:
        """Take this rank's shards of full ``weights`` and of an index-keyed full ``optimizer_state``
        (every rank passes the whole of both)."""
        set_model_state_dict(self.model, weights, options=_LOAD)
        fqn_of: dict[int, str] = {}
        groups = []
        for group, current in zip(optimizer_state["param_groups"], optimizer.param_groups):
            names = current["names"]
            fqn_of.update(zip(group["params"], names))
            groups.append({**group, "params": list(names)})
        state = {fqn_of[int(i)]: st for i, st in optimizer_state["state"].items()}
        set_optimizer_state_dict(self.model, optimizer, {"state": state, "param_groups": groups}, options=_LOAD)
