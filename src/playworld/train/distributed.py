"""Process-group set-up for torchrun (DDP, FSDP): gloo on CPU, NCCL on CUDA. Rank 0 alone writes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, group_of_one: bool = False) -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for one process, unless
    ``group_of_one``: then a process group of this process alone, which FSDP needs to shard over one rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if group_of_one and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def shutdown_distributed(synchronize: bool = True) -> None:
    """Leave the process group together: with ``synchronize`` every rank waits at a barrier first, so
    none tears its connections down while another still writes or has collective work in flight (gloo
    aborts a process whose peer closed under it). Without it (after an error), leave at once."""
    if dist.is_available() and dist.is_initialized():
        if synchronize and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging; gradients are synchronised by DDP)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def all_reduce_sum_fields(stats: T, info: DistInfo) -> T:
    """A copy of dataclass ``stats`` with every tensor field summed over ranks (for additive counts)."""
    if not info.enabled:
        return stats
    summed = {}
    for f in dataclasses.fields(stats):  # type: ignore[arg-type]
        value = getattr(stats, f.name)
        if isinstance(value, torch.Tensor):
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            summed[f.name] = value
    return dataclasses.replace(stats, **summed)  # type: ignore[type-var]


def broadcast_choice(value: str, choices: Sequence[str], info: DistInfo, device: torch.device) -> str:
    """Rank 0's ``value`` (one of ``choices``) on every rank: a choice that ranks measure for
    themselves must still agree (a no-op for one process)."""
    if not info.enabled:
        return value
    t = torch.tensor([list(choices).index(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return choices[int(t)]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
