"""Named actions for a run, and action strings such as ``"1,1,3"`` or ``"right,right,jump"``.

A run directory may hold ``action_names.json`` mapping latent actions to names and, optionally, keys
(written by whatever labels the latent actions, e.g. an evaluation probe)::

    {"format": "playworld.action_names/1",
     "actions": [{"latent": 2, "name": "right", "key": "ArrowRight"},
                 {"latent": 0, "name": "jump", "key": "ArrowUp"}]}

``latent`` is the 0-based latent action index; ``name`` a short label; ``key`` (optional) a
browser ``KeyboardEvent.key`` from :data:`ALLOWED_KEYS`. Latent actions without an entry keep their
number only. In action strings and on the keyboard, latent actions are numbered from 1 (key ``1`` is
latent action 0), so that the string a player sees is the string they can replay.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from playworld.errors import ConfigError
from playworld.io import atomic_write_text, read_json

FILENAME = "action_names.json"
FORMAT = "playworld.action_names/1"
ALLOWED_KEYS = frozenset({"ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", " ", *string.ascii_lowercase})


@dataclass(frozen=True)
class ActionName:
    """One named latent action."""

    latent: int
    name: str
    key: str | None = None


def parse_action_names(data: object, num_actions: int, where: str) -> list[ActionName]:
    """Validate the JSON object of an ``action_names.json``; errors name ``where`` and the entry."""
    if not isinstance(data, dict) or set(data) != {"format", "actions"}:
        raise ConfigError(f"{where}: expected {{'format': {FORMAT!r}, 'actions': [...]}}")
    if data["format"] != FORMAT:
        raise ConfigError(f"{where}: unknown format {data['format']!r} (expected {FORMAT!r})")
    if not isinstance(data["actions"], list):
        raise ConfigError(f"{where}: 'actions' must be a list")
    out: list[ActionName] = []
    for i, entry in enumerate(data["actions"]):
        at = f"{where}: actions[{i}]"
        if not isinstance(entry, dict) or not {"latent", "name"} <= set(entry) <= {"latent", "name", "key"}:
            raise ConfigError(f"{at}: expected {{'latent': int, 'name': str, 'key'?: str}}, got {entry!r}")
        latent, name, key = entry["latent"], entry["name"], entry.get("key")
        if not isinstance(latent, int) or isinstance(latent, bool) or not 0 <= latent < num_actions:
            raise ConfigError(f"{at}: latent {latent!r} is not an action of this world [0, {num_actions})")
        if not isinstance(name, str) or not 0 < len(name) <= 32 or not name.isprintable() or "," in name:
            raise ConfigError(f"{at}: name {name!r} must be 1-32 printable characters without commas")
        if key is not None and key not in ALLOWED_KEYS:
            raise ConfigError(f"{at}: key {key!r} is not one of the arrow keys, ' ' or a-z")
        out.append(ActionName(latent, name, key))
    for what in ("latent", "name", "key"):
        values = [getattr(a, what) for a in out if getattr(a, what) is not None]
        dup = sorted({str(v) for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"{where}: {what} used more than once: {dup}")
    return out


def load_action_names(run_dir: str | Path | None, num_actions: int) -> list[ActionName]:
    """The named actions of ``run_dir/action_names.json``, or [] when the file is absent."""
    if run_dir is None:
        return []
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return []
    return parse_action_names(read_json(path, ConfigError, "action names file"), num_actions, str(path))


def save_action_names(run_dir: str | Path, names: list[ActionName], num_actions: int | None = None) -> Path:
    """Write ``run_dir/action_names.json`` (atomically), after checking it by the rules that loading it
    applies (``num_actions``: the world's; default: enough for the highest latent named)."""
    path = Path(run_dir) / FILENAME
    entries = [{"latent": a.latent, "name": a.name, **({"key": a.key} if a.key else {})} for a in names]
    data = {"format": FORMAT, "actions": entries}
    limit = num_actions if num_actions is not None else max((a.latent + 1 for a in names), default=0)
    parse_action_names(data, limit, str(path))
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def parse_action_string(text: str, num_actions: int, names: list[ActionName] = (), *,
                        max_len: int = 100_000) -> list[int]:
    """``"1,1,3"`` (1-based, as the keys) or names ``"right,jump"`` -> 0-based latent actions.

    Separators: commas and/or whitespace. Raises ConfigError naming the bad item and its position.
    """
    by_name = {a.name.lower(): a.latent for a in names}
    items = [t for t in text.replace(",", " ").split() if t]
    if len(items) > max_len:
        raise ConfigError(f"action string has {len(items)} actions, more than the limit {max_len}")
    out = []
    for i, item in enumerate(items):
        if item.isascii() and item.isdigit():
            k = int(item) if len(item.lstrip("0")) <= 9 else 0  # (Python converts at most 4,300 digits)
            if not 1 <= k <= num_actions:
                raise ConfigError(f"action {i + 1} ({item[:40]!r}) is out of range 1..{num_actions} "
                                  "(actions are numbered as the keys 1..N)")
            out.append(k - 1)
        elif item.lower() in by_name:
            out.append(by_name[item.lower()])
        else:
            known = f"; names: {sorted(by_name)}" if by_name else ""
            raise ConfigError(f"action {i + 1} ({item[:40]!r}) is neither a number 1..{num_actions} nor a "
                              f"named action{known}")
    return out


def format_action_string(actions: list[int]) -> str:
    """0-based latent actions -> the 1-based string :func:`parse_action_string` reads back."""
    return ",".join(str(a + 1) for a in actions)
