"""Play-server throughput: frames/s for 1, 4 and 16 concurrent players over real WebSockets, against
single-session ``World.step`` (in fp32 too, when --precision picks bf16) and one batched ``World`` of N (the
bound for stacking sessions) in the same run.

    .venv/bin/python benchmarks/play.py [--run RUN | --preset tiny|small] [--sessions 1 4 16] [--seconds 5]
        [--against RUN]

Each player connects to a `playworld play` server (uvicorn in a thread of this process), starts from a
random picture and presses keys with one step in flight, as the page does; the server takes the steps
of all players in one batched pass per tick. Reported: aggregate frames/s, per-player frames/s, mean
round-trip ms and the largest batch the scheduler formed. Then one player pressing keys back to back,
and holding a key (at most --key-rate keys/s, as key repeat does), with the server replying before it
commits each frame to the model's memory (its default) and after: frames/s and ms from key to frame.
Last, the same players against `playworld play` started in a process of its own (as a browser sees
it; trained runs only). Default model: the shipped CoinRun world, in the dtype `playworld play` picks
(--precision); --preset gives random weights of a preset (speed only). Also printed: fp32 against
that dtype stepped alternately, and a session's snapshot size and undo time; with --against RUN, that
run's world and this one stepped alternately (the same machine drift for both).

    .venv/bin/python benchmarks/play.py --contention [--load 1] [--rounds 4] [--seconds 2]

measures only one session's frames/s quiet and beside --load busy processes, for torch threads 1 and 2
and OpenMP wait policies, as loaded/quiet ratios (benchmarks/contention.py; docs/play.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import socket
import threading
import time

import numpy as np
import torch
from PIL import Image

from playworld.errors import ConfigError
from playworld.play.config import PlayConfig
from playworld.play.scheduler import StepScheduler
from playworld.play.server import PlayServer
from playworld.precision import PRECISIONS, cast_for_play, resolve_precision
from playworld.threads import resolve_threads, usable_cores
from playworld.world import World, WorldConfig


def sampling_flags(args: argparse.Namespace) -> list[str]:
    """The sampling flags given on this command line, for `playworld play` or a worker process (each
    takes its world's play setting for the rest, as this process does)."""
    flags = [("--steps", args.steps), ("--action-guidance", args.action_guidance)]
    return [a for flag, value in flags if value is not None for a in (flag, str(value))]


def models(args: argparse.Namespace):
    if args.preset is None:
        from playworld.api import resolve_run

        args.run = str(resolve_run(args.run))
    if args.run:
        from playworld.api import load

        run = load(args.run)
        run.require("tokenizer", "lam", "dynamics")
        return run.tokenizer, run.lam, run.dynamics
    from generation import build_world  # benchmarks/generation.py: preset-sized random models

    w = build_world(args.preset, args.steps or 1, args.context)
    return w.tokenizer, w.lam, w.dynamics


def world_fps(mods, cfg: WorldConfig, batch: int, seconds: float) -> float:
    """Frames/s of one World of ``batch`` worlds stepping back to back (frames = batch x steps)."""
    side = mods[0].config.image_size
    w = World(*mods, cfg)
    w.reset(torch.randint(0, 256, (side, side, 3), dtype=torch.uint8), seed=0, batch_size=batch)
    w.step(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        w.step(n % w.num_actions)
        n += 1
    return batch * n / (time.perf_counter() - t0)


def interleaved_ms(a_mods, b_mods, cfg: WorldConfig, steps: int = 100) -> tuple[float, float]:
    """Median ms per frame of two worlds stepped alternately (so the machine's drift hits both alike)."""
    side = a_mods[0].config.image_size
    prompt = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8)
    worlds = [World(*m, cfg) for m in (a_mods, b_mods)]
    times: list[list[float]] = [[], []]
    for w in worlds:
        w.reset(prompt, seed=0)
        w.step(0)
    for i in range(steps):
        for w, t in zip(worlds, times):
            t0 = time.perf_counter()
            w.step(i % w.num_actions)
            t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[0])), 1000 * float(np.median(times[1]))


def undo_figures(mods, cfg: WorldConfig, checkpoint_every: int, played: int = 64,
                 undos: int = 20) -> tuple[float, float, float, float]:
    """A session of the world: snapshot MB and ms, then mean and largest ms of ``undos`` undos after
    ``played`` steps, a full history (each undo restores the last snapshot and replays the actions since;
    a snapshot every 64 actions is how the first version undid: from the start of the history)."""
    from playworld.play.config import SessionLimits
    from playworld.play.session import Session, run_op

    side = mods[0].config.image_size
    session = Session(World(*mods, cfg), SessionLimits(max_history=64, checkpoint_every=checkpoint_every))
    run_op(session.start(np.zeros((side, side, 3), np.uint8), seed=0))
    for i in range(played):
        run_op(session.step(i % session.world.num_actions))
    t0 = time.perf_counter()
    state = session.world.snapshot()
    snap_ms = 1000 * (time.perf_counter() - t0)
    times = []
    for _ in range(min(undos, len(session.actions))):
        t0 = time.perf_counter()
        run_op(session.undo())
        times.append(1000 * (time.perf_counter() - t0))
    return state.nbytes / 2**20, snap_ms, float(np.mean(times)), float(np.max(times))


async def players(url: str, n: int, seconds: float, picture: str, num_actions: int,
                  pace_s: float = 0.0) -> tuple[int, float, float]:
    """n players pressing keys with one step in flight: back to back (``pace_s`` 0), or at most one key
    per ``pace_s`` (a held key's repeat). Returns frames, wall seconds, mean key-to-frame ms."""
    import websockets

    async def one(i: int) -> tuple[int, float]:
        async with websockets.connect(url, max_size=None) as ws:
            json.loads(await ws.recv())  # hello
            await ws.send(json.dumps({"type": "start", "source": "image", "data": picture, "seed": i}))
            assert json.loads(await ws.recv())["type"] == "frame"
            frames, rtt, end, next_key = 0, 0.0, time.perf_counter() + seconds, 0.0
            while time.perf_counter() < end:
                if pace_s and frames:
                    await asyncio.sleep(max(0.0, next_key - time.perf_counter()))
                t = time.perf_counter()
                next_key = t + pace_s
                await ws.send(json.dumps({"type": "step", "action": frames % num_actions}))
                reply = json.loads(await ws.recv())
                assert reply["type"] == "frame", reply
                rtt += time.perf_counter() - t
                frames += 1
            return frames, rtt

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    frames = sum(f for f, _ in results)
    return frames, wall, 1000 * sum(r for _, r in results) / max(frames, 1)


def wait_until_empty(server: PlayServer, timeout_s: float = 30.0) -> None:
    """Wait until the server has let go of every earlier player: a closed connection's session leaves once
    its in-flight step is done, and with ``max_sessions`` at the number of players the next measurement's
    players would otherwise be turned away as "server full" (close code 1013)."""
    end = time.perf_counter() + timeout_s
    while server.sessions:
        if time.perf_counter() > end:
            raise RuntimeError(f"{len(server.sessions)} earlier sessions still open after {timeout_s:g} s")
        time.sleep(0.01)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a trained run directory (default: the shipped CoinRun world)")
    p.add_argument("--preset", help="random weights of this preset instead of a run (speed only)")
    p.add_argument("--against", metavar="RUN", help="also step this run's world alternately with the measured "
                   "one, in the same dtype (e.g. a one_pass world against the MaskGIT world it was fine-tuned from)")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help="MaskGIT steps per frame (default: the world's play setting, as `playworld play`)")
    p.add_argument("--context", type=int, default=16, help="context frames (default: %(default)s)")
    p.add_argument("--action-guidance", type=float, default=None,
                   help="action guidance, as `playworld play --action-guidance` (default: the world's play setting)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = playworld's default, playworld.threads: all cores but one)")
    p.add_argument("--precision", default=PlayConfig.precision, choices=PRECISIONS,
                   help="dtype of the dynamics model and decoder (default: %(default)s, as `playworld play`)")
    p.add_argument("--key-rate", type=float, default=25.0,
                   help="keys per second of the paced player, a held key (default: %(default)s)")
    p.add_argument("--no-process", action="store_true",
                   help="skip the measurement against `playworld play` in its own process (runs only)")
    p.add_argument("--contention", action="store_true",
                   help="only measure one session quiet and beside --load busy processes, for torch threads 1 "
                   "and 2 and OpenMP wait policies (benchmarks/contention.py)")
    p.add_argument("--load", type=int, default=1, help="--contention: busy processes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="--contention: quiet/loaded rounds (default: %(default)s)")
    args = p.parse_args()
    if args.preset is None:
        from playworld.api import resolve_run

        args.run = str(resolve_run(args.run))
    try:  # a bad setting is a usage error, named by PlayConfig's field, before any model loads
        play = PlayConfig(steps=args.steps, context_frames=args.context, action_guidance=args.action_guidance,
                          max_sessions=max(args.sessions), rate=1000, burst=1000)
        sampling = play.sampling(None if args.preset else args.run)  # the flags over the world's play setting
    except ConfigError as e:
        p.error(str(e))
    if args.contention:
        from contention import run_contention  # benchmarks/contention.py

        model = ["--preset", args.preset] if args.preset else ["--run", args.run]
        run_contention([*model, *sampling_flags(args), "--context", str(args.context),
                        "--precision", args.precision], args.load, args.seconds, args.rounds)
        return
    # all torch work on the scheduler's one worker thread, as `playworld play` does (see StepScheduler.call)
    scheduler = StepScheduler(PlayConfig.window_ms, torch_threads=resolve_threads(args.threads, usable_cores()))
    mods = scheduler.call(models, args)
    dtype = scheduler.call(resolve_precision, args.precision)
    fp32 = scheduler.call(models, args) if dtype != torch.float32 else mods  # the baseline, its own copy
    scheduler.call(cast_for_play, mods[0], mods[2], dtype)
    wcfg = WorldConfig(context_frames=args.context, decoder_context=args.context, sampling=sampling)
    side = mods[0].config.image_size
    print(f"model: {args.run or args.preset + ' (random weights)'}, {side}x{side}, MaskGIT steps {sampling.steps}, "
          f"temperature {sampling.temperature:g}, copy penalty {sampling.copy_penalty:g}, "
          f"action guidance {sampling.action_guidance:g}, "
          f"context {args.context}, torch threads {scheduler.call(torch.get_num_threads)}, "
          f"{str(dtype).removeprefix('torch.')} (--precision {args.precision})")
    if fp32 is not mods:
        base = scheduler.call(world_fps, fp32, wcfg, 1, args.seconds)
        print(f"World.step, one session, float32: {base:7.1f} frames/s ({1000 / base:.1f} ms/frame)")
    single = scheduler.call(world_fps, mods, wcfg, 1, args.seconds)
    print(f"World.step, one session:          {single:7.1f} frames/s ({1000 / single:.1f} ms/frame)")
    if fp32 is not mods:
        ms32, ms = scheduler.call(interleaved_ms, fp32, mods, wcfg)
        print(f"World.step, fp32 and {str(dtype).removeprefix('torch.')} stepped alternately: {ms32:.1f} vs "
              f"{ms:.1f} ms/frame (median; {ms32 / ms:.2f}x)")
    if args.against:
        other = scheduler.call(models, argparse.Namespace(**{**vars(args), "run": args.against, "preset": None}))
        scheduler.call(cast_for_play, other[0], other[2], dtype)
        ms_other, ms = scheduler.call(interleaved_ms, other, mods, wcfg, 200)
        print(f"World.step, {args.against} and this world stepped alternately: {ms_other:.1f} vs {ms:.1f} ms/frame "
              f"(median; this one {ms_other / ms:.2f}x as fast)")
    for every in (32, 64):
        mb, snap, mean, worst = scheduler.call(undo_figures, mods, wcfg, every)
        print(f"20 undos from a full history (64 actions), a snapshot every {every} actions: snapshot {mb:.1f} MB in {snap:.1f} ms; "
              f"undo mean {mean:.0f} ms, largest {worst:.0f} ms")

    server = PlayServer(mods, play, run_dir=None if args.preset else args.run, scheduler=scheduler)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning",
                                       ws_max_size=server.config.max_message_chars))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.05)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    picture = base64.b64encode(buf.getvalue()).decode()
    url = f"ws://127.0.0.1:{port}/ws"
    for n in args.sessions:
        server.scheduler.stats.max_batch = 0
        wait_until_empty(server)
        frames, wall, rtt = asyncio.run(players(url, n, args.seconds, picture, server.num_actions))
        batched = scheduler.call(world_fps, mods, wcfg, n, args.seconds) if n > 1 else single
        print(f"server, {n:2d} player(s): {frames / wall:7.1f} frames/s in all, {frames / wall / n:6.1f} per player, "
              f"round trip {rtt:6.1f} ms, largest batch {server.scheduler.stats.max_batch:2d} | "
              f"one World of batch {n}: {batched:7.1f} frames/s")
    # the server replies before it commits a frame to the model's memory; against committing first:
    pace = 1 / args.key_rate
    for pace_s, what in ((0.0, "keys back to back"), (pace, f"a held key ({args.key_rate:g} keys/s at most)")):
        for defer in (True, False):
            scheduler.defer_commit = defer
            wait_until_empty(server)
            frames, wall, rtt = asyncio.run(players(url, 1, args.seconds, picture, server.num_actions, pace_s))
            print(f"server, 1 player, {what}, {'reply then commit' if defer else 'commit then reply'}: "
                  f"{frames / wall:5.1f} frames/s, key to frame {rtt:5.1f} ms")
    scheduler.defer_commit = True
    uv.should_exit = True
    if args.run and not args.no_process:
        for n in args.sessions:
            frames, wall, rtt = own_process(args, n, picture, server.num_actions)
            print(f"server in its own process, {n:2d} player(s): {frames / wall:7.1f} frames/s in all, "
                  f"{frames / wall / n:6.1f} per player, round trip {rtt:6.1f} ms")


def own_process(args: argparse.Namespace, n: int, picture: str, num_actions: int) -> tuple[int, float, float]:
    """The same players against `playworld play` in a process of its own, as a browser would see it
    (no GIL shared with the clients)."""
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "playworld", "play", args.run, "--port", str(port), *sampling_flags(args),
           "--context-frames", str(args.context), "--max-sessions", str(max(args.sessions)), "--rate", "1000",
           "--burst", "1000", "--threads", str(args.threads), "--precision", args.precision]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        return asyncio.run(players(f"ws://127.0.0.1:{port}/ws", n, args.seconds, picture, num_actions))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
