"""A memory copy's state as its server holds it, with MSPipe's staleness bound k (docs/design.md §5.7).

Stream step ``u``'s read sees exactly the writes of steps ``seg .. u - k``, where ``seg`` is the
copy's last wrap to batch 0 (the memory is zeroed there) or the stream's start. Two states, as the
one-process :class:`disttgl.pipeline.stale_memory.StaleMemory` keeps them: the *live* table (the
shared segment the leader copies for evaluation and the resume file) takes every write as soon as
the server applies it; the *read* state replays the pending writes, in order, up to ``u - k``
before step ``u`` reads. Both carry the memory clock beside the vectors. With k = 1 the read state
is the live table itself (no second copy, today's server exactly).

Pure numpy, no I/O: the server (:mod:`disttgl.parallel.memory_server`) drives it in schedule order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Write:
    """One trainer's write of one stream step (copies, owned by the state)."""

    step: int
    ids: np.ndarray  # int64 [n], unique
    rows: np.ndarray  # float32 [n, 3d]
    clock: np.ndarray  # float64 [n, 3]


def zero(table: np.ndarray, clock: np.ndarray, num_events: int) -> None:
    """The empty memory: zero vectors, no mail (``mail_eid = E``, the zero feature row)."""
    table[:] = 0
    clock[:, :2] = 0
    clock[:, 2] = num_events


class CopyState:
    """The live table and the read state of one memory copy.

    Args:
        table: the live [N, 3d] memory‖mail table (the shared segment), as loaded or zeroed.
        clock: the live [N, 3] clock (mem_t, mail_t, mail_eid as float64).
        k: the staleness bound (1: every read sees the previous step's write).
        num_events: E (``mail_eid = E`` is "no mail").
        start: the first stream step; the read state starts as the live table there.
    """

    def __init__(self, table: np.ndarray, clock: np.ndarray, k: int, num_events: int, start: int):
        if k < 1:
            raise ValueError(f"staleness must be >= 1, got {k}")
        self.table, self.clock, self.k, self.num_events = table, clock, k, num_events
        self.seg = start  # first step of the reads' segment
        self._live_reset_at: int | None = None  # the live table zeroes before its first write >= this step
        self._pending: deque[Write] = deque()  # writes of the segment not yet in the read state
        if k > 1:
            self.read_table, self.read_clock = table.copy(), clock.copy()
        else:
            self.read_table, self.read_clock = table, clock

    def wrap(self, u: int) -> None:
        """Step ``u`` is batch 0: its reads, and the segment's, start from the empty memory."""
        self.seg = u
        zero(self.read_table, self.read_clock, self.num_events)  # k = 1: the live table
        self._pending.clear()
        if self.k > 1:
            # writes of steps < u may still arrive (k - 1 of them): they belong to the live table
            # of the old segment, which the leader may still flush; zero it at the new one's first write
            self._live_reset_at = u

    def write(self, w: Write) -> None:
        """Apply one write (writes come in step order; within a step, in rank order)."""
        if self._live_reset_at is not None and w.step >= self._live_reset_at:
            zero(self.table, self.clock, self.num_events)
            self._live_reset_at = None
        self.table[w.ids] = w.rows
        self.clock[w.ids] = w.clock
        if self.k > 1 and w.step >= self.seg:
            self._pending.append(w)

    def read(self, u: int, ids: np.ndarray, rows: np.ndarray, clock: np.ndarray) -> None:
        """Fill ``rows`` and ``clock`` with the state step ``u`` reads; every write of steps <= u - k
        must have been applied (:meth:`write`)."""
        while self._pending and self._pending[0].step <= u - self.k:
            w = self._pending.popleft()
            self.read_table[w.ids] = w.rows
            self.read_clock[w.ids] = w.clock
        np.take(self.read_table, ids, axis=0, out=rows)
        np.take(self.read_clock, ids, axis=0, out=clock)
