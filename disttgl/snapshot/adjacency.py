"""What the training device does with a snapshot's raw adjacency (docs/design.md §11.3): the
normalisation Â = D^-1/2 (A + I) D^-1/2 as a torch sparse tensor, TM-GCN's M matrix and the
M-mixed adjacency Ĉ_t = Σ_k M[t, k] Â_k. Everything here runs on the tensors' own device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class DeviceAdjacency:
    """Snapshot ``index``'s raw adjacency on the device: int64 (row, col, count), sorted by (row, col)."""

    index: int
    row: torch.Tensor
    col: torch.Tensor
    count: torch.Tensor

    def equal(self, other: "DeviceAdjacency") -> bool:
        return self.index == other.index and all(
            torch.equal(getattr(self, f), getattr(other, f)) for f in ("row", "col", "count"))


def normalized_adjacency(adj: DeviceAdjacency, num_nodes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Â = D^-1/2 (A + I) D^-1/2, A holding the counts, D the row sums of A + I (so a self-loop
    event adds to the 1 of I), as a coalesced sparse COO tensor [N, N] on ``adj``'s device.

    Args:
        adj: the raw adjacency.
        num_nodes: N.
        dtype: floating dtype of the values.
    """
    dev = adj.row.device
    loops = torch.arange(num_nodes, device=dev)
    idx = torch.stack([torch.cat([adj.row, loops]), torch.cat([adj.col, loops])])
    val = torch.cat([adj.count.to(dtype), torch.ones(num_nodes, dtype=dtype, device=dev)])
    a = torch.sparse_coo_tensor(idx, val, (num_nodes, num_nodes), check_invariants=False).coalesce()
    r, c = a.indices()
    v = a.values()
    # integer-valued sums: exact in any order (atomic adds on CUDA included) below 2^24
    dinv = torch.zeros(num_nodes, dtype=dtype, device=dev).index_add_(0, r, v).rsqrt()
    return torch.sparse_coo_tensor(a.indices(), v * dinv[r] * dinv[c], (num_nodes, num_nodes),
                                   is_coalesced=True, check_invariants=False)


def m_weights(t: int, window: int, choice: int = 2, rownorm: bool = False) -> list[tuple[int, float]]:
    """Row t of TM-GCN's M as (k, M[t, k]) for the snapshots k it mixes, newest first.

    M is lower triangular and banded: ``M[t, t - d + 1] = m_d`` for d = 1 .. w (and k >= 0), with
    ``m_d = 1 / d`` (``choice`` 2, IBM's ``M_choice = 2``, the default) or 1 (``choice`` 1);
    ``rownorm`` divides each row by its sum (IBM's ``M_rownorm``).

    Args:
        t: the row (a snapshot index, counted from the stream's first snapshot).
        window: w, the number of diagonals (IBM's ``no_diag`` = 20).
        choice: 1 or 2.
        rownorm: normalise the row to sum 1.
    """
    if choice not in (1, 2):
        raise ValueError(f"M choice must be 1 or 2, got {choice}")
    if window < 1:
        raise ValueError(f"M window must be >= 1, got {window}")
    row = [(t - d + 1, 1.0 if choice == 1 else 1.0 / d) for d in range(1, min(window, t + 1) + 1)]
    if rownorm:
        total = sum(w for _, w in row)
        row = [(k, w / total) for k, w in row]
    return row


def m_matrix(num_snapshots: int, window: int, choice: int = 2, rownorm: bool = False,
             dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The dense M [T, T] whose rows are :func:`m_weights`."""
    m = torch.zeros(num_snapshots, num_snapshots, dtype=dtype, device=device)
    for t in range(num_snapshots):
        for k, w in m_weights(t, window, choice, rownorm):
            m[t, k] = w
    return m


def mixed_adjacency(adjs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ_i weights[i] · adjs[i] for coalesced sparse [N, N] tensors: Ĉ_t of TM-GCN."""
    if len(adjs) == 1 and weights[0] == 1.0:
        return adjs[0]
    idx = torch.cat([a.indices() for a in adjs], 1)
    val = torch.cat([a.values() * w for a, w in zip(adjs, weights)])
    return torch.sparse_coo_tensor(idx, val, adjs[0].shape, check_invariants=False).coalesce()
