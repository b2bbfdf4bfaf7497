"""The flow-matching dynamics backend: the path, loss and Euler sampler on an analytic Gaussian target, a
tiny velocity net that learns one, causality in time and the cached step, a World driven by the flow
backend (seeds, batching, deferred commits, snapshots), and `playworld train dynamics --set
model.backend=flow` with exact resume and a release that World.load plays."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from playworld.backends.flow import FlowBackend
from playworld.cli import main
from playworld.config import from_dict, to_dict
from playworld.env import make_env
from playworld.errors import ConfigError
from playworld.maskgit import SamplingConfig
from playworld.models.dynamics import DynamicsConfig
from playworld.models.flow import FlowDynamicsModel, euler_sample, path_sample
from playworld.world import World, WorldConfig
from tiny_world import decode_video, save_tiny_run, tiny_models

from helpers import make_dataset

MU, S = 2.0, 0.5  # target N(MU, S^2); source N(0, 1)


def gaussian_velocity(x: Tensor, t: float) -> Tensor:
    """The marginal velocity E[x1 - x0 | x_t = x] of the path x_t = (1 - t) x0 + t x1 with x0 ~ N(0, 1) and
    x1 ~ N(MU, S^2) independent: MU + Cov(x1 - x0, x_t) / Var(x_t) (x - t MU)."""
    var = (1 - t) ** 2 + t**2 * S**2
    return MU + (t * S**2 - (1 - t)) / var * (x - t * MU)


def test_euler_with_the_exact_velocity_carries_the_source_to_the_target_and_steps_converge():
    x0 = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1 = euler_sample(gaussian_velocity, x0, 200)
    assert abs(x1.mean().item() - MU) < 0.01 and abs(x1.std().item() - S) < 0.01
    # one step gives the conditional mean at t=0 (MU), whatever the start; more steps converge to one sample
    assert torch.allclose(euler_sample(gaussian_velocity, x0, 1), torch.full_like(x0, MU))
    gaps = [(euler_sample(gaussian_velocity, x0, n) - x1).abs().max().item() for n in (2, 4, 8, 16)]
    assert all(b < 0.6 * a for a, b in zip(gaps, gaps[1:])), gaps  # Euler is first order: doubling halves
    with pytest.raises(ValueError, match="steps >= 1"):
        euler_sample(gaussian_velocity, x0, 0)


def test_the_exact_velocity_minimises_the_flow_matching_loss():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(100_000, generator=g), MU + S * torch.randn(100_000, generator=g)
    t = torch.rand(100_000, generator=g)
    xt, target = path_sample(x0, x1, t)
    assert torch.allclose(xt, (1 - t) * x0 + t * x1) and torch.equal(target, x1 - x0)
    exact = torch.stack([gaussian_velocity(a, float(b)) for a, b in zip(xt[:2000], t[:2000])])

    def loss(v: Tensor) -> float:
        return (v - target[:2000]).pow(2).mean().item()

    assert loss(exact) < min(loss(exact + 0.2), loss(exact - 0.2), loss(exact * 1.1), loss(target[:2000] * 0))


def test_a_tiny_velocity_net_learns_a_gaussian_to_a_shifted_gaussian():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    shift = torch.tensor([2.0, -1.0])
    for _ in range(400):
        x0, x1 = torch.randn(256, 2), shift + 0.5 * torch.randn(256, 2)
        t = torch.rand(256, 1)
        xt, v = path_sample(x0, x1, t)
        loss = (net(torch.cat([xt, t], 1)) - v).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = euler_sample(lambda x, t: net(torch.cat([x, x.new_full((len(x), 1), t)], 1)), torch.randn(4000, 2), 16)
    assert torch.allclose(out.mean(0), shift, atol=0.15), out.mean(0)
    assert torch.allclose(out.std(0), torch.full((2,), 0.5), atol=0.15), out.std(0)


def _flow_config(**flow) -> DynamicsConfig:
    _, _, dyn = tiny_models()
    return from_dict(DynamicsConfig, {**to_dict(dyn.config), "backend": "flow", "flow": {"latent_dim": 8, **flow}})


def _flow_models():
    tok, lam, _ = tiny_models()
    torch.manual_seed(1)
    return tok, lam, FlowDynamicsModel(_flow_config())


def test_flow_config_is_checked_and_maskgit_options_are_refused():
    with pytest.raises(ConfigError, match="dynamics.flow.context_noise must be in"):
        _flow_config(context_noise=1.5)
    with pytest.raises(ConfigError, match="MaskGIT's"):
        from_dict(DynamicsConfig, {**to_dict(_flow_config()), "context_noise": 0.1})
    tok, lam, _ = tiny_models()
    wide = FlowDynamicsModel(from_dict(DynamicsConfig, {**to_dict(_flow_config()), "flow": {"latent_dim": 9}}))
    with pytest.raises(ConfigError, match="latent_dim 9 != tokenizer code width 8"):
        FlowBackend(wide, tok, lam)
    from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer

    fsq = VideoTokenizer(TokenizerConfig(image_size=16, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2,
                                         quantizer="fsq", fsq_levels=(2, 2, 2, 2, 2)))
    with pytest.raises(ConfigError, match="needs a VQ tokenizer; got quantizer 'fsq'"):
        FlowBackend(wide, fsq, lam)


def test_the_small_preset_switched_to_the_flow_backend_trains_without_maskgits_self_forcing_and_one_pass():
    from playworld.presets import build_run_config

    maskgit = build_run_config("dynamics", "small").model
    assert (maskgit.self_forcing, maskgit.one_pass) == (1.0, True)  # MaskGIT's preset self-forces, one pass ...
    flow = build_run_config("dynamics", "small", overrides=["model.backend=maskgit", "model.backend=flow"]).model
    assert (flow.backend, flow.self_forcing, flow.self_forcing_start, flow.one_pass) == ("flow", 0.0, 0.0, False)
    assert build_run_config("dynamics", "small", overrides=["model.backend=maskgit"]).model.self_forcing == 1.0
    with pytest.raises(ConfigError, match="MaskGIT's"):  # asked for by name, it is still refused
        build_run_config("dynamics", "small", overrides=["model.backend=flow", "model.self_forcing=0.5"])


def test_flow_model_is_causal_in_time_and_a_cached_step_equals_the_full_pass():
    _, _, model = _flow_models()
    model.eval()
    g = torch.Generator().manual_seed(2)
    x, levels = torch.randn(2, 4, 16, 8, generator=g), torch.rand(2, 4, generator=g)
    acts = torch.randint(0, 4, (2, 4), generator=g)
    with torch.no_grad():
        out = model(x, levels, acts)
        x2, l2, a2 = x.clone(), levels.clone(), acts.clone()
        x2[:, 2:], l2[:, 2:], a2[:, 2:] = torch.randn(2, 2, 16, 8, generator=g), 0.3, (acts[:, 2:] + 1) % 4
        moved = model(x2, l2, a2)
        assert torch.equal(out[:, :2], moved[:, :2])
        assert not torch.allclose(out[:, 2:], moved[:, 2:])
        # committed frames are told level 1 - context_noise; the frame after them, queried against the cache
        clean = torch.full((2, 3), 1.0 - model.config.flow.context_noise)
        full = model(x[:, :3], torch.cat([clean[:, :2], levels[:, 2:3]], 1), acts[:, :3])[:, 2]
        cache = model.new_cache(4)
        model.commit(x[:, :2], acts[:, :2], cache)
        step = model(x[:, 2:3], levels[:, 2:3], acts[:, 2:3], cache=cache, prev=x[:, 1])[:, 0]
    assert torch.allclose(step, full, atol=1e-5)


def test_an_x1_prediction_is_turned_into_the_velocity_that_reaches_it_and_trains_on_x1():
    _, _, model = _flow_models()
    assert model.config.flow.predict == "x1"
    model.eval()
    g = torch.Generator().manual_seed(5)
    x, levels, acts = torch.randn(2, 2, 16, 8, generator=g), torch.rand(2, 2, generator=g), torch.zeros(2, 2).long()
    with torch.no_grad():
        out, v = model(x, levels, acts), model.velocity(x, levels, acts)
    lv = levels[:, :, None, None]
    assert torch.allclose(x + (1 - lv) * v, out, atol=1e-5)  # one Euler step to t = 1 lands on the prediction
    velocity = FlowDynamicsModel(from_dict(DynamicsConfig, {**to_dict(model.config), "flow": {
        **to_dict(model.config.flow), "predict": "velocity"}}))
    velocity.load_state_dict(model.state_dict())
    velocity.eval()
    with torch.no_grad():
        assert torch.equal(velocity.velocity(x, levels, acts), velocity(x, levels, acts))
    torch.manual_seed(0)
    loss = model.compute_loss_latents(torch.zeros(2, 3, 16, 8), torch.zeros(2, 2).long()).loss
    torch.manual_seed(0)
    loss_v = velocity.compute_loss_latents(torch.zeros(2, 3, 16, 8), torch.zeros(2, 2).long()).loss
    assert loss.item() < 0.1 < loss_v.item()  # x1 = 0 targets: an untrained x1 net is near them, v = -x0 is not


def test_action_guidance_moves_the_flow_velocity_from_the_action_free_one_and_dropout_trains_it():
    """g > 1: out_a + (g - 1) (out_a - out_free), the free output the mean over actions, or the no-action id's
    for a model trained with action_dropout (whose training then never sees the action); g = 1 unchanged."""
    _, _, model = _flow_models()
    model.eval()
    g = torch.Generator().manual_seed(9)
    x, levels = torch.randn(2, 1, 16, 8, generator=g), torch.full((2, 1), 0.25)
    fa = torch.tensor([[1], [3]])
    with torch.no_grad():
        out = model(x, levels, fa)
        mean = sum(model(x, levels, torch.full_like(fa, a)) for a in range(4)) / 4
        guided = model.velocity(x, levels, fa, action_guidance=3.0)
        assert torch.equal(model.velocity(x, levels, fa, action_guidance=1.0), model.velocity(x, levels, fa))
    torch.testing.assert_close(x + 0.75 * guided, out + 2.0 * (out - mean))  # x1_hat guided, as the velocity
    assert not torch.allclose(guided, model.velocity(x, levels, fa))

    dropped = FlowDynamicsModel(from_dict(DynamicsConfig, {**to_dict(model.config), "action_dropout": 0.9999}))
    dropped.load_state_dict(model.state_dict())
    latents = torch.randn(2, 3, 16, 8, generator=g)

    def loss(actions: Tensor) -> Tensor:
        torch.manual_seed(0)  # the same noise, levels and drops
        return dropped.compute_loss_latents(latents, actions).loss

    a1, a2 = torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 3)
    assert torch.equal(loss(a1), loss(a2))  # training: the actions never reach the model
    dropped.eval()
    assert not torch.equal(loss(a1), loss(a2))
    with torch.no_grad():
        free = dropped(x, levels, torch.full_like(fa, dropped.no_action_id))
        guided = dropped.velocity(x, levels, fa, action_guidance=2.5)
    torch.testing.assert_close(x + 0.75 * guided, out + 1.5 * (out - free))

    models = _flow_models()  # a world passes its sampling's guidance to the backend

    def frames(guidance: float) -> list[Tensor]:
        sampling = SamplingConfig(steps=2, temperature=1.0, action_guidance=guidance)
        w = World(*models, WorldConfig(context_frames=3, decoder_context=3, sampling=sampling))
        w.reset(_frames(2), seed=4)
        return [w.step(a) for a in (1, 2, 3)]

    assert all(torch.equal(a, b) for a, b in zip(frames(1.0), frames(1.0)))
    assert not all(torch.equal(a, b) for a, b in zip(frames(1.0), frames(4.0)))


def test_loss_trains_the_flow_model_on_still_clips():
    """Clips whose frames repeat: given the past, the next frame (and so the noise in x_t) is known, so the
    loss can fall towards 0 from ~2 (a zero velocity's: Var(x1 - x0))."""
    _, _, model = _flow_models()
    torch.manual_seed(0)
    latents, actions = torch.randn(8, 1, 16, 8).expand(8, 3, 16, 8), torch.randint(0, 4, (8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        out = model.compute_loss_latents(latents, actions)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert set(out.metrics) == {"flow_mse", "x1_mse", "mean_level"}
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    with pytest.raises(ValueError, match=r"actions must be \(B, T-1\)"):
        model.compute_loss_latents(latents, actions[:, :1])


def _frames(*shape: int, seed: int = 1) -> Tensor:
    return torch.randint(0, 256, (*shape, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


CFG = WorldConfig(context_frames=3, decoder_context=3, sampling=SamplingConfig(steps=2, temperature=1.0))


@pytest.mark.parametrize("snap", [True, False])
def test_a_flow_world_is_seeded_batched_deferred_and_snapshotted_like_a_maskgit_one(snap):
    models = _flow_models()
    models[2].config.flow.snap = snap  # False: latents decoded as they are, through the decoder caches

    def play(seed: int, worlds: int = 1, defer: bool = False) -> list[list[Tensor]]:
        ws = [World(*models, CFG) for _ in range(worlds)]
        for i, w in enumerate(ws):
            w.reset(_frames(2, seed=i), seed=seed + i)
        out = [World.step_many(ws, [t % 4] * worlds, defer_commit=defer) for t in range(5)]  # past the window
        return [[o[i] for o in out] for i in range(worlds)]

    alone = play(7)[0]
    assert isinstance(World(*models, CFG).backend, FlowBackend)
    assert all(torch.equal(a, b) for a, b in zip(alone, play(7)[0]))  # a seed fixes every frame
    assert not all(torch.equal(a, b) for a, b in zip(alone, play(8)[0]))
    together = play(7, worlds=3)
    assert all((a.int() - b.int()).abs().max() <= 1 for a, b in zip(alone, together[0]))  # batched = alone
    deferred = play(7, defer=True)[0]
    assert all(torch.equal(a, b) for a, b in zip(alone, deferred))

    w = World(*models, CFG)
    w.reset(_frames(2), seed=3)
    w.step(1)
    World.step_many([w], [2], defer_commit=True)
    assert w.uncommitted
    state = w.snapshot()
    assert not w.uncommitted and state.frames_played == 2
    first = [w.step(a) for a in (0, 3, 1)]
    w.restore(state)
    assert all(torch.equal(w.step(a), f) for a, f in zip((0, 3, 1), first))
    assert w.cache_frames() == (3, 3)
    if snap:  # committed latents are codes: each token's latent is a code of the tokenizer (times sqrt(E))
        codes = models[0].quantizer.codes() * 8**0.5
        assert torch.cdist(w._last[0], codes).min(-1).values.max() < 1e-4


def _train_args(data, out, *extra: str) -> list[str]:
    return ["train", "dynamics", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "4",
            *(a for o in OVERRIDES for a in ("--set", o)), "--no-progress", *extra]


OVERRIDES = ["model.backend=flow", "data.clip_len=3", "data.batch_size=2", "train.val_every=0",
             "train.ckpt_every=2", "train.log_every=1"]


def test_playworld_train_dynamics_with_the_flow_backend_resumes_exactly_and_plays(tmp_path, capsys):
    from playworld.presets import build_run_config
    from playworld.train import Trainer

    data = make_dataset(tmp_path / "ds", episodes=4, length=8, size=16)
    world = save_tiny_run(tmp_path / "world")
    shutil.rmtree(world / "dynamics")
    assert main(_train_args(data, world / "dynamics")) == 0
    cfg = json.loads((world / "dynamics" / "config.json").read_text())
    assert cfg["model"]["backend"] == "flow" and cfg["model"]["flow"]["latent_dim"] == 8  # from the tokenizer
    log = [json.loads(line) for line in (world / "dynamics" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert sum("flow_mse" in r for r in log) == 4
    assert main(_train_args(data, tmp_path / "pre" / "dynamics", "--tokenizer", str(world / "tokenizer"), "--lam",
                            str(world / "lam"), "--set", "data.precompute=true")) == 2
    assert "drop data.precompute" in capsys.readouterr().err

    w = World.load(world, WorldConfig(sampling=SamplingConfig(steps=2, temperature=1.0)), threads=0)
    assert isinstance(w.backend, FlowBackend)
    w.reset(_frames(2), seed=0)
    assert w.step(1).shape == (1, 16, 16, 3)
    half = World.load(world, WorldConfig(sampling=SamplingConfig(steps=2)), precision="bf16", threads=0)
    assert half.dtype == torch.bfloat16 and half.reset(_frames(2), seed=0).shape == (1, 16, 16, 3)
    assert half.step(1).shape == (1, 16, 16, 3)
    prompts = _frames(3).numpy()  # the Gymnasium env and `playworld rollout` play it unchanged
    env = make_env(world, num_envs=2, prompts=prompts)
    assert isinstance(env.world.backend, FlowBackend)
    obs, _ = env.reset(seed=3)
    assert np.array_equal(obs, make_env(world, num_envs=2, prompts=prompts).reset(seed=3)[0])
    assert env.step(np.array([1, 2]))[0].shape == (2, 16, 16, 3)
    Image.fromarray(prompts[0]).save(tmp_path / "start.png")
    out = tmp_path / "roll.gif"
    assert main(["rollout", str(world), "--image", str(tmp_path / "start.png"), "--actions", "1,2,3", "--out",
                 str(out), "--scale", "1"]) == 0
    assert decode_video(out).shape == (4, 16, 16, 3)

    # on the same engine: stopped after 2 steps and resumed, the run is the uninterrupted one, bit for bit
    run_cfg = build_run_config("dynamics", "tiny", data_path=str(data), overrides=[*OVERRIDES, "train.steps=4"],
                               deps={"tokenizer": str(world / "tokenizer"), "lam": str(world / "lam")})
    full = Trainer(run_cfg, tmp_path / "a", progress=False).fit()
    first = Trainer(run_cfg, tmp_path / "b", progress=False).fit(stop_after=2)
    second = Trainer(run_cfg, tmp_path / "b", progress=False).fit()
    assert first.interrupted and second.step == 4
    assert first.losses + second.losses == full.losses
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_a_checkpoint_written_before_the_flow_section_resumes_at_its_default():
    from playworld.train.config import RunConfig
    from playworld.train.engine import config_defaults, config_differences

    cfg = RunConfig(kind="dynamics", model=DynamicsConfig(dim=32, depth=1, heads=2))
    saved = cfg.to_dict()
    del saved["model"]["flow"]
    assert config_differences(saved, cfg.to_dict(), config_defaults(cfg)) == []


def test_the_backends_fps_benchmark_times_both_backends_per_step_count_against_maskgit_at_one_step(
        tmp_path, capsys, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    world = save_tiny_run(tmp_path / "world", backend="flow")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "backends_fps.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(world / "dynamics"), "--frames", "1", "--batch", "2",
                                      "--steps", "1", "2", "--guidance", "1", "3", "--precision", "fp32"])
    runpy.run_path(str(script), run_name="__main__")
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    # the run's flow model (dynamics given alone: tokenizer and LAM found beside it) and its MaskGIT twin
    assert [(r[-7], r[-6], r[-5]) for r in rows] == [
        (backend, steps, g) for backend in ("maskgit", "flow") for steps in ("1", "2") for g in ("1", "3")]
    assert rows[0][1] == "(twin)" and rows[2][0] == "world/dynamics"
    for r in rows:
        fps1, ratio1, fpsb, ratiob = map(float, r[-4:])
        assert fps1 > 0 and fpsb > 0
        assert ratio1 == pytest.approx(fps1 / float(rows[0][-4]), rel=0.02, abs=0.01)
        assert ratiob == pytest.approx(fpsb / float(rows[0][-2]), rel=0.02, abs=0.01)
    assert rows[0][-3] == rows[0][-1] == "1.00"
