"""Video tokenizer: shapes, causality in time, cached streaming == full pass, gradients, overfitting a clip."""

import dataclasses

import pytest
import torch

from playworld.config import from_dict
from playworld.errors import ConfigError
from playworld.models.base import LossOutput, Trainable
from playworld.models.tokenizer import TokenizerConfig, TokenizerEncoding, VideoTokenizer


def _config(**kw) -> TokenizerConfig:
    return TokenizerConfig(**{"image_size": 16, "patch": 4, "dim": 64, "enc_depth": 1, "dec_depth": 1, "heads": 4,
                              "num_codes": 64, "code_dim": 8, **kw})


def _model(**kw) -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(_config(**kw))


def moving_square_clip(b: int = 1, t: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(b, t, size, size, 3) in [0, 1]: colour ramps with a coloured square moving right and down."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    v = torch.empty(b, t, size, size, 3)
    v[..., 0] = 0.2 + 0.5 * ramp
    v[..., 1] = 0.1 + 0.3 * ramp[:, None]
    v[..., 2] = 0.4
    side = size // 4
    for i in range(b):
        colour = torch.rand(3, generator=g)
        x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        for j in range(t):
            x, y = x0 + j, y0 + j // 2
            v[i, j, y : y + side, x : x + side] = colour
    return v


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_shapes_and_token_grid(quantizer):
    m = _model(quantizer=quantizer).eval()
    video = torch.rand(2, 3, 16, 16, 3)
    enc = m.encode(video)
    assert isinstance(enc, TokenizerEncoding)
    assert m.grid == (4, 4) and m.tokens_per_frame == 16
    e = 8 if quantizer == "vq" else 4
    assert enc.indices.shape == (2, 3, 4, 4) and enc.indices.dtype == torch.long
    assert enc.quantized.shape == (2, 3, 16, e)
    assert 0 <= int(enc.indices.min()) and int(enc.indices.max()) < m.num_codes
    assert m.num_codes == m.config.codebook_size == (64 if quantizer == "vq" else 1000)
    out = m.decode(enc.indices)
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(m.reconstruct(video), out)  # reconstruct = decode(encode)
    assert isinstance(m, Trainable)


def test_patchify_round_trip_and_layout():
    m = _model()
    video = torch.rand(1, 2, 16, 16, 3)
    patches = m.patchify(video)
    assert patches.shape == (1, 2, 16, 48)
    torch.testing.assert_close(patches[0, 0, 1].reshape(4, 4, 3), video[0, 0, 0:4, 4:8])  # row-major tokens
    assert torch.equal(m.unpatchify(patches), video)


@pytest.mark.parametrize("quantizer,stem", [("vq", "linear"), ("fsq", "linear"), ("vq", "conv")])
def test_future_frames_do_not_change_past_tokens_or_reconstruction(quantizer, stem):
    m = _model(quantizer=quantizer, stem=stem, stem_features=8, enc_depth=2, dec_depth=2).eval()
    video = torch.rand(2, 5, 16, 16, 3)
    for t in range(4):
        changed = video.clone()
        changed[:, t + 1 :] = torch.rand_like(changed[:, t + 1 :])
        a, b = m.encode(video), m.encode(changed)
        assert torch.equal(a.indices[:, : t + 1], b.indices[:, : t + 1])
        assert not torch.equal(a.indices[:, t + 1 :], b.indices[:, t + 1 :])
        torch.testing.assert_close(m.reconstruct(video)[:, : t + 1], m.reconstruct(changed)[:, : t + 1])
        # the decoder alone is causal too
        da, db = m.decode(a.indices), m.decode(b.indices)
        torch.testing.assert_close(da[:, : t + 1], db[:, : t + 1])


@pytest.mark.parametrize("max_frames", [16, 8])
@pytest.mark.parametrize("quantizer,stem", [("vq", "linear"), ("fsq", "linear"), ("vq", "conv")])
def test_frame_by_frame_with_cache_equals_full_pass(quantizer, stem, max_frames):
    m = _model(quantizer=quantizer, stem=stem, stem_features=8, enc_depth=2, dec_depth=2).eval()
    video = torch.rand(2, 5, 16, 16, 3)
    full = m.encode(video)
    full_frames = m.decode(full.indices)
    cache = m.new_cache(max_frames=max_frames)
    indices, quantized, frames = [], [], []
    for t in range(5):
        probe = m.encode_step(video[:, t : t + 1], cache, commit=False)  # peeking does not advance
        step = m.encode_step(video[:, t : t + 1], cache)
        assert torch.equal(probe.indices, step.indices)
        indices.append(step.indices)
        quantized.append(step.quantized)
        frames.append(m.decode_step(step.indices, cache))
    assert cache.encoder.pos == 5 and cache.decoder.pos == 5
    assert torch.equal(torch.cat(indices, 1), full.indices)
    torch.testing.assert_close(torch.cat(quantized, 1), full.quantized, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(frames, 1), full_frames, atol=1e-5, rtol=1e-5)
    # a chunk of several frames at once, after the first two
    cache = m.new_cache(max_frames=max_frames)
    m.encode_step(video[:, :2], cache)
    assert torch.equal(m.encode_step(video[:, 2:], cache).indices, full.indices[:, 2:])


@pytest.mark.parametrize("kw", [{}, {"ema_codebook": False}, {"quantizer": "fsq"}, {"l2_codes": False},
                                {"stem": "conv", "stem_features": 8}])
def test_compute_loss_gives_gradients_to_all_trainable_parameters(kw):
    m = _model(**kw).train()
    out = m.compute_loss(torch.rand(2, 3, 16, 16, 3))
    assert isinstance(out, LossOutput) and out.loss.shape == () and torch.isfinite(out.loss)
    assert {"recon_mse", "psnr", "quant_loss", "codebook_usage", "perplexity"} <= set(out.metrics)
    assert all(v.shape == () and not v.requires_grad for v in out.metrics.values())
    out.loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, f"no gradient for {missing}"
    if kw.get("ema_codebook", True) and kw.get("quantizer", "vq") == "vq":
        assert "quantizer.codebook" in m.state_dict() and "quantizer.codebook" not in dict(m.named_parameters())


def test_edge_and_temporal_terms_measure_what_they_name():
    """The edge term is zero for a reconstruction off by a constant and positive for a blurred one; the temporal
    term is zero when every frame is off by the same image and positive when one frame moves; both add to the
    loss at their weights and are absent at weight 0."""
    m = _model(edge_weight=2.0, temporal_weight=3.0).eval()
    video = moving_square_clip(1, 4, 16)
    base = m.compute_loss(video)
    assert {"edge_loss", "temporal_loss"} <= set(base.metrics)
    plain = _model().eval().compute_loss(video)
    assert "edge_loss" not in plain.metrics and "temporal_loss" not in plain.metrics
    expected = base.metrics["recon_mse"] + base.metrics["quant_loss"] + 2.0 * base.metrics["edge_loss"] \
        + 3.0 * base.metrics["temporal_loss"]
    assert torch.allclose(base.loss, expected, atol=1e-6)

    def terms(recon: torch.Tensor) -> tuple[float, float]:
        m._pixels = lambda *_a, **_k: recon  # type: ignore[method-assign]
        out = m.compute_loss(video)
        return float(out.metrics["edge_loss"]), float(out.metrics["temporal_loss"])

    shifted = video + 0.1
    assert terms(shifted) == pytest.approx((0.0, 0.0), abs=1e-6)
    blurred = (video + video.roll(1, dims=2) + video.roll(1, dims=3)) / 3
    assert terms(blurred)[0] > 0.01
    moved = video.clone()
    moved[:, 2] = video[:, 2].roll(2, dims=2)
    assert terms(moved)[1] > 1e-3
    with pytest.raises(ConfigError, match="edge_weight"):
        _config(edge_weight=-1.0)


def test_the_moving_term_weighs_only_the_pixels_that_changed():
    """moving_loss is the MSE over the pixels that changed since the previous frame: zero for an error on the
    still background alone, the error itself where the moving square is wrong; added at its weight."""
    m = _model(moving_weight=4.0).eval()
    video = moving_square_clip(1, 4, 16)
    out = m.compute_loss(video)
    expected = out.metrics["recon_mse"] + out.metrics["quant_loss"] + 4.0 * out.metrics["moving_loss"]
    assert torch.allclose(out.loss, expected, atol=1e-6)
    moving = (torch.diff(video, dim=1).abs().amax(-1, keepdim=True) > 0.1).expand_as(video[:, 1:])
    assert 0 < moving.float().mean() < 0.2  # the square is a small part of the frame

    def term(recon: torch.Tensor) -> float:
        m._pixels = lambda *_a, **_k: recon  # type: ignore[method-assign]
        return float(m.compute_loss(video).metrics["moving_loss"])

    background = video.clone()
    background[:, 1:][~moving] += 0.2  # wrong only where nothing moved
    assert term(background) == pytest.approx(0.0, abs=1e-7)
    on_square = video.clone()
    on_square[:, 1:][moving] += 0.2
    assert term(on_square) == pytest.approx(0.04, rel=1e-4)
    assert "moving_loss" not in _model().eval().compute_loss(video).metrics
    with pytest.raises(ConfigError, match="moving_weight"):
        _config(moving_weight=-0.5)


def test_inference_paths_leave_quantizer_statistics_alone():
    m = _model().train()
    video = torch.rand(1, 2, 16, 16, 3)
    before = {k: v.clone() for k, v in m.quantizer.state_dict().items()}
    m.encode(video)
    m.reconstruct(video)
    for k, v in m.quantizer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert m.quantizer.training  # mode restored
    m.compute_loss(video)
    assert not torch.equal(m.quantizer.cluster_size, before["cluster_size"])


@pytest.mark.parametrize("quantizer,stem", [("vq", "linear"), ("fsq", "linear"), ("vq", "conv")])
def test_overfits_a_tiny_clip(quantizer, stem):
    """A moving coloured square over colour ramps, 200 Adam steps: well above 28 dB (32-45 dB over seeds 0-4)."""
    torch.manual_seed(0)
    m = VideoTokenizer(_config(quantizer=quantizer, stem=stem, stem_features=8)).train()
    video = moving_square_clip(1, 4, 16)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    first = None
    for _ in range(200):
        out = m.compute_loss(video)
        first = first or {k: float(out.metrics[k]) for k in ("change_kept", "moving_psnr", "psnr")}
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
    m.eval()
    mse = (m.reconstruct(video) - video).square().mean()
    psnr = -10 * torch.log10(mse)
    assert psnr > 28.0, f"{quantizer}: PSNR {psnr:.1f} dB after 200 steps"
    # the moving square's change is learned too: logged as the pixel change kept and the PSNR where it moved
    last = m.compute_loss(video).metrics
    assert abs(float(last["change_kept"]) - 1) < 0.2 < abs(first["change_kept"] - 1)
    assert float(last["moving_psnr"]) > first["moving_psnr"] + 10 and float(last["moving_psnr"]) < float(last["psnr"])
    assert m.encode(video).indices.unique().numel() > 4  # uses more than a handful of codes


def test_config_validation_names_the_bad_value():
    with pytest.raises(ConfigError, match="image_size 30 is not divisible by patch 4"):
        _config(image_size=30)
    with pytest.raises(ConfigError, match="dim 64 / heads 3"):
        _config(heads=3)
    with pytest.raises(ConfigError, match="tokenizer.stem must be"):
        _config(stem="unet")
    with pytest.raises(ConfigError, match="power of two"):
        _config(image_size=24, patch=6, stem="conv")
    with pytest.raises(ConfigError, match="'pq'"):
        _config(quantizer="pq")
    with pytest.raises(ConfigError, match="fsq_levels"):
        _config(fsq_levels=(8, 1))
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        _config(ema_decay=1.5)
    with pytest.raises(ConfigError, match="enc_depth"):
        _config(enc_depth=0)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TokenizerConfig, {"dimm": 3})
    cfg = from_dict(TokenizerConfig, {"quantizer": "fsq", "fsq_levels": [8, 5, 5, 5]})
    assert cfg.fsq_levels == (8, 5, 5, 5) and cfg.codebook_size == 1000
    assert dataclasses.fields(TokenizerConfig)[0].metadata["help"]


def test_shape_errors_are_clear():
    m = _model().eval()
    with pytest.raises(ValueError, match=r"expects video \(B, T, 16, 16, 3\)"):
        m.encode(torch.rand(1, 2, 32, 32, 3))
    with pytest.raises(ValueError, match="expects video"):
        m.encode(torch.rand(2, 16, 16, 3))
    with pytest.raises(TypeError, match="float video"):
        m.encode(torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expects indices \(B, T, 4, 4\)"):
        m.decode(torch.zeros(1, 2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        m.decode(torch.full((1, 1, 4, 4), 64, dtype=torch.long))


def test_decoder_only_training_keeps_the_tokens_and_improves_the_decoder(tmp_path):
    """``decoder_only`` fine-tunes codes -> pixels of a trained tokenizer: every token stays what it was (so
    LAM and dynamics runs on them stay valid), the encoder half is out of the optimizer, and the
    reconstruction error on the data falls; without ``train.init_from`` the run is refused."""
    from playworld.release import load_model
    from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig, Trainer

    from helpers import make_dataset

    data = make_dataset(tmp_path / "ds", episodes=4, length=8)
    tok = _config(dim=32, heads=2, num_codes=32)
    cfg = RunConfig(kind="tokenizer", model=tok, optim=OptimConfig(lr=3e-3, warmup_steps=1),
                    data=DataConfig(path=str(data), clip_len=4, batch_size=2),
                    train=TrainConfig(steps=15, log_every=5, val_every=0, ckpt_every=15, seed=0, precision="fp32"))
    Trainer(cfg, tmp_path / "enc", progress=False).fit()
    source = load_model(tmp_path / "enc")

    decoder = dataclasses.replace(cfg, model=dataclasses.replace(tok, decoder_only=True),
                                  train=dataclasses.replace(cfg.train, steps=120, init_from=str(tmp_path / "enc")))
    trainer = Trainer(decoder, tmp_path / "dec", progress=False)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    for part in trainer.model.encoder_half():
        assert all(id(p) not in optimized for p in part.parameters())
    assert any(id(p) in optimized for p in trainer.model.decoder.parameters())
    trainer.fit()
    tuned = load_model(tmp_path / "dec")

    from playworld.data import Dataset

    video = torch.from_numpy(Dataset(data).frames(0)[:4][None].copy()).float() / 255.0  # (1, 4, 16, 16, 3)
    assert torch.equal(tuned.encode(video).indices, source.encode(video).indices)
    for name, value in source.state_dict().items():
        if name.startswith(("patch_in.", "encoder.", "to_code.", "quantizer.")):
            assert torch.equal(tuned.state_dict()[name], value), name
    assert not torch.equal(tuned.decoder.blocks[0].mlp.fc1.weight, source.decoder.blocks[0].mlp.fc1.weight)
    err = [torch.nn.functional.mse_loss(m.reconstruct(video), video).item() for m in (source, tuned)]
    assert err[1] < 0.92 * err[0], err  # 13% lower after 120 steps here

    with pytest.raises(ConfigError, match="decoder_only.*train.init_from"):
        Trainer(dataclasses.replace(decoder, train=dataclasses.replace(decoder.train, init_from="")),
                tmp_path / "refused", progress=False)


def test_a_deeper_decoder_starts_from_the_source_reconstructions(tmp_path):
    """``decoder_only`` with ``dec_depth`` above the source's adds decoder blocks that start as the identity:
    before any step the tokenizer reconstructs exactly as the source does; only trailing whole blocks
    may be missing."""
    from playworld.errors import CheckpointError
    from playworld.release import save_release
    from playworld.train import DataConfig, RunConfig, TrainConfig, Trainer

    from helpers import make_dataset

    source = _model(dim=32, heads=2, num_codes=32).eval()
    cfg = RunConfig(kind="tokenizer", model=source.config,
                    data=DataConfig(path=str(make_dataset(tmp_path / "ds", episodes=2, length=6)), clip_len=4,
                                    batch_size=2),
                    train=TrainConfig(steps=1, val_every=0, precision="fp32"))
    save_release(tmp_path / "src", source.state_dict(), cfg.to_dict())
    deeper = dataclasses.replace(source.config, dec_depth=3, decoder_only=True)
    trainer = Trainer(dataclasses.replace(cfg, model=deeper, train=dataclasses.replace(cfg.train, init_from=str(
        tmp_path / "src"))), tmp_path / "deep", progress=False)
    model = trainer.model.eval()
    assert len(model.decoder.blocks) == 3
    video = moving_square_clip(b=2, t=3)
    assert torch.allclose(model.reconstruct(video), source.reconstruct(video), atol=1e-6)
    assert model.decoder.blocks[2].mlp.fc2.weight.abs().sum() == 0 and model.decoder.blocks[0].mlp.fc2.weight.abs().sum() > 0
    block0 = {f"decoder.blocks.0.{n}" for n in model.decoder.blocks[0].state_dict()}
    with pytest.raises(CheckpointError, match=r"src.*decoder block\(s\) \[0\] of 3"):
        model.init_from_missing(block0, str(tmp_path / "src"))
