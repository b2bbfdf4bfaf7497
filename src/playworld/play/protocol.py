"""The play page's WebSocket messages: parsing and validating what a client sends.

Client -> server, one JSON object per text message, ``type`` first:

- ``{"type": "start", "source": "dataset", "index"?: int, "seed"?: int}``: a dataset prompt (random if no index)
- ``{"type": "start", "source": "image", "data": "<base64 or data: URL>", "fit"?: "crop"|"pad", "seed"?: int}``:
  an uploaded picture or a sketch from the page
- ``{"type": "step", "action": int}``: one latent action, 0-based (the page's key 1 sends 0)
- ``{"type": "undo"}``, ``{"type": "restart"}``: take back the last action; back to the prompt
- ``{"type": "replay", "actions": "1,1,3"}``: restart and play an action string (1-based, or named)
- ``{"type": "record", "format": "mp4"|"gif"}``: the session's recording as a video

Server -> client: ``hello`` (world facts and limits), ``frame`` (base64 RGB bytes and figures),
``recording`` (base64 video), ``error`` (``message`` says what was wrong; the session goes on). Every
message gets exactly one reply, in the order sent (a dropped one, over the rate or the queue limit,
gets its ``error`` at its turn).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Literal


class ProtocolError(ValueError):
    """A client message that cannot be served; its text goes back to the client as an error reply."""


@dataclass(frozen=True)
class Start:
    source: Literal["dataset", "image"]
    index: int | None = None
    image: bytes | None = None
    fit: Literal["crop", "pad"] = "crop"
    seed: int | None = None


@dataclass(frozen=True)
class Step:
    action: int


@dataclass(frozen=True)
class Undo:
    pass


@dataclass(frozen=True)
class Restart:
    pass


@dataclass(frozen=True)
class Replay:
    actions: str


@dataclass(frozen=True)
class Record:
    format: Literal["mp4", "gif"]


Message = Start | Step | Undo | Restart | Replay | Record
TYPES = ("start", "step", "undo", "restart", "replay", "record")
_FIELDS = {"start": {"source", "index", "data", "fit", "seed"}, "step": {"action"}, "undo": set(),
           "restart": set(), "replay": {"actions"}, "record": {"format"}}


class LongNumber:
    """A JSON integer literal too long to be any field's value (kept as its digit count, never converted:
    Python refuses to convert integers of more than 4,300 digits, and no limit here needs more than 20)."""

    MAX_DIGITS = 20

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))

    def __str__(self) -> str:
        return f"a {self.digits}-digit number"


def _parse_int(literal: str) -> int | LongNumber:
    return int(literal) if len(literal.lstrip("-")) <= LongNumber.MAX_DIGITS else LongNumber(literal)


def _describe(value: object) -> str:
    """A client's value, for an error reply: short, and never an object's repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, (int, float, LongNumber)):
        return str(value)
    if isinstance(value, str):
        return repr(value[:40])
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def _int(msg: dict, key: str, *, low: int, high: int, required: bool = True) -> int | None:
    value = msg.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{msg['type']}: {key!r} must be an integer in [{low}, {high}], got {_describe(value)}")
    return value


def _decode_image(data: object, max_bytes: int) -> bytes:
    if not isinstance(data, str) or not data:
        raise ProtocolError("start: 'data' must be the picture as a base64 string or a data: URL")
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or ";base64" not in head:
            raise ProtocolError("start: 'data' is a data: URL without ;base64 content")
    if len(data) > (max_bytes + 2) // 3 * 4 + 4:
        raise ProtocolError(f"start: the picture is larger than the upload limit of {max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"start: 'data' is not valid base64 ({e})") from e


def parse_message(text: str | bytes | None, *, num_actions: int, max_upload_bytes: int,
                  max_message_chars: int) -> Message:
    """One client message -> a typed message; anything else raises :class:`ProtocolError` saying why."""
    if not isinstance(text, str):
        raise ProtocolError("expected a JSON text message, got a binary one")
    if len(text) > max_message_chars:
        raise ProtocolError(f"message of {len(text)} characters exceeds the limit of {max_message_chars} "
                            f"(an uploaded picture may have at most {max_upload_bytes} bytes)")
    try:
        msg = json.loads(text, parse_int=_parse_int)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(f"message is not valid JSON ({str(e)[:100]})") from e
    if not isinstance(msg, dict):
        raise ProtocolError(f"message must be a JSON object with a 'type', got {type(msg).__name__}")
    kind = msg.get("type")
    if "type" not in msg:
        raise ProtocolError(f"message has no 'type'; expected one of {list(TYPES)}")
    if kind not in TYPES:
        raise ProtocolError(f"unknown message type {_describe(kind)}; expected one of {list(TYPES)}")
    extra = sorted(set(msg) - _FIELDS[kind] - {"type"})
    if extra:
        raise ProtocolError(f"{kind}: unknown field(s) {[k[:40] for k in extra[:5]]}; "
                            f"known: {sorted(_FIELDS[kind])}")
    if kind == "step":
        return Step(_int(msg, "action", low=0, high=num_actions - 1))  # type: ignore[arg-type]
    if kind == "undo":
        return Undo()
    if kind == "restart":
        return Restart()
    if kind == "replay":
        if not isinstance(msg.get("actions"), str):
            raise ProtocolError("replay: 'actions' must be a string such as \"1,1,3\"")
        return Replay(msg["actions"])
    if kind == "record":
        if msg.get("format") not in ("mp4", "gif"):
            raise ProtocolError(f"record: 'format' must be 'mp4' or 'gif', got {_describe(msg.get('format'))}")
        return Record(msg["format"])
    source, fit = msg.get("source"), msg.get("fit", "crop")
    if fit not in ("crop", "pad"):
        raise ProtocolError(f"start: 'fit' must be 'crop' or 'pad', got {_describe(fit)}")
    seed = _int(msg, "seed", low=0, high=2**62, required=False)
    if source == "dataset":
        if "data" in msg:
            raise ProtocolError("start: a dataset start takes no 'data'")
        return Start("dataset", index=_int(msg, "index", low=0, high=2**62, required=False), seed=seed)
    if source == "image":
        return Start("image", image=_decode_image(msg.get("data"), max_upload_bytes), fit=fit, seed=seed)
    raise ProtocolError(f"start: 'source' must be 'dataset' or 'image', got {_describe(source)}")


def frame_message(frame: bytes, height: int, width: int, **figures: object) -> str:
    """A ``frame`` reply: raw RGB bytes (H * W * 3) as base64, plus figures (step, action, ms...)."""
    return json.dumps({"type": "frame", "height": height, "width": width,
                       "rgb": base64.b64encode(frame).decode("ascii"), **figures})


def error_message(text: str) -> str:
    return json.dumps({"type": "error", "message": text})
