"""Autograd pieces with hand-written backward passes, for the model's hot spots on CPU.

A training step is bound by passes over the [R, K, *] neighbour-slot tensors (R roots, K <= 10
slots each) and by cos/sin of the time encoding. Autograd's default chains make several passes
where one will do, and ``bmm`` is slow when its inner dimension is small (the number of heads).
The tests check each function against the plain autograd formula (values, and gradients by
gradcheck). On CPU the attention core runs in the C kernels of ``disttgl.models.native`` when they build
(``_FusedSlotAttention``, tested against ``_SlotAttention``); the torch version is the fallback
and the only one on CUDA.
"""

from __future__ import annotations

import ctypes
import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from disttgl.data.graph import stable_argsort_ids
from disttgl.models.native import NativeKernels, SlotInputs, ptr


class _CosEncoding(torch.autograd.Function):
    """cos(dt w + b): backward is one sin, an in-place multiply and one [2, M] x [M, T] product for
    the w and b gradients, instead of two broadcast products and two reductions."""

    @staticmethod
    def forward(ctx, dt, w, b):  # noqa: ANN001 - autograd's signature
        arg = _encoding_argument(dt, w, b)
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


@dataclass(frozen=True)
class SlotLayout:
    """The M real neighbour slots of R roots in a padded [R, K] layout (slots grouped by root)."""

    slot: torch.Tensor  # int64 [M]: position r * K + k of every real slot
    nbr_root: torch.Tensor  # int64 [M]: its root r
    nbr_idx: torch.Tensor  # int64 [M]: the row of the node part it reads
    mask: torch.Tensor  # bool [R, K]: True on real slots
    gather_index: torch.Tensor  # int64 [R * K]: the row every slot reads (row 0 on padding, weight 0)

    @property
    def shape(self) -> torch.Size:
        return self.mask.shape

    def padded(self, values: torch.Tensor) -> torch.Tensor:
        """[M, *] per-slot values laid out as [R * K, *], zero on padding."""
        return values.new_zeros(self.mask.numel(), *values.shape[1:]).index_copy_(0, self.slot, values)


def slot_layout(nbr_root: torch.Tensor, nbr_idx: torch.Tensor, num_roots: int) -> SlotLayout:
    slot, mask = dense_slots(nbr_root, num_roots)
    gather_index = nbr_idx.new_zeros(mask.numel()).index_copy_(0, slot, nbr_idx)
    return SlotLayout(slot=slot, nbr_root=nbr_root, nbr_idx=nbr_idx, mask=mask, gather_index=gather_index)


class _SlotAttention(torch.autograd.Function):
    """Attention of every root over its padded neighbour slots, given per-root query projections.

    Every slot holds parts x_p [R, K, D_p]: the node part ``src[nbr_idx]``, the time part
    ``cos(w dt + b)`` and any data parts (edge features); q_p [R, H, D_p] is the query mapped into
    part p and c [R, 1, H] a score offset. score = LeakyReLU_0.2(c + sum_p x_p . q_p),
    att = dropout(softmax over real slots); returns a_p = sum_k att x_p [R, H, D_p] for every part
    and sum_k att [R, H].

    One autograd node, bound on CPU by passes over the [R, K, D] slot tensors. The gradient of a
    slot part is g_x = C V per root, with C = [g_score ‖ att] [R, K, 2H] and V = [q ‖ g_a]
    [R, 2H, D]; it is never built for the node and time parts:
    - node part: g_src = A V with the sparse A[u, (r, j)] = sum of C[r, k, j] over the slots k of
      root r that read node u (one CSR product over M * 2H entries);
    - time part: g_w = -sum_{r, j} V[r, j] (sum_k dt C[r, k, j] sin(arg)[r, k]) and the same
      without dt for g_b: one batched product of [R, 4H, K] by sin(arg) [R, K, D].
    """

    @staticmethod
    def forward(ctx, layout, c, keep, src, q_src, dt, w, b, q_time, *data):  # noqa: ANN001 - autograd's
        r, k = layout.shape
        x_src = src.index_select(0, layout.gather_index).view(r, k, -1)
        arg = _encoding_argument(dt, w, b)
        x_time = torch.cos(arg).view(r, k, -1)
        # sin for the backward while arg is still in cache (a later pass reads it back from memory)
        sin = torch.sin(arg) if ctx.needs_input_grad[6] or ctx.needs_input_grad[7] else None
        del arg
        xs, qs = (x_src, x_time, *data[0::2]), (q_src, q_time, *data[1::2])
        pad = ~layout.mask.unsqueeze(2)
        score = c.expand(-1, k, -1).clone()
        for x, q in zip(xs, qs):
            score.baddbmm_(x, q.transpose(1, 2))
        positive = score > 0
        score = torch.where(positive, score, 0.2 * score).masked_fill_(pad, torch.finfo(score.dtype).min)
        att = torch.softmax(score, 1).masked_fill_(pad, 0.0)
        dropped = att if keep is None else att * keep
        at = dropped.transpose(1, 2)
        ctx.layout, ctx.num_src = layout, src.shape[0]
        ctx.save_for_backward(att, dropped, positive, keep, dt, sin, *xs, *qs)
        return (*(torch.bmm(at, x) for x in xs), dropped.sum(1))

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001
        att, dropped, positive, keep, dt, sin, *rest = ctx.saved_tensors
        xs, qs = rest[:len(rest) // 2], rest[len(rest) // 2:]
        need = ctx.needs_input_grad
        r, k = ctx.layout.shape
        g_parts, g_total = [g.contiguous() for g in grads[:-1]], grads[-1]  # bmm is slow on strided operands
        g_dropped = g_total.unsqueeze(1).expand(-1, k, -1).clone()
        for x, g in zip(xs, g_parts):
            g_dropped.baddbmm_(x, g.transpose(1, 2))
        g_att = g_dropped if keep is None else g_dropped * keep
        g_score = att * (g_att - (g_att * att).sum(1, keepdim=True))  # softmax; zero on padding
        g_score = torch.where(positive, g_score, 0.2 * g_score)
        g_c = g_score.sum(1, keepdim=True)
        g_st = g_score.transpose(1, 2)
        coef = torch.cat([g_score, dropped], 2)  # C [R, K, 2H]
        values = [torch.cat([q, g], 1) for q, g in zip(qs, g_parts)]  # V [R, 2H, D_p]
        q_slots = (4, 8, *range(10, len(need), 2))  # input positions of the q_p
        g_q = [torch.bmm(g_st, x) if need[i] else None for x, i in zip(xs, q_slots)]
        g_src = _node_part_grad(ctx.layout, coef, values[0], ctx.num_src) if need[3] else None
        g_w = g_b = None
        if need[6] or need[7]:
            g_w, g_b = _time_part_grad(coef, values[1], dt.view(r, k, 1), sin.view(r, k, -1))
        g_data: list[torch.Tensor | None] = []
        for i, v in enumerate(values[2:]):
            g_data += [torch.bmm(coef, v) if need[9 + 2 * i] else None, g_q[2 + i]]
        return (None, g_c, None, g_src, g_q[0], None, g_w, g_b, g_q[1], *g_data)


def _encoding_argument(dt: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w dt + b, reduced to [0, 2 pi) in float32.

    cos/sin of large arguments (w dt reaches 1e6 for the high frequencies) take SLEEF's slow path,
    2-3x the cost. The argument is formed in turns and its fraction kept (frac and a multiply take
    half the time of ``remainder``). The reduction adds an error of a few ulp of the argument, the
    size of the argument's own float32 rounding (tested against float64): frequencies that high
    carry no exact phase in float32 anyway.
    """
    if dt.dtype != torch.float32:
        return torch.addcmul(b, dt.unsqueeze(-1), w)
    turns = torch.addcmul(b * _INV_2PI, dt.unsqueeze(-1), w * _INV_2PI)
    return torch.frac(turns, out=turns).mul_(2 * math.pi)


_INV_2PI = 0.5 / math.pi


def _node_part_grad(layout: SlotLayout, coef: torch.Tensor, values: torch.Tensor, num_src: int) -> torch.Tensor:
    """g_src [num_src, D]: for every row, the sum of C[r, k] V[r] over the slots that read it."""
    r, k = layout.shape
    two_h = coef.shape[2]
    if coef.is_cuda:  # a scatter-add of the per-slot gradient rows
        g_x = torch.bmm(coef, values).view(r * k, -1)
        return g_x.new_zeros(num_src, g_x.shape[1]).index_add_(0, layout.gather_index, g_x)
    order, crow = _slots_by_node(layout, num_src)
    crow = crow * two_h
    col = (layout.nbr_root.index_select(0, order) * two_h).unsqueeze(1) + torch.arange(two_h, device=coef.device)
    val = coef.view(r * k, two_h).index_select(0, layout.slot.index_select(0, order))
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is long stable
        warnings.simplefilter("ignore", UserWarning)
        a = torch.sparse_csr_tensor(crow, col.view(-1), val.view(-1), size=(num_src, r * two_h),
                                    check_invariants=False)
    return a @ values.view(r * two_h, -1)


def _slots_by_node(layout: SlotLayout, num_src: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real slots ordered by the row they read (stable) and the CSR row pointer [num_src + 1]."""
    # a 16-bit radix pass: ~8x faster than torch's stable argsort of 16k int64 keys
    order = torch.from_numpy(stable_argsort_ids(layout.nbr_idx.numpy(), max(num_src - 1, 0)))
    crow = torch.zeros(num_src + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(layout.nbr_idx, minlength=num_src), 0, out=crow[1:])
    return order, crow


def _time_part_grad(coef: torch.Tensor, values: torch.Tensor, dt: torch.Tensor,
                    sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g_w, g_b) of the time part x = cos(arg), arg = w dt + b, from C, V and sin(arg)."""
    two_h = coef.shape[2]
    weights = torch.cat([coef * dt.to(coef.dtype), coef], 2).transpose(1, 2).contiguous()  # [R, 4H, K]
    p = torch.bmm(weights, sin)  # sum_k (dt) C sin(arg)
    # sums over the leading dims of contiguous products: a strided reduction is several times slower
    g_w = (p[:, :two_h] * values).sum((0, 1)).neg_()
    g_b = (p[:, two_h:] * values).sum((0, 1)).neg_()
    return g_w, g_b


class _FusedSlotAttention(torch.autograd.Function):
    """``_SlotAttention`` by the C kernels of ``disttgl.models.native``: one pass per root over its slots,
    which stay in cache, instead of a dozen passes over [R, K, D] tensors; the time part is
    recomputed in the backward pass instead of stored. Float32 on CPU, at most one data part, which
    gets no gradient. The node part's gradient is the sum of ``_SlotAttention`` (A V, A sparse), taken
    row by row of h over the slots grouped by node, so threads never write the same row.
    """

    @staticmethod
    def forward(ctx, native, layout, c, keep, src, q_src, dt, w, b, q_time, *data):  # noqa: ANN001
        r, k = layout.shape
        h = c.shape[-1]
        xe, q_e = data if data else (None, None)
        inputs = _slot_inputs(layout, c, keep, src, q_src, dt, w, b, q_time, xe, q_e)
        a_s, a_t = q_src.new_empty(q_src.shape), q_time.new_empty(q_time.shape)
        a_e = None if q_e is None else q_e.new_empty(q_e.shape)
        total, att = c.new_empty(r, h), c.new_empty(r, k, h)
        pos = torch.empty(r, k, h, dtype=torch.uint8)
        threads = native.threads(r)
        work = c.new_empty(threads, k * q_time.shape[2])
        native.lib.slot_attention_forward(ctypes.byref(inputs.struct), r, threads, ptr(a_s), ptr(a_t), ptr(a_e),
                                          ptr(total), ptr(att), ptr(pos), ptr(work))
        ctx.native, ctx.layout, ctx.inputs, ctx.num_src = native, layout, inputs, src.shape[0]
        ctx.save_for_backward(att, pos)
        return (a_s, a_t, *(() if a_e is None else (a_e,)), total)

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001
        att, pos = ctx.saved_tensors
        native, layout, inputs, need = ctx.native, ctx.layout, ctx.inputs, ctx.needs_input_grad
        r, k = layout.shape
        t = inputs.tensors
        h, d_t = att.shape[2], t["q_t"].shape[2]
        shapes = [t["q_s"].shape, t["q_t"].shape, *(() if t["q_e"] is None else (t["q_e"].shape,)), (r, h)]
        g_a = [att.new_zeros(shape) if g is None else g.contiguous() for g, shape in zip(grads, shapes)]
        g_a_s, g_a_t, g_total = g_a[0], g_a[1], g_a[-1]
        g_a_e = g_a[2] if t["q_e"] is not None else None
        g_c = att.new_empty(r, h)
        g_q_s, g_q_t = torch.empty_like(t["q_s"]), torch.empty_like(t["q_t"])
        g_q_e = None if t["q_e"] is None else torch.empty_like(t["q_e"])
        coef = att.new_empty(r, k, 2 * h)
        threads = native.threads(r)
        time_grad = need[7] or need[8]
        g_wb = att.new_empty(2, d_t) if time_grad else None
        blocks = att.new_zeros(-(-r // native.WB_BLOCK), 2, d_t) if time_grad else None
        work = att.new_empty(threads, (2 * k + 1) * d_t)
        native.lib.slot_attention_backward(
            ctypes.byref(inputs.struct), r, threads, native.WB_BLOCK, ptr(att), ptr(pos), ptr(g_a_s), ptr(g_a_t), ptr(g_a_e),
            ptr(g_total), ptr(g_c), ptr(g_q_s), ptr(g_q_t), ptr(g_q_e), ptr(coef), ptr(blocks), ptr(g_wb),
            ptr(work))
        g_src = _fused_node_part_grad(native, layout, coef, t["q_s"], g_a_s, ctx.num_src) if need[4] else None
        g_w = g_b = None
        if time_grad:
            g_w, g_b = g_wb.neg_()
        g_data = () if g_q_e is None else (None, g_q_e)
        return (None, None, g_c.view(r, 1, h), None, g_src, g_q_s, None, g_w, g_b, g_q_t, *g_data)


def _fused_node_part_grad(native: NativeKernels, layout: SlotLayout, coef: torch.Tensor, q_s: torch.Tensor,
                          g_a_s: torch.Tensor, num_src: int) -> torch.Tensor:
    """``_node_part_grad`` by the C kernel: rows split over threads, the slots of each row in CSR order."""
    order, crow = _slots_by_node(layout, num_src)
    g_src = q_s.new_empty(num_src, q_s.shape[2])
    native.lib.slot_attention_node_grad(num_src, native.threads(num_src), q_s.shape[1], q_s.shape[2], ptr(crow),
                                        ptr(order), ptr(layout.slot), ptr(layout.nbr_root), ptr(coef), ptr(q_s),
                                        ptr(g_a_s), ptr(g_src))
    return g_src


@dataclass
class _SlotInputs:
    """The C struct of the kernels' inputs and the tensors it points into (kept alive with it)."""

    struct: object
    tensors: dict[str, torch.Tensor | None]


def _slot_inputs(layout: SlotLayout, c: torch.Tensor, keep: torch.Tensor | None, src: torch.Tensor,
                 q_src: torch.Tensor, dt: torch.Tensor, w: torch.Tensor, b: torch.Tensor, q_time: torch.Tensor,
                 xe: torch.Tensor | None, q_e: torch.Tensor | None) -> _SlotInputs:
    r, k = layout.shape
    t = {"gather": layout.gather_index, "mask": layout.mask.view(torch.uint8), "c": c.reshape(r, -1),
         "keep": keep, "src": src, "q_s": q_src, "dt": dt, "w2": w.detach() * _INV_2PI,
         "b2": b.detach() * _INV_2PI, "q_t": q_time, "xe": xe, "q_e": q_e}
    t = {name: None if v is None else v.detach().contiguous() for name, v in t.items()}
    struct = SlotInputs(K=k, H=c.shape[-1], Ds=src.shape[1], Dt=w.shape[0], De=0 if xe is None else xe.shape[2],
                        **{name: ptr(v) for name, v in t.items()})
    return _SlotInputs(struct, t)


def _can_fuse(native: NativeKernels | None, tensors: list[torch.Tensor],
              data: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> bool:
    return (native is not None and len(data) <= 1 and not any(x.requires_grad for x, _ in data)
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors))


def _fp32(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``tensors`` with the floating-point ones cast to float32 (a no-op on float32 ones)."""
    return tuple(t.float() if t.is_floating_point() else t for t in tensors)


def float32_forward(forward):
    """Run a module's ``forward(self, *tensors)`` in float32 even under autocast (``--precision bf16``).

    For the memory updaters (docs/design.md §4.8): their output is the next batch's memory, so a
    bf16 rounding there is carried and compounded over the whole stream, not spent in one step. The
    GRU's keep gate z is the sharpest case: near 1 (a memory mostly kept), bf16's 8-bit mantissa
    leaves (1 - z) with a relative error of tens of percent on every update. The updaters are a small
    share of a step's matmuls. Without autocast (fp32) the call is the plain one.
    """
    @functools.wraps(forward)
    def run(self, *tensors):
        device_type = tensors[0].device.type
        if not torch.is_autocast_enabled(device_type):
            return forward(self, *tensors)
        with torch.autocast(device_type, enabled=False):
            return forward(self, *_fp32(tensors))
    return run


def slot_attention(layout: SlotLayout, c: torch.Tensor, keep: torch.Tensor | None,
                   node: tuple[torch.Tensor, torch.Tensor], time: tuple[torch.Tensor, ...],
                   data: tuple[tuple[torch.Tensor, torch.Tensor], ...] = (), *,
                   native: NativeKernels | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(a_p for the node part, the time part and every data part; sum of attention weights).

    node = (src [S, D], q [R, H, D]); time = (dt [R * K] padded, w [D_t], b [D_t], q [R, H, D_t]);
    data = ((x [R, K, D_e], q [R, H, D_e]), ...). See ``_SlotAttention``. With ``native`` kernels
    (``disttgl.models.native.kernels()``) CPU float32 inputs take the fused path, ``_FusedSlotAttention``.

    Under autocast (``--precision bf16``) the inputs are cast to float32 and the core runs with
    autocast off: the C kernels read float32 only, and the hand-written backward passes would
    otherwise meet bf16 gradients of their own outputs beside float32 saved tensors. The core is
    bound by memory passes, not matmuls; the projections around it stay in bf16.
    """
    device_type = c.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return slot_attention(layout, c.float(), keep, _fp32(node), _fp32(time),
                                  tuple(_fp32(pair) for pair in data), native=native)
    flat = (*node, *time, *(t for pair in data for t in pair))
    if _can_fuse(native, [c, *flat], data):
        *sums, total = _FusedSlotAttention.apply(native, layout, c, keep, *flat)
    else:
        *sums, total = _SlotAttention.apply(layout, c, keep, *flat)
    return sums, total


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
