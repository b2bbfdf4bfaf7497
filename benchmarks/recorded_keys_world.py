"""Would a world follow its keys if its actions *were* the keys? Fine-tunes a run's dynamics model for
``--steps`` steps on the recorded keys (merged into the game's distinguishable classes, one action id each)
and, as the control, for as many steps on its own LAM's latent actions (same data order, recipe and steps:
bf16 weights, lr 3e-4 with 20 warm-up steps and a cosine decay, the last 20% self-forced where the run's
config says so), then holds every action for 40 steps from 8 held-out starts at play's sampling and reports
what `playworld eval` does for held keys (docs/eval.md): key response and liveness against the real game's
motion under the mapped key, realism, and the consistency of 3 presses (keys the game cannot tell apart
count as one action). A third row plays the keys through the control world's latent actions: every step,
the latent action that the training data shows for the held key at the world's current scene velocity.

    .venv/bin/python benchmarks/recorded_keys_world.py runs/coinrun-small --data data/coinrun-mix \\
        --eval-data data/coinrun-eval --merge 0=1,3=4,6=7,9=4,10=4,11=4,12=4,13=4,14=4 --steps 500 \\
        --out runs/recorded-keys --threads 2

RUN holds tokenizer/, lam/ and dynamics/; OUT/recorded and OUT/latent are written as runs with the same
tokenizer and LAM (symlinked) and the fine-tuned dynamics model.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from playworld.models.dynamics import DynamicsModel
from playworld.release import load_into
from playworld.train.checkpoint import load_model, save_release
from playworld.train.engine import param_groups
from playworld.train.mixed import MasterWeights
from playworld.world import World


def fine_tune(run: Path, data: str, to_class: torch.Tensor | None, steps: int, out: Path, seed: int,
              action_cond: str = "") -> None:
    """Fine-tune RUN/dynamics on recorded key classes (``to_class``: key -> action id) or, if None, on the
    run's own latent actions; write OUT as a run. ``action_cond``: fine-tune with this
    ``dynamics.action_cond`` instead of the run's (its added parameters start at the identity)."""
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    tok, lam = load_model(run / "tokenizer", cpu).eval(), load_model(run / "lam", cpu).eval()
    dyn = load_model(run / "dynamics", cpu).train()
    if action_cond and action_cond != dyn.config.action_cond:
        source = dyn.state_dict()
        dyn = DynamicsModel(dataclasses.replace(dyn.config, action_cond=action_cond)).train()
        load_into(dyn, run / "dynamics", source, dyn.init_from_optional())
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
    frames = press_each_action(world, video[:8, :4], 40, 0, 16)  # (8, K, 41, H, W, C)
    return _figures(frames, clips, choice, mapping, classes, motion)


def _figures(frames: torch.Tensor, clips: ClipDataset, choice, mapping: dict[int, int], classes: np.ndarray,
             motion: MotionEstimator) -> str:
    """Held-key frames (S, K, 41, H, W, C) -> the table row's cells (the real game from ``choice``'s episodes)."""
    held = held_transitions(clips.dataset, [clips.locate(int(i))[0] for i in choice.rollout], 4, motion)
    real = held.reference(mapping, seed=0, resamples=1000)
    s = summarise(KeyCurves.measure(frames, motion), real, seed=0, resamples=1000)
    keys = sorted(mapping)
    sil = motion_silhouettes(action_motion(frames[:, keys, :4]), [int(classes[mapping[a]]) for a in keys])

    def cell(e) -> str:
        return "—" if e is None else f"{e.mean:.2f} [{e.low:.2f}, {e.high:.2f}]"

    fr = realism(held.frames, frames[:, :, 20:].numpy(), seed=0, resamples=1000)
    return (f"{cell(s.response['early'])} / {cell(s.response['late'])} / {cell(s.response['far'])} | "
            f"{cell(s.liveness['early'])} / {cell(s.liveness['late'])} / {cell(s.liveness['far'])} | "
            f"{sil.mean():.2f} | {cell(fr)}")


def speed_bucket(v: np.ndarray) -> np.ndarray:
    """Scene velocity (..., 2) (dy, dx) in px/frame -> one of 15 buckets (3 vertical x 5 horizontal)."""
    return np.digitize(v[..., 0], [-0.3, 0.3]) * 5 + np.digitize(v[..., 1], [-0.6, -0.2, 0.2, 0.6])


def keys_through_latents(run: Path, data: str, eval_data: str, split: str, classes: np.ndarray, kept: list[int],
                         episodes: int) -> str:
    """Play keys in the latent world: counts of p(latent | key class, scene velocity bucket) over ``episodes``
    training episodes (the LAM's latents, the recorded keys); each held key then samples, every step, the latent
    the data shows for it at the world's current velocity. The held-key figures of :func:`held_keys`."""
    world, motion = World.load(run), MotionEstimator()
    ds = ClipDataset(data, clip_len=2, split="train").dataset
    counts = np.full((len(kept), 15, world.num_actions), 0.1)
    with torch.no_grad():
        for ep in ds.episodes("train")[:episodes]:
            frames = torch.from_numpy(np.asarray(ds.frames(ep))).float()[None] / 255  # (1, L, H, W, C)
            latent = world.lam.infer_actions(frames)[0].numpy()  # (L-1,): t -> t+1
            speed = speed_bucket(motion(frames[0, :-2], frames[0, 1:-1]).numpy())  # (L-2,): frame i -> i+1
            keys = np.asarray(ds.actions(ep))
            for t in range(1, len(latent)):
                if keys[t] >= 0:
                    counts[classes[keys[t]], speed[t - 1], latent[t]] += 1
    p = counts / counts.sum(-1, keepdims=True)
    clips = ClipDataset(eval_data, clip_len=19, split=split)
    choice = choose_clips(clips, 16, 4, 0)
    prompts = clips.get_batch(choice.rollout.tolist())[:8, :4]
    rng = np.random.default_rng(0)
    out = []
    for c in range(len(kept)):
        frames = [world.reset(prompts, seed=0).cpu()]
        prev = prompts[:, -2].float() / 255
        for _ in range(40):
            cur = frames[-1].float() / 255
            rows = p[c, speed_bucket(motion(prev, cur).numpy())]  # (S, K)
            latent = torch.tensor([rng.choice(len(r), p=r) for r in rows])
            frames.append(world.step(latent).cpu())
            prev = cur
        out.append(torch.stack(frames, 1))
    held = torch.stack(out, 1)  # (S, classes, 41, H, W, C)
    return _figures(held, clips, choice, dict(enumerate(kept)), classes, motion)


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
    p.add_argument("--action-cond", default="", choices=["", "input", "adaln", "token"],
                   help="fine-tune with this dynamics.action_cond (default: the run's)")
    p.add_argument("--key-episodes", type=int, default=300,
                   help="training episodes counted for the keys-through-latents row (0: leave it out)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run, out, start = Path(args.run), Path(args.out), time.perf_counter()
    n_keys = ClipDataset(args.data, clip_len=2, split="train").dataset.num_actions
    if n_keys is None:
        raise SystemExit(f"{args.data}: no recorded keys")
    kept, classes = act.key_classes(args.merge, n_keys)
    num_actions = load_model(run / "lam", torch.device("cpu")).num_actions
    if len(kept) > num_actions:
        raise SystemExit(f"{len(kept)} key classes but the world has {num_actions} actions: merge more keys")
    rows = []
    for name, to_class, mapping in (("recorded", torch.from_numpy(classes), dict(enumerate(kept))),
                                    ("latent", None, None)):
        if not (out / name / "dynamics" / "model.safetensors").is_file():
            fine_tune(run, args.data, to_class, args.steps, out / name, args.seed, args.action_cond)
        rows.append(f"| {name} keys | " + held_keys(out / name, args.eval_data or args.data, args.split, mapping,
                                                   classes) + " |")
    if args.key_episodes:
        rows.append("| keys through latent actions (control world) | " + keys_through_latents(
            out / "latent", args.data, args.eval_data or args.data, args.split, classes, kept, args.key_episodes)
            + " |")
    print(f"{run}: dynamics fine-tuned {args.steps} steps on each; 8 starts x every action x 40 steps "
          f"({time.perf_counter() - start:.0f} s)")
    print("| actions | key response early / late / far | liveness early / late / far | consistency | realism |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
