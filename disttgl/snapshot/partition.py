"""Blocks of snapshots and of vertices over P ranks, and the communication volumes they imply
(docs/design.md §11.6). Pure numpy: the formulas the distributed step's counters are checked against.

- The graph convolution runs by snapshot: rank r owns snapshots ``T_r`` (a contiguous block).
- The temporal step runs by vertex: rank r owns vertices ``V_r`` (a contiguous block) over all T.
- Between them, rank r sends H[T_r, V_q] to every q != r: in all, per direction,
  ``d · (T·N − Σ_r |T_r|·|V_r|)`` elements, which is T·N·d·(1 − 1/P) when P divides T and N, and
  never more than T·N·d whatever P: fixed and linear in the input.
- A vertex-partitioned graph convolution would instead fetch, per snapshot, the rows of X·W of every
  neighbour outside the block (:func:`vertex_halo_rows`): that grows with the edge cut, hence with P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disttgl.snapshot.build import Snapshots


def block_bounds(n: int, parts: int) -> list[int]:
    """Offsets [parts + 1] of ``parts`` contiguous blocks of ``n`` items, sizes differing by at most
    one (the first ``n % parts`` blocks one larger), as ``numpy.array_split``."""
    if parts < 1 or n < 0:
        raise ValueError(f"cannot split {n} items into {parts} blocks")
    base, extra = divmod(n, parts)
    return [i * base + min(i, extra) for i in range(parts + 1)]


@dataclass(frozen=True)
class Partition:
    """T snapshots and N vertices over P ranks: ``snapshots[r]:snapshots[r+1]`` and
    ``vertices[r]:vertices[r+1]`` are rank r's blocks."""

    snapshots: tuple[int, ...]
    vertices: tuple[int, ...]

    @classmethod
    def even(cls, num_snapshots: int, num_nodes: int, parts: int) -> "Partition":
        return cls(tuple(block_bounds(num_snapshots, parts)), tuple(block_bounds(num_nodes, parts)))

    @property
    def size(self) -> int:
        return len(self.snapshots) - 1

    def snapshot_block(self, r: int) -> tuple[int, int]:
        return self.snapshots[r], self.snapshots[r + 1]

    def vertex_block(self, r: int) -> tuple[int, int]:
        return self.vertices[r], self.vertices[r + 1]

    def snapshot_sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.snapshots, self.snapshots[1:])]

    def vertex_sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.vertices, self.vertices[1:])]

    def snapshot_owner(self, t: int) -> int:
        """The rank whose snapshot block holds snapshot ``t``."""
        return int(np.searchsorted(np.asarray(self.snapshots), t, side="right")) - 1


def stage_volume(part: Partition, dim: int) -> dict[str, object]:
    """Elements the snapshot -> vertex all-to-all moves (and its reverse on the gradients: the same).

    Returns ``total`` = d·(T·N − Σ_r |T_r|·|V_r|), and per rank ``sent`` = d·|T_r|·(N − |V_r|) and
    ``received`` = d·|V_r|·(T − |T_r|), ``bound`` = T·N·d.

    Args:
        part: the blocks.
        dim: d, the width of H.
    """
    ts, vs = np.asarray(part.snapshot_sizes()), np.asarray(part.vertex_sizes())
    t, n = int(ts.sum()), int(vs.sum())
    return {"total": int(dim * (t * n - int((ts * vs).sum()))),
            "sent": [int(dim * a * (n - b)) for a, b in zip(ts, vs)],
            "received": [int(dim * b * (t - a)) for a, b in zip(ts, vs)], "bound": t * n * dim}


def vertex_halo_rows(snaps: Snapshots, vertex_bounds: list[int] | tuple[int, ...], num_snapshots: int,
                     history: int = 0) -> list[int]:
    """Rows of X·W each rank would fetch from other ranks if the graph convolution of snapshots
    0 .. ``num_snapshots`` − 1 were partitioned by vertex instead: per snapshot t, the distinct
    columns j outside V_q of the rows i in V_q of the aggregation matrix (Â_t's pattern, the pattern
    of A_t; with ``history`` h, the union of A_{t−h} .. A_t, TM-GCN's Ĉ_t for h = w − 1), summed over t.
    Self-loops of A + I are local. Multiply by d for elements (and once more for the backward).

    Args:
        snaps: the snapshots.
        vertex_bounds: offsets [P + 1] of the vertex blocks.
        num_snapshots: how many snapshots from 0 the step convolves.
        history: snapshots of history each convolution mixes (the encoder's ``halo``).
    """
    bounds = np.asarray(vertex_bounds)
    out = np.zeros(len(bounds) - 1, np.int64)
    n = snaps.num_nodes
    for t in range(num_snapshots):
        rows, cols = [], []
        for k in range(max(0, t - history), t + 1):
            r, c, _ = snaps.adjacency.part(k)
            rows.append(r.astype(np.int64))
            cols.append(c.astype(np.int64))
        row, col = np.concatenate(rows), np.concatenate(cols)
        owner = np.searchsorted(bounds, row, side="right") - 1
        remote = owner != np.searchsorted(bounds, col, side="right") - 1
        need = np.unique(owner[remote] * n + col[remote])  # distinct (rank, remote column)
        out += np.bincount(need // n, minlength=len(out))
    return out.tolist()
