"""Autograd pieces with hand-written backward passes, for the model's hot spots on CPU.

A training step is bound by passes over the [R, K, *] neighbour-slot tensors (R roots, K <= 10
slots each). Autograd's default chains make several passes where one will do, and ``bmm`` is slow
when its inner dimension is the number of heads (2). Each function here is checked against the plain
autograd formula in the tests (values and gradients).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F


class _CosEncoding(torch.autograd.Function):
    """cos(dt w + b): backward is one sin and an in-place multiply, with the w and b gradients
    as a mat-vec and a column sum instead of two broadcast products and reductions."""

    @staticmethod
    def forward(ctx, dt, w, b):  # noqa: ANN001 - autograd's signature
        arg = torch.addcmul(b, dt.unsqueeze(-1), w)
        ctx.save_for_backward(dt, arg)
        return torch.cos(arg)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        dt, arg = ctx.saved_tensors
        g_arg = torch.sin(arg).mul_(grad).view(-1, arg.shape[-1])  # = -d/d(arg): the sign goes on the vectors
        g_w = g_arg.t().mv(dt.reshape(-1).to(g_arg.dtype)).neg_() if ctx.needs_input_grad[1] else None
        g_b = g_arg.sum(0).neg_() if ctx.needs_input_grad[2] else None
        return None, g_w, g_b


def cos_encoding(dt: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """phi(dt) = cos(dt w + b), shape dt.shape + w.shape."""
    return _CosEncoding.apply(dt, w, b)


def outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bmm(a, b)`` for a [R, K, H] and b [R, H, D] with a small H, as H broadcast multiply-adds."""
    out = a[:, :, 0:1] * b[:, 0:1, :]
    for h in range(1, a.shape[2]):
        out.addcmul_(a[:, :, h:h + 1], b[:, h:h + 1, :])
    return out


class _SlotScores(torch.autograd.Function):
    """s[r, k, h] = x[r, k, :] . q[r, h, :] for slots x [R, K, D] and per-root queries q [R, H, D]."""

    @staticmethod
    def forward(ctx, x, q):  # noqa: ANN001
        ctx.save_for_backward(x, q)
        return torch.bmm(x, q.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        x, q = ctx.saved_tensors
        g_x = outer_sum(grad, q) if ctx.needs_input_grad[0] else None
        g_q = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        return g_x, g_q


class _SlotSums(torch.autograd.Function):
    """a[r, h, :] = sum_k att[r, k, h] x[r, k, :] for att [R, K, H] and slots x [R, K, D]."""

    @staticmethod
    def forward(ctx, att, x):  # noqa: ANN001
        ctx.save_for_backward(att, x)
        return torch.bmm(att.transpose(1, 2), x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        att, x = ctx.saved_tensors
        g_att = torch.bmm(x, grad.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        g_x = outer_sum(att, grad) if ctx.needs_input_grad[1] else None
        return g_att, g_x


def slot_scores(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return _SlotScores.apply(x, q)


def slot_sums(att: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _SlotSums.apply(att, x)


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


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On CPU the mask comes from numpy's PCG64 (16-bit draws, so p is rounded to
    1/65536), seeded from torch's generator so that seeding and checkpointed RNG state still
    determine it: torch's per-element Bernoulli costs ~10x more on a [1800, 100] tensor."""
    if not training or p <= 0.0:
        return x
    if x.is_cuda or p >= 1.0:
        return F.dropout(x, p, True)
    seed = int(torch.randint(0, 2 ** 62, (1,)))
    draws = np.random.default_rng(seed).integers(0, 1 << 16, size=tuple(x.shape), dtype=np.uint16)
    scale = np.multiply(draws >= int(round(p * (1 << 16))), np.float32(1.0 / (1.0 - p)), dtype=np.float32)
    return x * torch.from_numpy(scale)
