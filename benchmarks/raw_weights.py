"""A release of a run's raw training weights: the weights of its latest checkpoint in place of the weight
EMA that `playworld train` releases, so the two can be measured side by side (docs/models.md, "Short runs
released their initialisation"). Writes OUT/model.safetensors and OUT/config.json (train.ema_decay set to
0, the checkpoint's step recorded), loadable wherever the run's own release is.

    .venv/bin/python benchmarks/raw_weights.py runs/tok runs/tok-raw
    .venv/bin/python benchmarks/tokenizer_psnr.py runs/tok runs/tok-raw --data data/coinrun-eval --split test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playworld.release import load_tensors, read_release_config, save_release
from playworld.train.checkpoint import CheckpointManager


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a model's run directory (its release and its checkpoints/)")
    p.add_argument("out", type=Path, help="where to write the raw-weight release (must not be the run)")
    args = p.parse_args()
    if args.out.resolve() == args.run.resolve():
        p.error("OUT must differ from RUN: the run's own release would be replaced")
    config = read_release_config(args.run)
    latest = CheckpointManager(args.run).latest()
    if latest is None:
        raise SystemExit(f"{args.run}/checkpoints: no checkpoint to take raw weights from")
    released = load_tensors(args.run / "model.safetensors")
    trained = load_tensors(latest / "model.safetensors")
    # a checkpoint holds the trainer's module: the released model's tensors, maybe under a prefix
    prefix = next((q for q in ("", f"{config['kind']}.") if all(q + k in trained for k in released)), None)
    if prefix is None:
        raise SystemExit(f"{latest}/model.safetensors: does not hold the tensors of {args.run}/model.safetensors")
    raw = {k: trained[prefix + k] for k in released}
    config = {k: v for k, v in config.items() if k not in ("files", "progress")}
    config["train"] = {**config["train"], "ema_decay": 0.0}
    step = int(json.loads((latest / "state.json").read_text())["step"])  # what the checkpoint records
    save_release(args.out, raw, config, step=step, steps=step)
    print(f"{latest.name}: {len(raw)} raw tensors -> {args.out}")


if __name__ == "__main__":
    main()
