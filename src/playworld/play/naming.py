"""Names and keys for a world's latent actions, read off an evaluation (``playworld name-actions``).

A trained world's keys are numbers until something names them. ``playworld eval`` already measures what
each latent action is: on data with recorded actions, the one-to-one mapping of latent actions to true
actions that agrees most often with the LAM (``metrics["actions"]["mapping"]``); on any data, how the scene
moves while each latent action is held from held-out starts (``metrics["motion"]["keys"]["per_action"]``, steps 2-8).
:func:`names_from_eval` turns those into :class:`~playworld.play.actions.ActionName` entries:

- a mapped latent action takes its true action's name, lower-cased (``right``, ``left+up``, ``noop``), and a
  key: the arrow key of a plain direction, the game's own letter for a letter action (Procgen's ``D``, ``A``,
  ``W``, ``S``, ``Q``, ``E``), space for ``NOOP``, ``q``/``e``/``z``/``c`` for the diagonals where those
  letters are free, else the first free letter;
- an unmapped one (ingested video, or more latent actions than true ones) takes the direction the scene
  moved (``scene-left``, ``scene-up-right``; ``still`` under a fifth of the largest action's motion or 0.05
  px per step), and no
  key beyond its number, since a scene that moves left may be a player walking right under a following camera.

Image coordinates: a scene shift dx < 0 is to the left, dy < 0 is up.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

from playworld.errors import ConfigError
from playworld.play.actions import ActionName

ARROWS = {"LEFT": "ArrowLeft", "RIGHT": "ArrowRight", "UP": "ArrowUp", "DOWN": "ArrowDown"}
DIAGONALS = {"LEFT+UP": "q", "RIGHT+UP": "e", "LEFT+DOWN": "z", "RIGHT+DOWN": "c"}
STILL_SHARE = 0.2  # an action moving the scene less than this share of the largest motion is "still"
STILL_PX = 0.05  # ... or less than this many pixels per step (CoinRun's slowest key, LEFT, moves it 0.2)


def _key_for(true_name: str, taken: set[str]) -> str | None:
    name = true_name.upper()
    if name in ARROWS:
        return ARROWS[name]
    if name == "NOOP":
        return " "
    if len(name) == 1 and name.lower() in string.ascii_lowercase:
        return name.lower()
    preferred = DIAGONALS.get(name)
    if preferred and preferred not in taken:
        return preferred
    return next((c for c in "rtyfghvbnmuiopjklx" if c not in taken), None)


def motion_name(dy: float, dx: float, scale: float) -> str:
    """The direction of a scene shift (dy, dx) px per step: ``scene-up-left`` ... or ``still`` when its length is
    under :data:`STILL_SHARE` of ``scale`` (the largest action's) or under :data:`STILL_PX`."""
    if not math.hypot(dy, dx) >= max(STILL_SHARE * scale, STILL_PX):
        return "still"
    parts = []
    if abs(dy) >= 0.5 * abs(dx):
        parts.append("up" if dy < 0 else "down")
    if abs(dx) >= 0.5 * abs(dy):
        parts.append("left" if dx < 0 else "right")
    return "scene-" + "-".join(parts)


def _unique(name: str, used: set[str]) -> str:
    out, n = name, 2
    while out in used:
        out, n = f"{name}-{n}", n + 1
    return out


def names_from_eval(metrics: dict[str, Any], true_names: Sequence[str] | None) -> list[ActionName]:
    """An evaluation's ``metrics.json`` (as a dict) and the names of its data's true actions (None for video
    without them) -> one :class:`ActionName` per latent action, in latent order (see the module docstring)."""
    try:
        k = int(metrics["actions"]["num_latent"])
        mapping = {int(a): int(b) for a, b in (metrics["actions"].get("mapping") or [])}
        per_action = metrics["motion"]["keys"]["per_action"]
        motion = {int(e["latent"]): (float(e["early"]["dy"]["mean"]), float(e["early"]["dx"]["mean"]))
                  for e in per_action}
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a playworld evaluation with action and key-response figures ({e!r})") from e
    if true_names is None:
        mapping = {}
    names = tuple(true_names or ())
    if any(not 0 <= b < len(names) for b in mapping.values()):
        raise ConfigError(f"the evaluation maps latent actions to true actions {sorted(mapping.values())}, "
                          f"but its data names only {len(names)}")
    scale = max((math.hypot(*m) for m in motion.values()), default=0.0)
    entries: dict[int, tuple[str, str | None]] = {}
    taken: set[str] = set()
    # exact keys first (arrows, space, the game's letters), so that a diagonal never takes a game's letter;
    # the mapping is one-to-one, so no two exact keys are the same
    for a in sorted(mapping, key=lambda a: names[mapping[a]].upper() in DIAGONALS):
        true = names[mapping[a]]
        key = _key_for(true, taken)
        if key is not None:
            taken.add(key)
        entries[a] = (true.lower(), key)
    used = {name for name, _ in entries.values()}
    for a in range(k):
        if a not in entries:
            name = _unique(motion_name(*motion.get(a, (0.0, 0.0)), scale), used)
            used.add(name)
            entries[a] = (name, None)
    return [ActionName(a, name, key) for a, (name, key) in sorted(entries.items())]
