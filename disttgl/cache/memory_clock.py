"""Weight-independent memory bookkeeping (docs/design.md §4), precomputed with the mini-batches.

Every node has a memory time ``mem_t``, and a pending mail (``mail_t``, ``mail_eid``); a node with no
mail yet has ``mail_t = mem_t = 0`` and ``mail_eid = E`` (the zero row of ``edge_feat``).

With mini-batch parallelism ``i``, ``i`` consecutive training batches form one memory batch: all
of them read the state as it stands before the group, and the group writes once. Each positive
root is written at its LAST occurrence in the group in interleaved order (src0, dst0, src1, dst1,
... over the group's batches in order), so no node is written twice and the ``i`` writers never
collide. A write sets ``mem_t = mail_t`` (the memory absorbs the old mail), then ``mail_t = t``,
``mail_eid = eid`` of the writing event. Splits are processed train -> val -> test with the state
carried over, so validation continues from the end of training and test from the end of validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


@dataclass
class ClockState:
    """Every node's memory-clock bookkeeping (times and event ids, no vectors): when its memory was
    last written and which mail is pending. Not the memory itself (``disttgl.models.memory.NodeMemory``)."""

    mem_t: np.ndarray  # float64 [N]
    mail_t: np.ndarray  # float64 [N]
    mail_eid: np.ndarray  # int64 [N]
    mem_eid: np.ndarray  # int64 [N] the event whose mail the memory last absorbed (mem_t = t[mem_eid])

    @classmethod
    def initial(cls, num_nodes: int, num_events: int) -> "ClockState":
        return cls(mem_t=np.zeros(num_nodes), mail_t=np.zeros(num_nodes),
                   mail_eid=np.full(num_nodes, num_events, dtype=np.int64),
                   mem_eid=np.full(num_nodes, num_events, dtype=np.int64))

    def lookup(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mem_t, mail_t, mail_eid) of ``nodes``: copies, so later writes do not alias them."""
        return self.mem_t[nodes], self.mail_t[nodes], self.mail_eid[nodes]


def split_batches(split: np.ndarray, batch_size: int) -> list[list[np.ndarray]]:
    """For split 0, 1, 2 the list of its batches, each the event ids of its positives (in order).

    Batches never straddle splits: each split is cut on its own and its last batch may be short.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for s in range(3):
        eids = np.flatnonzero(np.asarray(split) == s)
        out.append([eids[i:i + batch_size] for i in range(0, len(eids), batch_size)])
    return out


def iter_split_batches(split: np.ndarray, code: int, batch_size: int, *, chunk: int = 1 << 22
                       ) -> Iterator[np.ndarray]:
    """The batches of split ``code`` as :func:`split_batches` cuts them, read ``chunk`` events of
    ``split`` at a time (it may be a memory map): O(chunk + batch) memory instead of O(E)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk = max(int(chunk), 1)
    carry = np.zeros(0, dtype=np.int64)
    for a in range(0, len(split), chunk):
        ids = np.flatnonzero(np.asarray(split[a:a + chunk]) == code).astype(np.int64) + a
        if not len(ids):
            continue
        ids = np.concatenate([carry, ids]) if len(carry) else ids
        full = len(ids) - len(ids) % batch_size
        for i in range(0, full, batch_size):
            yield ids[i:i + batch_size]
        carry = ids[full:]
    if len(carry):
        yield carry


def _grouped(batches: Iterator[np.ndarray], size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Consecutive runs of ``size`` (index, batch) pairs, as :func:`groups` cuts them."""
    if size < 1:
        raise ValueError(f"minibatch parallelism must be >= 1, got {size}")
    group: list[tuple[int, np.ndarray]] = []
    for b, eids in enumerate(batches):
        group.append((b, eids))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def groups(num_batches: int, parallelism: int) -> list[range]:
    """Memory batches: consecutive runs of ``parallelism`` batch indices (the last may be short)."""
    if parallelism < 1:
        raise ValueError(f"minibatch parallelism must be >= 1, got {parallelism}")
    return [range(g, min(g + parallelism, num_batches)) for g in range(0, num_batches, parallelism)]


def write_masks(srcs: Sequence[np.ndarray], dsts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Write masks for one memory batch: per batch a bool mask over its positives ``[src | dst]``.

    True at each node's last occurrence in interleaved (src, dst) order over the whole group.
    """
    seq = np.concatenate([np.stack([s, d], axis=1).ravel() for s, d in zip(srcs, dsts)]) \
        if srcs else np.zeros(0, np.int64)
    _, first_in_reversed = np.unique(seq[::-1], return_index=True)
    mask = np.zeros(len(seq), dtype=bool)
    mask[len(seq) - 1 - first_in_reversed] = True
    out, off = [], 0
    for s in srcs:
        m = mask[off:off + 2 * len(s)]
        out.append(np.concatenate([m[0::2], m[1::2]]))  # interleaved -> [src | dst]
        off += 2 * len(s)
    return out


def apply_writes(state: ClockState, srcs: Sequence[np.ndarray], dsts: Sequence[np.ndarray],
                 ts: Sequence[np.ndarray], eids: Sequence[np.ndarray], masks: Sequence[np.ndarray]
                 ) -> ClockState:
    """Apply one memory batch's writes to ``state`` IN PLACE (N-sized copies per group would
    dominate on large graphs) and return it. Masks must come from :func:`write_masks`."""
    nodes = np.concatenate([np.concatenate([s, d])[m] for s, d, m in zip(srcs, dsts, masks)])
    t = np.concatenate([np.concatenate([x, x])[m] for x, m in zip(ts, masks)])
    eid = np.concatenate([np.concatenate([x, x])[m] for x, m in zip(eids, masks)])
    state.mem_t[nodes] = state.mail_t[nodes]
    state.mem_eid[nodes] = state.mail_eid[nodes]
    state.mail_t[nodes] = t
    state.mail_eid[nodes] = eid
    return state


@dataclass(frozen=True)
class PlannedBatch:
    split: int  # 0 train, 1 val, 2 test
    index: int  # batch index within its split
    eids: np.ndarray  # int64 [B] event ids of the positives
    write_mask: np.ndarray  # bool [2B] over [src | dst]


def plan(src: np.ndarray, dst: np.ndarray, t: np.ndarray, split: np.ndarray, batch_size: int,
         parallelism: int, num_nodes: int, *, chunk: int = 1 << 22
         ) -> Iterator[tuple[list[PlannedBatch], ClockState]]:
    """Walk train (in memory batches of ``parallelism``), then val and test (one batch at a time);
    yield each group's batches with the state BEFORE it.

    The yielded state is updated in place once the consumer asks for the next group, so read what
    you need (``state.lookup``) before advancing. The event arrays may be memory maps: ``split`` is
    scanned ``chunk`` events at a time and the others are read per batch, so the walk holds O(N)
    (the clock) plus O(chunk) memory.
    """
    state = ClockState.initial(num_nodes, len(src))
    for s in range(3):
        # only training runs in memory batches of i: validation and test follow one protocol for
        # every layout (batches of B, memory carried val -> test), as in the single-process rows
        for grp in _grouped(iter_split_batches(split, s, batch_size, chunk=chunk), parallelism if s == 0 else 1):
            eids = [e for _, e in grp]
            srcs, dsts = [np.asarray(src[e]) for e in eids], [np.asarray(dst[e]) for e in eids]
            masks = write_masks(srcs, dsts)
            yield [PlannedBatch(s, b, e, m) for (b, e), m in zip(grp, masks)], state
            apply_writes(state, srcs, dsts, [np.asarray(t[e]) for e in eids], eids, masks)
