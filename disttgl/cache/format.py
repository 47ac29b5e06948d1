"""The batch cache's on-disk format: its parameters, metadata and layout (one HDF5 file, built by
:mod:`disttgl.cache.build`, read by :mod:`disttgl.cache.reader`).

Layout (per split group ``train``/``val``/``test``; ``I`` is int32 when node and event ids fit):

- ``/event_t`` float64 [E + 1]: every event's time, 0 for the sentinel E. Times the batches need
  (``mem_t``, ``mail_t``, neighbour ``dt``) are stored as event ids and looked up here on load,
  which halves the node tables and removes the per-neighbour float column.
- ``events`` int64 [n, 3] (eid, src, dst) and ``t`` float64 [n]: the split's positives in batch
  order; batch b is rows ``event_ptr[b]:event_ptr[b+1]``.
- Positive part, stored once per batch (roots ``[src | dst]``):
  ``pos_root`` I [2n, 3] (root_idx, write_mask, neighbour count) at rows ``2*event_ptr``;
  ``pos_node`` I [*, 3] (node, mail_eid, mem_eid) at ``pos_node_ptr``: the batch's unique nodes
  (sorted) with the bookkeeping before its memory batch;
  ``pos_nbr`` I [*, 2] (node index, eid) at ``pos_nbr_ptr``, root by root (a neighbour's root is
  implied by the roots' counts), most recent first.
- Negative part, one segment per (batch b, negative set s) at ``seg = b * S + s`` so a batch with
  one set is two contiguous reads: ``neg_root`` I [*, 3] (node, root_idx, count), ``neg_node``
  (the unique nodes of the segment that are NOT in the positive part; their indices continue after
  the positive part's) and ``neg_nbr``, each with its ``*_ptr`` [nb * S + 1]. Train has
  S = ``neg_sets`` with 1 negative per positive; val/test have S = 1 with ``eval_negatives`` each.

So ``Batch.nodes = pos_node ++ neg_node[seg]`` and all indices are precomputed: loading is slicing
plus a few gathers. Datasets are contiguous (unchunked, unfiltered), so the reader memory-maps
them with no HDF5 call per read. ``pos_crc`` [nb] and ``neg_crc`` [nb * S] hold a CRC-32 of each
part's bytes, checked on every read: corrupt bytes raise :class:`DataError`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from disttgl.errors import DataError

CACHE_KIND = "disttgl-batches"
PARTS = {  # dataset -> (pointer dataset, columns or 0 for 1-D, dtype or None for the index dtype)
    "events": ("event_ptr", 3, "int64"), "t": ("event_ptr", 0, "float64"),
    "pos_root": (None, 3, None), "pos_node": ("pos_node_ptr", 3, None), "pos_nbr": ("pos_nbr_ptr", 2, None),
    "neg_root": ("neg_root_ptr", 3, None), "neg_node": ("neg_node_ptr", 3, None),
    "neg_nbr": ("neg_nbr_ptr", 2, None),
}
POINTERS = ("event_ptr", "pos_node_ptr", "pos_nbr_ptr", "neg_root_ptr", "neg_node_ptr", "neg_nbr_ptr")
POSITIVE_PARTS = ("events", "t", "pos_root", "pos_node", "pos_nbr")
NEGATIVE_PARTS = ("neg_root", "neg_node", "neg_nbr")

# 2: validation and test batches are never grouped by i (one evaluation protocol for every layout);
# a version-1 cache built with i > 1 holds grouped val/test bookkeeping and must be rebuilt.
CACHE_FORMAT_VERSION = 2


def parts_crc(parts: Iterable[np.ndarray]) -> int:
    c = 0
    for a in parts:
        c = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), c)
    return c


@dataclass(frozen=True)
class BatchParams:
    batch_size: int = 600
    minibatch_parallelism: int = 1
    neg_sets: int = 32
    eval_negatives: int = 49
    neighbors: int = 10
    strategy: str = "recent"
    seed: int = 0
    tgl_compat: bool = False

    def check(self) -> None:
        for name in ("batch_size", "minibatch_parallelism", "neg_sets", "eval_negatives"):
            if getattr(self, name) < 1:
                raise DataError(None, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.neighbors < 0:
            raise DataError(None, f"--neighbors must be >= 0, got {self.neighbors}")
        if self.strategy not in ("recent", "uniform"):
            raise DataError(None, f"--strategy must be recent or uniform, got {self.strategy!r}")


@dataclass(frozen=True)
class CacheMeta(BatchParams):
    graph_sha256: str = ""
    num_nodes: int = 0
    num_events: int = 0
    split_events: dict[str, int] = field(default_factory=dict)  # positives per split
    split_batches: dict[str, int] = field(default_factory=dict)  # batches per split
    format_version: int = CACHE_FORMAT_VERSION



@dataclass(frozen=True)
class SizeFactors:
    """What the cache's size depends on besides its parameters (README, "Mini-batch cache"):
    ``fill_*``: share of the k neighbour slots that hold a neighbour (positive / negative roots);
    ``nodes_pos``: distinct nodes of a batch's positive part per positive event (at most 2(1 + k));
    ``nodes_neg``: distinct nodes a negative root adds to its set (at most 1 + k). The defaults are
    the worst case (every root has k earlier edges and no node repeats), so they bound the size."""

    fill_pos: float = 1.0
    fill_neg: float = 1.0
    nodes_pos: float | None = None  # None: 2 (1 + k)
    nodes_neg: float | None = None  # None: 1 + k


def cache_bytes(split_events: dict[str, int], params: BatchParams, *, itemsize: int = 4,
                factors: SizeFactors = SizeFactors()) -> int:
    """The cache's size in bytes, less HDF5's own metadata (a few KiB a dataset).

    Per event of a split with S negative sets of q negatives each, I = ``itemsize`` (4: int32
    indices; 8 past 2^31 ids), k neighbours, f fill and u distinct nodes (:class:`SizeFactors`):
    32 + 6I + 4kIf_pos + 3Iu_pos (positives) + S q (3I + 2kIf_neg + 3Iu_neg) (negatives); per batch
    8 (3 + 3S) + 4 (1 + S) (offsets, CRCs); per event of the stream 8 (``event_t``).

    Args:
        split_events: positives per split (``train``, ``val``, ``test``).
        params: the cache's parameters.
        itemsize: bytes of an index.
        factors: the data-dependent factors (default: the worst case, an upper bound).
    """
    k, i = params.neighbors, itemsize
    u_pos = 2 * (1 + k) if factors.nodes_pos is None else factors.nodes_pos
    u_neg = 1 + k if factors.nodes_neg is None else factors.nodes_neg
    total = 8.0 * (sum(split_events.values()) + 1)
    for split, n in split_events.items():
        sets, q = (params.neg_sets, 1) if split == "train" else (1, params.eval_negatives)
        batches = -(-n // params.batch_size)
        total += n * (32 + 6 * i + 4 * k * i * factors.fill_pos + 3 * i * u_pos)
        total += n * sets * q * (3 * i + 2 * k * i * factors.fill_neg + 3 * i * u_neg)
        total += batches * (8 * (3 + 3 * sets) + 4 * (1 + sets)) + 8 * 6  # + the offsets' leading zeros
    return int(round(total))
