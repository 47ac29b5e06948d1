"""Temporal neighbour sampling and negative sampling (docs/design.md §4), vectorised over all roots.

For a root (node n, time t) the candidates are the edges of T-CSR row n with edge time strictly
before t; because rows are sorted by (t, eid) they form the prefix ``[indptr[n], p)`` of the row.
``p`` is found for every root with ONE ``np.searchsorted`` on a global key that sorts rows first and
times second: ``key = row * stride + code(t)`` where ``code`` is ``t - t_min`` for integral times
and otherwise the rank among the distinct edge times. Either way the key is exact integer
arithmetic (a float ``row * BIG + t`` would lose fractional times). Queries are searched in sorted
order, which keeps successive binary searches in cache. The k most recent neighbours are then
one gather from a copy of the rows with ``k`` padding slots before each row, so no masking is
needed. All of this is built once per graph by :func:`prepare`; the public functions accept a
prepared :class:`SamplerIndex` (do this) or a :class:`~disttgl.data.graph.TCSR` (prepared per call).

Output of both samplers: ``(nbr, eid, t)`` arrays of shape ``[len(nodes), k]``; slot ``j`` of a
row is a valid neighbour iff ``nbr >= 0``. Padding: ``nbr = eid = -1`` and ``t = NaN``.

The key and the padded rows are O(nnz) arrays in memory (64 bytes per event). The batch cache's
out-of-core build (:mod:`disttgl.cache.build`) searches a :class:`RowIndex` instead: the T-CSR as
it is (memory-mapped from the store), each root's row bisected on its times in a few vectorised
passes, and the k slots gathered with a mask; the same neighbours with nothing derived from nnz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disttgl.data.graph import TCSR


@dataclass(frozen=True)
class SamplerIndex:
    """A T-CSR plus the exact global search key and a padded copy of the rows (module docstring)."""

    tcsr: TCSR
    key: np.ndarray  # int64 [nnz] row * stride + time code, non-decreasing
    stride: int
    times: np.ndarray | None  # float64 [T] distinct edge times (None: integral times, code = t - t0)
    t0: float
    pad: int  # padding slots before every row in ``table``
    table: np.ndarray  # int64 [pad * N + nnz, 3] (nbr, eid, t as float64 bits); padding rows -1/-1/NaN

    def codes(self, times: np.ndarray) -> np.ndarray:
        """Per root time, the smallest code of an edge time >= it (so edge code < it <=> edge t < t)."""
        times = np.asarray(times, dtype=np.float64)
        if self.times is not None:
            return np.searchsorted(self.times, times, "left")
        return np.clip(np.ceil(times - self.t0), 0, self.stride - 1).astype(np.int64)


@dataclass(frozen=True)
class RowIndex:
    """A T-CSR searched row by row (bisection on its times): no derived arrays, so its arrays may be
    memory maps of the graph store and the sampler holds O(roots) memory only."""

    tcsr: TCSR


def _row_history(tcsr: TCSR, nodes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per root, ``[start, end)``: row ``node``'s edges with time strictly before the root's.

    A row is sorted by (t, eid), so ``end`` is the first position whose time is >= the root's: the
    same position the key search of :func:`history` finds (its codes order times exactly as the
    float64 comparison here does). Roots still searching shrink every pass; each pass reads one time
    per root, so a batch costs ~log2(largest degree) small gathers.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    times = np.asarray(times, dtype=np.float64)
    start = np.asarray(tcsr.indptr[nodes], dtype=np.int64)
    lo, hi = start.copy(), np.asarray(tcsr.indptr[nodes + 1], dtype=np.int64)
    active = np.flatnonzero(lo < hi)
    while len(active):
        a_lo, a_hi = lo[active], hi[active]
        mid = (a_lo + a_hi) >> 1
        before = tcsr.t[mid] < times[active]
        lo[active] = np.where(before, mid + 1, a_lo)
        hi[active] = np.where(before, a_hi, mid)
        active = active[lo[active] < hi[active]]
    return start, lo


def _row_gather(tcsr: TCSR, pos: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read T-CSR positions ``pos`` where ``valid``; other slots are padding (-1, -1, NaN)."""
    if not len(tcsr.nbr):
        shape = pos.shape
        return np.full(shape, -1, np.int64), np.full(shape, -1, np.int64), np.full(shape, np.nan)
    at = np.where(valid, pos, 0)
    nbr = np.where(valid, tcsr.nbr[at], -1).astype(np.int64, copy=False)
    eid = np.where(valid, tcsr.eid[at], -1).astype(np.int64, copy=False)
    t = np.where(valid, tcsr.t[at], np.nan).astype(np.float64, copy=False)
    return nbr, eid, t


def prepare(tcsr: TCSR | SamplerIndex | RowIndex, *, pad: int = 10) -> SamplerIndex | RowIndex:
    """Build the search key for ``tcsr`` (O(nnz log nnz): do it once per graph).

    Rows are copied into ``table`` behind ``pad`` padding slots each, so the ``k <= pad`` most recent
    neighbours are a plain gather with no masking (padding slots read as padding). Integral times
    (the usual seconds) are coded as ``t - t_min`` with no rank search; others use ranks.
    """
    pad = max(int(pad), 1)
    if isinstance(tcsr, RowIndex) or (isinstance(tcsr, SamplerIndex) and tcsr.pad >= pad):
        return tcsr
    if isinstance(tcsr, SamplerIndex):
        tcsr = tcsr.tcsr
    n, nnz = tcsr.num_nodes, len(tcsr.nbr)
    t = tcsr.t
    t0 = float(t.min()) if nnz else 0.0
    span = float(t.max()) - t0 if nnz else 0.0
    if nnz == 0 or (np.all(t == np.round(t)) and (span + 2) * max(n, 1) < 2 ** 62):
        times, code, stride = None, (t - t0).astype(np.int64), int(span) + 2
    else:
        times, code = np.unique(t, return_inverse=True)
        code, stride = code.astype(np.int64).reshape(-1), len(times) + 1
        if stride * max(n, 1) >= 2 ** 62:
            raise ValueError(f"graph too large for the int64 search key ({n} rows x {stride} times)")
    deg = np.diff(tcsr.indptr)
    rows = np.repeat(np.arange(n, dtype=np.int64), deg)
    table = np.empty((pad * n + nnz, 3), dtype=np.int64)
    table[:, :2] = -1
    table[:, 2] = np.array(np.nan).view(np.int64)
    dest = np.arange(nnz, dtype=np.int64) + pad * (rows + 1)
    table[dest, 0] = tcsr.nbr
    table[dest, 1] = tcsr.eid
    table[dest, 2] = tcsr.t.view(np.int64)
    return SamplerIndex(tcsr=tcsr, key=rows * stride + code, stride=stride, times=times, t0=t0,
                        pad=pad, table=table)


def history(index: TCSR | SamplerIndex | RowIndex, nodes: np.ndarray, times: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, SamplerIndex | RowIndex]:
    """Per root, the T-CSR range ``[start, end)`` of edges strictly before the root's time."""
    idx = prepare(index)
    if isinstance(idx, RowIndex):
        return (*_row_history(idx.tcsr, nodes, times), idx)
    nodes = np.asarray(nodes, dtype=np.int64)
    query = nodes * idx.stride + idx.codes(times)
    # Searching in sorted query order keeps successive binary searches in cache (~2x faster).
    order = np.argsort(query)
    end = np.empty_like(query)
    end[order] = np.searchsorted(idx.key, query[order], "left")
    return idx.tcsr.indptr[nodes], end, idx


def _split(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rows[..., 0], rows[..., 1], rows[..., 2].view(np.float64)


def _gather(idx: SamplerIndex | RowIndex, nodes: np.ndarray, pos: np.ndarray, valid: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read T-CSR positions ``pos`` (unpadded numbering); invalid slots become padding."""
    if isinstance(idx, RowIndex):
        return _row_gather(idx.tcsr, pos, valid)
    rows = np.zeros(pos.shape, dtype=np.int64)  # table row 0 is a padding slot (pad >= 1)
    shift = idx.pad * (np.asarray(nodes, dtype=np.int64) + 1)
    np.copyto(rows, pos + shift[:, None], where=valid)
    return _split(np.take(idx.table, rows, axis=0))


def recent_neighbors(tcsr: TCSR | SamplerIndex | RowIndex, nodes: np.ndarray, times: np.ndarray, k: int, *,
                     tgl_compat: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` most recent neighbours of each root strictly before its time, most recent first.

    A node's first edge is a valid neighbour; with ``tgl_compat=True`` it never is (TGL's sampler
    stops one short of the row start), for parity experiments only.
    """
    idx = prepare(tcsr, pad=k)
    start, end, idx = history(idx, nodes, times)
    if tgl_compat or isinstance(idx, RowIndex):
        pos = end[:, None] - np.arange(1, k + 1, dtype=np.int64)
        return _gather(idx, nodes, pos, pos > start[:, None] if tgl_compat else pos >= start[:, None])
    # In the padded table row n starts at start + pad * (n + 1), so slots before it read as padding.
    top = end + idx.pad * (np.asarray(nodes, dtype=np.int64) + 1)
    return _split(np.take(idx.table, top[:, None] - np.arange(1, k + 1, dtype=np.int64), axis=0))


def uniform_neighbors(tcsr: TCSR | SamplerIndex | RowIndex, nodes: np.ndarray, times: np.ndarray, k: int,
                      rng: np.random.Generator, *, tgl_compat: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``k`` draws WITH replacement, uniform over each root's earlier edges (as TGL does).

    Draws are sorted most recent first so both strategies share one layout; a root with no earlier
    edge gets an all-padding row. ``tgl_compat`` excludes the row's first edge, as above.
    """
    start, end, idx = history(tcsr, nodes, times)
    lo = start + 1 if tgl_compat else start
    count = np.maximum(end - lo, 0)
    draw = (rng.random((len(start), k)) * count[:, None]).astype(np.int64)
    pos = lo[:, None] + np.sort(draw, axis=1)[:, ::-1]
    return _gather(idx, nodes, pos, np.broadcast_to(count[:, None] > 0, pos.shape))


def sample_neighbors(tcsr: TCSR | SamplerIndex | RowIndex, nodes: np.ndarray, times: np.ndarray, k: int, *,
                     strategy: str = "recent", rng: np.random.Generator | None = None,
                     tgl_compat: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dispatch on ``strategy`` ("recent" or "uniform"; uniform needs ``rng``)."""
    if strategy == "recent":
        return recent_neighbors(tcsr, nodes, times, k, tgl_compat=tgl_compat)
    if strategy == "uniform":
        if rng is None:
            raise ValueError("uniform sampling needs an rng")
        return uniform_neighbors(tcsr, nodes, times, k, rng, tgl_compat=tgl_compat)
    raise ValueError(f"unknown sampling strategy {strategy!r} (recent or uniform)")


def negative_candidates(num_nodes: int, dst: np.ndarray, bipartite: bool, *, chunk: int = 1 << 22
                        ) -> np.ndarray | None:
    """Nodes negatives are drawn from: the destination set of a bipartite graph (sorted), else ``None``
    (all). ``dst`` is read ``chunk`` events at a time (it may be a memory map): O(N) memory."""
    if not bipartite:
        return None
    present = np.zeros(num_nodes, dtype=bool)
    for a in range(0, len(dst), max(int(chunk), 1)):
        present[np.asarray(dst[a:a + chunk], dtype=np.int64)] = True
    return np.flatnonzero(present).astype(np.int64)


def sample_negatives(rng: np.random.Generator, shape: tuple[int, ...], num_nodes: int,
                     candidates: np.ndarray | None = None) -> np.ndarray:
    """Uniform random negatives (int64 array of ``shape``) from ``candidates`` or all nodes."""
    if candidates is None:
        return rng.integers(0, num_nodes, size=shape, dtype=np.int64)
    if len(candidates) == 0:
        raise ValueError("no candidate nodes to draw negatives from")
    return candidates[rng.integers(0, len(candidates), size=shape, dtype=np.int64)]
