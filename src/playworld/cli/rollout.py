"""`playworld rollout`: play a fixed action string from a picture or a dataset frame into a video."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from typing import get_args

    from playworld.cli.threads import add_threads_argument
    from playworld.config import Precision

    p = sub.add_parser(
        "rollout", help="play an action string in a trained world from a picture or dataset frame, to a video",
        description="playworld rollout RUN --prompt start.png --actions 1,1,3 --out clip.mp4\n"
        "playworld rollout RUN --prompt data/coinrun-demo --episode 3 --frame 10 --actions right,right --out c.gif\n"
        "playworld rollout --actions right,right,jump --out c.gif   (the shipped world and its start frames)\n"
        "Actions are numbered from 1 as the keys of `playworld play` (1 = latent action 0), or named "
        "when the run has action_names.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run directory with tokenizer/, lam/ and dynamics/ "
                   "(default: the world shipped with the package, as `playworld play`)")
    p.add_argument("--prompt", "--image", dest="prompt",
                   help="a picture file (any format Pillow reads) or a dataset directory (default: RUN/prompts, "
                   "the start frames a run ships, as the shipped world does)")
    p.add_argument("--episode", type=int, default=0, help="dataset prompt: episode index (default: %(default)s)")
    p.add_argument("--frame", type=int, default=0, help="dataset prompt: frame index (default: %(default)s)")
    p.add_argument("--prompt-frames", type=int, default=1,
                   help="dataset prompt: frames of context ending at --frame (default: %(default)s)")
    p.add_argument("--actions", required=True, help="e.g. 1,1,3,2 (1-based) or right,right,jump")
    p.add_argument("--out", required=True, help="video to write (.mp4 or .gif)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--fit", choices=("crop", "pad"), default="crop", help="fit a picture by center-crop or pad")
    p.add_argument("--steps", type=int, default=None,
                   help="MaskGIT steps per frame (default: as `playworld play` for this world: its play_setting.json, "
                   "else 1; see docs/play.md)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0 = greedy (default: as `playworld play` for this world, else 0)")
    p.add_argument("--copy-penalty", type=float, default=None,
                   help="logit taken from each place's previous token before sampling (default: as `playworld "
                   "play` for this world, else 2)")
    p.add_argument("--action-guidance", type=float, default=None,
                   help="1 = off; g > 1 amplifies what the pressed latent action changes against the action-free "
                   "prediction (each step's pass runs on 2 copies of the batch for a model trained with action "
                   "dropout, else |A| + 1; default: as `playworld play` for this world, else 1)")
    p.add_argument("--precision", choices=get_args(Precision), default="fp32",
                   help="dtype of the dynamics model and decoder (auto: bf16 where faster) (default: %(default)s)")
    p.add_argument("--fps", type=float, default=15.0, help="video frame rate (default: %(default)s)")
    p.add_argument("--scale", type=int, default=4, help="enlarge each pixel in the video (default: %(default)s)")
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from playworld.api import resolve_run, run_prompts
    from playworld.cli.threads import apply_threads
    from playworld.errors import ConfigError
    from playworld.play.actions import load_action_names, parse_action_string
    from playworld.play.prompts import DatasetPrompts, fit_frames, read_image, world_frame_size
    from playworld.play.rollout import rollout_to_video
    from playworld.play_setting import world_sampling
    from playworld.world import World, WorldConfig

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ConfigError(f"--out {out}: use a .mp4 or .gif file name")
    if args.scale < 1 or args.fps <= 0 or args.prompt_frames < 1:
        raise ConfigError("--scale and --prompt-frames must be >= 1 and --fps > 0")
    apply_threads(args.threads)
    run_dir = resolve_run(args.run)
    if args.prompt is None:
        shipped = run_prompts(run_dir)
        if shipped is None:
            raise ConfigError(f"{run_dir}: no --prompt given and the run ships no start frames in "
                              f"{run_dir / 'prompts'}; pass --prompt PICTURE or --prompt DATASET_DIR")
        args.prompt = str(shipped)
    sampling = world_sampling(run_dir, steps=args.steps, temperature=args.temperature,
                              copy_penalty=args.copy_penalty, action_guidance=args.action_guidance)
    world = World.load(run_dir, WorldConfig(sampling=sampling), precision=args.precision, threads=args.threads)
    actions = parse_action_string(args.actions, world.num_actions, load_action_names(run_dir, world.num_actions))
    prompt_path, size = Path(args.prompt), world_frame_size(world)
    if prompt_path.is_dir():
        clip = DatasetPrompts(prompt_path, args.prompt_frames).frame(args.episode, args.frame)
        prompt = fit_frames(clip, size, args.fit)
    else:
        prompt = read_image(prompt_path, size, args.fit)
    rollout_to_video(world, prompt, actions, out, seed=args.seed, fps=args.fps, scale=args.scale)
    print(f"{len(actions)} actions from {prompt_path} -> {1 + len(actions)} frames in {out}")
    return 0
