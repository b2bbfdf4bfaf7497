"""ST-transformer blocks: causality in time, cached generation equals full forward, bounded cache."""

import pytest
import torch

from playworld.nn import STTransformer


def _model(causal: bool = True) -> STTransformer:
    torch.manual_seed(0)
    m = STTransformer(dim=32, depth=2, heads=4, num_spatial=6, causal=causal).eval()
    return m


def test_future_frames_do_not_change_past_outputs():
    m = _model()
    x = torch.randn(2, 5, 6, 32)
    y = m(x)
    x2 = x.clone()
    x2[:, 3:] = torch.randn_like(x2[:, 3:])  # change frames 3 and 4
    y2 = m(x2)
    torch.testing.assert_close(y[:, :3], y2[:, :3])
    assert not torch.allclose(y[:, 3:], y2[:, 3:])


def test_non_causal_model_does_see_the_future():
    m = _model(causal=False)
    x = torch.randn(1, 4, 6, 32)
    x2 = x.clone()
    x2[:, 3] += 1.0
    assert not torch.allclose(m(x)[:, 0], m(x2)[:, 0])


def test_cached_frame_by_frame_equals_full_forward():
    m = _model()
    x = torch.randn(2, 5, 6, 32)
    full = m(x)
    cache = m.new_cache(max_frames=16)
    outs = []
    for t in range(5):
        probe = m(x[:, t : t + 1], cache=cache, commit=False)  # refine without committing
        out = m(x[:, t : t + 1], cache=cache, commit=True)
        torch.testing.assert_close(probe, out)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 5 and cache.frames == 5


def test_sliding_window_cache_matches_windowed_forward_and_stays_bounded():
    # With one block, cached keys depend on their own frame only, so a sliding window of 3 frames
    # must equal a fresh forward over those 3 frames. (Deeper stacks carry older context through
    # cached features: the usual streaming behaviour, bounded in memory all the same.)
    torch.manual_seed(0)
    m = STTransformer(dim=32, depth=1, heads=4, num_spatial=6).eval()
    x = torch.randn(1, 9, 6, 32)
    cache = m.new_cache(max_frames=3)
    for t in range(9):
        out = m(x[:, t : t + 1], cache=cache, commit=True)
        assert cache.frames == min(t + 1, 3)
    # last output attends to exactly the 3 frames 6..8 (RoPE: only distances matter)
    ref = m(x[:, 6:9])[:, -1:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_shape_errors_are_clear():
    m = _model()
    with pytest.raises(ValueError, match="expects"):
        m(torch.randn(1, 2, 5, 32))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = STTransformer(dim=32, depth=2, heads=4, num_spatial=6)
    b = STTransformer(dim=32, depth=2, heads=4, num_spatial=6, grad_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 6, 32)
    a(x).square().mean().backward()
    b(x).square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_window_larger_than_frames_seen_keeps_every_past_frame():
    # regression: with fewer cached frames than the window, none may be dropped
    m = _model()
    x = torch.randn(1, 5, 6, 32)
    full = m(x)
    cache = m.new_cache(max_frames=8)
    outs = [m(x[:, t : t + 1], cache=cache, commit=True) for t in range(5)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_2d_spatial_rope_scores_depend_only_on_the_offset():
    from playworld.nn.blocks import apply_rope, grid_rope_angles

    torch.manual_seed(0)
    cos, sin = grid_rope_angles((4, 5), 16, extra=1)
    assert cos.shape == (21, 8)
    q, k = torch.randn(16), torch.randn(16)
    qs = apply_rope(q.expand(21, 16), cos, sin)
    ks = apply_rope(k.expand(21, 16), cos, sin)
    score = qs @ ks.t()  # (S+1, S+1)

    def at(r, c):
        return r * 5 + c

    torch.testing.assert_close(score[at(0, 0), at(1, 2)], score[at(2, 1), at(3, 3)])
    torch.testing.assert_close(score[at(3, 4), at(0, 0)], score[at(3, 4) - at(0, 0), at(0, 0) - at(0, 0)])
    assert not torch.allclose(score[at(0, 0), at(1, 2)], score[at(0, 0), at(2, 1)])  # rows != columns
    torch.testing.assert_close(qs[-1], q)  # the extra (summary) token is not rotated
    with pytest.raises(ValueError, match="divisible by 4"):
        grid_rope_angles((2, 2), 6)
