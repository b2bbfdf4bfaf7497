"""Dynamics backends: the ways a :class:`~playworld.world.World` makes its next frame, behind one
interface (:class:`~playworld.backends.base.DynamicsBackend`). A dynamics run's config names its backend
(``dynamics.backend``, default "maskgit"); :func:`make_backend` builds it for a world."""

from __future__ import annotations

import importlib

from torch import nn

from playworld.backends.base import DynamicsBackend
from playworld.errors import ConfigError

BACKENDS: dict[str, str | type[DynamicsBackend]] = {"maskgit": "playworld.backends.maskgit:MaskGITBackend",
                                                     "flow": "playworld.backends.flow:FlowBackend"}
"""name -> backend class, or "module:Class" imported on first use."""


def register_backend(cls: type[DynamicsBackend]) -> type[DynamicsBackend]:
    """Make ``cls`` the backend of runs whose ``dynamics.backend`` is ``cls.name`` (usable as a decorator)."""
    BACKENDS[cls.name] = cls
    return cls


def backend_class(name: str) -> type[DynamicsBackend]:
    """The backend class registered under ``name``; an unknown name raises ConfigError listing the known."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown dynamics backend {name!r}; known: {sorted(BACKENDS)}")
    entry = BACKENDS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry  # type: ignore[return-value]


def make_backend(dynamics: nn.Module, tokenizer: nn.Module, lam: nn.Module) -> DynamicsBackend:
    """The backend that ``dynamics``' config names (``config.backend``; "maskgit" when it names none)."""
    config = getattr(dynamics, "config", None)
    name = getattr(config, "backend", "maskgit")
    return backend_class(name)(dynamics, tokenizer, lam)


__all__ = ["BACKENDS", "DynamicsBackend", "backend_class", "make_backend", "register_backend"]
