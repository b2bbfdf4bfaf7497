"""`playworld name-actions EVAL`: name a world's latent actions (and give them keys) from its evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "name-actions", help="name a world's latent actions and give them keys, from its `playworld eval`",
        description="playworld name-actions RUN_OR_EVAL [--run RUN] [--force] [--dry-run]\n\n"
        "Writes RUN/action_names.json, which `playworld play`, `rollout --actions` and the agents read: each\n"
        "latent action takes the name of the true action the evaluation mapped it to (data with recorded\n"
        "actions), or the direction the scene moved while it was held (video without them). An existing\n"
        "file (perhaps edited by hand) is kept unless --force.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="an evaluation: its metrics.json, its directory, or a run with eval/metrics.json")
    p.add_argument("--run", help="the run to name (default: the run the evaluation names)")
    p.add_argument("--force", action="store_true", help="replace an existing action_names.json")
    p.add_argument("--dry-run", action="store_true", help="print the names, write nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from playworld.data.format import read_manifest
    from playworld.data.policies import true_action_names
    from playworld.errors import ConfigError, DatasetError
    from playworld.eval.compare import find_metrics
    from playworld.eval.schema import load_metrics
    from playworld.play.actions import FILENAME, save_action_names
    from playworld.play.naming import names_from_eval

    path = find_metrics(args.source)
    metrics = load_metrics(path)
    run_dir = Path(args.run or metrics["run"])
    if not (run_dir / "dynamics").is_dir():
        raise ConfigError(f"{run_dir}: not a world run directory (no dynamics/); give the run with --run")
    true_names, source = None, "the scene's motion under each held action"
    if metrics["actions"].get("mapping"):
        try:
            true_names = true_action_names(read_manifest(Path(metrics["data"])).source)
        except DatasetError as e:
            print(f"playworld: {e}; naming by motion instead")
        if true_names is not None:
            source = f"the mapping to the data's true actions in {path}"
    try:
        names = names_from_eval(metrics, true_names)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    print(f"latent actions named from {source}:")
    for a in names:
        print(f"  {a.latent + 1}  {a.name:16s} key {repr(a.key) if a.key else '(number only)'}")
    target = run_dir / FILENAME
    if args.dry_run:
        return 0
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists (perhaps edited by hand); --force replaces it, --dry-run shows the names")
    save_action_names(run_dir, names, num_actions=len(names))
    print(f"wrote {target}")
    return 0
