"""Motion and liveness of a trained world, beside copy-last and the real game (docs/eval.md, "Motion
and liveness"): motion kept by the tokenizer and by teacher-forced dynamics, key response and pixel
change of every latent action held for ``--steps`` steps (early 2-8, late 20-30, far = the last 10),
liveness, and the Fréchet realism of frames from step 20 on. Copy-last is a world that returns its
input: motion 0, liveness 0. The real game: its recorded episodes, true actions held 4+ frames.

    .venv/bin/python benchmarks/motion.py src/playworld/assets/coinrun --data data/coinrun-eval --split test \\
        --episodes 16 --starts 8 --steps 100 --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from playworld.api import resolve_run
from playworld.data.loader import ClipDataset
from playworld.eval import actions as act
from playworld.eval.clips import choose_clips
from playworld.eval.control import press_each_action
from playworld.eval.kept import motion_kept
from playworld.eval.keys import KeyCurves, summarise, windows
from playworld.eval.motion import MotionEstimator
from playworld.eval.realgame import held_transitions
from playworld.eval.realism import real_floor, realism
from playworld.eval.rollouts import reconstruct, teacher_forced
from playworld.eval.stats import Estimate
from playworld.play_setting import world_sampling
from playworld.world import World, WorldConfig


class CopyLast:
    """A world that returns its input: every step gives back the last prompt frame."""

    def __init__(self, world: World) -> None:
        self.tokenizer, self.lam, self.num_actions = world.tokenizer, world.lam, world.num_actions
        self.last: torch.Tensor | None = None

    def reset(self, prompt: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        self.last = prompt[:, -1].clone()
        return self.last

    def step(self, actions: torch.Tensor) -> torch.Tensor:
        assert self.last is not None
        return self.last


def _cell(e: Estimate | float | None) -> str:
    if e is None:
        return "—"
    if isinstance(e, Estimate):
        return f"{e.mean:7.3f} [{e.low:.3f}, {e.high:.3f}]"
    return f"{e:7.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory with tokenizer/, lam/ and dynamics/")
    p.add_argument("--data", required=True, help="dataset with recorded true actions (used for evaluation only)")
    p.add_argument("--split", default="test")
    p.add_argument("--episodes", type=int, default=16, help="held-out episodes (teacher forcing, real reference)")
    p.add_argument("--clip-len", type=int, default=19, help="frames per clip (eval's default: 4 context + 15)")
    p.add_argument("--action-clips", type=int, default=4, help="clips per episode for the latent -> true mapping "
                   "(eval's default, so the same clips and mapping as `playworld eval`)")
    p.add_argument("--context", type=int, default=4, help="real context frames before each teacher-forced step")
    p.add_argument("--starts", type=int, default=8, help="start frames of the held-key rollouts")
    p.add_argument("--steps", type=int, default=100, help="steps each key is held (>= 30)")
    p.add_argument("--hold", type=int, default=4, help="frames a true action is held for the real reference")
    p.add_argument("--maskgit-steps", type=int, default=None, help="default: play's for this world")
    p.add_argument("--temperature", type=float, default=None, help="default: play's for this world")
    p.add_argument("--copy-penalty", type=float, default=None, help="logit taken from each place's previous "
                   "token before sampling (default: play's for this world)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    world = World.load(args.run, WorldConfig(sampling=world_sampling(
        resolve_run(args.run), steps=args.maskgit_steps, temperature=args.temperature,
        copy_penalty=args.copy_penalty)))
    sampling = world.config.sampling
    args.maskgit_steps, args.temperature, args.copy_penalty = sampling.steps, sampling.temperature, \
        sampling.copy_penalty
    copy = CopyLast(world)
    motion = MotionEstimator()
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    choice = choose_clips(clips, args.episodes, args.action_clips, args.seed)
    chosen = choice.rollout
    video = clips.get_batch(chosen.tolist())  # (N, T, H, W, C) uint8
    unit = video.float() / 255
    n, c = len(video), args.context
    boot = {"seed": args.seed, "resamples": args.bootstrap}

    # motion kept: tokenizer reconstructions, teacher-forced steps (world and copy-last) against the real shift
    with torch.no_grad():
        rec = torch.cat([reconstruct(world.tokenizer, unit[s:s + args.batch]) for s in range(0, n, args.batch)])
        latent = torch.cat([world.lam.infer_actions(unit[s:s + args.batch]).long() for s in range(0, n, args.batch)])
        real_shift = motion(unit[:, :-1], unit[:, 1:]).numpy()  # (N, T-1, 2)
        groups = np.repeat(np.arange(n), real_shift.shape[1])
        tok = motion_kept(motion(rec[:, :-1], rec[:, 1:]).numpy().reshape(-1, 2), real_shift.reshape(-1, 2),
                          groups, **boot)
        tf_real = real_shift[:, c - 1:].reshape(-1, 2)
        tf_groups = np.repeat(np.arange(n), real_shift.shape[1] - c + 1)
        kept = {}
        for name, w in (("world", world), ("copy-last", copy)):
            pred = torch.cat([teacher_forced(w, video[s:s + args.batch], latent[s:s + args.batch], c, args.seed)
                              for s in range(0, n, args.batch)]).float() / 255
            kept[name] = motion_kept(motion(unit[:, c - 1:-1], pred).numpy().reshape(-1, 2), tf_real, tf_groups, **boot)

    # the latent -> true mapping and the real game's held-action motion on the same episodes
    with torch.no_grad():
        mapped = choice.action
        lat = torch.cat([world.lam.infer_actions(clips.get_batch(mapped[s:s + args.batch].tolist()).float() / 255)
                         for s in range(0, len(mapped), args.batch)]).long().numpy()  # (M, T-1)
    true = np.stack([clips.clip_actions(int(i))[:-1] for i in mapped])  # (M, T-1)
    valid = true >= 0
    mapping, accuracy = act.best_mapping(act.confusion(lat[valid], true[valid], world.num_actions,
                                                       clips.dataset.num_actions))
    episodes = [clips.locate(int(i))[0] for i in chosen]
    held = held_transitions(clips.dataset, episodes, args.hold, motion)
    real = held.reference(mapping, **boot)

    # held keys
    prompts = video[:args.starts, :c]
    rows: dict[str, list] = {}
    first = windows(args.steps)["late"][0]
    for name, w in (("world", world), ("copy-last", copy)):
        frames = press_each_action(w, prompts, args.steps, args.seed, args.batch)  # (S, K, 1+L, H, W, C)
        s = summarise(KeyCurves.measure(frames, motion), real, **boot)
        rows.setdefault("tokenizer motion kept dy / dx", []).append(
            f"{_cell(tok.slope['dy'])} / {_cell(tok.slope['dx'])}" if name == "world" else "1 / 1 (its input)")
        k = kept[name]
        rows.setdefault("dynamics motion kept dy / dx (teacher-forced)", []).append(
            f"{_cell(k.slope['dy'])} / {_cell(k.slope['dx'])}")
        for win in ("early", "late", "far"):
            rows.setdefault(f"key response {win}", []).append(_cell(s.response[win]))
        for win in ("early", "late", "far"):
            rows.setdefault(f"liveness {win}", []).append(_cell(s.liveness[win]))
        for win in ("early", "late", "far"):
            rows.setdefault(f"pixel change / step {win}", []).append(_cell(s.change[win]))
        rows.setdefault(f"realism Fréchet (steps {first}-{args.steps})", []).append(
            _cell(realism(held.frames, frames[:, :, first:].numpy(), **boot)))
    moving = sorted(a for a, r in real.items() if np.linalg.norm(r.vector) >= 0.25)
    real_change = np.mean([real[a].change.mean for a in real]) if real else None
    rows["tokenizer motion kept dy / dx"].append("1 / 1")
    rows["dynamics motion kept dy / dx (teacher-forced)"].append("1 / 1")
    for win in ("early", "late", "far"):
        rows[f"key response {win}"].append("1" if moving else "—")
        rows[f"liveness {win}"].append("1" if real else "—")
        rows[f"pixel change / step {win}"].append(_cell(real_change))
    rows[f"realism Fréchet (steps {first}-{args.steps})"].append(
        _cell(real_floor(held.frames, held.frame_episode)) + " (even vs odd episodes)")

    print(f"{args.run} on {args.data}:{args.split}: {n} episodes, {args.starts} starts x {world.num_actions} keys x "
          f"{args.steps} steps, MaskGIT {args.maskgit_steps} steps at temperature {args.temperature}, copy penalty "
          f"{args.copy_penalty}; "
          f"mapping accuracy {accuracy:.3f}; {time.perf_counter() - start:.0f} s")
    print("\n| figure | world | copy-last | real game |\n|---|---|---|---|")
    for key, cells in rows.items():
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\n| latent -> true | real dy, dx (px/frame) | real change | transitions |\n|---|---|---|---|")
    for latent, r in sorted(real.items()):
        print(f"| {latent} -> {r.action} | {r.dy.mean:+.2f}, {r.dx.mean:+.2f} | {r.change.mean:.2f} | {r.transitions} |")


if __name__ == "__main__":
    main()
