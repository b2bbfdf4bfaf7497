"""The schema of ``metrics.json`` (documented in docs/eval.md), and its validator.

Bump ``SCHEMA_VERSION`` on any change a reader could notice (a key added, removed, renamed or of
another type); readers refuse other versions with a message, never misread them. Older versions that
are still read are kept in ``SCHEMAS`` (v1: before the motion section; its headline lacks the motion
figures, which ``--compare`` then shows as missing; v2: before the headline's bootstrap replicates, so
``--compare`` judges its figures by their intervals alone, unpaired; v3: before the key response from real
starts, and with key response and liveness labelled ``higher`` is better, which :func:`load_metrics` reads
as :data:`NEAR_ONE`, what they always meant).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playworld.errors import ConfigError
from playworld.io import read_json

FORMAT = "playworld-eval"
SCHEMA_VERSION = 4
NEAR_ONE = "near 1"
"""A headline figure whose target is 1 (the real game's own value), not the more the better."""
BETTER = ("higher", "lower", NEAR_ONE)
NEAR_ONE_BEFORE_V4 = ("key_response_early", "key_response_late", "liveness_late", "liveness_far")
"""Headline figures that files before v4 labelled 'higher' is better: a key that moves the world twice as
fast as the game's, or twice its pixel change, is as far off as half."""


@dataclass(frozen=True)
class Opt:
    """``spec`` or null."""

    spec: Any


@dataclass(frozen=True)
class Added:
    """A key added to a schema version after its first files were written: ``spec`` when present, and
    files written before it (which lack the key) still read."""

    spec: Any


@dataclass(frozen=True)
class ListOf:
    spec: Any


@dataclass(frozen=True)
class MapOf:
    """An object with any keys, every value of ``spec``."""

    spec: Any


ESTIMATE = {"mean": float, "low": float, "high": float, "n": int}
PER_KIND = {"inferred": ListOf(ESTIMATE), "random": ListOf(ESTIMATE), "copy_last": ListOf(ESTIMATE)}
ROLLOUT = {"psnr": PER_KIND, "ssim": PER_KIND, "delta_psnr": ListOf(ESTIMATE), "psnr_of_mean_mse": PER_KIND}

SCHEMA_V1: dict[str, Any] = {
    "format": str,
    "schema_version": int,
    "created_at": str,
    "run": str,
    "data": str,
    "settings": MapOf(object),
    "counts": {"episodes": int, "rollout_clips": int, "action_transitions": int, "truncated_by_time": bool},
    "warnings": ListOf(str),
    "tokenizer": {"num_codes": int, "psnr": ESTIMATE, "ssim": ESTIMATE, "code_usage": ESTIMATE,
                  "perplexity": ESTIMATE, "code_counts": ListOf(int)},
    "rollouts": {"horizon": int, "contexts": MapOf(ROLLOUT)},
    "actions": {
        "available": bool, "reason": Opt(str), "num_latent": int, "num_true": Opt(int),
        "latent_usage": ListOf(int), "mapping": Opt(ListOf(ListOf(int))), "mapping_accuracy": Opt(ESTIMATE),
        "majority_accuracy": Opt(ESTIMATE), "nmi": Opt(ESTIMATE), "probe_accuracy": Opt(ESTIMATE),
        "probe_majority_accuracy": Opt(float), "probe_reason": Opt(str), "confusion": Opt(ListOf(ListOf(int))),
    },
    "consistency": {"per_action": ListOf(ESTIMATE), "overall": ESTIMATE, "mean_motion": ListOf(ListOf(float)),
                    "starts": int, "steps": int,
                    "real": Added({"available": bool, "reason": Opt(str), "levels": int,
                                   "true_actions": Opt(ListOf(int)), "overall": Opt(ESTIMATE),
                                   "per_action": Opt(ListOf(ESTIMATE)), "model_overall": Opt(ESTIMATE),
                                   "classes": Opt(ListOf(int)), "class_overall": Opt(ESTIMATE),
                                   "model_class_overall": Opt(ESTIMATE)})},
    "memory": {
        "k": int, "pairs_from": str, "walks": ListOf({"there": int, "back": int, "true": Opt(ListOf(int))}),
        "model_return_psnr": Opt(ESTIMATE),
        "real": {"available": bool, "reason": Opt(str), "levels": int, "return_psnr": Opt(ESTIMATE),
                 "model_return_psnr": Opt(ESTIMATE), "model_vs_real_psnr": Opt(ESTIMATE)},
    },
    "speed": {"ms_per_frame": ESTIMATE, "ms_per_frame_batched": float, "batch": int, "maskgit_steps": int,
              "temperature": float, "copy_penalty": Added(float), "device": str, "threads": int},
    "headline": MapOf({**ESTIMATE, "better": str}),
}

KEPT = {"slope": {"dy": ESTIMATE, "dx": ESTIMATE}, "correlation": {"dy": ESTIMATE, "dx": ESTIMATE},
        "real_motion": float, "transitions": int}
WINDOWED = {"dy": ESTIMATE, "dx": ESTIMATE, "change": ESTIMATE}
BY_WINDOW = {"early": Opt(ESTIMATE), "late": Opt(ESTIMATE), "far": Opt(ESTIMATE)}
REAL_MOTION = {"action": int, "dy": ESTIMATE, "dx": ESTIMATE, "change": ESTIMATE, "transitions": int, "episodes": int}
MOTION = {
    "estimator": {"cutoff": float, "window": bool},
    "tokenizer_kept": KEPT,
    "dynamics_kept": KEPT,
    "keys": {
        "starts": int, "steps": int, "real_hold": int, "windows": MapOf(ListOf(int)),
        "real_available": bool, "real_reason": Opt(str), "response": BY_WINDOW, "liveness": BY_WINDOW,
        "change": {"early": ESTIMATE, "late": ESTIMATE, "far": ESTIMATE},
        "response_actions": ListOf(int), "liveness_actions": ListOf(int),
        "per_action": ListOf({"latent": int, "true": Opt(int), "real": Opt(REAL_MOTION),
                              "early": WINDOWED, "late": WINDOWED, "far": WINDOWED}),
        "curves": {"shift": ListOf(ListOf(ListOf(float))), "change": ListOf(ListOf(float))},
    },
    "realism": {"frechet": ESTIMATE, "real_vs_real": Opt(float), "steps": ListOf(int), "generated_frames": int,
                "real_frames": int, "features": str},
}
SCHEMA_V2: dict[str, Any] = {**SCHEMA_V1, "motion": MOTION}
# v3: each headline figure keeps its bootstrap replicates (absent where n = 1), for paired comparisons
SCHEMA_V3: dict[str, Any] = {**SCHEMA_V2, "headline": MapOf({**ESTIMATE, "better": str,
                                                             "replicates": Added(ListOf(float))})}
BY_EARLY_LATE = {"early": Opt(ESTIMATE), "late": Opt(ESTIMATE)}
REAL_STARTS = {
    "available": bool, "reason": Opt(str), "levels": int, "steps": int, "true_actions": Opt(ListOf(int)),
    "response": Opt(BY_EARLY_LATE), "agreement": Opt(BY_EARLY_LATE), "liveness": Opt(BY_EARLY_LATE),
    "contrast": Opt({"agreement": BY_EARLY_LATE, "ratio": BY_EARLY_LATE}),
    "per_action": Opt(MapOf({"response": ListOf(Opt(float)),
                             "world_shift": ListOf(ListOf(float)), "real_shift": ListOf(ListOf(float)),
                             "world_change": ListOf(float), "real_change": ListOf(float),
                             "alive_steps": ListOf(int)})),
    "curves": Opt({"world_shift": ListOf(ListOf(ListOf(float))), "real_shift": ListOf(ListOf(ListOf(float))),
                   "world_change": ListOf(ListOf(float)), "real_change": ListOf(ListOf(float))}),
    "alive_share": Opt(float), "displacement": Added(Opt(BY_EARLY_LATE))}
# v4: key response, agreement and liveness from real starts (motion.keys.real_starts, ten headline figures);
# headline ``better`` may be NEAR_ONE. Added later in v4: the pixel change kept and the PSNR on moving pixels
# of the tokenizer (tokenizer.change_kept, .moving_psnr) and of teacher-forced dynamics (motion.dynamics_change),
# and the net displacement from real starts (motion.keys.real_starts.displacement)
CHANGE = {"change_kept": Added(ESTIMATE), "moving_psnr": Added(Opt(ESTIMATE))}
SCHEMA: dict[str, Any] = {
    **SCHEMA_V3, "tokenizer": {**SCHEMA_V3["tokenizer"], **CHANGE},
    "motion": {**MOTION, "keys": {**MOTION["keys"], "real_starts": REAL_STARTS},
               "dynamics_change": Added({"change_kept": ESTIMATE, "moving_psnr": Opt(ESTIMATE),
                                         "copy_moving_psnr": Opt(ESTIMATE)})}}
SCHEMAS: dict[int, dict[str, Any]] = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA_V3, SCHEMA_VERSION: SCHEMA}


def keep_headline_replicates(metrics: dict[str, Any]) -> dict[str, Any]:
    """Drop the bootstrap replicates of every estimate in ``metrics`` (in place) but the headline's: the
    figures a comparison pairs keep theirs, the hundreds of others stay a few numbers each. Returns it."""

    def drop(value: Any) -> None:
        if isinstance(value, dict):
            value.pop("replicates", None)
            for v in value.values():
                drop(v)
        elif isinstance(value, list):
            for v in value:
                drop(v)

    for key, value in metrics.items():
        if key != "headline":
            drop(value)
    return metrics


def _check(value: Any, spec: Any, where: str) -> None:
    if isinstance(spec, Opt):
        if value is not None:
            _check(value, spec.spec, where)
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            _check(v, spec.spec, f"{where}[{i}]")
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        for k, v in value.items():
            _check(v, spec.spec, f"{where}.{k}")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        required = {k for k, s in spec.items() if not isinstance(s, Added)}
        missing, unknown = sorted(required - set(value)), sorted(set(value) - set(spec))
        if missing or unknown:
            raise ConfigError(f"{where or 'top level'}: missing keys {missing}, unknown keys {unknown}")
        for k, s in spec.items():
            if isinstance(s, Added):
                if k not in value:
                    continue
                s = s.spec
            _check(value[k], s, f"{where}.{k}" if where else k)
    elif spec is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif spec is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif spec is object:
        return
    elif not isinstance(value, spec) or (spec is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {spec.__name__}, got {value!r}")


def validate(metrics: Any, where: str = "metrics.json") -> None:
    """Raise ConfigError naming ``where`` and the key path at the first departure from the schema of
    the file's version (the current one, or an older one still read)."""
    if not isinstance(metrics, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(metrics).__name__}")
    if metrics.get("format") != FORMAT:
        raise ConfigError(f"{where}: format is {metrics.get('format')!r}, not {FORMAT!r} (not a playworld eval)")
    version = metrics.get("schema_version")
    if isinstance(version, bool) or version not in SCHEMAS:
        raise ConfigError(f"{where}: schema_version {version!r} is not one this playworld reads "
                          f"({sorted(SCHEMAS)}); re-run `playworld eval` with this version of playworld")
    try:
        _check(metrics, SCHEMAS[version], "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    for name, entry in metrics["headline"].items():
        if entry["better"] not in BETTER:
            raise ConfigError(f"{where}: headline.{name}.better is {entry['better']!r}, not one of {list(BETTER)}")
    for name, est in _estimates(metrics, ""):
        if est["low"] > est["high"] or est["n"] < 1:
            raise ConfigError(f"{where}: {name}: interval [{est['low']}, {est['high']}] over n={est['n']} "
                              "is not a valid estimate")


def _estimates(value: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(value, dict):
        if set(ESTIMATE) <= set(value):
            return [(where, value)]
        return [e for k, v in value.items() for e in _estimates(v, f"{where}.{k}" if where else k)]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _estimates(v, f"{where}[{i}]")]
    return []


_NUMBER_LIST = re.compile(r"\[\n[-+0-9.eE,\s]*\]")  # an indented list of numbers (strings hold no raw newline)


def metrics_text(metrics: dict[str, Any]) -> str:
    """``metrics`` as the text of a metrics.json: indented objects, each list of numbers on one line (the
    headline's bootstrap replicates, code counts and curves would otherwise take a line per number)."""
    text = json.dumps(metrics, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", text) + "\n"


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``metrics.json`` (or the one inside an eval directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    metrics = read_json(path, ConfigError, "metrics file")
    validate(metrics, str(path))
    if metrics["schema_version"] < 4:  # what these figures always meant (see NEAR_ONE_BEFORE_V4)
        for name in NEAR_ONE_BEFORE_V4:
            if name in metrics["headline"]:
                metrics["headline"][name]["better"] = NEAR_ONE
    return metrics
