"""`playworld eval --compare A B ...`: the headline figures of several evaluations side by side, with
rollout PSNR and SSIM at horizons 1, 4, 8 and 15.

Every run is compared with the first. A figure whose target is 1 (``near 1``: key response and liveness,
the world's motion and change over the real game's) is compared by its distance from 1. Where both
evaluations scored the same units (the same data,
settings and counts) and kept their figures' bootstrap replicates (metrics.json v3 on), a figure is
flagged when the paired bootstrap interval of its difference excludes 0 (:func:`paired_difference`:
the same clips and start frames, resampled alike, so what the units share cancels). Otherwise (older
files, other data or settings, speed figures) it is flagged when the two 95% intervals do not overlap,
a conservative test: unflagged is not "equal". Runs evaluated on other data, split, seed or settings
are named in a warning, since their figures do not measure the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playworld.errors import ConfigError
from playworld.eval.config import BEFORE_FIELD
from playworld.eval.schema import NEAR_ONE, load_metrics
from playworld.eval.stats import paired_difference

COMPARABLE = ("split", "episodes", "context", "horizon", "seed", "key_starts", "key_steps", "real_hold",
              "motion_cutoff", "motion_window")
"""Settings whose difference a comparison warns of: its figures measure other things."""
PAIRED_SETTINGS = (*COMPARABLE, "action_clips", "consistency_starts", "consistency_steps", "memory_k",
                   "memory_starts", "bootstrap", "real_env", "real_key_starts")
"""Settings two evaluations must share (beside their data and counts) for their figures to be paired."""
DECODING = ("maskgit_steps", "temperature", "copy_penalty", "action_guidance", "precision")
"""How the world decodes its frames. Evaluations that differ only here score the same clips and start frames
(as two worlds do), so they are paired; a note names the settings."""


def find_metrics(path: str | Path) -> Path:
    """A metrics.json, a directory holding one, or a run directory with eval/metrics.json."""
    p = Path(path)
    for candidate in (p, p / "metrics.json", p / "eval" / "metrics.json"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{p}: no metrics.json here (nor in {p / 'eval'}); run `playworld eval {p}` first")


SPEED_FIGURES = ("ms_per_frame",)
"""Figures that measure time, flagged only between evaluations timed with the same number of threads."""
HORIZONS = (1, 4, 8, 15)
"""Rollout horizons whose PSNR and SSIM every comparison lists (beside the headline's t=4), where the
evaluations reach them."""


def horizon_figures(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``psnr_inferred_tH`` / ``ssim_inferred_tH`` for H in :data:`HORIZONS` (rollouts from the shortest
    context, LAM-inferred actions), read from the rollout curves of a metrics.json, each an Estimate with
    ``better``: 'higher'."""
    contexts = m.get("rollouts", {}).get("contexts", {})
    if not contexts:
        return {}
    ctx = contexts[str(min(int(c) for c in contexts))]
    out = {}
    for h in HORIZONS:
        for name in ("psnr", "ssim"):
            curve = ctx.get(name, {}).get("inferred", [])
            if len(curve) >= h:
                out[f"{name}_inferred_t{h}"] = {**curve[h - 1], "better": "higher"}
    return out


def distance_from_one(e: dict[str, Any]) -> dict[str, Any]:
    """An estimate of x -> one of |x - 1| (the interval of |x - 1| over x's interval; replicates mapped)."""
    lo, hi = e["low"] - 1.0, e["high"] - 1.0
    low = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
    out = {"mean": abs(e["mean"] - 1.0), "low": low, "high": max(abs(lo), abs(hi)), "n": e["n"]}
    if e.get("replicates"):
        out["replicates"] = [abs(r - 1.0) for r in e["replicates"]]
    return out


@dataclass
class Comparison:
    """names: the runs; rows: headline name -> per run (Estimate dict or None); flags: headline name ->
    per run (other than the first) 'better' | 'worse' | '' ; differences: headline name -> per run (other
    than the first) the paired difference from the first (Estimate dict) or None where it cannot be
    paired; warnings: why runs may not compare; notes: how runs paired with the first differ (their decoding)."""

    names: list[str]
    rows: dict[str, list[dict[str, Any] | None]]
    better: dict[str, str]
    flags: dict[str, list[str]]
    warnings: list[str]
    differences: dict[str, list[dict[str, Any] | None]]
    notes: list[str] = field(default_factory=list)


def same_units(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two evaluations scored the same clips and start frames, in the same order: the same data,
    the settings that choose and resample them, and the same counts, none cut short by the time limit."""
    sa, sb = a["settings"], b["settings"]
    return (a["data"] == b["data"] and all(sa.get(k) == sb.get(k) for k in PAIRED_SETTINGS)
            and a["counts"] == b["counts"] and not a["counts"]["truncated_by_time"])


def setting(m: dict[str, Any], key: str) -> Any:
    """An evaluation's setting ``key``, or the value evaluations had before the setting existed."""
    return m["settings"].get(key, BEFORE_FIELD.get(key))


def compare(paths: list[str | Path]) -> Comparison:
    if len(paths) < 2:
        raise ConfigError(f"--compare needs at least two runs, got {len(paths)}")
    files = [find_metrics(p) for p in paths]
    metrics = [load_metrics(f) for f in files]
    names = [str(p) for p in paths]
    warnings, notes = [], []
    base = metrics[0]
    threads = [m.get("speed", {}).get("threads") for m in metrics]  # what each timed its frames with
    for name, m, t in zip(names[1:], metrics[1:], threads[1:]):
        diff = [k for k in COMPARABLE if m["settings"].get(k) != base["settings"].get(k)]
        if m["data"] != base["data"]:
            diff.insert(0, "data")
        if diff:
            warnings.append(f"{name} differs from {names[0]} in {', '.join(diff)}: its figures may not compare")
        decoding = [f"{k} {setting(m, k)} ({setting(base, k)})" for k in DECODING if setting(m, k) != setting(base, k)]
        if decoding:
            notes.append(f"{name} decodes otherwise than {names[0]}: {', '.join(decoding)}; "
                            "the same clips and starts, so its figures are paired")
        if t != threads[0]:
            warnings.append(f"{name} timed its frames with {t} threads, {names[0]} with {threads[0]}: "
                            "ms_per_frame is not flagged")
    # the headline's own entries first: they keep their replicates, the curves' do not
    figures = [{**m["headline"], **{k: v for k, v in horizon_figures(m).items() if k not in m["headline"]}}
               for m in metrics]
    keys = list(dict.fromkeys(k for f in figures for k in f))
    pairable = [same_units(base, m) for m in metrics[1:]]
    rows, better, flags, differences = {}, {}, {}, {}
    for key in keys:
        row = [f.get(key) for f in figures]
        rows[key] = row
        better[key] = next(e["better"] for e in row if e is not None)
        ref = row[0]
        direction = better[key]
        if direction == NEAR_ONE:  # judged by the distance from 1: lower is better
            row = [None if e is None else distance_from_one(e) for e in row]
            ref, direction = row[0], "lower"
        flags[key], differences[key] = [], []
        for t, e, alike in zip(threads[1:], row[1:], pairable):
            flag, diff = "", None
            if ref is not None and e is not None and key not in SPEED_FIGURES and alike:
                paired = paired_difference(ref, e)
                diff = None if paired is None else paired.to_json()
            if diff is not None:
                if diff["low"] > 0:
                    flag = "better" if direction == "higher" else "worse"
                elif diff["high"] < 0:
                    flag = "worse" if direction == "higher" else "better"
            elif ref is not None and e is not None and (key not in SPEED_FIGURES or t == threads[0]):
                if e["low"] > ref["high"]:
                    flag = "better" if direction == "higher" else "worse"
                elif e["high"] < ref["low"]:
                    flag = "worse" if direction == "higher" else "better"
            flags[key].append(flag)
            differences[key].append(diff)
    return Comparison(names, rows, better, flags, warnings, differences, notes)


# the comparison table's sections, in order: (title, whether a headline figure belongs to it); first match wins
GROUPS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("tokenizer", lambda k: k.startswith("tokenizer_")),
    ("held keys from the real game's own frames", lambda k: k.endswith("_real_starts")
     and not k.startswith("consistency")),
    ("rollouts against held-out video", lambda k: k.startswith(("psnr_", "ssim_", "delta_psnr_"))),
    ("latent actions and their consistency", lambda k: k in ("mapping_accuracy", "nmi", "probe_accuracy")
     or k.startswith("consistency")),
    ("held keys from dataset frames", lambda k: k.startswith(("key_response_", "liveness_"))),
    ("teacher-forced dynamics", lambda k: k.startswith("dynamics_")),
    ("memory and realism", lambda k: k.startswith(("memory_", "realism_"))),
    ("speed", lambda k: k.startswith("ms_per_frame")),
)


def figure_group(key: str) -> str:
    """The section of the comparison table a headline figure is shown in (``other`` for figures no
    section names)."""
    return next((title for title, member in GROUPS if member(key)), "other")


def _cell(e: dict[str, Any] | None) -> str:
    return "—" if e is None else f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def to_markdown(c: Comparison) -> str:
    """A markdown table; a flagged cell says whether it is better or worse than the first run, beyond
    the intervals."""
    head = ["figure (better)", *c.names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [title for title, _ in GROUPS] + ["other"]
    group = {k: figure_group(k) for k in c.rows}
    section = None
    for key in sorted(c.rows, key=lambda k: order.index(group[k])):  # stable: headline order within a section
        row = c.rows[key]
        if group[key] != section:
            section = group[key]
            lines.append(f"| **{section}** |" + " |" * len(c.names))
        cells = [_cell(row[0])]
        what = "Δ|x-1|" if c.better[key] == NEAR_ONE else "Δ"
        for e, flag, d in zip(row[1:], c.flags[key], c.differences[key]):
            paired = "" if d is None else f"; paired {what} {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            cells.append(_cell(e) + paired + (f" **{flag}**" if flag else ""))
        lines.append(f"| {key} ({c.better[key]}) | " + " | ".join(cells) + " |")
    notes = ["", f"Flags compare each run with the first ({c.names[0]}). Where a cell shows a paired Δ (the same "
             "clips and start frames, resampled alike: a paired bootstrap of the difference), **better**/**worse** "
             "= its 95% interval excludes 0; elsewhere = the two 95% intervals do not overlap. Unflagged "
             "differences are within the intervals. Figures marked (near 1) are judged by their distance from "
             "1, the real game's own value (Δ|x-1| < 0: closer to the game)."]
    notes += [f"Note: {n}" for n in c.notes] + [f"Warning: {w}" for w in c.warnings]
    return "\n".join(lines + notes) + "\n"
