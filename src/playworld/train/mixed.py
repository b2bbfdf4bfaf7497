"""Mixed-precision training with bf16 weights and fp32 master copies (``train.precision=bf16-weights``).

Micikevicius et al. 2018, "Mixed Precision Training" (arXiv 1710.03740, sec. 3.1), without loss
scaling: bf16 has fp32's exponent range, so small gradients do not underflow. The trainable weights
are stored in bf16 between steps, so forward and backward multiply bf16 matrices with no per-call
casts (autocast re-casts every fp32 weight each step and every activation at each op boundary). The
optimizer steps fp32 master copies (its moments are fp32 too), whose values are rounded back into
the bf16 weights after every step; the weights the optimizer sees, checkpoints save and EMA tracks are
the masters.

What stays fp32:

- parameters of normalisation layers: ``LayerNorm`` takes a bf16 input with fp32 gains and computes
  in fp32 (its output is bf16);
- parameters whose names start with a prefix in a sub-module's ``keep_fp32`` class attribute
  (quantizers and what feeds them, the LAM's motion kernels and action classifier);
- frozen parameters (e.g. a dynamics run's tokenizer and LAM) and every buffer (VQ codebooks, usage
  statistics, rotary tables).

Attention scores, the softmax and rotary embeddings run in fp32 whatever the weights' dtype
(:func:`playworld.nn.blocks._math`); losses are computed on fp32 upcasts by the models themselves.
Each ``Linear``/``Conv`` casts its input to its own weight's dtype (a forward pre-hook; a no-op when
they already match), so an fp32 video enters a bf16 network and a bf16 activation enters an fp32
layer without the models knowing the precision they train in.

A model may write to its weights outside the optimizer (the LAM's dead-action restarts copy rows of
its action embedding). Such a write bumps the weight's version counter; before the next optimizer step
the elements where the bf16 weight no longer equals its rounded master are re-read into the master.

``state_dict()`` of a module holding bf16 weights returns the fp32 masters in their place, and
``load_state_dict`` sets the masters exactly (state-dict hooks), so resumable checkpoints, release
weights and EMA exports are fp32 as before and exact resume holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from playworld.models.base import KeepsFP32
from playworld.precision import cpu_bf16_speedup

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
_CAST_INPUT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def keep_fp32_names(module: nn.Module) -> set[str]:
    """Names of ``module``'s parameters that stay fp32 under bf16 weights: norm layers' and those
    matching a sub-module's ``keep_fp32`` prefixes (relative to that sub-module)."""
    keep: set[str] = set()
    for mname, sub in module.named_modules():
        base = f"{mname}." if mname else ""
        prefixes = tuple(base + p for p in sub.keep_fp32) if isinstance(sub, KeepsFP32) else ()
        for pname, _ in sub.named_parameters(recurse=not isinstance(sub, _NORMS)):
            full = base + pname
            if isinstance(sub, _NORMS) or (prefixes and full.startswith(prefixes)):
                keep.add(full)
    return keep


def _cast_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    dtype = module.weight.dtype  # type: ignore[union-attr]
    if isinstance(x, Tensor) and x.is_floating_point() and x.dtype != dtype:
        return (x.to(dtype), *args[1:])
    return None


class MasterWeights:
    """Casts ``module``'s trainable weights (but those named in the module docstring) to ``dtype`` in
    place and keeps fp32 masters for them.

    Per optimizer step: backward -> :meth:`grads_to_masters` -> clip and step the optimizer built on
    :meth:`optimizer_groups` -> :meth:`masters_to_weights`. Build it before wrapping the module in
    DDP or ``torch.compile`` (they must see the bf16 weights).
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        if not dtype.is_floating_point or dtype == torch.float32:
            raise ValueError(f"MasterWeights needs a low-precision float dtype, got {dtype}")
        self.dtype = dtype
        keep = keep_fp32_names(module)
        self._master: dict[int, Tensor] = {}  # id(low-precision weight) -> fp32 master
        self._pairs: list[tuple[nn.Parameter, Tensor]] = []
        owners: dict[int, nn.Module] = {}
        for mname, sub in module.named_modules():
            for pname, p in sub.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                if (not p.requires_grad or p.dtype != torch.float32 or full in keep
                        or id(p) in self._master):
                    continue
                master = p.detach().clone()
                p.data = p.data.to(dtype)
                self._master[id(p)] = master
                self._pairs.append((p, master))
                owners[id(sub)] = sub
        self._versions = [p._version for p, _ in self._pairs]
        for m in module.modules():
            if isinstance(m, _CAST_INPUT) and isinstance(getattr(m, "weight", None), Tensor):
                m.register_forward_pre_hook(_cast_input)
        # torch tags the hooks it is given, so each is a partial, not a bound method
        save, load, loaded = (functools.partial(f, self) for f in (
            MasterWeights._masters_into_state, MasterWeights._state_into_masters, MasterWeights._loaded))
        for sub in owners.values():
            sub.register_state_dict_post_hook(save)
            sub.register_load_state_dict_pre_hook(load)
            sub.register_load_state_dict_post_hook(loaded)

    # ------------------------------------------------------------------ what the optimizer sees
    def __len__(self) -> int:
        """How many weights are held in low precision."""
        return len(self._pairs)

    def master(self, p: Tensor) -> Tensor:
        """The fp32 master of weight ``p``, or ``p`` itself if it is kept fp32."""
        return self._master.get(id(p), p)

    def optimizer_groups(self, groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Optimizer parameter groups with every low-precision weight replaced by its master."""
        return [{**g, "params": [self.master(p) for p in g["params"]]} for g in groups]

    def trainable(self, module: nn.Module) -> dict[str, Tensor]:
        """name -> fp32 value of each trainable parameter of ``module`` (masters where held): for EMA."""
        return {n: self.master(p) for n, p in module.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def grads_to_masters(self) -> None:
        """Move the weights' gradients (accumulated over micro-batches, all-reduced by DDP) to the
        masters as fp32, and take in any write a model made to its weights since the last step."""
        self._take_writes()
        for p, master in self._pairs:
            master.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def masters_to_weights(self) -> None:
        """Round the (stepped) masters into the low-precision weights."""
        for i, (p, master) in enumerate(self._pairs):
            p.copy_(master)
            self._versions[i] = p._version

    @torch.no_grad()
    def _take_writes(self) -> None:
        for i, (p, master) in enumerate(self._pairs):
            if p._version != self._versions[i]:
                written = p != master.to(p.dtype)
                master.copy_(torch.where(written, p.float(), master))
                self._versions[i] = p._version

    # ------------------------------------------------------------------ state dicts
    def _masters_into_state(self, module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
        self._take_writes()
        for name, p in module.named_parameters(recurse=False):
            key = prefix + name
            if id(p) in self._master and key in state:
                state[key] = self._master[id(p)].detach()

    def _state_into_masters(self, module: nn.Module, state: Mapping[str, Any], prefix: str, *_: Any) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters(recurse=False):
                value = state.get(prefix + name)
                master = self._master.get(id(p))
                if master is not None and isinstance(value, Tensor) and value.shape == master.shape:
                    master.copy_(value)

    def _loaded(self, _module: nn.Module, _incompatible: Any) -> None:
        self._versions = [p._version for p, _ in self._pairs]  # the load wrote the masters' rounding


# auto picks bf16 weights on a CPU whose bf16 product probe is at least this much faster than fp32:
# whole training steps gain less than the probe (norms, attention softmax, quantizers, the optimizer
# and data stay fp32): 1.7-1.9x less CPU time per small-preset step where the probe measured 4.4x at
# one thread (docs/training.md)
CPU_PROBE_FLOOR = 1.5


def resolve_train_precision(precision: str, device: torch.device,
                            speedup: Callable[[], float] | None = None) -> str:
    """``train.precision`` on ``device`` -> "fp32", "bf16" (autocast) or "bf16-weights".

    ``auto``: bf16 autocast on CUDA devices that support bf16; on a CPU, bf16 weights where a bf16
    matrix product measures (``speedup()``, default :func:`playworld.precision.cpu_bf16_speedup`) at least
    ``CPU_PROBE_FLOOR`` times faster than fp32 (CPUs with AVX512-BF16 or AMX; CPUs that emulate bf16
    are slower in it); fp32 otherwise.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and (speedup or cpu_bf16_speedup)() >= CPU_PROBE_FLOOR:
        return "bf16-weights"
    return "fp32"
