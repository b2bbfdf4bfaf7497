"""playworld: learn playable worlds from unlabeled video (Genie, arXiv 2402.15391)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from playworld.api import LoadedRun, load
    from playworld.env import make_env
    from playworld.world import World

__all__ = ["__version__", "load", "LoadedRun", "World", "make_env"]


def __getattr__(name: str) -> Any:
    # Lazy: `import playworld` stays cheap (no torch) until a model is asked for.
    if name in ("load", "LoadedRun"):
        from playworld import api

        return getattr(api, name)
    if name == "World":
        from playworld.world import World

        return World
    if name == "make_env":
        from playworld.env import make_env

        return make_env
    raise AttributeError(f"module 'playworld' has no attribute {name!r}")
