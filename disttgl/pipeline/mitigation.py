"""MSPipe's staleness mitigation, as pure functions (docs/design.md).

A batch that reads stale memory picks its stalest rows (``stale_rows``) and mixes each one's memory
with the live memory of its similar nodes that were updated after the stale copy was
(``mitigate``):

    m~_v = lam * m_v + (1 - lam) * mean{ live_memory[u] : u in S(v), live_mem_t[u] > mem_t[v] }

S(v) is row v of the similar-nodes table (``disttgl similar``; -1 entries are padding). A stale row
with no such u keeps m_v. Only the memory input of the forward pass changes: nothing here writes
the memory table. The training loop calls ``mitigate`` right after gathering a batch's memory, with
the rows it read (possibly stale), their ``mem_t``, and the freshest memory it holds as ``live``;
``root_row_times`` gives the per-row times and the root mask from a batch's roots, so only roots
are mitigated, as in MSPipe.
"""

from __future__ import annotations

import math

import torch


def root_row_times(root_idx: torch.Tensor, root_t: torch.Tensor,
                   num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unique row, the latest time it is a root at, and whether it is a root at all.

    A node can be a root of several events of a batch; its latest root time gives its largest
    staleness, the one that decides whether its memory is stale.

    Args:
        root_idx: int64 [R] row (index into the batch's unique nodes) of every root.
        root_t: float64 [R] time of every root (``Batch.root_t``).
        num_rows: U, the batch's unique nodes.

    Returns:
        (time float64 [U], with -inf for rows that are no root; is_root bool [U]).
    """
    t = torch.full((num_rows,), -math.inf, dtype=torch.float64, device=root_t.device)
    t = t.scatter_reduce(0, root_idx, root_t.to(torch.float64), reduce="amax", include_self=True)
    is_root = torch.zeros(num_rows, dtype=torch.bool, device=root_idx.device)
    is_root[root_idx] = True
    return t, is_root


def num_stale(num_rows: int, top_fraction: float) -> int:
    """ceil(top_fraction * num_rows), at least 1 when both are positive (products such as 0.07 * 100
    = 7.000000000000001 are rounded to 9 decimals first, so they do not round up to 8)."""
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    if num_rows <= 0 or top_fraction == 0.0:
        return 0
    return max(1, min(num_rows, math.ceil(round(top_fraction * num_rows, 9))))


def stale_rows(staleness: torch.Tensor, nodes: torch.Tensor, top_fraction: float = 0.01,
               eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of the ``num_stale(#eligible, top_fraction)`` stalest eligible rows.

    Ties: a fixed count, not a threshold (a quantile cut would take every row of a tie, e.g. all
    never-updated nodes of a batch); among equal staleness the lower node id is taken first, so
    the choice is deterministic and independent of the row order.

    Args:
        staleness: float [U] row time minus memory time (larger = staler).
        nodes: int64 [U] node id of every row (unique).
        top_fraction: share of the eligible rows to take.
        eligible: bool [U] rows that may be taken (the roots); None: all.

    Returns:
        int64 [s] row positions, stalest first.
    """
    rows = torch.arange(staleness.shape[0], device=staleness.device)
    if eligible is not None:
        rows = rows[eligible]
    count = num_stale(int(rows.shape[0]), top_fraction)
    if count == 0:
        return rows[:0]
    by_id = rows[torch.sort(nodes[rows], stable=True).indices]
    by_staleness = torch.sort(staleness[by_id], descending=True, stable=True).indices  # keeps id order in ties
    return by_id[by_staleness[:count]]


def mitigate(memory_rows: torch.Tensor, mem_t: torch.Tensor, batch_nodes: torch.Tensor,
             batch_time: float | torch.Tensor, live_memory: torch.Tensor, live_mem_t: torch.Tensor,
             similar_idx: torch.Tensor, *, lam: float = 0.9, top_fraction: float = 0.01,
             eligible: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's memory with its stalest rows mixed with their fresher similar nodes' live memory.

    Args:
        memory_rows: float [U, d] memory the batch read for its unique nodes (possibly stale).
        mem_t: float64 [U] time of each row's memory (``Batch.mem_t`` of the copy read).
        batch_nodes: int64 [U] unique node ids of the rows.
        batch_time: the batch's time, or float64 [U] per-row times (``root_row_times``).
        live_memory: float [N, d] the freshest memory the caller holds.
        live_mem_t: float64 [N] its per-node memory times.
        similar_idx: int64 [N, k] similar-nodes table (-1 = padding).
        lam: weight of the row's own memory; 1 returns ``memory_rows`` unchanged.
        top_fraction: share of the (eligible) rows treated as stale (``stale_rows``).
        eligible: bool [U] rows that may be mitigated (the roots); None: all.

    Returns:
        float [U, d], a new tensor; rows not stale, or without a fresher similar node, equal the input.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    out = memory_rows.clone()
    if lam == 1.0 or memory_rows.shape[0] == 0:
        return out
    mem_t = mem_t.to(torch.float64)
    staleness = torch.as_tensor(batch_time, dtype=torch.float64, device=mem_t.device) - mem_t
    rows = stale_rows(staleness, batch_nodes, top_fraction, eligible)
    if rows.shape[0] == 0:
        return out
    cand = similar_idx[batch_nodes[rows]]  # [s, k]
    safe = cand.clamp_min(0)
    fresher = (cand >= 0) & (live_mem_t[safe].to(torch.float64) > mem_t[rows, None])
    count = fresher.sum(1)
    gathered = live_memory[safe]  # [s, k, d]
    total = torch.where(fresher.unsqueeze(2), gathered, torch.zeros_like(gathered)).sum(1)  # [s, d]
    mean = total / count.clamp_min(1).unsqueeze(1).to(total.dtype)
    mixed = lam * memory_rows[rows] + (1.0 - lam) * mean.to(memory_rows.dtype)
    has = count > 0
    out[rows[has]] = mixed[has]
    return out
