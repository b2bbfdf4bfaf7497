"""Quantizers: exact index <-> code round trips, straight-through gradients, EMA updates, restarts, stats."""

import math

import pytest
import torch

from playworld.nn import FSQ, VectorQuantizer
from playworld.nn.quantize import usage_and_perplexity


def _vq(**kw) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(**{"num_codes": 16, "code_dim": 8, **kw})


@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("ema", [True, False])
def test_vq_round_trip_indices_codes_indices(ema, l2):
    vq = _vq(ema=ema, l2_normalize=l2).eval()
    idx = torch.randint(0, 16, (3, 5, 7))
    codes = vq.lookup(idx)
    assert codes.shape == (3, 5, 7, 8)
    out = vq(codes)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.quantized, codes)


def _fsq_preimage(fsq: FSQ, codes: torch.Tensor) -> torch.Tensor:
    """A latent z with bound(z) exactly on the grid point ``codes`` (bound is invertible)."""
    half_l = (fsq._levels - 1) * (1 + fsq.eps) / 2
    offset = torch.where(fsq._levels % 2 == 0, 0.5, 0.0)
    return torch.atanh((codes * fsq._half_width + offset) / half_l) - torch.atanh(offset / half_l)


def test_fsq_round_trip_and_codebook_size():
    fsq = FSQ((8, 5, 5, 5))
    assert fsq.num_codes == 1000 and fsq.dim == 4
    idx = torch.arange(1000)
    codes = fsq.lookup(idx)
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    assert codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c.tolist()) for c in codes}) == 1000  # a bijection onto the grid
    out = fsq(_fsq_preimage(fsq, codes))  # every code is reached
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.quantized, codes)
    torch.testing.assert_close(fsq.lookup(out.indices), out.quantized)


def test_fsq_reaches_every_level_and_no_more():
    fsq = FSQ((8, 5, 3, 2))
    z = torch.linspace(-20, 20, 20001)[:, None].expand(-1, 4)
    q = fsq(z).quantized
    assert [q[:, i].unique().numel() for i in range(4)] == [8, 5, 3, 2]
    torch.testing.assert_close(fsq(torch.zeros(1, 4)).quantized[0, 1:3], torch.zeros(2))  # odd levels: 0 is a code


@pytest.mark.parametrize("make", [lambda: _vq(), lambda: _vq(ema=False, l2_normalize=True), lambda: FSQ((4, 4, 3))])
def test_gradient_flows_straight_through(make):
    q = make().train()
    z = torch.randn(2, 3, q.dim, requires_grad=True)
    out = q(z)
    (out.quantized * torch.arange(q.dim)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert out.loss.shape == ()


def test_vq_straight_through_gradient_is_identity_without_l2():
    vq = _vq(commitment=0.0).train()
    z = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(10, 8)
    (vq(z).quantized * w).sum().backward()
    torch.testing.assert_close(z.grad, w)


def test_learned_codebook_gets_gradient_from_codebook_loss():
    vq = _vq(ema=False).train()
    vq(torch.randn(32, 8)).loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_ema_codebook_moves_towards_data():
    vq = _vq(init_from_data=False, dead_code_threshold=0.0, decay=0.9).train()
    centre = torch.full((8,), 3.0)
    data = centre + 0.1 * torch.randn(256, 8)
    before = (vq.codebook - centre).norm(dim=-1)
    for _ in range(20):
        idx = vq(data).indices
    after = (vq.codebook - centre).norm(dim=-1)
    used = idx.unique()
    assert (after[used] < 0.5 * before[used]).all()
    vq.eval()
    frozen = vq.codebook.clone()
    vq(data + 5)
    assert torch.equal(vq.codebook, frozen)  # no updates in eval mode


def test_first_training_batch_initialises_codes_on_data():
    vq = _vq().train()
    data = 5.0 + torch.randn(64, 8)
    vq(data)
    dist = torch.cdist(vq.codebook, data).min(dim=1).values
    assert dist.max() < 1.0  # after one EMA step every code is still close to a batch vector
    assert bool(vq.initialized)


@pytest.mark.parametrize("ema", [True, False])
def test_dead_code_is_restarted_from_batch_and_is_deterministic(ema):
    def run(seed):
        torch.manual_seed(seed)
        vq = VectorQuantizer(8, 4, ema=ema, dead_code_threshold=0.1).train()
        data = torch.randn(128, 4)
        vq(data)  # initialise on data
        with torch.no_grad():
            vq.codebook[3] = 100.0  # far from everything: never chosen
            vq.cluster_size[3] = 0.0  # and its usage has decayed away
        out = vq(data)
        return vq, data, out

    vq, data, out = run(0)
    assert torch.cdist(vq.codebook[3:4], data).min() < 0.5  # moved onto (near) a batch vector
    assert (out.indices == 3).any()  # and won that vector at once
    vq2, _, _ = run(0)
    assert torch.equal(vq.codebook, vq2.codebook)


def test_tiny_codebook_of_eight_codes_is_used():
    # the latent action model's case: 8 codes, a batch of B x (T - 1) = 8 x 7 action latents
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16, l2_normalize=True).train()
    for _ in range(50):
        out = vq(torch.randn(8, 7, 16))
    assert out.indices.shape == (8, 7)
    assert out.usage == 1.0 and out.perplexity > 6.0
    assert vq.usage_histogram().shape == (8,)
    torch.testing.assert_close(vq.usage_histogram().sum(), torch.tensor(1.0))


def test_perplexity_is_num_codes_for_uniform_assignment():
    for q in (_vq().eval(), FSQ((4, 3)).eval()):
        idx = torch.arange(q.num_codes).repeat(3)
        codes = q.lookup(idx)
        out = q(_fsq_preimage(q, codes) if isinstance(q, FSQ) else codes)
        assert torch.equal(out.indices, idx)
        torch.testing.assert_close(out.perplexity, torch.tensor(float(q.num_codes)))
        assert out.usage == 1.0
    usage, ppl = usage_and_perplexity(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    assert usage == 0.25 and math.isclose(ppl.item(), 1.0)


@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 4, 5)])
def test_arbitrary_leading_dims(shape):
    for q in (_vq(l2_normalize=True), FSQ((8, 5, 5, 5))):
        z = torch.randn(*shape, q.dim)
        out = q.eval()(z)
        assert out.quantized.shape == z.shape and out.indices.shape == shape
        assert out.indices.dtype == torch.long
        torch.testing.assert_close(q.lookup(out.indices), out.quantized)
        assert q.train()(z).quantized.shape == z.shape


def test_state_dict_holds_codebook_and_usage():
    vq = _vq().train()
    vq(torch.randn(64, 8))
    keys = set(vq.state_dict())
    assert {"codebook", "ema_sum", "cluster_size", "initialized"} <= keys
    fresh = _vq()
    fresh.load_state_dict(vq.state_dict())
    assert torch.equal(fresh.codebook, vq.codebook)
    assert "cluster_size" in FSQ().state_dict()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(1, 4)
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 4, decay=1.0)
    with pytest.raises(ValueError, match="levels"):
        FSQ((8, 1))
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 8\)"):
        _vq()(torch.randn(3, 5))
    with pytest.raises(ValueError, match="expects"):
        FSQ((8, 5))(torch.randn(3, 5))


def test_bf16_autocast_inputs_keep_their_dtype():
    vq = _vq().train()
    z = torch.randn(4, 8, dtype=torch.bfloat16)
    out = vq(z)
    assert out.quantized.dtype == torch.bfloat16 and vq.codebook.dtype == torch.float32
