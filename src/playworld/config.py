"""Typed configuration: strict dict <-> dataclass conversion, `--set a.b=v` overrides, CLI flags.

Every component config is a dataclass whose fields carry a help text in ``metadata["help"]`` and
which validates itself in ``__post_init__``. Nothing here is global: presets live in
:mod:`playworld.presets`, and the command line is built from these dataclasses inside ``main()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from playworld.errors import ConfigError

T = TypeVar("T")

Precision = Literal["auto", "fp32", "bf16"]  # train.precision, and the play/eval/rollout dtype (playworld.precision)

__all__ = ["ConfigError", "field", "to_dict", "from_dict", "apply_overrides", "replace_path",
           "save_json", "load_json", "add_dataclass_args", "dataclass_from_args"]


def field(default: Any = dataclasses.MISSING, *, help: str, **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with a help text (shown by ``--help`` and in saved configs' docs)."""
    if default is not dataclasses.MISSING and isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a (nested) config dataclass."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    out = dataclasses.asdict(cfg)
    return json.loads(json.dumps(out))  # tuples -> lists, so a round trip compares equal


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a JSON/CLI value to the annotated type, raising ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build ``cls`` from ``data``; unknown keys and wrong types raise ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def replace_path(cfg: T, dotted: str, raw: Any) -> T:
    """Return a copy of ``cfg`` with the field at ``dotted`` (e.g. ``model.dim``) set from ``raw``."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    if head not in names:
        raise ConfigError(f"--set {dotted}: {type(cfg).__name__} has no field {head!r}; fields: {sorted(names)}")
    current = getattr(cfg, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"--set {dotted}: {head!r} is not a section")
        new = replace_path(current, rest, raw)
    else:
        tp = _hints(type(cfg))[head]
        if isinstance(raw, str) and raw.lower() in ("none", "null") and type(None) in typing.get_args(tp):
            new = None
        else:
            new = _coerce(tp, raw, f"--set {dotted}")
    try:
        return dataclasses.replace(cfg, **{head: new})  # type: ignore[type-var]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--set {dotted}={raw}: {e}") from e


def apply_overrides(cfg: T, overrides: list[str] | None) -> T:
    """Apply ``["a.b=1", "c=x"]`` overrides in order."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.dim=256")
        key, value = item.split("=", 1)
        cfg = replace_path(cfg, key.strip(), value.strip())
    return cfg


def save_json(cfg: Any, path: Path) -> None:
    """Write a config as JSON atomically."""
    from playworld.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[T], path: Path) -> T:
    """Read a config JSON file, with errors naming the file."""
    from playworld.io import read_json

    path = Path(path)
    data = read_json(path, ConfigError, "config file")
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` flag per field of ``cls`` (flat dataclasses only), help from metadata."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        if typing.get_origin(tp) is typing.Literal:
            parser.add_argument(flag, dest=f.name, choices=list(typing.get_args(tp)), default=default,
                                required=required, help=f"{help_text} (default: %(default)s)")
            continue
        parser.add_argument(flag, dest=f.name, default=default, required=required, type=str,
                            help=f"{help_text}" + ("" if required else " (default: %(default)s)"))


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from parsed flags added by :func:`add_dataclass_args`, validating every value."""
    data = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if value is not None:
                data[f.name] = value
    return from_dict(cls, data)
