"""A node memory whose reads lag its writes by a fixed schedule: MSPipe's bounded staleness
(docs/design.md "Pipeline staleness (MSPipe)").

Training batch i reads the memory *version* v_i: exactly the writes of batches 0..v_i of this epoch
(``disttgl.pipeline.versions.memory_versions``; v_i = i - 1 is today's sequential training). Writes
are kept in order: the *live* state takes every write at once, the *read* state replays the pending
writes up to v_i before batch i reads. Both states carry the memory clock (``mem_t``, ``mail_t``,
``mail_eid`` per node) beside the vectors, because a stale read is stale in its times too: the
batch's precomputed clock fields (the cache's, which assume v_i = i - 1) are replaced by the version
read, and a write sets ``mem_t <- mail_t as read``, ``mail_t <- t``, ``mail_eid <- eid`` exactly as
the cache's bookkeeping does (``disttgl.cache.memory_clock.apply_writes``). With v_i = i - 1 every
read therefore equals the cache's clock and the plain :class:`NodeMemory`'s rows, bit for bit.

What the vectors are is a :class:`StateKind`: :func:`node_memory_kind` (TGN, JODIE: memory and one
mail per node) or :func:`mailbox_kind` (APAN: memory and the mailbox, its mail times, events and
counts included). A write is recorded once, independently of any state (for APAN the batch's
roots' memory and every mail it delivers, to neighbours too), then applied to each state in batch
order, so a stale read sees batch i's mails exactly when it sees batch i's memory.

Staleness mitigation (optional) mixes the stalest roots' memory with the *live* memory of their
similar nodes (``disttgl.pipeline.mitigation``); it runs where the batch is trained, after every
earlier write, so its result does not depend on when a background fetch ran.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from disttgl.cache import cuda_events
from disttgl.cache.batch import Batch
from disttgl.models.mailbox import MailboxMemory, mail_write
from disttgl.models.memory import NodeMemory, write_rows
from disttgl.pipeline.mitigation import mitigate, root_row_times


@dataclass
class Clock:
    """Per-node memory-clock tensors (the torch twin of ``disttgl.cache.memory_clock.ClockState``)."""

    mem_t: torch.Tensor  # float64 [N]
    mail_t: torch.Tensor  # float64 [N]
    mail_eid: torch.Tensor  # int64 [N]

    @classmethod
    def initial(cls, num_nodes: int, num_events: int, device: torch.device | str | None = None) -> "Clock":
        return cls(torch.zeros(num_nodes, dtype=torch.float64, device=device),
                   torch.zeros(num_nodes, dtype=torch.float64, device=device),
                   torch.full((num_nodes,), num_events, dtype=torch.int64, device=device))

    def reset(self, num_events: int) -> None:
        self.mem_t.zero_()
        self.mail_t.zero_()
        self.mail_eid.fill_(num_events)


@dataclass(frozen=True)
class StateKind:
    """How one kind of node state is made, what a batch writes to it, and how that write is applied.

    ``new()`` makes an empty state (a :class:`~disttgl.models.memory.Memory` with a ``memory`` [N, d]
    tensor, ``gather``, ``reset``, ``state_dict``, ``load_state_dict``); ``record(batch, new_memory)``
    is the batch's write and must not depend on any state; ``apply(state, record)`` applies it."""

    new: Callable[[], Any]
    record: Callable[[Batch, torch.Tensor], Any]
    apply: Callable[[Any, Any], None]


def _apply_rows(state: NodeMemory, rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    nodes, memory, mail = rows
    state.memory[nodes] = memory.to(state.memory.dtype)
    state.mail[nodes] = mail.to(state.mail.dtype)


def node_memory_kind(num_nodes: int, dim: int, device: torch.device | str | None = None) -> StateKind:
    """A :class:`NodeMemory` (gru, rnn): a write is the rows of ``write_rows``.

    Args:
        num_nodes: N.
        dim: memory size d.
        device: where the state lives.
    """
    return StateKind(lambda: NodeMemory.zeros(num_nodes, dim, device), write_rows, _apply_rows)


def mailbox_kind(num_nodes: int, dim: int, edge_feat: torch.Tensor, mailbox_size: int,
                 device: torch.device | str | None = None) -> StateKind:
    """APAN's :class:`MailboxMemory`: a write is the batch's ``MailWrite`` (memory and delivered mails).

    Args:
        num_nodes: N.
        dim: memory size d.
        edge_feat: [E + 1, d_e] edge features (data the mailbox reads, shared by both states).
        mailbox_size: S, mails kept per node.
        device: where the state lives.
    """
    return StateKind(lambda: MailboxMemory.zeros(num_nodes, dim, edge_feat, mailbox_size, device), mail_write,
                     MailboxMemory.apply)


@dataclass(frozen=True)
class Write:
    """One batch's write: its state record and the written nodes' new clock."""

    index: int
    nodes: torch.Tensor  # int64 [W], unique: the written roots' nodes
    mem_t: torch.Tensor  # float64 [W]
    mail_t: torch.Tensor
    mail_eid: torch.Tensor
    record: Any  # StateKind.record's
    ready: Any = None  # --pipeline streams: the CUDA event the write's tensors are complete at


@dataclass(frozen=True)
class Mitigation:
    """MSPipe's staleness mitigation settings and the similar-nodes table."""

    similar: torch.Tensor  # int64 [N, k] (-1: padding)
    lam: float = 0.9
    top_fraction: float = 0.01


def _apply(kind: StateKind, state: Any, clock: Clock, w: Write) -> None:
    kind.apply(state, w.record)
    clock.mem_t[w.nodes] = w.mem_t
    clock.mail_t[w.nodes] = w.mail_t
    clock.mail_eid[w.nodes] = w.mail_eid


def _clock_key(name: str, state: dict[str, torch.Tensor]) -> str:
    """A clock field's checkpoint key: its name, or ``clock_<name>`` where the state has a field of that
    name (APAN's mailbox has its own ``mail_t``/``mail_eid`` [N, S])."""
    return f"clock_{name}" if name in state else name


class StaleMemory:
    """The :class:`~disttgl.models.memory.Memory` of staleness-bounded training.

    Args:
        num_nodes: N.
        dim: memory size d.
        num_events: E, the graph's events (``mail_eid = E`` is "no mail": the zero feature row).
        device: where the states live.
        mitigation: staleness mitigation, or None.
        kind: the node state; None: :func:`node_memory_kind` (a :class:`NodeMemory`).
        stream_events: ``--pipeline streams`` (CUDA): a write records an event on the writer's
            stream and a fetch's stream waits on it before replaying the write (docs/design.md §10.6).

    Call :meth:`start_epoch` with the epoch's versions before its first batch; then per batch
    :meth:`read` (or :meth:`gather`) and :meth:`write`, in batch order. :attr:`live` is the state
    with every write (a NodeMemory or MailboxMemory), the one evaluation continues from.
    """

    def __init__(self, num_nodes: int, dim: int, num_events: int, device: torch.device | str | None = None,
                 mitigation: Mitigation | None = None, kind: StateKind | None = None, stream_events: bool = False):
        self.num_events = num_events
        self._events_on = torch.device(device) if stream_events else None
        if self._events_on is not None and self._events_on.type != "cuda":
            raise ValueError(f"stream events need a CUDA device, got {self._events_on}")
        self.kind = node_memory_kind(num_nodes, dim, device) if kind is None else kind
        self.live = self.kind.new()
        self.live_clock = Clock.initial(num_nodes, num_events, device)
        self._read = self.kind.new()
        self._read_clock = Clock.initial(num_nodes, num_events, device)
        self.mitigation = mitigation
        self.versions = np.zeros(0, dtype=np.int64)
        self._pending: deque[Write] = deque()
        self._applied = -1  # the read state holds writes 0.._applied
        self._reads = 0  # batches read so far this epoch
        self._writes = 0  # batches written so far this epoch
        self._lock = threading.Condition()  # a background fetch (disttgl.pipeline.executor) waits on writes
        self.read_versions: list[int] = []  # the version every batch of the epoch actually read
        self._handed: deque[tuple[Batch, tuple[Batch, torch.Tensor, torch.Tensor]]] = deque()
        self._aborted = False
        self._states_ready = None  # stream events: the event a reset or load of the states is done at

    @property
    def stream_events(self) -> bool:
        """Whether writes record CUDA events that fetches on another stream wait for."""
        return self._events_on is not None

    # ------------------------------------------------------------------ epoch
    def start_epoch(self, versions: np.ndarray) -> None:
        """Forget everything and read batch i at ``versions[i]`` (-1: the empty memory)."""
        versions = np.asarray(versions, dtype=np.int64)
        idx = np.arange(len(versions))
        if len(versions) and ((versions >= idx).any() or (versions < -1).any()):
            i = int(np.flatnonzero((versions >= idx) | (versions < -1))[0])
            raise ValueError(f"batch {i} cannot read version {versions[i]} (versions must lie in [-1, i - 1])")
        if len(versions) > 1 and (np.diff(versions) < 0).any():
            raise ValueError("memory versions must not decrease (writes are applied in order)")
        self.reset()
        self.versions = versions

    def reset(self) -> None:
        with self._lock:
            for state, clock in ((self.live, self.live_clock), (self._read, self._read_clock)):
                state.reset()
                clock.reset(self.num_events)
            self._pending.clear()
            self._handed.clear()
            self._applied, self._reads, self._writes = -1, 0, 0
            self.read_versions = []
            self.versions = np.zeros(0, dtype=np.int64)
            self._mark_states()

    def _mark_states(self) -> None:
        """Stream events: the first fetch after a reset or load waits for it (a fetch of version -1
        replays no write, so no write's event orders it after the zeroing)."""
        if self._events_on is not None:
            self._states_ready = cuda_events.mark(self._events_on)

    # ------------------------------------------------------------------ reads
    def version_of(self, i: int) -> int:
        """The version batch ``i`` reads (past the schedule: sequential, i - 1)."""
        return int(self.versions[i]) if i < len(self.versions) else i - 1

    def fetch(self, batch: Batch, i: int) -> tuple[Batch, torch.Tensor, torch.Tensor] | None:
        """Batch ``i``'s memory, mail and clock at its version; waits until that version is written
        (None if :meth:`abort_fetch` ends the wait).

        Safe to call from one background thread while the trainer writes (fetches must come in order)."""
        v = self.version_of(i)
        with self._lock:
            self._lock.wait_for(lambda: self._writes > v or self._aborted)
            if self._writes <= v:
                return None
            if self._states_ready is not None:
                cuda_events.wait(self._events_on, self._states_ready)
                self._states_ready = None
            due = []
            while self._pending and self._pending[0].index <= v:
                due.append(self._pending.popleft())
            if due and self._events_on is not None:  # the newest write's event covers the earlier ones
                cuda_events.wait(self._events_on, due[-1].ready, due)
            for w in due:
                _apply(self.kind, self._read, self._read_clock, w)
            self._applied = max(self._applied, v)
            nodes = batch.nodes
            mem, mail = self._read.gather(batch)
            view = replace(batch, mem_t=self._read_clock.mem_t.index_select(0, nodes),
                           mail_t=self._read_clock.mail_t.index_select(0, nodes),
                           mail_eid=self._read_clock.mail_eid.index_select(0, nodes))
        return view, mem, mail

    def read(self, batch: Batch, fetched: tuple[Batch, torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """The batch as read (its clock fields at its version), memory [U, d] and mail (the state's
        ``gather``: [U, 2d], or APAN's packed root mailboxes).

        Mitigation mixes the memory rows only; APAN's mailboxes are read as stored."""
        i = self._reads
        if fetched is None and self._handed:
            handed, fetched = self._handed.popleft()
            if handed is not batch:
                raise RuntimeError("a prefetched memory read was handed over for another batch")
        if fetched is None:
            fetched = self.fetch(batch, i)
        view, mem, mail = fetched
        self._reads += 1
        self.read_versions.append(self.version_of(i))
        if self.mitigation is not None:
            m = self.mitigation
            row_t, is_root = root_row_times(view.root_idx, view.root_t, int(view.nodes.shape[0]))
            mem = mitigate(mem, view.mem_t, view.nodes, row_t, self.live.memory, self.live_clock.mem_t, m.similar,
                           lam=m.lam, top_fraction=m.top_fraction, eligible=is_root)
        return view, mem, mail

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        _, mem, mail = self.read(batch)
        return mem, mail

    # ------------------------------------------------------------------ the background fetch
    def hand_over(self, batch: Batch, fetched: tuple[Batch, torch.Tensor, torch.Tensor]) -> None:
        """A background fetch's result for the next :meth:`read` of ``batch``."""
        self._handed.append((batch, fetched))

    def abort_fetch(self) -> None:
        """Release a background fetch waiting for a write that will not come (the epoch stopped)."""
        with self._lock:
            self._aborted = True
            self._lock.notify_all()

    def resume_fetch(self) -> None:
        with self._lock:
            self._aborted = False

    # ------------------------------------------------------------------ writes
    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        """Store the batch's write (its ``StateKind.record``) and its clock; ``batch`` is the batch as
        read (:meth:`read`), whose ``mail_t`` the written memory absorbed."""
        b = batch.num_events
        roots = batch.write_mask.nonzero().squeeze(1)
        event = roots % b
        nodes = batch.nodes[batch.root_idx[roots]]  # write_rows' nodes
        absorbed = batch.mail_t[batch.root_idx[roots]]  # mem_t <- the mail time the batch read
        w = Write(self._writes, nodes, absorbed, batch.t[event], batch.eid[event],
                  self.kind.record(batch, new_memory))
        if self._events_on is not None:
            w = replace(w, ready=cuda_events.mark(self._events_on))
        with self._lock:
            _apply(self.kind, self.live, self.live_clock, w)
            self._pending.append(w)
            self._writes += 1
            self._lock.notify_all()

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live state and its clock (a checkpoint is taken between epochs, when nothing is pending)."""
        state, c = self.live.state_dict(), self.live_clock
        clock = {"mem_t": c.mem_t, "mail_t": c.mail_t, "mail_eid": c.mail_eid}
        return {**state, **{_clock_key(k, state): v.cpu() for k, v in clock.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.live.load_state_dict(state)
        self._read.load_state_dict(state)
        for name in ("mem_t", "mail_t", "mail_eid"):
            saved = state[f"clock_{name}" if f"clock_{name}" in state else name]
            for clock in (self.live_clock, self._read_clock):
                getattr(clock, name).copy_(saved)
        self._mark_states()
