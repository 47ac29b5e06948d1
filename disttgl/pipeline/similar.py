"""The k most similar nodes of every node, for MSPipe's staleness mitigation (docs/design.md).

MSPipe mixes a stale node's memory with the live memory of its most similar nodes; the paper's
similarity is not released, so three are offered (``METHODS``), each computed from the train split
only (``graph.split == 0``): validation and test events never change the result, so the table
leaks nothing the model could not see while training.

- ``static-cosine``: cosine of the rows of the pretrained static memory table [N, d]
  (``disttgl pretrain``). Only nodes with a training event take part, as queries and as candidates:
  the other rows keep their random initialisation, and their cosines would be noise.
- ``jaccard``: |P(u) ∩ P(w)| / |P(u) ∪ P(w)| of the undirected partner sets
  P(u) = {x != u : a train event joins u and x}.
- ``cooc``: co-interaction count ``sum_x c(u,x) * c(w,x)``, c(u,x) = number of train events joining
  u and x (either direction, self loops left out). The product, not ``min(c(u,x), c(w,x))``: it
  is exactly the number of pairs of train events (u-x, w-x) that share a partner, the usual
  co-occurrence count, and it is linear in c, so it is one sparse product per block of rows
  (``min`` is not a product and would need one pass per count level). On a bipartite graph the
  partners of a user are items and theirs are users, so similar nodes are on the same side by
  construction; a non-bipartite graph uses the same formula with undirected partners.

Every method: the node itself is excluded, candidates need a score > 0, rows are sorted by score
descending with ties broken by the lower node id, and a node with fewer than k candidates has its
row padded with id -1 and score 0. The N x N score matrix is never held: rows are scored in
blocks of about 4M entries (sparse x dense for the partner methods), each block reduced to its
top k before the next.
"""

from __future__ import annotations

import numpy as np
import torch

from disttgl.data.graph import Graph
from disttgl.errors import DataError

METHODS = ("static-cosine", "jaccard", "cooc")
BLOCK_ENTRIES = 1 << 22  # scores per block: 32 MB of float64, plus the masks of the top-k step


def similar_nodes(graph: Graph, method: str, k: int = 10, *,
                  static: torch.Tensor | np.ndarray | None = None,
                  block_entries: int = BLOCK_ENTRIES) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar nodes of every node, from the train split only.

    Args:
        graph: the temporal graph (``disttgl.data.graph_store.load_graph``).
        method: one of ``METHODS`` (the module docstring defines each).
        k: neighbours per node (>= 1).
        static: the static memory table [N, d]; required by ``static-cosine`` only.
        block_entries: scores held at once (rows per block = block_entries // N, at least 1).

    Returns:
        (idx int64 [N, k], score float32 [N, k]): row n holds n's similar nodes, best first (ties:
        lower id first), padded with -1 / 0 where fewer than k nodes score above 0.
    """
    if method not in METHODS:
        raise DataError(None, f"unknown similarity method {method!r}; choose one of {', '.join(METHODS)}")
    if k < 1:
        raise DataError(None, f"k must be at least 1, got {k}")
    n = int(graph.num_nodes)
    train = graph.split == 0
    src, dst = np.asarray(graph.src)[train], np.asarray(graph.dst)[train]
    if method == "static-cosine":
        if static is None:
            raise DataError(None, "static-cosine needs the static memory table (--static STATIC.h5)")
        scorer = _cosine_scorer(_as_float64(static, n), src, dst, n)
    else:
        scorer = _partner_scorer(src, dst, n, binary=method == "jaccard")
    rows = max(1, block_entries // max(n, 1))
    idx = torch.full((n, k), -1, dtype=torch.int64)
    score = torch.zeros((n, k), dtype=torch.float32)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        block = scorer(lo, hi)
        block[torch.arange(hi - lo), torch.arange(lo, hi)] = 0.0  # never oneself
        idx[lo:hi], score[lo:hi] = top_k_rows(block, k)
    return idx, score


def top_k_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k columns with the highest score > 0: by score descending, then column ascending.

    ``torch.topk`` leaves the order of equal scores unspecified, so it only gives the k-th value;
    the columns above it and the lowest-numbered ones equal to it are then picked with masks.

    Args:
        scores: float [b, N].
        k: columns per row.

    Returns:
        (idx int64 [b, k], score float32 [b, k]), padded with -1 / 0 past the positive scores.
    """
    b, n = scores.shape
    kk = min(k, n)
    idx = torch.full((b, k), -1, dtype=torch.int64)
    out = torch.zeros((b, k), dtype=torch.float32)
    if b == 0 or kk == 0:
        return idx, out
    scores = torch.nan_to_num(scores, nan=0.0)
    thr = torch.topk(scores, kk, dim=1, sorted=True).values[:, -1:]
    above = scores > thr
    equal = scores == thr
    need = kk - above.sum(1, keepdim=True)
    take = above | (equal & (equal.cumsum(1) <= need))
    cols = take.nonzero()[:, 1].view(b, kk)  # ascending column ids within each row
    vals = scores.gather(1, cols)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices  # stable: ties keep lower id first
    cols, vals = cols.gather(1, order), vals.gather(1, order)
    keep = vals > 0
    idx[:, :kk] = torch.where(keep, cols, torch.full_like(cols, -1))
    out[:, :kk] = torch.where(keep, vals, torch.zeros_like(vals)).to(torch.float32)
    return idx, out


def _as_float64(static: torch.Tensor | np.ndarray, n: int) -> torch.Tensor:
    table = torch.as_tensor(np.asarray(static.cpu() if isinstance(static, torch.Tensor) else static))
    if table.ndim != 2 or table.shape[0] != n:
        raise DataError(None, f"static memory table has shape {tuple(table.shape)}, the graph has {n} nodes")
    return table.to(torch.float64)


def _cosine_scorer(table: torch.Tensor, src: np.ndarray, dst: np.ndarray, n: int):
    """Row blocks of the cosine matrix of the unit rows of nodes with a training event (others 0)."""
    active = np.zeros(n, dtype=bool)
    active[src] = True
    active[dst] = True
    norm = table.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, table / norm.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(table))
    unit[torch.from_numpy(~active)] = 0.0
    unit_t = unit.T.contiguous()

    def score(lo: int, hi: int) -> torch.Tensor:
        return unit[lo:hi] @ unit_t

    return score


def partner_counts(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric CSR (indptr [N+1], cols, counts float64) of c(u, x): the events joining u and x,
    counted in both rows, self loops left out.

    Args:
        src: int64 [E] event sources (the train events).
        dst: int64 [E] event destinations.
        n: number of nodes.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    off = src != dst
    rows = np.concatenate([src[off], dst[off]])
    cols = np.concatenate([dst[off], src[off]])
    keys, counts = np.unique(rows * n + cols, return_counts=True)  # sorted by (row, col)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // n, minlength=n), out=indptr[1:])
    return indptr, keys % n, counts.astype(np.float64)


def _partner_scorer(src: np.ndarray, dst: np.ndarray, n: int, *, binary: bool):
    """Row blocks of C = X X^T (X: partner counts, or their 0/1 pattern), Jaccard-normalised if binary.

    X is symmetric, so a block of rows C[lo:hi] = (X @ X[lo:hi]^T)^T: one sparse x dense product.
    """
    indptr, cols, counts = partner_counts(src, dst, n)
    vals = np.ones_like(counts) if binary else counts
    rows = np.repeat(np.arange(n), np.diff(indptr))
    x = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(vals), size=(n, n),
                                dtype=torch.float64, is_coalesced=True,  # (row, col) sorted, unique
                                check_invariants=False)
    degree = torch.from_numpy(np.diff(indptr).astype(np.float64))

    def score(lo: int, hi: int) -> torch.Tensor:
        a, b = int(indptr[lo]), int(indptr[hi])
        dense = torch.zeros((hi - lo, n), dtype=torch.float64)
        local = torch.from_numpy(np.repeat(np.arange(hi - lo), np.diff(indptr[lo:hi + 1])))
        dense[local, torch.from_numpy(cols[a:b])] = torch.from_numpy(vals[a:b])
        common = torch.sparse.mm(x, dense.T).T.contiguous()  # [b, N]
        if not binary:
            return common
        union = degree[lo:hi, None] + degree[None, :] - common
        return torch.where(common > 0, common / union.clamp_min(1.0), torch.zeros_like(common))

    return score

