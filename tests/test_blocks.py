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


def test_commit_frames_skips_outputs_but_leaves_the_same_cache():
    m = _model()
    x = torch.randn(2, 4, 6, 32)
    full = m(x)
    lean, plain = m.new_cache(max_frames=8), m.new_cache(max_frames=8)
    m.commit_frames(x[:, :3], lean)
    m(x[:, :3], cache=plain, commit=True)
    for a, b in zip(lean.layers, plain.layers):
        torch.testing.assert_close(a.k, b.k)
        torch.testing.assert_close(a.v, b.v)
    torch.testing.assert_close(m(x[:, 3:], cache=lean), full[:, 3:], atol=1e-5, rtol=1e-5)
    assert lean.pos == 3 and lean.frames == 3


def test_ring_window_with_prompt_chunk_equals_one_frame_at_a_time():
    # a chunk of frames committed at once sees, per frame, the same window as frame-by-frame steps
    m = _model()
    x = torch.randn(1, 7, 6, 32)
    one = m.new_cache(max_frames=3)
    ref = torch.cat([m(x[:, t : t + 1], cache=one, commit=True) for t in range(7)], 1)
    chunk = m.new_cache(max_frames=3)
    out = torch.cat([m(x[:, :2], cache=chunk, commit=True), m(x[:, 2:6], cache=chunk, commit=True),
                     m(x[:, 6:], cache=chunk, commit=True)], 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert chunk.frames == 3 and chunk.pos == 7


def test_rows_keep_their_own_positions_and_commit_masks():
    # row 0 plays 5 frames; row 1 starts later (put_rows) and skips a step (commit mask): each row's
    # outputs must equal those of a cache that only ever held that row's frames
    m = _model()
    xa, xb = torch.randn(1, 5, 6, 32), torch.randn(1, 3, 6, 32)
    ref_a = m(xa)
    ref_b = m(xb)
    batch = m.new_cache(max_frames=8)
    batch.allocate(2, heads=4, head_dim=8)
    solo_a = m.new_cache(max_frames=8)
    m(xa[:, :2], cache=solo_a, commit=True)
    batch.put_rows(torch.tensor([0]), solo_a)
    solo_b = m.new_cache(max_frames=8)
    m(xb[:, :1], cache=solo_b, commit=True)
    batch.put_rows(torch.tensor([1]), solo_b)
    assert batch.next_pos.tolist() == [2, 1]
    step = torch.stack([xa[:, 2], xb[:, 1]], 1)[0][:, None]  # (2, 1, S, D)
    out = m(step, cache=batch, commit=torch.tensor([True, False]))
    torch.testing.assert_close(out[0], ref_a[0, 2:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref_b[0, 1:2], atol=1e-5, rtol=1e-5)
    assert batch.next_pos.tolist() == [3, 1]  # row 1 did not commit: the frame is forgotten
    for ta in (3, 4):
        tb = ta - 2
        step = torch.stack([xa[:, ta], xb[:, tb]], 1)[0][:, None]
        out = m(step, cache=batch, commit=True)
        torch.testing.assert_close(out[0], ref_a[0, ta : ta + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], ref_b[0, tb : tb + 1], atol=1e-5, rtol=1e-5)
    assert batch.row_frames().tolist() == [5, 3]
    with pytest.raises(ValueError, match="different positions"):
        _ = batch.pos
    batch.select(torch.tensor([1]))
    assert batch.batch_size == 1 and batch.pos == 3


def _reference_attention(attn, x: torch.Tensor, causal: bool, rope=None) -> torch.Tensor:
    """Attention computed as written: one scaled_dot_product_attention call over the whole batch."""
    from einops import rearrange

    from playworld.nn.rope import apply_rope

    q, k, v = rearrange(attn.qkv(x), "n l (three h k) -> three n h l k", three=3, h=attn.heads)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal and x.shape[1] > 1)
    return attn.proj(rearrange(out, "n h l k -> n l (h k)"))


def test_single_position_attention_is_its_value_projection():
    from playworld.nn.blocks import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    x = torch.randn(10, 1, 32)
    torch.testing.assert_close(attn(x, causal=True), _reference_attention(attn, x, causal=True))
    # and the output does depend on x (the shortcut is not a constant)
    assert not torch.allclose(attn(x)[0], attn(x)[1])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_over_a_batch_larger_than_one_kernel_call_is_sliced_exactly(monkeypatch, causal):
    """CUDA's fused kernels reject a batch beyond their grid limit; slices of the batch give the same result."""
    import playworld.nn.blocks as blocks
    from playworld.nn.rope import rope_angles

    torch.manual_seed(0)
    attn = blocks.Attention(32, 4, rope=True).eval()
    x = torch.randn(11, 5, 32)
    rope = rope_angles(torch.arange(5), 8)
    whole = attn(x, causal=causal, rope=rope)
    monkeypatch.setattr(blocks, "SDPA_MAX_BATCH", 4)  # 3 slices, the last one short
    sliced = attn(x, causal=causal, rope=rope)
    torch.testing.assert_close(sliced, whole)
    torch.testing.assert_close(whole, _reference_attention(attn, x, causal, rope))
