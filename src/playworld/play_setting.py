"""A world's own play setting: ``RUN/play_setting.json``.

How a world's frames are decoded when a player gets them (MaskGIT steps, temperature, copy penalty,
action guidance) is chosen on that world's figures (docs/models.md), so it travels with the world: a run
directory may hold

    {"format": "playworld-play-setting", "copy_penalty": 3.0, "note": "why: ..."}

with any of ``steps``, ``temperature``, ``copy_penalty`` and ``action_guidance``; what it leaves out is
play's global setting (:func:`playworld.maskgit.play_sampling`). `playworld play`, `playworld rollout`,
`playworld eval`, :meth:`playworld.World.load` and :func:`playworld.make_env` all start from it, and each
flag or field given explicitly overrides it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from playworld.errors import ConfigError
from playworld.io import atomic_write_text, read_json
from playworld.maskgit import SamplingConfig, play_sampling

if TYPE_CHECKING:
    from playworld.models.dynamics import DynamicsConfig

FILENAME = "play_setting.json"
FORMAT = "playworld-play-setting"
# the fields a world may set, and their types (the rest of SamplingConfig stays at play's)
FIELDS: dict[str, type] = {"steps": int, "temperature": float, "copy_penalty": float, "action_guidance": float}
# the copy penalty a world of one pass per frame (dynamics.one_pass) plays at: at play's default (2) three one_pass
# CoinRun worlds, one fine-tuned and two trained so from scratch, let a held key's world settle late (0.62-0.66
# of the real game's pixel change at steps 20-30 from real starts, paired worse); at 3 they kept 0.80-0.83
# (docs/models.md, "One pass per frame", "One pass from the first step" and "Trained on to the shipped model's
# steps")
ONE_PASS_COPY_PENALTY = 3.0


def parse_play_setting(data: Any, where: str) -> dict[str, Any]:
    """Validate a play setting's JSON object; errors name ``where`` and the field. Returns the fields it sets."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ConfigError(f"{where}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    unknown = sorted(set(data) - set(FIELDS) - {"format", "note"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; a world's play setting may set "
                          f"{sorted(FIELDS)} (and a 'note')")
    if "note" in data and not isinstance(data["note"], str):
        raise ConfigError(f"{where}: 'note' must be a string")
    values: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        if name not in data:
            continue
        v = data[name]
        ok = isinstance(v, int) and not isinstance(v, bool) if kind is int else \
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok:
            raise ConfigError(f"{where}: '{name}' must be {'an integer' if kind is int else 'a finite number'}, "
                              f"got {v!r}")
        values[name] = kind(v)
    try:
        dataclasses.replace(play_sampling(), **values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {str(e).replace('sampling.', '', 1)}") from None
    return values


def read_play_setting(run_dir: str | Path | None) -> dict[str, Any]:
    """The fields ``run_dir/play_setting.json`` sets, or {} when there is no such file (or no run)."""
    if run_dir is None:
        return {}
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return {}
    return parse_play_setting(read_json(path, ConfigError, "play setting file"), str(path))


def world_sampling(run_dir: str | Path | None, section: str = "sampling", **overrides: Any) -> SamplingConfig:
    """Play's setting, then the world's ``play_setting.json``, then each override that is not None (a bad
    override's refusal names ``section``'s field: ``play.copy_penalty``, ``eval.copy_penalty``)."""
    values = {**read_play_setting(run_dir), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return dataclasses.replace(play_sampling(), **values)
    except ConfigError as e:
        raise ConfigError(str(e).replace("sampling.", f"{section}.", 1)) from None


def save_play_setting(run_dir: str | Path, note: str = "", **values: Any) -> Path:
    """Write ``run_dir/play_setting.json`` (atomically) after checking it as reading it would."""
    path = Path(run_dir) / FILENAME
    data: dict[str, Any] = {"format": FORMAT, **{k: v for k, v in values.items() if v is not None}}
    if note:
        data["note"] = note
    parse_play_setting(data, str(path))
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def default_play_setting(run_dir: str | Path, dynamics_config: DynamicsConfig) -> Path | None:
    """Give a freshly trained world the play setting its kind of dynamics model plays best at, unless
    ``run_dir`` already has one (a setting chosen on its own figures is never overwritten). Today that is
    one setting: a ``one_pass`` model's copy penalty (``ONE_PASS_COPY_PENALTY``). Returns the file written,
    or None."""
    if not dynamics_config.one_pass or (Path(run_dir) / FILENAME).exists():
        return None
    return save_play_setting(run_dir, note=f"one pass per frame (dynamics.one_pass): copy penalty "
                             f"{ONE_PASS_COPY_PENALTY:g} keeps a held key's world alive late where play's default "
                             f"of {play_sampling().copy_penalty:g} lets it settle (written by `playworld train "
                             "all`; docs/models.md, 'One pass from the first step')",
                             copy_penalty=ONE_PASS_COPY_PENALTY)
