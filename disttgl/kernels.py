"""Autograd pieces with hand-written backward passes, for the model's hot spots on CPU.

A training step is bound by passes over the [R, K, *] neighbour-slot tensors (R roots, K <= 10
slots each) and by cos/sin of the time encoding. Autograd's default chains make several passes
where one will do, and ``bmm`` is slow when its inner dimension is the number of heads (2). The
tests check each function against the plain autograd formula (values, and gradients by gradcheck).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch


class _CosEncoding(torch.autograd.Function):
    """cos(dt w + b): backward is one sin, an in-place multiply and one [2, M] x [M, T] product for
    the w and b gradients, instead of two broadcast products and two reductions."""

    @staticmethod
    def forward(ctx, dt, w, b):  # noqa: ANN001 - autograd's signature
        arg = torch.addcmul(b, dt.unsqueeze(-1), w)
        if arg.dtype == torch.float32:
            # cos/sin of large arguments (w dt reaches 1e6 for the high frequencies) take SLEEF's slow
            # path, 2-3x the cost; reduced to [0, 2 pi) they stay on the fast one. The reduction adds
            # an error of a few ulp of the argument, the size of the argument's own float32 rounding
            # (tested against float64): frequencies that high carry no exact phase in float32 anyway.
            arg = torch.remainder(arg, 2 * math.pi, out=arg)
        ctx.save_for_backward(dt, arg)
        return torch.cos(arg)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        dt, arg = ctx.saved_tensors
        g_arg = torch.sin(arg).mul_(grad).view(-1, arg.shape[-1])  # = -d/d(arg): the sign goes on the vectors
        dt = dt.reshape(1, -1).to(g_arg.dtype)
        g_wb = torch.cat([dt, torch.ones_like(dt)]).mm(g_arg).neg_()  # [dt; 1] g_arg: one read of g_arg
        return None, g_wb[0], g_wb[1]


def cos_encoding(dt: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """phi(dt) = cos(dt w + b), shape dt.shape + w.shape."""
    return _CosEncoding.apply(dt, w, b)


def outer_sum(*pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """sum over (a [R, K, H], b [R, H, D]) pairs of ``bmm(a, b)`` for a small H, as broadcast
    multiply-adds into one output (a bmm with inner dimension 2 is several times slower)."""
    out = None
    for a, b in pairs:
        for h in range(a.shape[2]):
            if out is None:
                out = a[:, :, h:h + 1] * b[:, h:h + 1, :]
            else:
                out.addcmul_(a[:, :, h:h + 1], b[:, h:h + 1, :])
    return out


class _SlotAttention(torch.autograd.Function):
    """Attention of every root over its padded neighbour slots, given per-root query projections.

    Inputs: c [R, 1, H] (score offset), pad [R, K, 1] (True on padding), keep [R, K, H] (dropout
    scale, or None), then pairs x_p [R, K, D_p] (slot part p) and q_p [R, H, D_p] (the query mapped
    into that part). score = LeakyReLU_0.2(c + sum_p x_p . q_p), att = dropout(softmax over real
    slots); returns a_p = sum_k att x_p [R, H, D_p] for every part and sum_k att [R, H].

    One autograd node: the slot tensors are read and written the fewest times (each x_p gradient
    is built in one buffer), which is what a CPU step is bound by.
    """

    @staticmethod
    def forward(ctx, c, pad, keep, *parts):  # noqa: ANN001 - autograd's signature
        xs, qs = parts[0::2], parts[1::2]
        score = c.expand(-1, xs[0].shape[1], -1).clone()
        for x, q in zip(xs, qs):
            score.baddbmm_(x, q.transpose(1, 2))
        positive = score > 0
        score = torch.where(positive, score, 0.2 * score).masked_fill_(pad, torch.finfo(score.dtype).min)
        att = torch.softmax(score, 1).masked_fill_(pad, 0.0)
        dropped = att if keep is None else att * keep
        at = dropped.transpose(1, 2)
        ctx.save_for_backward(att, dropped, positive, keep, *parts)
        return (*(torch.bmm(at, x) for x in xs), dropped.sum(1))

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001
        att, dropped, positive, keep, *parts = ctx.saved_tensors
        xs, qs = parts[0::2], parts[1::2]
        g_parts, g_total = [g.contiguous() for g in grads[:-1]], grads[-1]  # bmm is slow on strided operands
        g_dropped = g_total.unsqueeze(1).expand(-1, xs[0].shape[1], -1).clone()
        for x, g in zip(xs, g_parts):
            g_dropped.baddbmm_(x, g.transpose(1, 2))
        g_att = g_dropped if keep is None else g_dropped * keep
        g_score = att * (g_att - (g_att * att).sum(1, keepdim=True))  # softmax; zero on padding
        g_score = torch.where(positive, g_score, 0.2 * g_score)
        g_c = g_score.sum(1, keepdim=True)
        g_st = g_score.transpose(1, 2)
        out: list[torch.Tensor | None] = []
        for i, (x, q, g) in enumerate(zip(xs, qs, g_parts)):
            out.append(outer_sum((g_score, q), (dropped, g)) if ctx.needs_input_grad[3 + 2 * i] else None)
            out.append(torch.bmm(g_st, x) if ctx.needs_input_grad[4 + 2 * i] else None)
        return (g_c, None, None, *out)


def slot_attention(c: torch.Tensor, pad: torch.Tensor, keep: torch.Tensor | None,
                   parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(a_p for every part, sum of attention weights); see ``_SlotAttention``."""
    *sums, total = _SlotAttention.apply(c, pad, keep, *(t for pair in parts for t in pair))
    return sums, total


class _GatherRows(torch.autograd.Function):
    """src[index] whose backward sums the gradient rows with a sparse CSR product, several times
    faster on CPU than index_add when many rows land on few (K slots on ~R/K distinct nodes)."""

    @staticmethod
    def forward(ctx, src, index):  # noqa: ANN001
        ctx.num_rows = src.shape[0]
        ctx.save_for_backward(index)
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (index,) = ctx.saved_tensors
        grad = grad.contiguous()
        if grad.is_cuda:
            return grad.new_zeros(ctx.num_rows, grad.shape[1]).index_add_(0, index, grad), None
        order = torch.argsort(index, stable=True)
        crow = torch.zeros(ctx.num_rows + 1, dtype=torch.long, device=index.device)
        torch.cumsum(torch.bincount(index, minlength=ctx.num_rows), 0, out=crow[1:])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is long stable
            warnings.simplefilter("ignore", UserWarning)
            summer = torch.sparse_csr_tensor(crow, order, grad.new_ones(index.shape[0]),
                                             size=(ctx.num_rows, index.shape[0]), check_invariants=False)
        return summer @ grad, None


def gather_rows(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``src.index_select(0, index)`` with a fast backward (see ``_GatherRows``)."""
    return _GatherRows.apply(src, index)


def dense_slots(nbr_root: torch.Tensor, num_roots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of every neighbour slot in a padded [R, K] layout, and the [R, K] mask of real slots.

    Slots come grouped by root (the sampler emits them so); K is the largest group.
    """
    if nbr_root.numel() > 1 and bool((nbr_root[1:] < nbr_root[:-1]).any()):
        raise ValueError("neighbour slots must be grouped by root (nbr_root non-decreasing)")
    counts = torch.bincount(nbr_root, minlength=num_roots)
    k = max(int(counts.max()), 1) if nbr_root.numel() else 1
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(nbr_root.numel(), device=nbr_root.device) - starts.index_select(0, nbr_root)
    mask = torch.arange(k, device=nbr_root.device) < counts.unsqueeze(1)
    return nbr_root * k + pos, mask


def dropout_scale(shape: tuple[int, ...], p: float, training: bool, device: torch.device) -> torch.Tensor | None:
    """Inverted-dropout multipliers (0 or 1/(1-p)) of ``shape``, or None when nothing is dropped.

    On CPU the draws come from numpy's PCG64 (16-bit, so p is rounded to 1/65536), seeded from
    torch's generator so that seeding and checkpointed RNG state still decide them: torch's
    per-element Bernoulli costs ~10x more on a [1800, 100] tensor.
    """
    if not training or p <= 0.0:
        return None
    if p >= 1.0:
        return torch.zeros(shape, device=device)
    if device.type != "cpu":
        return torch.empty(shape, device=device).bernoulli_(1.0 - p).div_(1.0 - p)
    seed = int(torch.randint(0, 2 ** 62, (1,)))
    draws = np.random.default_rng(seed).integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return torch.from_numpy(np.multiply(draws >= int(round(p * (1 << 16))), np.float32(1.0 / (1.0 - p)),
                                        dtype=np.float32))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the masks of ``dropout_scale``."""
    scale = dropout_scale(tuple(x.shape), p, training, x.device)
    return x if scale is None else x * scale
