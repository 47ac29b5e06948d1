"""The hand-written autograd pieces against torch's own formulas: values and gradients."""

from __future__ import annotations

import pytest
import torch

from disttgl.kernels import cos_encoding, dense_slots, dropout, gather_rows, outer_sum, slot_attention


def _double(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


@pytest.mark.parametrize("shape", [(7,), (4, 3)])
def test_cos_encoding_matches_autograd(shape):
    dt = torch.rand(*shape, dtype=torch.float64) * 1e3
    w, b = _double(5, seed=1), _double(5, seed=2)
    got = cos_encoding(dt, w, b)
    assert torch.allclose(got, torch.cos(dt.unsqueeze(-1) * w + b))
    assert torch.autograd.gradcheck(lambda w, b: cos_encoding(dt, w, b), (w, b))


def test_cos_encoding_of_large_arguments_is_as_exact_as_float32_allows():
    """Reduced to [0, 2 pi) before cos, the error stays that of rounding w dt to float32."""
    dt = torch.linspace(0, 3e6, 20001)
    w, b = 10.0 ** -torch.linspace(0, 9, 100), torch.full((100,), 0.5)
    exact = torch.cos(dt.double().unsqueeze(1) * w.double() + b.double())
    arg32 = torch.addcmul(b, dt.unsqueeze(1), w)  # the float32 argument's own rounding error
    bound = (arg32.double() - (dt.double().unsqueeze(1) * w.double() + b.double())).abs() + 4 * arg32.abs() * 2 ** -24
    err = (cos_encoding(dt, w, b).double() - exact).abs()
    assert bool((err <= bound + 1e-6).all())
    small = arg32.abs() < 100
    assert err[small].max() < 1e-5


def _reference_attention(c, pad, keep, *parts):
    """The slot attention written with plain autograd ops."""
    xs, qs = parts[0::2], parts[1::2]
    score = c + sum(torch.bmm(x, q.transpose(1, 2)) for x, q in zip(xs, qs))
    score = torch.nn.functional.leaky_relu(score, 0.2).masked_fill(pad, -1e30)
    att = torch.softmax(score, 1).masked_fill(pad, 0.0)
    att = att if keep is None else att * keep
    return (*(torch.bmm(att.transpose(1, 2), x) for x in xs), att.sum(1))


@pytest.mark.parametrize("dropped", [False, True])
def test_slot_attention_matches_plain_autograd(dropped):
    r, k, h = 5, 4, 2
    pad = torch.zeros(r, k, 1, dtype=torch.bool)
    pad[1, 2:] = True
    pad[3] = True  # a root with no neighbour
    keep = (torch.rand(r, k, h, dtype=torch.float64) > 0.3) / 0.7 if dropped else None
    inputs = (_double(r, 1, h, seed=1), _double(r, k, 6, seed=2), _double(r, h, 6, seed=3),
              _double(r, k, 3, seed=4), _double(r, h, 3, seed=5))

    def fused(c, *parts):
        sums, total = slot_attention(c, pad, keep, list(zip(parts[0::2], parts[1::2])))
        return (*sums, total)

    got, want = fused(*inputs), _reference_attention(inputs[0], pad, keep, *inputs[1:])
    for g, w in zip(got, want):
        assert torch.allclose(g, w)
    assert torch.equal(got[0][3], torch.zeros(h, 6)) and torch.equal(got[-1][3], torch.zeros(h))
    assert torch.autograd.gradcheck(fused, inputs)


def test_outer_sum_is_a_sum_of_small_inner_bmms():
    a, b = _double(3, 4, 2, grad=False), _double(3, 2, 5, seed=1, grad=False)
    c, d = _double(3, 4, 2, seed=2, grad=False), _double(3, 2, 5, seed=3, grad=False)
    assert torch.allclose(outer_sum((a, b)), torch.bmm(a, b))
    assert torch.allclose(outer_sum((a, b), (c, d)), torch.bmm(a, b) + torch.bmm(c, d))


def test_gather_rows_sums_repeated_rows_in_backward():
    src = _double(6, 3)
    index = torch.tensor([4, 0, 4, 4, 2, 0, 5])  # rows 1 and 3 unused, row 4 three times
    out = gather_rows(src, index)
    assert torch.equal(out, src.index_select(0, index))
    assert torch.autograd.gradcheck(lambda s: gather_rows(s, index), (src,))
    g = torch.randn(7, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(gather_rows(src, index), src, g)
    assert torch.allclose(grad, torch.zeros(6, 3, dtype=torch.float64).index_add_(0, index, g))
    assert torch.equal(grad[1], torch.zeros(3)) and torch.equal(grad[3], torch.zeros(3))


def test_dense_slots_layout():
    nbr_root = torch.tensor([0, 0, 0, 2, 3, 3])  # roots 1 and 4 have no neighbour
    slot, mask = dense_slots(nbr_root, 5)
    assert mask.shape == (5, 3)
    assert slot.tolist() == [0, 1, 2, 6, 9, 10]
    assert mask.sum(1).tolist() == [3, 0, 1, 2, 0]
    empty_slot, empty_mask = dense_slots(torch.zeros(0, dtype=torch.long), 3)
    assert empty_slot.numel() == 0 and empty_mask.shape == (3, 1) and not empty_mask.any()
    with pytest.raises(ValueError, match="grouped by root"):
        dense_slots(torch.tensor([0, 2, 1]), 3)


def test_dropout_rate_scale_determinism_and_gradient():
    x = torch.ones(400, 250, requires_grad=True)
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0, training=True) is x
    torch.manual_seed(7)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.01  # 100k draws: sd 0.0013
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1.25))
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.2, training=True), y)  # torch's seed decides the mask
    assert not torch.equal(dropout(x, 0.2, training=True), y)  # and it moves on
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d/dx (x * mask * 1.25) with x = 1
