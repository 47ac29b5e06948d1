"""The temporal graph in memory: events, features and the T-CSR (:class:`Graph`, :class:`TCSR`), and
the pure functions that build them (the T-CSR's stable sort, the chronological split).

No file format here: the HDF5 graph store that holds a :class:`Graph` on disk is
:mod:`disttgl.data.graph_store`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TCSR:
    """Temporal CSR: row n's neighbours are ``nbr[indptr[n]:indptr[n+1]]`` sorted by (t, eid)."""

    indptr: np.ndarray  # int64 [N + 1]
    nbr: np.ndarray  # int64 [nnz]
    t: np.ndarray  # float64 [nnz]
    eid: np.ndarray  # int64 [nnz]

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1


@dataclass
class Graph:
    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    split: np.ndarray
    num_nodes: int
    bipartite: bool
    edge_feat: np.ndarray  # [E + 1, d_e], last row zero
    tcsr: TCSR
    node_feat: np.ndarray | None = None
    label: np.ndarray | None = None
    original_id: np.ndarray | None = None
    side: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_events(self) -> int:
        return len(self.src)

    @property
    def edge_dim(self) -> int:
        return int(self.edge_feat.shape[1])

    @property
    def node_dim(self) -> int:
        return 0 if self.node_feat is None else int(self.node_feat.shape[1])


def stable_argsort_ids(keys: np.ndarray, max_key: int) -> np.ndarray:
    """Stable argsort of non-negative integer ids, as an LSD radix sort over 16-bit digits.

    numpy sorts 16-bit keys stably with a counting sort, so each pass is linear; two passes cover
    2^32 ids and run ~2x faster than a comparison-based stable argsort of the int64 keys.
    """
    if max_key >= 1 << 48:
        return np.argsort(keys, kind="stable")
    order = None
    shift = 0
    while True:
        digit = ((keys >> shift) & 0xFFFF).astype(np.uint16)
        order = np.argsort(digit, kind="stable") if order is None else order[np.argsort(digit[order], kind="stable")]
        shift += 16
        if max_key < 1 << shift:
            return order


def build_tcsr(src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int, *,
               directed: bool = False) -> TCSR:
    """Build the T-CSR with one stable sort by row.

    Events are already in (t, eid) order, so laying the endpoints out in event order and sorting
    stably by row leaves every row sorted by (t, eid) without a second key.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if directed:
        order = stable_argsort_ids(src, num_nodes - 1)
        eid, nbr, rows = order, dst[order], src
    else:
        # interleave (src_e, dst_e): position p holds event p // 2, and its neighbour is the other end,
        # at position p ^ 1 (one gather: no per-endpoint copies of src and dst)
        rows = np.empty(2 * len(src), dtype=np.int64)
        rows[0::2], rows[1::2] = src, dst
        order = stable_argsort_ids(rows, num_nodes - 1)
        nbr = rows[order ^ 1]
        eid = np.right_shift(order, 1, out=order)  # order is not needed after this
    counts = np.bincount(rows, minlength=num_nodes)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return TCSR(indptr=indptr, nbr=nbr.astype(np.int64, copy=False), t=np.asarray(t, dtype=np.float64)[eid],
                eid=eid.astype(np.int64, copy=False))


def chronological_split(t: np.ndarray, fractions: tuple[float, float] = (0.70, 0.85)) -> np.ndarray:
    """Split sorted events 70/15/15 by time: an event's split is set by where its time falls.

    Boundaries are time quantiles, so events sharing a timestamp never straddle two splits.
    """
    split = np.zeros(len(t), dtype=np.int8)
    if len(t) == 0:
        return split
    val_t, test_t = np.quantile(t, fractions, method="lower")
    split[t > val_t] = 1
    split[t > test_t] = 2
    return split
