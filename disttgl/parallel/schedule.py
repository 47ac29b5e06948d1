"""The i x j x k training schedule as a pure function (docs/design.md §5), and ``parallelism: auto``.

W = i·j·k ranks. Rank layout: memory copy ``g = rank // (i·j)``; inside the copy, epoch slot
``r = (rank % (i·j)) // i`` and mini-batch offset ``m = rank % i``. ``T`` memory batches make one
pass over the training split; memory batch ``b`` is cache batches ``b·i .. b·i + i - 1``.

Each copy consumes a *stream* ``u = 0, 1, 2, ...`` of memory batches: stream step ``u`` is memory
batch ``(phase_g + u) mod T`` with ``phase_g = g·T // k``, read and written at iteration ``u``.
When the batch is 0 (the copy wraps round the timeline) the copy's memory is reset to zero before
the read. Slot ``r`` takes the stream steps ``u ≡ r (mod j)`` and holds each for ``j`` iterations
(``u .. u + j - 1``) with ``j`` different negative sets; only the first of them reads and writes
memory, so the copy's reads and writes are strictly ordered: read(u) at iteration u comes after
write(u - 1) at the end of iteration u - 1.

Warm-up: slot ``r`` has nothing to hold during iterations ``0 .. r - 1`` (its first step is
``u = r``), so it idles there; an idle rank contributes no gradient and the all-reduce averages
over the ranks active in that iteration. The run stops after ``passes · T`` iterations, where every
copy has written every memory batch ``passes`` times; holds begun in the last ``j - 1`` iterations
are cut short, so the last evaluation sees the final weights. Epochs: ``passes = ceil(E / (j·k))``
because one pass of the whole machine trains ``j·k`` epochs' worth of batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from disttgl.layout import Layout

log = logging.getLogger(__name__)

__all__ = ["Layout", "Step", "choose_parallelism", "memory_batches", "passes", "step"]


@dataclass(frozen=True)
class Step:
    """What one rank does in one iteration."""

    stream: int  # u: the copy's stream step this hold belongs to
    batch: int  # memory batch (phase_g + u) mod T
    sub: int  # cache batch index batch·i + m (the mini-batch this rank trains)
    repeat: int  # 0..j-1: which iteration of the hold
    neg_set: int  # train negative set of the cache
    reset: bool  # the copy's memory is zeroed before this read (wrap to batch 0); first iteration only

    @property
    def writes(self) -> bool:
        """Only the first iteration of a hold reads fresh memory and writes it."""
        return self.repeat == 0


def passes(epochs: int, j: int, k: int) -> int:
    """Passes each copy makes over the timeline: ceil(E / (j·k))."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return -(-epochs // (j * k))


def phase(copy: int, T: int, k: int) -> int:
    return copy * T // k


def neg_set(seed: int, copy: int, stream: int, repeat: int, num_sets: int) -> int:
    """The negative set of iteration ``repeat`` of a hold: a seeded permutation of the sets, so the
    ``j`` iterations of one hold use different sets whenever ``j <= num_sets``."""
    perm = np.random.default_rng([seed, copy, stream]).permutation(num_sets)
    return int(perm[repeat % num_sets])


def step(T: int, layout: Layout, rank: int, t: int, *, num_batches: int | None = None,
         num_sets: int = 1, seed: int = 0) -> Step | None:
    """What ``rank`` does at iteration ``t`` (None: idle). ``num_batches`` = cache batches (default
    T·i); an offset past the last cache batch (short last memory batch) idles."""
    i, j, k = layout.i, layout.j, layout.k
    if not 0 <= rank < layout.world:
        raise ValueError(f"rank {rank} outside 0..{layout.world - 1}")
    r, g, m = layout.slot(rank), layout.copy(rank), layout.offset(rank)
    if t < r:
        return None  # warm-up
    u = r + j * ((t - r) // j)
    q = t - u
    b = (phase(g, T, k) + u) % T
    sub = b * i + m
    if sub >= (T * i if num_batches is None else num_batches):
        return None
    return Step(stream=u, batch=b, sub=sub, repeat=q, neg_set=neg_set(seed, g, u, q, num_sets),
                reset=(b == 0 and q == 0))


def schedule(T: int, i: int, j: int, k: int, epochs: int, *, num_batches: int | None = None,
             num_sets: int = 1, seed: int = 0) -> list[list[Step | None]]:
    """[rank][iteration] -> Step or None, for the whole run (``passes · T`` iterations)."""
    if T < 1:
        raise ValueError(f"need at least one memory batch, got T = {T}")
    layout = Layout(i, j, k)
    n = passes(epochs, j, k) * T
    return [[step(T, layout, rank, t, num_batches=num_batches, num_sets=num_sets, seed=seed) for t in range(n)]
            for rank in range(layout.world)]


def memory_batches(num_batches: int, i: int) -> int:
    """T: memory batches of a split with ``num_batches`` cache batches built with mini-batch parallelism i."""
    return -(-num_batches // i)


# ------------------------------------------------------------------------------- parallelism: auto

def choose_parallelism(machines: int, per_machine: int, epochs: int, *, cache_i: int | None = None
                       ) -> tuple[Layout, str]:
    """Pick i x j x k for ``machines`` x ``per_machine`` trainers and ``epochs``; returns the layout
    and the reason, for the log.

    k = machines: memory copies never cross a machine, and copies on different machines share only
    weights, so memory parallelism is the one that costs no memory traffic. j (epoch parallelism)
    is the largest divisor of ``per_machine`` with j·k <= epochs, since each epoch slot must still make
    a pass. i (mini-batch parallelism) fills the rest, i = per_machine / j; when the batch cache is
    already built with some i (``cache_i``), that i is kept and j = per_machine / i.
    """
    if machines < 1 or per_machine < 1:
        raise ValueError(f"need >= 1 machine and >= 1 trainer per machine, got {machines} x {per_machine}")
    k = machines
    if cache_i is not None:
        if per_machine % cache_i:
            raise ValueError(f"cannot place i = {cache_i} (from the batch cache) on {per_machine} trainers "
                             "per machine; build the cache with an i that divides it")
        j = per_machine // cache_i
        why = (f"k = {k} machines (one memory copy each); i = {cache_i} from the batch cache; "
               f"j = {per_machine} trainers per machine / i = {j}")
        if j * k > epochs:
            why += f" (note: j·k = {j * k} > {epochs} epochs, so each slot trains fewer batches than one epoch)"
        return Layout(cache_i, j, k), why
    limit = max(1, epochs // k)
    j = max(d for d in range(1, per_machine + 1) if per_machine % d == 0 and d <= limit)
    i = per_machine // j
    why = (f"k = {k} machines (one memory copy each); j = {j}, the largest divisor of {per_machine} "
           f"trainers per machine with j·k <= {epochs} epochs; i = {i} fills the rest")
    return Layout(i, j, k), why
