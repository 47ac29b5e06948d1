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

