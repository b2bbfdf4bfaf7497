"""Play sessions and the step scheduler without the server: exact undo, rebasing, flat memory, fairness."""

import asyncio
import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch

from playworld.maskgit import SamplingConfig
from playworld.models.dynamics import DynamicsModel
from playworld.play.config import SessionLimits
from playworld.play.scheduler import StepScheduler
from playworld.play.session import Session, SessionError, run_op
from playworld.world import World, WorldConfig
from tiny_world import SIZE, tiny_models

torch.set_num_threads(1)
MODELS = tiny_models()


def _session(**limits) -> Session:
    world = World(*MODELS, WorldConfig(context_frames=4, decoder_context=4, sampling=SamplingConfig(steps=1)))
    return Session(world, SessionLimits(**limits))


run = run_op  # drive a session operation to its end synchronously


PROMPT = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)


def test_undo_returns_the_previous_frame_and_the_next_step_repeats_exactly():
    s = _session()
    run(s.start(PROMPT, seed=3))
    frames = [run(s.step(a)) for a in (1, 2, 3, 0)]
    assert np.array_equal(run(s.undo()), frames[2]) and s.actions == [1, 2, 3]
    assert np.array_equal(run(s.step(0)), frames[3])
    assert np.array_equal(s.recording()[1:], np.stack(frames))
    with pytest.raises(SessionError, match="not in"):
        run(s.step(4))


def test_history_full_rebases_and_undo_stops_there():
    s = _session(max_history=3, checkpoint_every=3, max_record_frames=5)
    run(s.start(PROMPT, seed=1))
    for i in range(7):
        run(s.step(i % 4))
    assert s.rebases == 2 and s.actions == [2] and s.total_steps == 7  # rebased before steps 4 and 7
    assert len(s.recording()) == 5 and s.prompt.shape == (2, SIZE, SIZE, 3)
    shown = s.recording()
    assert np.array_equal(run(s.undo()), shown[-2]) and s.total_steps == 6
    with pytest.raises(SessionError, match="cannot undo further: older actions have left the history"):
        run(s.undo())
    assert np.array_equal(run(s.restart()), shown[-2]) and s.total_steps == 6  # the anchor: after step 6


def _replayed_steps(op) -> tuple[int, np.ndarray]:
    """Drive an operation alone, counting the world steps it asks for."""
    steps, value = 0, None
    try:
        while True:
            request = op.send(value)
            value = None
            if request is not None:
                steps += 1
                value = request.world.step(request.action)[0].numpy()
    except StopIteration as stop:
        return steps, stop.value


def test_undo_replays_from_the_last_checkpoint_and_reaches_back_across_a_rebase():
    s = _session(max_history=6, checkpoint_every=3)
    run(s.start(PROMPT, seed=2))
    shown = [s.frames[-1]] + [run(s.step(i % 4)) for i in range(10)]
    # rebased at steps 7 and 10: the anchor is after step 6, a snapshot after step 9, 4 actions held
    assert s.rebases == 2 and len(s.actions) == 4 and [c.actions for c in s.checkpoints] == [0, 3]
    for back in range(1, 5):
        steps, frame = _replayed_steps(s.undo())
        assert np.array_equal(frame, shown[10 - back]) and steps < 3
    with pytest.raises(SessionError, match="cannot undo further"):
        run(s.undo())
    assert [c.actions for c in s.checkpoints] == [0]


def test_rebasing_leaves_play_untouched():
    # a session whose history fills (and rebases every 3 steps) shows the frames of one that never does
    short, long = _session(max_history=3, checkpoint_every=3), _session(max_history=64)
    world = World(*MODELS, WorldConfig(context_frames=4, decoder_context=4,
                                       sampling=SamplingConfig(steps=2, temperature=1.0)))
    sampled = Session(world, SessionLimits(max_history=2, checkpoint_every=1))
    for s in (short, long):
        run(s.start(PROMPT, seed=7))
    run(sampled.start(PROMPT, seed=7))
    ref = []
    for i in range(10):
        assert np.array_equal(run(short.step(i % 4)), run(long.step(i % 4)))
        ref.append(run(sampled.step(i % 4)))
    assert short.rebases == 3 and long.rebases == 0 and sampled.rebases == 8
    assert np.array_equal(run(sampled.undo()), ref[-2])  # sampled frames replay exactly from a rebase
    assert np.array_equal(run(sampled.step(9 % 4)), ref[-1])


def test_memory_stays_flat_over_long_play():
    s = _session(max_history=16, checkpoint_every=4, max_record_frames=32)
    run(s.start(PROMPT, seed=0))
    for i in range(200):
        run(s.step(i % 4))
    tracemalloc.start()
    for i in range(300):  # the first traced steps fill one-off caches (rotary tables, cache buffers): 45-65 kB
        run(s.step(i % 4))
    base = tracemalloc.take_snapshot()
    for i in range(300):  # then the heap stays flat (5-20 kB measured); a leak of 220 bytes a step fails
        run(s.step(i % 4))
    grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    assert grown < 64_000, f"Python heap grew by {grown} bytes over 300 steps"
    assert len(s.frames) == 32 and len(s.actions) <= 16 and s.world.cache_frames() == (4, 4)
    assert len(s.checkpoints) <= 16 // 4 + 1


def test_scheduler_interleaves_a_long_replay_with_another_sessions_steps():
    a, b = _session(max_replay=500), _session()
    run(a.start(PROMPT, seed=0))
    run(b.start(PROMPT, seed=0))
    sched = StepScheduler(window_ms=0.0)
    order = []

    async def main():
        async def replay():
            await sched.run(a.replay([1] * 60))
            order.append("replay")

        async def steps():
            for k in range(5):
                await sched.run(b.step(k % 4))
            order.append("steps")

        await asyncio.gather(replay(), steps())

    asyncio.run(main())
    sched.close()
    assert order == ["steps", "replay"]  # five single steps finish long before 60 replayed ones
    assert sched.stats.max_batch == 2 and a.total_steps == 60 and b.total_steps == 5


def test_scheduler_delivers_errors_to_the_session_that_asked():
    good, bad = _session(), _session()
    run(good.start(PROMPT, seed=0))
    sched = StepScheduler()

    async def main():
        return await asyncio.gather(sched.run(bad.step(0)), sched.run(good.step(0)), return_exceptions=True)

    err, frame = asyncio.run(main())
    sched.close()
    assert isinstance(err, SessionError) and "no world yet" in str(err)
    assert frame.shape == (SIZE, SIZE, 3)


def test_scheduler_takes_many_sessions_steps_in_one_batched_pass_each_as_if_alone():
    prompts = [PROMPT, PROMPT[::-1].copy(), PROMPT[:1]]
    batched, alone = [_session() for _ in prompts], [_session() for _ in prompts]
    for i, (b, a, p) in enumerate(zip(batched, alone, prompts)):
        run(b.start(p, seed=10 + i))
        run(a.start(p, seed=10 + i))
    run(batched[0].step(2))  # sessions of different ages
    run(alone[0].step(2))
    sched = StepScheduler(window_ms=5.0)

    async def tick(actions):
        return await asyncio.gather(*(sched.run(s.step(a)) for s, a in zip(batched, actions)))

    for t in range(4):
        actions = [t % 4, (t + 1) % 4, 3]
        got = asyncio.run(tick(actions))
        for g, a, act in zip(got, alone, actions):
            assert np.array_equal(g, run(a.step(act)))
    sched.close()
    assert sched.stats.max_batch == 3  # one World.step_many for the three players
    assert [s.total_steps for s in batched] == [5, 4, 4]


def test_scheduler_replies_first_and_commits_the_frame_while_idle():
    sched, alone = StepScheduler(window_ms=0.0), _session()
    s = _session()
    run(s.start(PROMPT, seed=4))
    run(alone.start(PROMPT, seed=4))

    async def play():
        frames = []
        for a in (1, 2, 3):
            frames.append(await sched.run(s.step(a)))
            for _ in range(500):  # the worker commits once nothing waits
                if not s.world.uncommitted:
                    break
                await asyncio.sleep(0.01)
            assert not s.world.uncommitted
        return frames

    frames = asyncio.run(play())
    sched.close()
    assert sched.stats.idle_commits == 3
    for f, a in zip(frames, (1, 2, 3)):
        assert np.array_equal(f, run(alone.step(a)))
    off = StepScheduler(window_ms=0.0, defer_commit=False)
    asyncio.run(off.run(s.step(0)))
    off.close()
    assert not s.world.uncommitted and off.stats.idle_commits == 0


def test_scheduler_has_no_commit_to_wait_for_after_a_one_pass_step():
    """A one_pass model writes its frame while sampling: the scheduler must not queue a commit pass (a
    worker round trip a key arriving next would wait for) for a world that has nothing pending."""
    tok, lam, dyn = MODELS
    one_pass = DynamicsModel(dataclasses.replace(dyn.config, one_pass=True)).eval()
    one_pass.load_state_dict(dyn.state_dict())
    world = World(tok, lam, one_pass, WorldConfig(context_frames=4, decoder_context=4, sampling=SamplingConfig(steps=1)))
    s, alone = Session(world), Session(World(tok, lam, one_pass, world.config))
    run(s.start(PROMPT, seed=4))
    run(alone.start(PROMPT, seed=4))
    sched = StepScheduler(window_ms=0.0)

    async def play():
        frames = [await sched.run(s.step(a)) for a in (1, 2)]
        return frames, list(sched._uncommitted)

    frames, queued = asyncio.run(play())
    sched.close()
    assert queued == [] and not world.uncommitted and sched.stats.idle_commits == 0
    for f, a in zip(frames, (1, 2)):
        assert np.array_equal(f, run(alone.step(a)))
