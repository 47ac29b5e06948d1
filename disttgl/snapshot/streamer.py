"""Snapshot transfer to the training device, whole or by graph difference (docs/design.md §11.4).

``whole`` copies each snapshot's entries (row, col, count); ``diff`` copies its difference against
the previous snapshot (row, col, signed change) and rebuilds the adjacency on the device,
``A_s = A_{s-1} + D_s`` with pairs whose count reaches 0 dropped. Both copy the file's dtypes
(12 bytes an entry when ids and counts fit int32), so the bytes copied are proportional to the
entries copied: with a constant edge life L, a pair enters once and leaves once while it is
present in L snapshots, and whole / diff tends to L / 2. Both yield the same int64 tensors,
sorted by (row, col): identical inputs, hence identical losses and gradients.

A stream may start at any snapshot: in ``diff`` mode its first snapshot is copied whole (snapshot 0's
difference against the empty graph is the snapshot itself), so a rank owning a block of snapshots
streams only its block and the history its model needs.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from disttgl.snapshot.adjacency import DeviceAdjacency
from disttgl.snapshot.build import PairLists, Snapshots

MODES = ("whole", "diff")


def apply_difference(key: torch.Tensor, count: torch.Tensor, d_key: torch.Tensor,
                     d_delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The next adjacency from the previous one and a difference, as (key, count) sorted by key
    (key = row * N + col); pairs whose count becomes 0 are dropped. Integer sums: exact on any device.

    ``torch.unique`` over the merged keys rather than a merge by ``searchsorted``: on a busy CPU the
    latter's thread pool cost 7 ms a call whatever the size (measured), the sort well under 1 ms."""
    keys, inverse = torch.unique(torch.cat([key, d_key]), sorted=True, return_inverse=True)
    counts = torch.zeros(len(keys), dtype=count.dtype, device=count.device)
    counts.index_add_(0, inverse, torch.cat([count, d_delta.to(count.dtype)]))
    keep = counts != 0
    return keys[keep], counts[keep]


class SnapshotStreamer:
    """Streams :class:`DeviceAdjacency` per snapshot onto ``device``, counting the bytes copied.

    Args:
        snaps: the snapshots (host memory).
        device: the training device.
        mode: ``whole`` or ``diff``.
        pin: pin the host arrays once so copies to CUDA are asynchronous (default: when ``device``
            is CUDA).
        timed: synchronise the device before reading the clock, so ``seconds`` is the transfer and
            rebuild time (benchmarks; off in training, where it would stall the device).
    """

    def __init__(self, snaps: Snapshots, device: torch.device | str, mode: str = "whole", *,
                 pin: bool | None = None, timed: bool = False):
        if mode not in MODES:
            raise ValueError(f"transfer mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.device = torch.device(device)
        self.mode, self.timed = mode, timed
        self.num_nodes, self.num_snapshots = snaps.num_nodes, snaps.num_snapshots
        self.pin = self.device.type == "cuda" if pin is None else pin
        self._whole = self._host(snaps.adjacency)
        self._diff = self._host(snaps.diff) if mode == "diff" else None
        self.bytes_copied = 0
        self.entries_copied = 0
        self.seconds = 0.0

    def _host(self, lists: PairLists) -> tuple[np.ndarray, list[torch.Tensor]]:
        arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in (lists.row, lists.col, lists.value)]
        return lists.ptr, [a.pin_memory() if self.pin else a for a in arrays]

    def _copy(self, host: tuple[np.ndarray, list[torch.Tensor]], s: int) -> list[torch.Tensor]:
        ptr, arrays = host
        a, b = int(ptr[s]), int(ptr[s + 1])
        parts = [x[a:b] for x in arrays]
        self.bytes_copied += sum(p.nbytes for p in parts)
        self.entries_copied += b - a
        # copy=True: on a CPU "device" too, so the device side owns a separate buffer
        return [p.to(self.device, non_blocking=self.pin, copy=True).long() for p in parts]

    def _sync(self) -> None:
        if self.timed and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stream(self, start: int = 0, stop: int | None = None) -> Iterator[DeviceAdjacency]:
        """Snapshots ``start .. stop - 1`` (default: to the last) in order, on the device."""
        stop = self.num_snapshots if stop is None else stop
        if not 0 <= start <= stop <= self.num_snapshots:
            raise ValueError(f"snapshots {start}..{stop} outside 0..{self.num_snapshots}")
        n = self.num_nodes
        key = count = None
        for s in range(start, stop):
            self._sync()
            t0 = time.perf_counter()
            if self.mode == "whole" or s == start:
                row, col, count = self._copy(self._whole, s)
                key = row * n + col if self.mode == "diff" else None
            else:
                d_row, d_col, d_delta = self._copy(self._diff, s)
                key, count = apply_difference(key, count, d_row * n + d_col, d_delta)
                row, col = key // n, key % n
            self._sync()
            self.seconds += time.perf_counter() - t0
            yield DeviceAdjacency(s, row, col, count)
