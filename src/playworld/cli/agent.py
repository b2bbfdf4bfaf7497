"""`playworld agent bc|decode|eval`: agents from latent actions (see docs/agents.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from playworld.cli.threads import add_threads_argument

    p = sub.add_parser("agent", help="clone unlabeled video's behaviour in latent actions, decode them to real "
                       "actions from a few labels, and evaluate the agent in the real game")
    stages = p.add_subparsers(dest="agent_stage", metavar="STAGE", required=True)

    bc = stages.add_parser("bc", help="behaviour-clone the LAM's latent labels of a dataset (or, with --oracle, "
                           "its true actions) into a policy",
                           description="playworld agent bc RUN --data DIR --out AGENT_DIR\n"
                           "playworld agent bc --oracle --data DIR --out ORACLE_DIR   (every true label)\n"
                           "Re-running the same command resumes an interrupted run.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_argument("run", nargs="?", help="run whose LAM labels the data (not needed with --oracle)")
    bc.add_argument("--data", required=True, type=Path, help="dataset directory (its train split is cloned)")
    bc.add_argument("--out", required=True, type=Path, help="agent directory to write (or resume)")
    bc.add_argument("--oracle", action="store_true", help="clone the recorded true actions instead (oracle BC)")
    bc.add_argument("--context", type=int, default=2, help="frames the policy sees (default: %(default)s)")
    bc.add_argument("--channels", type=int, default=32, help="first conv width (default: %(default)s)")
    bc.add_argument("--steps", type=int, default=2000, help="optimiser steps (default: %(default)s)")
    bc.add_argument("--batch", type=int, default=64, help="transitions per step (default: %(default)s)")
    bc.add_argument("--lr", type=float, default=3e-4, help="learning rate (default: %(default)s)")
    bc.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    bc.add_argument("--checkpoint-every", type=int, default=500, help="steps between resume points "
                    "(default: %(default)s)")
    bc.add_argument("--max-episodes", type=int, default=None, help="read only the first N train episodes")
    bc.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add_threads_argument(bc)
    bc.set_defaults(func=run_bc)

    dec = stages.add_parser("decode", help="map the policy's latent actions to real actions from N labelled "
                            "transitions (0: by the run's action names)")
    dec.add_argument("agent_dir", type=Path)
    dec.add_argument("--data", required=True, type=Path, help="the dataset the agent was cloned on")
    dec.add_argument("--labels", type=int, required=True, help="N labelled transitions (0, 50, 200, 1000, ...)")
    dec.add_argument("--steps", type=int, default=500, help="optimiser steps of the head (default: %(default)s)")
    dec.add_argument("--seed", type=int, default=0, help="seed of the N transitions drawn (default: %(default)s)")
    dec.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add_threads_argument(dec)
    dec.set_defaults(func=run_decode)

    ev = stages.add_parser("eval", help="play the agent (every decoder) and baselines in the real Procgen game "
                           "on held-out levels")
    ev.add_argument("agent_dir", type=Path)
    ev.add_argument("--game", default="coinrun", help="Procgen game (default: %(default)s)")
    ev.add_argument("--episodes", type=int, default=16, help="episodes, one per held-out level (default: %(default)s)")
    ev.add_argument("--levels", choices=("held-out",), default="held-out",
                    help="level seeds the agent's data holds out of training (its test split by level seed)")
    ev.add_argument("--mode", default="hard", help="Procgen distribution mode (default: %(default)s)")
    ev.add_argument("--max-steps", type=int, default=1000, help="cut an episode after this many steps")
    ev.add_argument("--oracle", type=Path, help="an agent directory from `agent bc --oracle` to compare with")
    ev.add_argument("--no-baselines", action="store_true", help="skip random and behaviour policies")
    ev.add_argument("--greedy", action="store_true", help="take the policy's most likely action (default: sample)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the controllers (default: %(default)s)")
    add_threads_argument(ev)
    ev.set_defaults(func=run_eval)


def run_bc(args: argparse.Namespace) -> int:
    from playworld.agents.bc import BCConfig
    from playworld.agents.pipeline import clone
    from playworld.agents.policy import PolicyConfig
    from playworld.cli.threads import apply_threads
    from playworld.data.format import Dataset
    from playworld.errors import ConfigError

    apply_threads(args.threads)
    if args.oracle:
        k = Dataset(args.data).num_actions
        if k is None:
            raise ConfigError(f"{args.data}: records no action count; oracle BC needs true actions")
    else:
        if args.run is None:
            raise ConfigError("agent bc: give RUN (whose LAM labels the data), or --oracle")
        from playworld.api import load

        loaded = load(args.run)
        loaded.require("lam")
        k = int(loaded.lam.config.num_actions)  # type: ignore[union-attr]
    policy_cfg = PolicyConfig(num_actions=k, context=args.context, channels=args.channels,
                              target="true" if args.oracle else "latent")
    cfg = BCConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                   checkpoint_every=args.checkpoint_every)
    res = clone(args.run, args.data, args.out, policy_cfg, cfg, max_episodes=args.max_episodes,
                progress=args.progress)
    print(f"{res.out}: {res.steps_run} steps in {res.seconds:.1f} s, loss {res.final_loss:.3f}, "
          f"training-label accuracy {res.accuracy:.3f}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from playworld.agents.decode import DecoderConfig
    from playworld.agents.pipeline import decode
    from playworld.cli.threads import apply_threads

    apply_threads(args.threads)
    res = decode(args.agent_dir, args.data, DecoderConfig(labels=args.labels, steps=args.steps, seed=args.seed),
                 progress=args.progress)
    print(f"{res.path}: {res.how}; decodes the latent labels to the true action on {100 * res.accuracy:.1f}% "
          f"of the data's transitions ({res.seconds:.1f} s)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from playworld.agents.pipeline import EvalConfig, evaluate
    from playworld.cli.threads import apply_threads

    apply_threads(args.threads)
    cfg = EvalConfig(game=args.game, episodes=args.episodes, mode=args.mode, max_steps=args.max_steps,
                     seed=args.seed, greedy=args.greedy)
    evaluate(args.agent_dir, cfg, oracle=args.oracle, baselines=not args.no_baselines)
    print(f"wrote {args.agent_dir / 'eval.json'} and {args.agent_dir / 'eval.md'}")
    return 0
