"""The seam is real: a second, trivial dynamics backend, registered here, drives World (step_many across
worlds, seeds, deferred commits, snapshots, loading from a run's config) through the same interface as
MaskGIT, with no change to World."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from playworld.backends import BACKENDS, DynamicsBackend, make_backend
from playworld.backends.maskgit import MaskGITBackend
from playworld.cli import main
from playworld.config import to_dict
from playworld.env import make_env
from playworld.errors import ConfigError
from playworld.maskgit import play_sampling
from playworld.models.dynamics import DynamicsConfig, DynamicsModel
from playworld.release import save_release
from playworld.world import World, WorldConfig
from tiny_world import decode_video, tiny_models


@dataclass
class RingCache:
    """The last frames' tokens, (B, K, S), oldest first; ``count`` frames written so far."""

    held: Tensor
    count: int = 0

    def clone(self) -> RingCache:
        return RingCache(self.held.clone(), self.count)

    @property
    def nbytes(self) -> int:
        return self.held.numel() * self.held.element_size()

    @property
    def frames(self) -> int:
        return min(self.count, self.held.shape[1])


class CopyLast(DynamicsBackend):
    """The next frame is the last *committed* frame with one token, drawn from the world's own generator,
    set to a random id: so frames depend on the cache (a missing commit would show), the seed and the
    batch row, and on nothing a neural network computes."""

    name = "copy-last"

    def __init__(self, dynamics, tokenizer, lam) -> None:
        super().__init__(dynamics, tokenizer, lam)
        c = dynamics.config
        self.grid, self.vocab, self.calls = (c.token_height, c.token_width), c.vocab_size, []

    @property
    def num_actions(self) -> int:
        return self.dynamics.config.num_actions

    def encode(self, video: Tensor) -> Tensor:
        return self.tokenizer.encode(video).indices.flatten(2)  # (B, T, S)

    def decode(self, latents: Tensor, decoder_caches: Any) -> Tensor:
        return self.tokenizer.decode_step(latents.unflatten(2, self.grid), decoder_caches)

    def new_cache(self, max_frames: int) -> RingCache:
        return RingCache(torch.zeros(0, max_frames, self.grid[0] * self.grid[1], dtype=torch.long))

    def commit(self, latents: Tensor, frame_actions: Tensor, caches: Any, prev: Tensor | None) -> None:
        self.calls.append(("commit", latents.shape[0]))
        caches = [caches] if isinstance(caches, RingCache) else list(caches)
        rows = latents.shape[0] // len(caches)  # (equal batches per world in these tests)
        for i, cache in enumerate(caches):
            part = latents[i * rows:(i + 1) * rows]
            if cache.held.shape[0] == 0:
                cache.held = cache.held.new_zeros(rows, *cache.held.shape[1:])
            for t in range(part.shape[1]):
                cache.held = torch.cat([cache.held[:, 1:], part[:, t:t + 1]], 1)
                cache.count += 1

    def sample(self, frame_actions: Tensor, caches, prev: Tensor, sampling, generators) -> Tensor:
        self.calls.append(("sample", prev.shape[0]))
        last = torch.cat([c.held[:, -1] for c in caches])  # (B, S)
        assert torch.equal(last, prev), "the world's prev must be the last committed frame"
        out, lo = last.clone(), 0
        for g, n in generators:
            for r in range(lo, lo + n):
                place = int(torch.randint(0, last.shape[1], (1,), generator=g))
                out[r, place] = int(torch.randint(0, self.vocab, (1,), generator=g))
            lo += n
        return out


@pytest.fixture
def copy_last(monkeypatch):
    monkeypatch.setitem(BACKENDS, CopyLast.name, CopyLast)
    tok, lam, dyn = tiny_models()
    cfg = DynamicsConfig(**{**to_dict(dyn.config), "backend": CopyLast.name})
    return tok, lam, DynamicsModel(cfg)


def _frames(*shape: int, seed: int = 1) -> Tensor:
    return torch.randint(0, 256, (*shape, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


CFG = WorldConfig(context_frames=3, decoder_context=3)


def test_the_dynamics_config_chooses_the_backend_and_maskgit_is_the_default(copy_last):
    tok, lam, dyn = copy_last
    assert isinstance(World(tok, lam, dyn, CFG).backend, CopyLast)
    assert isinstance(World(*tiny_models(), CFG).backend, MaskGITBackend)
    assert DynamicsConfig().backend == "maskgit"
    dyn.config.backend = "nope"
    with pytest.raises(ConfigError, match=r"unknown dynamics backend 'nope'; known: \['copy-last', 'flow', 'maskgit'\]"):
        make_backend(dyn, tok, lam)


def test_step_many_batches_worlds_like_stepping_each_alone_and_a_step_copies_all_but_one_token(copy_last):
    def worlds():
        ws = [World(*copy_last, CFG) for _ in range(3)]
        for i, w in enumerate(ws):
            w.reset(_frames(2, seed=i), seed=10 + i)
        for a in range(4):  # world 0 is older: its ring has wrapped
            ws[0].step(a % 4)
        return ws

    alone, together = worlds(), worlds()
    for t in range(4):
        before = [w._last.clone() for w in together]
        ref = [w.step(t % 4) for w in alone]
        got = World.step_many(together, [t % 4] * 3)
        assert all(torch.equal(g, r) for g, r in zip(got, ref))
        for w, b in zip(together, before):
            assert int((w._last != b).sum()) <= 1  # copied, one token redrawn
    backend = together[0].backend
    assert ("sample", 3) in backend.calls and ("commit", 3) in backend.calls  # one batched pass for three worlds
    assert not all(torch.equal(together[0]._last, w._last) for w in together[1:])  # seeds and prompts differ


def test_deferred_commits_and_snapshots_work_through_the_interface(copy_last):
    now, later = World(*copy_last, CFG), World(*copy_last, CFG)
    for w in (now, later):
        w.reset(_frames(2), seed=4)
    for t in range(5):  # past the window of 3: the ring wraps
        ref = now.step(t % 4)
        got = World.step_many([later], [t % 4], defer_commit=True)[0]
        assert torch.equal(got, ref) and later.uncommitted  # the next step commits it first (sample checks)
        if t % 2:
            assert World.commit_many([later]) == 1 and not later.uncommitted
    state = later.snapshot()
    assert not later.uncommitted and state.frames_played == 5 and state.nbytes > 0
    first = [later.step(a) for a in (1, 2, 3)]
    later.restore(state)
    assert all(torch.equal(later.step(a), f) for a, f in zip((1, 2, 3), first))
    assert later.cache_frames() == (3, 3)


def test_a_run_whose_config_names_the_backend_plays_in_the_env_and_rollouts_unchanged(copy_last, tmp_path,
                                                                                      monkeypatch):
    run = tmp_path / "run"
    for kind, model in zip(("tokenizer", "lam", "dynamics"), copy_last):
        save_release(run / kind, model.state_dict(), {"kind": kind, "model": to_dict(model.config)})
    w = World.load(run, WorldConfig(sampling=play_sampling()), threads=0)
    assert isinstance(w.backend, CopyLast)
    with monkeypatch.context() as m:  # a backend this install does not know: the error names the run
        m.delitem(BACKENDS, CopyLast.name)
        with pytest.raises(ConfigError, match=rf"{run / 'dynamics'}: unknown dynamics backend 'copy-last'"):
            World.load(run, threads=0)
    w.reset(_frames(1), seed=0)
    assert w.step(2).shape == (1, 16, 16, 3)

    prompts = _frames(3).numpy()
    env = make_env(run, num_envs=2, prompts=prompts)
    assert isinstance(env.world.backend, CopyLast)
    obs, _ = env.reset(seed=3)
    again, _ = make_env(run, num_envs=2, prompts=prompts).reset(seed=3)
    assert obs.shape == (2, 16, 16, 3) and np.array_equal(obs, again)
    assert env.step(np.array([1, 2]))[0].shape == (2, 16, 16, 3)

    picture = tmp_path / "start.png"
    Image.fromarray(prompts[0]).save(picture)
    out = tmp_path / "roll.gif"
    assert main(["rollout", str(run), "--image", str(picture), "--actions", "1,2,3", "--out", str(out),
                 "--scale", "1"]) == 0
    assert decode_video(out).shape == (4, 16, 16, 3)
