"""What self-forcing (``dynamics.self_forcing``) adds to a dynamics training step.

A dynamics model of a preset (random weights: the cost does not depend on them) and a random batch of
token clips. Timed, interleaved round by round so that load from other jobs falls on all alike (process
CPU time, median over rounds): one training step without self-forcing (forward and backward); the
model's own prefix of k frames as training decodes it (:meth:`DynamicsModel.free_run`, against a
temporal KV cache, as play steps); and, as the baseline it replaced, the same greedy prefix decoded with
one full forward pass of the growing clip per frame (argmax alone: the copy penalty's scatter, which
free_run adds, is 0.3% of a frame). Ratios are to the training step.

    .venv/bin/python benchmarks/self_forcing.py [--preset small] [--frames 1 3 6] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from playworld.models.dynamics import DynamicsModel
from playworld.presets import build_run_config


def full_pass_prefix(model: DynamicsModel, tokens: Tensor, frame_actions: Tensor, frames: int) -> Tensor:
    """The baseline: frames 2..frames+1 decoded greedily, each with a full forward pass of the clip so far."""
    out = tokens.clone()
    with torch.no_grad():
        for j in range(1, frames + 1):
            clip = out[:, : j + 1].clone()
            clip[:, j] = model.mask_id
            out[:, j] = model(clip, frame_actions[:, : j + 1])[:, j].argmax(-1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 3, 6], help="prefix lengths k to time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = build_run_config("dynamics", args.preset, data_path=".", overrides=[])
    cfg, data = run.model, run.data
    if not all(0 < k < data.clip_len for k in args.frames):
        parser.error(f"--frames must be in [1, {data.clip_len - 1}] for the {args.preset} preset's clips")
    torch.manual_seed(0)
    model = DynamicsModel(cfg).train()
    b, t = data.batch_size, data.clip_len
    tokens = torch.randint(0, cfg.vocab_size, (b, t, cfg.num_tokens))
    actions = torch.randint(0, cfg.num_actions, (b, t - 1))
    fa = model.frame_actions(actions)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model.compute_loss_tokens(tokens, actions).loss.backward()

    jobs = {"training step (no self-forcing)": train_step}
    for k in args.frames:
        jobs[f"prefix of {k}, KV-cached (free_run)"] = lambda k=k: model.free_run(tokens, fa, k)
        jobs[f"prefix of {k}, a full pass per frame"] = lambda k=k: full_pass_prefix(model, tokens, fa, k)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, job in jobs.items():
            start = time.process_time()
            job()
            times[name].append(time.process_time() - start)
    base = statistics.median(times["training step (no self-forcing)"])
    print(f"{args.preset} preset, batch {b} x {t} frames x {cfg.num_tokens} tokens, fp32, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds (process CPU time)")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:40s} {med:7.2f} s  ({med / base:.2f}x the training step)")


if __name__ == "__main__":
    main()
