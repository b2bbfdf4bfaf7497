"""`playworld agent bc|decode|train-in-world|train-real|eval`: agents from latent actions (see docs/agents.md)."""

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
                           "playworld agent bc --idm N --data DIR --out IDM_DIR   (keys from an inverse dynamics "
                           "model fit on N labels: the labelled baseline)\n"
                           "Re-running the same command resumes an interrupted run.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_argument("run", nargs="?", help="run whose LAM labels the data (not needed with --oracle)")
    bc.add_argument("--data", required=True, type=Path, help="dataset directory (its train split is cloned)")
    bc.add_argument("--out", required=True, type=Path, help="agent directory to write (or resume)")
    bc.add_argument("--oracle", action="store_true", help="clone the recorded true actions instead (oracle BC)")
    bc.add_argument("--idm", type=int, metavar="N", help="clone the keys of an inverse dynamics model fit on N "
                    "labelled transitions (the N `agent decode --labels N` reads; VPT's recipe) instead")
    bc.add_argument("--idm-steps", type=int, default=1500, help="optimiser steps of the inverse dynamics model "
                    "(default: %(default)s)")
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

    tw = stages.add_parser("train-in-world", help="PPO inside the learned world in latent actions, with a reward "
                           "head learned from the data's rewards (or your reward function of frames)",
                           description="playworld agent train-in-world RUN --data DIR --out DIR\n"
                           "playworld agent train-in-world RUN --reward-fn mymod:reward --out DIR\n"
                           "Re-running the same command resumes an interrupted run (more --steps continue it).",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    tw.add_argument("run", nargs="?", help="the world's run directory (default: the shipped CoinRun world)")
    tw.add_argument("--out", required=True, type=Path, help="agent directory to write (or resume)")
    tw.add_argument("--data", type=Path, help="dataset: start frames (its train split's level starts) and the "
                    "recorded rewards the default reward head learns from")
    tw.add_argument("--reward-fn", help="module:function (or file.py:function), fn(obs, action, next_obs) -> float "
                    "on uint8 (H, W, 3) frames, instead of the learned reward head")
    tw.add_argument("--reward-head", type=Path, help="a reward head directory already trained (OUT/reward-head of "
                    "another run)")
    tw.add_argument("--reward-episodes", type=int, default=300, help="train episodes the reward head learns from "
                    "(default: %(default)s)")
    tw.add_argument("--reward-steps", type=int, default=1500, help="optimiser steps of the reward head "
                    "(default: %(default)s)")
    tw.add_argument("--reward-threshold", type=float, help="balanced probability of a reward above which the "
                    "learned head pays (default: the head's own, 0.5 when trained here)")
    tw.add_argument("--end-on-reward", action=argparse.BooleanOptionalAction, default=None,
                    help="end an episode at its first positive reward, as CoinRun's coin does (default: on with "
                    "the reward head, off with --reward-fn)")
    tw.add_argument("--steps", type=int, default=4096, help="environment steps (default: %(default)s)")
    tw.add_argument("--num-envs", type=int, default=8, help="worlds stepped in one batch (default: %(default)s)")
    tw.add_argument("--episode-steps", type=int, default=64, help="latent actions per in-world episode "
                    "(default: %(default)s)")
    tw.add_argument("--epochs", type=int, default=4, help="PPO passes over each rollout (default: %(default)s)")
    tw.add_argument("--lr", type=float, default=2.5e-4, help="learning rate (default: %(default)s)")
    tw.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus (default: %(default)s)")
    tw.add_argument("--init", type=Path, help="start the policy from a latent-BC agent directory (`agent bc`)")
    tw.add_argument("--context", type=int, default=2, help="frames the policy sees (default: %(default)s)")
    tw.add_argument("--channels", type=int, default=32, help="first conv width (default: %(default)s)")
    tw.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    tw.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add_threads_argument(tw)
    tw.set_defaults(func=run_train_in_world)

    tr = stages.add_parser("train-real", help="PPO in the real Procgen game from frames to its 15 keys: an expert to "
                           "record video with (`collect procgen --policy agent --agent DIR`)",
                           description="playworld agent train-real --game starpilot --out DIR --steps 2000000\n"
                           "Trains on levels [--start-level, --start-level + --num-levels); `agent eval` plays it on "
                           "held-out levels below them.\n"
                           "Re-running the same command resumes an interrupted run exactly (more --steps continue it).",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--game", required=True, help="Procgen game")
    tr.add_argument("--out", required=True, type=Path, help="agent directory to write (or resume)")
    tr.add_argument("--mode", default="hard", help="Procgen distribution mode (default: %(default)s)")
    tr.add_argument("--start-level", type=int, default=10_000, help="first training level (default: %(default)s)")
    tr.add_argument("--num-levels", type=int, default=100_000, help="training levels (default: %(default)s)")
    tr.add_argument("--steps", type=int, default=1_000_000, help="game steps (default: %(default)s)")
    tr.add_argument("--num-envs", type=int, default=64, help="games stepped together (default: %(default)s)")
    tr.add_argument("--rollout-steps", type=int, default=128, help="steps of each game per iteration "
                    "(default: %(default)s)")
    tr.add_argument("--epochs", type=int, default=3, help="PPO passes over each rollout (default: %(default)s)")
    tr.add_argument("--lr", type=float, default=5e-4, help="learning rate (default: %(default)s)")
    tr.add_argument("--gamma", type=float, default=0.99, help="discount (default: %(default)s)")
    tr.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus (default: %(default)s)")
    tr.add_argument("--context", type=int, default=1, help="frames the policy sees (default: %(default)s)")
    tr.add_argument("--channels", type=int, default=16, help="first conv width (default: %(default)s)")
    tr.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add_threads_argument(tr)
    tr.set_defaults(func=run_train_real)

    ev = stages.add_parser("eval", help="play the agent (every decoder) and baselines in the real Procgen game "
                           "on held-out levels; an in-world agent also inside its world, beside the real return")
    ev.add_argument("agent_dir", type=Path)
    ev.add_argument("--game", default="coinrun", help="Procgen game (default: %(default)s)")
    ev.add_argument("--episodes", type=int, default=16, help="episodes, one per held-out level (default: %(default)s)")
    ev.add_argument("--levels", choices=("held-out",), default="held-out",
                    help="level seeds the agent's data holds out of training (its test split by level seed)")
    ev.add_argument("--mode", default="hard", help="Procgen distribution mode (default: %(default)s)")
    ev.add_argument("--max-steps", type=int, default=1000, help="cut an episode after this many steps")
    ev.add_argument("--oracle", type=Path, help="an agent directory from `agent bc --oracle` to compare with")
    ev.add_argument("--also", type=Path, action="append", default=[], metavar="AGENT_DIR",
                    help="another agent over true keys to play beside (`agent bc --idm`, `train-real`); repeatable")
    ev.add_argument("--no-baselines", action="store_true", help="skip random and behaviour policies")
    ev.add_argument("--greedy", action="store_true", help="take the policy's most likely action (default: sample)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the controllers (default: %(default)s)")
    ev.add_argument("--decoder", type=Path, help="in-world agents: the latent-BC agent directory whose decoder maps "
                    "latent actions to real ones")
    ev.add_argument("--labels", type=int, help="in-world agents: that decoder's N (default: the largest)")
    ev.add_argument("--in-world-episodes", type=int, default=32, help="in-world agents: episodes played inside "
                    "the world for the in-world return (default: %(default)s)")
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
    if args.oracle and args.idm is not None:
        raise ConfigError("agent bc: --oracle and --idm are two different baselines; give one")
    cfg = BCConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                   checkpoint_every=args.checkpoint_every)
    if args.oracle or args.idm is not None:
        k = Dataset(args.data).num_actions
        if k is None:
            raise ConfigError(f"{args.data}: records no action count; {'--oracle' if args.oracle else '--idm'} "
                              f"needs recorded keys")
        policy_cfg = PolicyConfig(num_actions=k, context=args.context, channels=args.channels, target="true")
        if args.idm is not None:
            from playworld.agents.idm import IDMConfig
            from playworld.agents.pipeline import clone_idm

            res = clone_idm(args.data, args.out, policy_cfg, cfg,
                            IDMConfig(labels=args.idm, steps=args.idm_steps, seed=args.seed),
                            max_episodes=args.max_episodes, progress=args.progress)
            _print_bc(res)
            _print_idm(res.out)
            return 0
    else:
        if args.run is None:
            raise ConfigError("agent bc: give RUN (whose LAM labels the data), --oracle or --idm N")
        from playworld.api import load

        loaded = load(args.run)
        loaded.require("lam")
        policy_cfg = PolicyConfig(num_actions=int(loaded.lam.config.num_actions),  # type: ignore[union-attr]
                                  context=args.context, channels=args.channels, target="latent")
    res = clone(args.run, args.data, args.out, policy_cfg, cfg, max_episodes=args.max_episodes,
                progress=args.progress)
    _print_bc(res)
    if not args.oracle:
        _warn_uninformative(res.out)
    return 0


def _print_bc(res) -> None:
    print(f"{res.out}: {res.steps_run} steps in {res.seconds:.1f} s, loss {res.final_loss:.3f}, "
          f"training-label accuracy {res.accuracy:.3f}")


def _print_idm(agent_dir: Path) -> None:
    """How well the agent's inverse dynamics model recovered the recorded keys (train and held-out)."""
    from playworld.agents.pipeline import IDM_FIGURES
    from playworld.errors import CheckpointError
    from playworld.io import read_json

    figures = read_json(agent_dir / IDM_FIGURES, CheckpointError, "IDM figures")
    for split in ("train", "held_out"):
        f = figures.get(split)
        if f:
            print(f"{agent_dir}: inverse dynamics on {figures['config']['labels']} labels, {split.replace('_', '-')} "
                  f"split: key accuracy {f['accuracy']:.3f} (majority key {f['majority']:.3f}), NMI with the "
                  f"recorded keys {f['nmi']:.3f} over {f['transitions']} transitions")


def run_decode(args: argparse.Namespace) -> int:
    from playworld.agents.decode import DecoderConfig
    from playworld.agents.pipeline import decode
    from playworld.cli.threads import apply_threads

    apply_threads(args.threads)
    res = decode(args.agent_dir, args.data, DecoderConfig(labels=args.labels, steps=args.steps, seed=args.seed),
                 progress=args.progress)
    print(f"{res.path}: {res.how}; decodes the latent labels to the true action on {100 * res.accuracy:.1f}% "
          f"of the data's transitions ({res.seconds:.1f} s)")
    _warn_uninformative(args.agent_dir)
    return 0


def _warn_uninformative(agent_dir: Path) -> None:
    """Print the latent labels' NMI with the recorded keys, and a warning when it is too low to decode."""
    import sys

    from playworld.agents.pipeline import label_warning
    from playworld.agents.policy import POLICY_CONFIG
    from playworld.errors import CheckpointError
    from playworld.io import read_json

    info = read_json(agent_dir / POLICY_CONFIG, CheckpointError, "policy config").get("label_nmi")
    if info is not None:
        print(f"{agent_dir}: the latent labels' NMI with the recorded keys is {info:.3f}")
    warning = label_warning(info)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)


def run_train_in_world(args: argparse.Namespace) -> int:
    from playworld.agents.inworld import train_in_world
    from playworld.agents.ppo import PPOConfig
    from playworld.agents.reward import RewardHeadConfig
    from playworld.cli.threads import apply_threads

    apply_threads(args.threads)
    end_on_reward = args.reward_fn is None if args.end_on_reward is None else args.end_on_reward
    cfg = PPOConfig(steps=args.steps, num_envs=args.num_envs, episode_steps=args.episode_steps, epochs=args.epochs,
                    lr=args.lr, ent_coef=args.ent_coef, end_on_reward=end_on_reward, seed=args.seed)
    head_cfg = RewardHeadConfig(steps=args.reward_steps)
    res = train_in_world(args.run, args.out, cfg, data=args.data, reward_fn=args.reward_fn,
                         reward_head=args.reward_head, head_cfg=head_cfg,
                         reward_episodes=args.reward_episodes, reward_threshold=args.reward_threshold, context=args.context, channels=args.channels,
                         init=args.init, progress=args.progress)
    h = res.ppo.history
    if h:
        print(f"{res.out}: {h[-1]['step']} env steps ({res.ppo.iterations_run} iterations now, "
              f"{res.ppo.seconds:.1f} s); in-world return {h[0]['return']:.2f} (first) -> {h[-1]['return']:.2f} (last)")
    return 0


def run_train_real(args: argparse.Namespace) -> int:
    from playworld.agents.policy import PolicyConfig
    from playworld.agents.realppo import RealPPOConfig, train_real
    from playworld.cli.threads import apply_threads
    from playworld.data.policies import NUM_ACTIONS
    from playworld.train.logger import MetricsLogger

    apply_threads(args.threads)
    cfg = RealPPOConfig(game=args.game, distribution_mode=args.mode, start_level=args.start_level,
                        num_levels=args.num_levels, steps=args.steps, num_envs=args.num_envs,
                        rollout_steps=args.rollout_steps, epochs=args.epochs, lr=args.lr, gamma=args.gamma,
                        ent_coef=args.ent_coef, seed=args.seed)
    policy_cfg = PolicyConfig(num_actions=NUM_ACTIONS, context=args.context, channels=args.channels, target="true")
    log = MetricsLogger(args.out)
    try:
        res = train_real(cfg, policy_cfg, args.out, progress=args.progress, log=log)
    finally:
        log.close()
    done = [h for h in res.history if h["episodes"]]
    if done:
        print(f"{res.out}: {res.history[-1]['step']} game steps ({res.iterations_run} iterations now, "
              f"{res.seconds:.1f} s); episode return {done[0]['return']:.2f} (first) -> {done[-1]['return']:.2f} "
              f"(last)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from playworld.agents.inworld import KIND, evaluate_in_world
    from playworld.agents.pipeline import EvalConfig, evaluate
    from playworld.agents.policy import load_policy
    from playworld.cli.threads import apply_threads
    from playworld.errors import ConfigError

    apply_threads(args.threads)
    cfg = EvalConfig(game=args.game, episodes=args.episodes, mode=args.mode, max_steps=args.max_steps,
                     seed=args.seed, greedy=args.greedy)
    if load_policy(args.agent_dir)[1].get("kind") == KIND:
        if args.decoder is None:
            raise ConfigError(f"{args.agent_dir}: an in-world agent acts in latent actions; give --decoder "
                              f"AGENT_DIR (a latent-BC agent with `agent decode` decoders)")
        evaluate_in_world(args.agent_dir, cfg, args.decoder, labels=args.labels,
                          in_world_episodes=args.in_world_episodes)
    else:
        evaluate(args.agent_dir, cfg, oracle=args.oracle, also=args.also, baselines=not args.no_baselines)
    print(f"wrote {args.agent_dir / 'eval.json'} and {args.agent_dir / 'eval.md'}")
    return 0
