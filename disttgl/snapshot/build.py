"""Snapshots of a temporal graph as pure, vectorised functions (docs/design.md §11.1).

Events are bucketed by time; an event in snapshot s keeps its pair (u, v) alive in snapshots
s .. s + L - 1 (edge life L). Snapshot s's raw adjacency counts, per pair, the events alive there:
``A_s[u, v] = #{events (u, v) with bucket in [s - L + 1, s]}``. Every per-snapshot list is sorted by
(row, col). The difference of snapshot s against s - 1 (snapshot 0 against the empty graph) is the
list of pairs whose count changed, with the signed change: ``A_s = A_{s-1} + D_s`` entry by entry,
pairs whose count becomes 0 leaving the adjacency. Nothing loops over events: the count of a pair
only changes where one of its events enters (+c at its bucket) or leaves (-c, L buckets later), so
the change records are built first and the adjacency is those records' running sums, expanded over
the snapshots each sum holds for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from disttgl.errors import DataError

DIFF_KINDS = ("added", "removed", "changed")
MAX_SNAPSHOTS = 1_000_000  # per-snapshot pointers beyond this are a mistyped --delta, not a dataset


@dataclass(frozen=True)
class SnapshotParams:
    """How to cut the event stream: exactly one of ``delta`` (seconds per snapshot) and
    ``num_snapshots``; ``edge_life`` L in snapshots; ``symmetric`` counts each event in both directions."""

    delta: float | None = None
    num_snapshots: int | None = None
    edge_life: int = 10  # the authors' group's setting (IBM TM-GCN, read_data.m)
    symmetric: bool = False

    def check(self) -> None:
        if (self.delta is None) == (self.num_snapshots is None):
            raise DataError(None, "give exactly one of --delta and --num-snapshots")
        if self.delta is not None and not (math.isfinite(self.delta) and self.delta > 0):
            raise DataError(None, f"--delta must be a positive number of seconds, got {self.delta}")
        if self.num_snapshots is not None and self.num_snapshots < 1:
            raise DataError(None, f"--num-snapshots must be >= 1, got {self.num_snapshots}")
        if self.edge_life < 1:
            raise DataError(None, f"--edge-life must be >= 1, got {self.edge_life}")


@dataclass(frozen=True)
class PairLists:
    """One (row, col, value) list per snapshot, concatenated: snapshot s is ``[ptr[s], ptr[s + 1])``,
    sorted by (row, col) inside each snapshot (CSR order, the row index kept per entry)."""

    ptr: np.ndarray  # int64 [T + 1]
    row: np.ndarray
    col: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.ptr) - 1

    def part(self, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Snapshot ``s``'s (row, col, value) views."""
        a, b = int(self.ptr[s]), int(self.ptr[s + 1])
        return self.row[a:b], self.col[a:b], self.value[a:b]

    def sizes(self) -> np.ndarray:
        return np.diff(self.ptr)

    def csr(self, s: int, num_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Snapshot ``s`` as CSR (indptr [N + 1], col, value)."""
        row, col, value = self.part(s)
        indptr = np.zeros(num_nodes + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=num_nodes), out=indptr[1:])
        return indptr, col, value


@dataclass(frozen=True)
class Snapshots:
    num_nodes: int
    t0: float  # snapshot s covers [t0 + s * delta, t0 + (s + 1) * delta)
    delta: float
    edge_life: int
    symmetric: bool
    last_closed: bool  # the last snapshot also holds t0 + T * delta (--num-snapshots: the last event)
    adjacency: PairLists  # counts (> 0) of events alive per pair
    diff: PairLists  # signed count changes (!= 0) against the previous snapshot
    events: PairLists  # the snapshot's own events per directed pair (u, v) as given, with counts
    diff_kinds: np.ndarray  # int64 [T, 3]: added, removed, changed entries of each difference
    split: np.ndarray  # int8 [T]: 0 train, 1 val, 2 test

    @property
    def num_snapshots(self) -> int:
        return len(self.split)


def bucket_times(t: np.ndarray, params: SnapshotParams) -> tuple[np.ndarray, float, float, int, bool]:
    """Snapshot index of every event: (bucket int64 [E], t0, delta, T, last_closed).

    ``--delta D``: ``floor((t - t0) / D)`` with t0 the first event's time, T = last bucket + 1; all
    buckets half-open. ``--num-snapshots T``: ``delta = (t_max - t0) / T`` and the index is
    ``floor((t - t0) * T / (t_max - t0))`` (exact for integer times below 2^53 / T), capped at
    T - 1: the last bucket is closed, ``[t0 + (T - 1) delta, t_max]``.

    Args:
        t: event times, sorted (as in the graph store).
        params: the checked snapshot parameters.
    """
    params.check()
    t = np.asarray(t, dtype=np.float64)
    if len(t) == 0:
        raise DataError(None, "the graph has no events to cut into snapshots")
    t0, t_max = float(t[0]), float(t[-1])
    if params.delta is not None:
        last = math.floor((t_max - t0) / params.delta)
        if last >= MAX_SNAPSHOTS:
            raise DataError(None, f"--delta {params.delta} cuts the {t_max - t0:g} s span into {last + 1:,} "
                                  f"snapshots, more than {MAX_SNAPSHOTS:,}: use a larger --delta")
        s = np.floor((t - t0) / params.delta).astype(np.int64)
        return s, t0, float(params.delta), int(s[-1]) + 1, False
    num = int(params.num_snapshots)
    if num > MAX_SNAPSHOTS:
        raise DataError(None, f"--num-snapshots {num:,} is more than {MAX_SNAPSHOTS:,}")
    span = t_max - t0
    if span <= 0:
        raise DataError(None, "all events share one timestamp: --num-snapshots cannot divide a zero time span")
    s = np.minimum(np.floor((t - t0) * num / span).astype(np.int64), num - 1)
    return s, t0, span / num, num, True


def _run_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of every run of equal tuples in lexicographically sorted key arrays."""
    n = len(sorted_keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in sorted_keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def aggregate_pairs(bucket: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events per (bucket, pair key): (bucket, key, count), sorted by (bucket, key)."""
    order = np.lexsort((key, bucket))
    b, k = bucket[order], key[order]
    starts = _run_starts(b, k)
    counts = np.diff(np.r_[starts, len(b)])
    return b[starts], k[starts], counts.astype(np.int64)


def change_records(bucket: np.ndarray, key: np.ndarray, count: np.ndarray, edge_life: int,
                   num_snapshots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where and by how much each pair's alive count changes: (key, snapshot, delta), sorted by
    (key, snapshot), deltas summed per (key, snapshot) and zero sums dropped.

    Args:
        bucket, key, count: :func:`aggregate_pairs` of the (possibly symmetrised) events.
        edge_life: L; the events of bucket s leave at s + L (never, when that is past the end).
        num_snapshots: T.
    """
    cs = np.r_[bucket, bucket + edge_life]
    ck = np.r_[key, key]
    cd = np.r_[count, -count]
    keep = cs < num_snapshots
    cs, ck, cd = cs[keep], ck[keep], cd[keep]
    order = np.lexsort((cs, ck))
    cs, ck, cd = cs[order], ck[order], cd[order]
    starts = _run_starts(ck, cs)
    if len(starts) == 0:
        return ck, cs, cd
    sums = np.add.reduceat(cd, starts)
    nz = sums != 0
    return ck[starts][nz], cs[starts][nz], sums[nz]


def running_counts(key: np.ndarray, snap: np.ndarray, delta: np.ndarray,
                   num_snapshots: int) -> tuple[np.ndarray, np.ndarray]:
    """For change records sorted by (key, snap): each pair's count after the change, and the
    snapshot of the pair's next change (T after its last), i.e. the count holds on [snap, next)."""
    n = len(key)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = _run_starts(key)
    group = np.repeat(np.arange(len(first)), np.diff(np.r_[first, n]))
    csum = np.cumsum(delta)
    count = csum - (csum[first] - delta[first])[group]
    nxt = np.r_[snap[1:], num_snapshots]
    last = np.r_[first[1:] - 1, n - 1]
    nxt[last] = num_snapshots
    return count, nxt


def expand_intervals(key: np.ndarray, start: np.ndarray, stop: np.ndarray,
                     value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (snapshot, key, value) with snapshot in [start, stop) of its interval, sorted by
    (snapshot, key): the adjacency entries."""
    lengths = stop - start
    total = int(lengths.sum())
    rep = np.repeat(np.arange(len(key)), lengths)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    snap = start[rep] + (np.arange(total, dtype=np.int64) - offsets[rep])
    k, v = key[rep], value[rep]
    order = np.lexsort((k, snap))
    return snap[order], k[order], v[order]


def _index_dtype(num_nodes: int) -> np.dtype:
    return np.dtype(np.int32) if num_nodes <= np.iinfo(np.int32).max else np.dtype(np.int64)


def pair_lists(snap: np.ndarray, key: np.ndarray, value: np.ndarray, num_snapshots: int,
               num_nodes: int, value_dtype: np.dtype) -> PairLists:
    """:class:`PairLists` from entries sorted by (snapshot, key), key = row * N + col."""
    ptr = np.zeros(num_snapshots + 1, np.int64)
    np.cumsum(np.bincount(snap, minlength=num_snapshots), out=ptr[1:])
    idx = _index_dtype(num_nodes)
    return PairLists(ptr=ptr, row=(key // num_nodes).astype(idx), col=(key % num_nodes).astype(idx),
                     value=value.astype(value_dtype))


def snapshot_splits(bucket: np.ndarray, split: np.ndarray, num_snapshots: int) -> np.ndarray:
    """Each snapshot's split: the latest split among its events, and never earlier than the
    snapshot before it (a running maximum), so train snapshots come first, then val, then test,
    a snapshot straddling a boundary gets the later split, an empty one its predecessor's, and no
    training snapshot holds a val or test event.

    Args:
        bucket: events' snapshot indices, non-decreasing.
        split: events' splits (0 train, 1 val, 2 test).
        num_snapshots: T.
    """
    out = np.zeros(num_snapshots, np.int8)
    if len(bucket):
        starts = _run_starts(bucket)
        out[bucket[starts]] = np.maximum.reduceat(split.astype(np.int8), starts)
    return np.maximum.accumulate(out).astype(np.int8)


def build_snapshots(src: np.ndarray, dst: np.ndarray, t: np.ndarray, split: np.ndarray, num_nodes: int,
                    params: SnapshotParams) -> Snapshots:
    """Cut events into snapshots: adjacency, differences, per-snapshot events and splits.

    ``symmetric``: a pair's count is the number of its events in either direction, so (u, v) and
    (v, u) both count an event between u and v; a self-loop (u, u) is counted once.

    Args:
        src, dst, t, split: the graph store's events (sorted by t).
        num_nodes: N; row and col lie in [0, N).
        params: how to cut (see :class:`SnapshotParams`).
    """
    if num_nodes > 3_037_000_499:  # key = row * N + col must fit int64
        raise DataError(None, f"{num_nodes} nodes: pair keys row * N + col would overflow int64")
    bucket, t0, delta, num, last_closed = bucket_times(t, params)
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    value_dtype = np.dtype(np.int32) if 2 * len(src) <= np.iinfo(np.int32).max else np.dtype(np.int64)
    eb, ek, ec = aggregate_pairs(bucket, src * num_nodes + dst)
    events = pair_lists(eb, ek, ec, num, num_nodes, value_dtype)
    if params.symmetric:
        off = src != dst
        b2 = np.r_[bucket, bucket[off]]
        eb, ek, ec = aggregate_pairs(b2, np.r_[src * num_nodes + dst, dst[off] * num_nodes + src[off]])
    key, snap, dlt = change_records(eb, ek, ec, params.edge_life, num)
    count, nxt = running_counts(key, snap, dlt, num)
    kind = np.where(count == dlt, 0, np.where(count == 0, 1, 2))  # count - delta == 0: absent before
    diff_kinds = np.bincount(snap * 3 + kind, minlength=3 * num).reshape(num, 3).astype(np.int64)
    alive = count > 0
    a_snap, a_key, a_count = expand_intervals(key[alive], snap[alive], nxt[alive], count[alive])
    order = np.lexsort((key, snap))
    return Snapshots(
        num_nodes=int(num_nodes), t0=t0, delta=delta, edge_life=int(params.edge_life),
        symmetric=bool(params.symmetric), last_closed=last_closed,
        adjacency=pair_lists(a_snap, a_key, a_count, num, num_nodes, value_dtype),
        diff=pair_lists(snap[order], key[order], dlt[order], num, num_nodes, value_dtype),
        events=events, diff_kinds=diff_kinds, split=snapshot_splits(bucket, split, num))
