"""What `playworld train all` does when its LAM's encoder has collapsed: train one more LAM, another way,
before giving up.

A collapsed LAM (:mod:`playworld.train.lam_check`) gives a world whose keys all play the same frame, so
`train all` never trains a dynamics model on one. On the datasets of docs/models.md ("Balanced
assignment") the presets' LAM (balanced assignment at temperature 0.1) collapsed on bigfish for one seed
of two and on ingested bigfish video for both, while temperature 0.3 kept the encoder's actions alive on
all four datasets and both seeds; it is not the default because it says less about CoinRun's keys where
0.1 holds. So when the check fails, `train all` keeps the collapsed run (renamed ``OUT/lam-collapsed``:
nothing is deleted), trains a second LAM in ``OUT/lam`` with :data:`FALLBACK` and the next seed, checks
it the same way, and goes on only if it passes.

``OUT/lam-retry.json`` records the retry before the first run is moved (the commit point), so a stopped
`train all`, re-run, finishes the move if it had not happened, resumes the second LAM with the same
settings, and never retries twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from playworld.errors import CheckpointError
from playworld.io import atomic_write_text, read_json

__all__ = ["FALLBACK", "RETRY_FILE", "SET_ASIDE", "LAMRetry", "read_retry", "start_retry"]

RETRY_FILE = "lam-retry.json"
SET_ASIDE = "lam-collapsed"
# The LAM settings a retry adds to the user's (docs/models.md: the one setting that passed the collapse
# check on CoinRun, bigfish, starpilot and ingested bigfish video, on two seeds each).
FALLBACK = ("model.assign=balanced", "model.assign_temperature=0.3")


@dataclass(frozen=True)
class LAMRetry:
    """overrides: the lam-scoped ``--set`` items the second LAM adds to the user's; first_check: what the
    collapse check measured on the first LAM; set_aside: the directory (under OUT) that holds it."""

    overrides: tuple[str, ...]
    first_check: str
    set_aside: str = SET_ASIDE


def read_retry(out: Path) -> LAMRetry | None:
    """The retry recorded in ``out`` (None if there was none), with an interrupted move of the first LAM
    finished."""
    path = Path(out) / RETRY_FILE
    if not path.exists():
        return None
    raw = read_json(path, CheckpointError, "LAM retry record")
    try:
        record = LAMRetry(overrides=tuple(str(o) for o in raw["overrides"]), first_check=str(raw["first_check"]),
                          set_aside=str(raw["set_aside"]))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a LAM retry record (missing or malformed {e}); remove it to "
                              f"train the LAM again from its first settings") from e
    _move_aside(Path(out), record)
    return record


def start_retry(out: Path, first_check: str, seed: int) -> LAMRetry:
    """Record the retry in ``out`` and move the collapsed ``out/lam`` aside; the second LAM uses
    :data:`FALLBACK` and ``seed + 1``."""
    out = Path(out)
    if (out / RETRY_FILE).exists():
        raise CheckpointError(f"{out / RETRY_FILE}: this run already retried its LAM once")
    record = LAMRetry(overrides=(*FALLBACK, f"train.seed={seed + 1}"), first_check=first_check)
    atomic_write_text(out / RETRY_FILE, json.dumps(asdict(record), indent=2) + "\n")  # the tuple as a list
    _move_aside(out, record)
    return record


def _move_aside(out: Path, record: LAMRetry) -> None:
    aside, lam = out / record.set_aside, out / "lam"
    if not aside.exists() and lam.exists() and _is_first_run(lam, record):
        lam.rename(aside)  # one rename: the first LAM is either still lam/ or already set aside


def _is_first_run(lam: Path, record: LAMRetry) -> bool:
    """Whether ``lam`` holds a run without the retry's settings (the first LAM, not yet moved)."""
    from playworld.train.checkpoint import read_checkpoint_config

    try:
        cfg = read_checkpoint_config(lam)
    except (CheckpointError, FileNotFoundError):
        return False  # nothing trained there yet: the second LAM's directory
    for item in record.overrides:
        key, value = item.split("=", 1)
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        try:
            wanted = json.loads(value)
        except json.JSONDecodeError:
            wanted = value
        if node != wanted:
            return True
    return False
