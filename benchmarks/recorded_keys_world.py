"""Would a world follow its keys if its actions *were* the keys? Fine-tunes a run's dynamics model for
``--steps`` steps on the recorded keys (merged into the game's distinguishable classes, one action id each)
and, as the control, for as many steps on its own LAM's latent actions (same data order, recipe and steps:
bf16 weights, lr 3e-4 with 20 warm-up steps and a cosine decay, the last 20% self-forced where the run's
config says so), then holds every action for 40 steps from 8 held-out starts at play's sampling and reports
what `playworld eval` does for held keys (docs/eval.md): key response and liveness against the real game's
motion under the mapped key, realism, and the consistency of 3 presses (keys the game cannot tell apart
count as one action).

    .venv/bin/python benchmarks/recorded_keys_world.py runs/coinrun-small --data data/coinrun-mix \\
        --eval-data data/coinrun-eval --merge 0=1,3=4,6=7,9=4,10=4,11=4,12=4,13=4,14=4 --steps 500 \\
        --out runs/recorded-keys --threads 2

RUN holds tokenizer/, lam/ and dynamics/; OUT/recorded and OUT/latent are written as runs with the same
tokenizer and LAM (symlinked) and the fine-tuned dynamics model.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from playworld.config import to_dict
from playworld.data.loader import ClipDataset, ClipLoader
from playworld.eval import actions as act
from playworld.eval.clips import choose_clips
from playworld.eval.control import action_motion, motion_silhouettes, press_each_action
from playworld.eval.keys import KeyCurves, summarise
from playworld.eval.motion import MotionEstimator
from playworld.eval.realgame import held_transitions
from playworld.eval.realism import realism
from playworld.models.base import to_unit
from playworld.train.checkpoint import load_model, save_release
from playworld.train.engine import param_groups
from playworld.train.mixed import MasterWeights
from playworld.world import World


def fine_tune(run: Path, data: str, to_class: torch.Tensor | None, steps: int, out: Path, seed: int) -> None:
    """Fine-tune RUN/dynamics on recorded key classes (``to_class``: key -> action id) or, if None, on the
    run's own latent actions; write OUT as a run."""
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    tok, lam = load_model(run / "tokenizer", cpu).eval(), load_model(run / "lam", cpu).eval()
    dyn = load_model(run / "dynamics", cpu).train()
    masters = MasterWeights(dyn)  # bf16 weights, fp32 masters (train.precision=bf16-weights)
    opt = torch.optim.AdamW(masters.optimizer_groups(param_groups(dyn, 0.05)), lr=3e-4, betas=(0.9, 0.95))
    loader = ClipLoader(data, clip_len=8, batch_size=8, seed=seed)
    clips = loader.clips
    for step, idx in zip(range(steps), loader.index_batches()):
        video = to_unit(clips.get_batch(idx))
        with torch.no_grad():
            tokens = rearrange(tok.encode(video).indices, "b t h w -> b t (h w)")
            if to_class is None:
                actions = lam.infer_actions(video)
            else:
                keys = torch.from_numpy(np.stack([clips.clip_actions(i) for i in idx]))[:, :-1]
                actions = to_class[keys.clamp_min(0)]  # (B, T-1)
        lr = 3e-4 * min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        dyn.set_progress(step, steps)
        loss = dyn.compute_loss_tokens(tokens, actions).loss
        opt.zero_grad()
        dyn.zero_grad()
        loss.backward()
        masters.grads_to_masters()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        masters.masters_to_weights()
    out.mkdir(parents=True, exist_ok=True)
    for dep in ("tokenizer", "lam"):
        if not (out / dep).exists():
            (out / dep).symlink_to((run / dep).resolve())
    save_release(out / "dynamics", dyn.state_dict(), {"kind": "dynamics", "model": to_dict(dyn.config)})


def held_keys(run: Path, data: str, split: str, mapping: dict[int, int] | None, classes: np.ndarray) -> str:
    """The held-key figures of world ``run``; ``mapping`` action -> key, or None to map by its LAM."""
    world = World.load(run)
    motion = MotionEstimator()
    clips = ClipDataset(data, clip_len=19, split=split)
    choice = choose_clips(clips, 16, 4, 0)
    video = clips.get_batch(choice.rollout.tolist())
    if mapping is None:
        with torch.no_grad():
            lat = torch.cat([world.lam.infer_actions(clips.get_batch(choice.action[s:s + 16].tolist()).float() / 255)
                             for s in range(0, len(choice.action), 16)]).long().numpy()
        true = np.stack([clips.clip_actions(int(i))[:-1] for i in choice.action])
        ok = true >= 0
        mapping, _ = act.best_mapping(act.confusion(lat[ok], true[ok], world.num_actions, clips.dataset.num_actions))
    held = held_transitions(clips.dataset, [clips.locate(int(i))[0] for i in choice.rollout], 4, motion)
    real = held.reference(mapping, seed=0, resamples=1000)
    frames = press_each_action(world, video[:8, :4], 40, 0, 16)  # (8, K, 41, H, W, C)
    s = summarise(KeyCurves.measure(frames, motion), real, seed=0, resamples=1000)
    keys = sorted(mapping)
    sil = motion_silhouettes(action_motion(frames[:, keys, :4]), [int(classes[mapping[a]]) for a in keys])

    def cell(e) -> str:
        return "—" if e is None else f"{e.mean:.2f} [{e.low:.2f}, {e.high:.2f}]"

    fr = realism(held.frames, frames[:, :, 20:].numpy(), seed=0, resamples=1000)
    return (f"{cell(s.response['early'])} / {cell(s.response['late'])} / {cell(s.response['far'])} | "
            f"{cell(s.liveness['early'])} / {cell(s.liveness['late'])} / {cell(s.liveness['far'])} | "
            f"{sil.mean():.2f} | {cell(fr)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", required=True, help="training data with recorded keys")
    p.add_argument("--eval-data", default="", help="data whose held-out split is measured (default: --data)")
    p.add_argument("--split", default="test")
    p.add_argument("--merge", default="", metavar="A=B,...", help="count key A as key B")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--out", default="runs/recorded-keys")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run, out, start = Path(args.run), Path(args.out), time.perf_counter()
    n_keys = ClipDataset(args.data, clip_len=2, split="train").dataset.num_actions
    if n_keys is None:
        raise SystemExit(f"{args.data}: no recorded keys")
    merge = {int(a): int(b) for a, b in (kv.split("=") for kv in args.merge.split(",") if kv)}
    kept = sorted({merge.get(a, a) for a in range(n_keys)})
    classes = np.array([kept.index(merge.get(a, a)) for a in range(n_keys)])
    num_actions = load_model(run / "lam", torch.device("cpu")).num_actions
    if len(kept) > num_actions:
        raise SystemExit(f"{len(kept)} key classes but the world has {num_actions} actions: merge more keys")
    rows = []
    for name, to_class, mapping in (("recorded", torch.from_numpy(classes), dict(enumerate(kept))),
                                    ("latent", None, None)):
        if not (out / name / "dynamics" / "model.safetensors").is_file():
            fine_tune(run, args.data, to_class, args.steps, out / name, args.seed)
        rows.append(f"| {name} keys | " + held_keys(out / name, args.eval_data or args.data, args.split, mapping,
                                                   classes) + " |")
    print(f"{run}: dynamics fine-tuned {args.steps} steps on each; 8 starts x every action x 40 steps "
          f"({time.perf_counter() - start:.0f} s)")
    print("| actions | key response early / late / far | liveness early / late / far | consistency | realism |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
