"""The hand-written autograd pieces against torch's own formulas: values and gradients."""

from __future__ import annotations

import os

import pytest
import torch

from disttgl.models import native
from disttgl.models.kernels import cos_encoding, dense_slots, dropout, dropout_scale, slot_attention, slot_layout


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
@pytest.mark.parametrize("with_data", [False, True])
def test_slot_attention_matches_plain_autograd(dropped, with_data):
    r, h, n = 5, 2, 4
    # root 0 reads node 2 twice (a repeated contact), root 3 has no neighbour, node 3 is read by nobody
    nbr_root = torch.tensor([0, 0, 0, 1, 1, 2, 4, 4, 4])
    nbr_idx = torch.tensor([2, 0, 2, 1, 2, 0, 1, 0, 2])
    layout = slot_layout(nbr_root, nbr_idx, r)
    k = layout.shape[1]
    keep = (torch.rand(r, k, h, dtype=torch.float64) > 0.3) / 0.7 if dropped else None
    dt = layout.padded(torch.rand(len(nbr_root), dtype=torch.float64) * 50)
    inputs = [_double(r, 1, h, seed=1), _double(n, 6, seed=2), _double(r, h, 6, seed=3),
              _double(3, seed=4), _double(3, seed=5), _double(r, h, 3, seed=6)]
    if with_data:
        inputs += [_double(r, k, 2, seed=7), _double(r, h, 2, seed=8)]

    def fused(c, src, q_src, w, b, q_time, *data):
        data = tuple(zip(data[0::2], data[1::2]))
        sums, total = slot_attention(layout, c, keep, (src, q_src), (dt, w, b, q_time), data)
        return (*sums, total)

    def reference(c, src, q_src, w, b, q_time, *data):
        x_src = src[layout.gather_index].view(r, k, -1)
        x_time = torch.cos(dt.unsqueeze(1) * w + b).view(r, k, -1)
        return _reference_attention(c, ~layout.mask.unsqueeze(2), keep, x_src, q_src, x_time, q_time, *data)

    got, want = fused(*inputs), reference(*inputs)
    for g, w in zip(got, want):
        assert torch.allclose(g, w)
    assert torch.equal(got[0][3], torch.zeros(h, 6)) and torch.equal(got[-1][3], torch.zeros(h))
    g_out = [torch.randn_like(t) for t in got]
    for g, w in zip(torch.autograd.grad(got, inputs, g_out), torch.autograd.grad(want, inputs, g_out)):
        assert torch.allclose(g, w)
    assert torch.autograd.gradcheck(fused, tuple(inputs))


def test_slot_attention_leaves_data_parts_without_gradient():
    layout = slot_layout(torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1]), 2)
    src, q = torch.randn(2, 4, requires_grad=True), torch.randn(2, 2, 4, requires_grad=True)
    w, b, q_time = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True), torch.randn(2, 2, 3)
    edge, q_edge = torch.randn(2, 2, 5), torch.randn(2, 2, 5, requires_grad=True)
    sums, total = slot_attention(layout, torch.zeros(2, 1, 2), None, (src, q),
                                 (layout.padded(torch.rand(3)), w, b, q_time), ((edge, q_edge),))
    grads = torch.autograd.grad(sum(t.sum() for t in (*sums, total)), (src, q, w, b, q_edge))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


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


# ----------------------------------------------------------------- fused C kernels (disttgl.models.native)

@pytest.fixture(scope="module")
def kernels():
    k = native.kernels()
    if k is None:
        pytest.skip("the fused kernels did not build here (no C compiler); the torch path is tested above")
    return k


def _float_inputs(r, s, h, d_s, d_t, with_data, seed, dt_scale=3.0):
    """Random slot-attention inputs: ~1/4 of the roots without a neighbour, repeated neighbours."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 7, (r,), generator=g) * (torch.rand(r, generator=g) > 0.25)
    nbr_root = torch.repeat_interleave(torch.arange(r), counts)
    layout = slot_layout(nbr_root, torch.randint(0, s, (len(nbr_root),), generator=g), r)
    k = layout.shape[1]
    leaf = lambda *shape: torch.randn(*shape, generator=g).requires_grad_()  # noqa: E731
    w = (10.0 ** -torch.linspace(0, 9, d_t)).requires_grad_()
    inputs = [leaf(r, 1, h), leaf(s, d_s), leaf(r, h, d_s), w, leaf(d_t), leaf(r, h, d_t)]
    data = ((torch.randn(r, k, 5, generator=g), leaf(r, h, 5)),) if with_data else ()
    dt = layout.padded(torch.rand(len(nbr_root), generator=g) * dt_scale)
    return layout, dt, inputs, data


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dropped", [False, True])
@pytest.mark.parametrize("with_data", [False, True])
def test_fused_slot_attention_matches_the_torch_path(kernels, threads, dropped, with_data):
    layout, dt, inputs, data = _float_inputs(400, 90, 2, 16, 12, with_data, seed=threads)
    keep = dropout_scale((*layout.shape, 2), 0.3, dropped, torch.device("cpu"))
    leaves = inputs + [q for _, q in data]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # 3 threads: three root ranges, and three node ranges for g_src
    try:
        results = []
        for use in (None, kernels):
            c, src, q_src, w, b, q_time = inputs
            sums, total = slot_attention(layout, c, keep, (src, q_src), (dt, w, b, q_time), data, native=use)
            out = (*sums, total)
            g_out = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(out)]
            results.append((out, torch.autograd.grad(out, leaves, g_out)))
    finally:
        torch.set_num_threads(before)
    (want, want_grads), (got, got_grads) = results
    for g, w in zip((*got, *got_grads), (*want, *want_grads)):
        assert g.shape == w.shape and torch.allclose(g, w, rtol=1e-4, atol=1e-4), (g - w).abs().max()
    empty = ~layout.mask.any(1)
    assert bool(empty.any()) and torch.equal(got[-1][empty], torch.zeros_like(got[-1][empty]))


def test_fused_time_encoding_of_large_arguments_is_as_exact_as_float32_allows(kernels):
    """One slot per root and no dropout: the time part's sum is the encoding itself."""
    d_t, r = 100, 4000
    dt = torch.linspace(0, 3e6, r)
    w, b = 10.0 ** -torch.linspace(0, 9, d_t), torch.full((d_t,), 0.5)
    layout = slot_layout(torch.arange(r), torch.zeros(r, dtype=torch.long), r)
    sums, _ = slot_attention(layout, torch.zeros(r, 1, 1), None, (torch.zeros(1, 3), torch.zeros(r, 1, 3)),
                             (dt, w, b, torch.zeros(r, 1, d_t)), native=kernels)
    exact = torch.cos(dt.double().unsqueeze(1) * w.double() + b.double())
    turns = dt.unsqueeze(1) * (w / (2 * torch.pi)) + b / (2 * torch.pi)  # the kernel's float32 argument
    bound = 2 * torch.pi * (turns.double() - (dt.double().unsqueeze(1) * w.double() + b.double()) / (2 * torch.pi)).abs()
    err = (sums[1][:, 0].double() - exact).abs()
    assert bool((err <= bound + 4 * 2 * torch.pi * turns.abs().double() * 2 ** -24 + 1e-6).all())
    assert err[turns.abs() < 1].max() < 1e-6  # where the argument itself is exact to ~1e-7


def test_native_build_is_cached_and_atomic(kernels, tmp_path, monkeypatch):
    lib = native.build(out_dir=tmp_path)
    assert lib.exists() and native.build(out_dir=tmp_path) == lib and list(tmp_path.iterdir()) == [lib]
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    with pytest.raises(RuntimeError, match="bad.c"):
        native.build(bad, out_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no half-written library
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError):
        native.build(out_dir=tmp_path / "cc")


def test_native_kernels_build_elsewhere_when_the_cache_is_read_only(kernels, tmp_path, monkeypatch):
    native.kernels.cache_clear()
    try:
        monkeypatch.setenv("DISTTGL_CACHE_DIR", "/proc/disttgl-cache")  # mkdir fails there, even for root
        monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
        assert native.kernels() is not None
        assert [p.name.startswith("slot_attention-") for p in (tmp_path / f"disttgl-{os.getuid()}").iterdir()] == [True]
    finally:
        native.kernels.cache_clear()


def test_without_native_kernels_the_model_falls_back(monkeypatch, caplog):
    native.kernels.cache_clear()
    try:
        monkeypatch.setenv("CC", "/nonexistent/cc")
        monkeypatch.setenv("DISTTGL_CACHE_DIR", "/nonexistent/cache")
        assert native.kernels() is None and "torch path" in caplog.text
        native.kernels.cache_clear()
        monkeypatch.setenv(native.DISABLE_ENV, "0")
        assert native.kernels() is None
    finally:
        native.kernels.cache_clear()


def test_fused_link_scores_match_the_predictor(kernels):
    from disttgl.models.tgn import LinkPredictor

    torch.manual_seed(0)
    predictor = LinkPredictor(16)
    z = torch.randn(7 * (2 + 9), 16)  # 7 events: src, dst, 9 negatives each
    with torch.no_grad():
        fused = predictor(z, 7)
        predictor.fused = False
        plain = predictor(z, 7)
    for got, want in zip(fused, plain):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    predictor.fused = True
    pos, neg = predictor(z, 7)  # with gradients: the torch ops, whatever the flag
    assert pos.grad_fn is not None and neg.grad_fn is not None


def test_fused_results_do_not_depend_on_the_thread_count(kernels):
    """Every output row is summed by one thread in a fixed order (a distributed run's ranks may run
    other thread counts than a single process, and their gradients are compared)."""
    layout, dt, inputs, data = _float_inputs(700, 120, 2, 16, 12, True, seed=5, dt_scale=1e5)
    keep = dropout_scale((*layout.shape, 2), 0.3, True, torch.device("cpu"))
    leaves = inputs + [q for _, q in data]
    results, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            c, src, q_src, w, b, q_time = inputs
            sums, total = slot_attention(layout, c, keep, (src, q_src), (dt, w, b, q_time), data, native=kernels)
            out = (*sums, total)
            results.append((*out, *torch.autograd.grad(out, leaves, [torch.ones_like(t) for t in out])))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
