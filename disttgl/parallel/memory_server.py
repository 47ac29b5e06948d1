"""Memory server: one process per memory copy owns node memory and mail, in shared memory, and
serialises the copy's reads and writes in schedule order (docs/design.md §5).

For every stream step ``u`` of its copy (see :mod:`disttgl.parallel.schedule`) the server: applies the
writes of the steps up to ``u - k`` (MSPipe's staleness bound, docs/design.md §5.7; k = 1: the
previous step), zeroes the memory when the copy wraps to batch 0, serves ``read(u)`` to the ``i``
trainers holding step ``u`` (all before any of their writes, so the ``i`` sub-batches see the same
state: exactly the writes of steps <= u - k of the segment, :mod:`disttgl.parallel.copy_state`); at
the end of every pass it applies every write of the pass and answers the copy leader's ``flush``
(the leader copies the memory for evaluation and checkpoints, and the server waits for its
``copied`` before the next step may reset or write the table). The order is computed from the pure
schedule on both sides, so no message carries sequencing state.

Transport: a Unix socket per trainer (``multiprocessing.connection``) for small control tuples; the
rows travel through shared memory (one segment for the copy's ``[N, 3d]`` memory‖mail table and its
``[N, 3]`` clock, one per trainer for its read and write buffers; :mod:`disttgl.parallel.memory_client`).
Every wait is blocking with a timeout (``connection.wait``/``poll``), never a busy-waited flag; a
trainer whose connection drops, or a server that dies, is an error on the other side naming it,
never a hang.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from multiprocessing import connection, shared_memory
from pathlib import Path

import numpy as np

from disttgl.lifetime import exit_with_parent
from disttgl.parallel.copy_state import CopyState, Write, zero
from disttgl.parallel.memory_client import (MemoryClient, MemoryServerError, buffer_bytes, buffer_views,
                                            table_bytes, table_views)
from disttgl.parallel.schedule import Layout, step

__all__ = ["MemoryClient", "MemoryServerError", "ServerPlan", "serve", "start_server", "stream_ranks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerPlan:
    T: int  # memory batches per pass
    i: int
    j: int
    k: int
    copy: int
    num_batches: int  # cache batches of the train split
    num_nodes: int
    dim: int
    start: int  # first stream step (resume: passes done · T)
    end: int  # last stream step + 1 (passes · T)
    capacity: int  # rows of each trainer's read/write buffer
    timeout: float  # seconds any wait may take (the run's --timeout)
    state: str | None = None  # .npy [N, 3d] memory‖mail to start from (resume)
    staleness: int = 1  # MSPipe's k: read(u) sees the writes of steps <= u - k of its segment (§5.7)
    num_events: int = 0  # E: mail_eid = E is "no mail" in the clock
    clock_state: str | None = None  # .npy [N, 3] clock to start from (resume of a k > 1 run)

    @property
    def layout(self) -> Layout:
        return Layout(self.i, self.j, self.k)

    @property
    def ranks(self) -> list[int]:
        n = self.i * self.j
        return list(range(self.copy * n, (self.copy + 1) * n))

    @property
    def leader(self) -> int:
        return self.ranks[0]


def stream_ranks(plan: ServerPlan, u: int) -> list[int]:
    """The ranks of the copy that read and write stream step ``u`` (at iteration ``u``)."""
    lay = plan.layout
    out = []
    for rank in lay.ranks_of(plan.copy, u % plan.j):
        s = step(plan.T, lay, rank, u, num_batches=plan.num_batches)
        if s is not None and s.writes:
            out.append(rank)
    return out


def stream_batch(plan: ServerPlan, u: int) -> int:
    return (plan.copy * plan.T // plan.k + u) % plan.T


def is_pass_end(plan: ServerPlan, u: int) -> bool:
    return (u + 1) % plan.T == 0


# ----------------------------------------------------------------------------------------- server

class _Server:
    def __init__(self, plan: ServerPlan, address: str, authkey: bytes):
        self.plan = plan
        n, d3 = plan.num_nodes, 3 * plan.dim
        self.table_shm = shared_memory.SharedMemory(create=True, size=table_bytes(n, d3))
        self.table, self.clock = table_views(self.table_shm.buf, n, d3)
        zero(self.table, self.clock, plan.num_events)
        if plan.state:
            self.table[:] = np.load(plan.state)
        if plan.clock_state:
            self.clock[:] = np.load(plan.clock_state)
        self.state = CopyState(self.table, self.clock, plan.staleness, plan.num_events, plan.start)
        self.listener = connection.Listener(address, family="AF_UNIX", authkey=authkey)
        self.conns: dict[int, connection.Connection] = {}
        self.bufs: dict[int, tuple[shared_memory.SharedMemory, list[np.ndarray]]] = {}
        self.inbox: dict[int, deque] = {}

    def _buffer(self, rank: int) -> str:
        cap, d3 = self.plan.capacity, 3 * self.plan.dim
        shm = shared_memory.SharedMemory(create=True, size=buffer_bytes(cap, d3))
        self.bufs[rank] = (shm, buffer_views(shm.buf, cap, d3))
        return shm.name

    def _received(self, rank: int, msg: tuple) -> tuple:
        """A write's rows are copied out of the trainer's buffer as the message is taken: the trainer
        refills the buffer only after an answer to a later message, which comes after this (with k >
        1 the server may answer a read before it applies an earlier write)."""
        if msg[0] != "write":
            return msg
        n = msg[2]
        ids, rows, clock = self.bufs[rank][1][3:6]
        return (*msg, Write(msg[1], ids[:n].copy(), rows[:n].copy(), clock[:n].copy()))

    def accept(self) -> None:
        want = set(self.plan.ranks)
        deadline = time.monotonic() + self.plan.timeout
        self.listener._listener._socket.settimeout(self.plan.timeout)  # type: ignore[attr-defined]
        while want - set(self.conns):
            if time.monotonic() > deadline:
                raise MemoryServerError(f"memory server of copy {self.plan.copy}: trainer rank(s) "
                                        f"{sorted(want - set(self.conns))} never connected")
            conn = self.listener.accept()
            kind, rank, _pid, cap = conn.recv()
            if kind != "hello" or rank not in want or cap > self.plan.capacity:
                conn.send(("error", f"unexpected hello {kind, rank, cap}"))
                conn.close()
                continue
            self.conns[rank] = conn
            self.inbox[rank] = deque()
            conn.send(("shm", self.table_shm.name, self._buffer(rank), self.plan.num_nodes, self.plan.dim,
                       self.plan.capacity))

    def _fail(self, problem: str) -> None:
        for conn in self.conns.values():
            try:
                conn.send(("error", problem))
            except OSError:
                pass
        raise MemoryServerError(problem)

    def _next(self, rank: int, kind: str) -> int | None:
        """Index in ``rank``'s inbox of its next message of ``kind``'s class. Writes are the one class
        the server may take later than sent (with k > 1 it answers reads first), so a write waits
        for the rank's first write and anything else for its first message that is not a write."""
        box = self.inbox[rank]
        for n, msg in enumerate(box):
            if msg[0] == "error" or (msg[0] == "write") == (kind == "write"):
                return n
        return None

    def expect(self, rank: int, kind: str, u: int) -> tuple:
        """Block until ``rank``'s next message of the kind wanted arrives, reading every ready
        connection meanwhile so a dead trainer anywhere in the copy is noticed at once."""
        deadline = time.monotonic() + self.plan.timeout
        while (at := self._next(rank, kind)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"memory server of copy {self.plan.copy}: trainer rank {rank} sent nothing for "
                           f"{self.plan.timeout:.0f} s (waiting for its {kind} of step {u})")
            if rank not in self.conns:
                self._fail(f"trainer rank {rank} hung up with its {kind} of step {u} outstanding")
            for conn in connection.wait(list(self.conns.values()), timeout=left):
                r = next(r for r, c in self.conns.items() if c is conn)
                try:
                    self.inbox[r].append(self._received(r, conn.recv()))
                except (EOFError, OSError):
                    if self.remaining[r] > len(self.inbox[r]):
                        self._fail(f"trainer rank {r} died (its connection to the memory server of copy "
                                   f"{self.plan.copy} closed)")
                    del self.conns[r]  # finished its part and hung up
        msg = self.inbox[rank][at]
        del self.inbox[rank][at]
        self.remaining[rank] -= 1
        if msg[0] == "error":
            self._fail(f"trainer rank {rank} failed: {msg[1]}")
        if msg[0] != kind or msg[1] != u:
            self._fail(f"memory server of copy {self.plan.copy}: trainer rank {rank} sent {msg[:2]}, "
                       f"expected ({kind!r}, {u}); trainers and server disagree on the schedule")
        return msg

    def run(self) -> None:
        p = self.plan
        self.remaining = {r: 0 for r in p.ranks}  # messages each trainer still owes
        for u in range(p.start, p.end):
            for r in stream_ranks(p, u):
                self.remaining[r] += 2
            if is_pass_end(p, u):
                self.remaining[p.leader] += 2  # flush, then copied
        K = p.staleness
        self.applied = p.start - 1  # the writes of steps <= applied are in the live table
        for u in range(p.start, p.end):
            ranks = stream_ranks(p, u)
            self.apply_through(u - K)  # read(u) may go once write(u - K) is in (k = 1: the previous step)
            if stream_batch(p, u) == 0 and ranks:
                self.state.wrap(u)  # the copy wraps round the timeline
            for rank in ranks:  # all i reads of the step before any of its writes
                _, _, n = self.expect(rank, "read", u)
                ids, rows, clock = self.bufs[rank][1][0:3]
                self.state.read(u, ids[:n], rows[:n], clock[:n])
                self.conns[rank].send(("ok", u))
            if is_pass_end(p, u):
                self.apply_through(u)
                self.expect(p.leader, "flush", u)
                self.conns[p.leader].send(("ok", u))
                # the leader reads the shared table now: the next step's wrap reset or writes must
                # wait until it says it holds its copy, or evaluation sees a zeroed memory
                self.expect(p.leader, "copied", u)
        self.apply_through(p.end - 1)
        # done: wait for the trainers to hang up (an error message from one still counts)
        deadline = time.monotonic() + p.timeout
        while self.conns and time.monotonic() < deadline:
            for conn in connection.wait(list(self.conns.values()), timeout=deadline - time.monotonic()):
                r = next(r for r, c in self.conns.items() if c is conn)
                try:
                    conn.recv()
                except (EOFError, OSError):
                    del self.conns[r]

    def apply_through(self, v: int) -> None:
        """Take and apply, in step order, every write of the steps up to ``v``."""
        while self.applied < v:
            x = self.applied + 1
            for rank in stream_ranks(self.plan, x):
                self.state.write(self.expect(rank, "write", x)[3])
            self.applied = x

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.listener.close()
        for shm, _ in self.bufs.values():
            shm.close()
            shm.unlink()
        self.table = self.clock = self.state = None  # type: ignore[assignment]
        self.table_shm.close()
        self.table_shm.unlink()


def serve(plan: ServerPlan, address: str, authkey: bytes) -> int:
    server = _Server(plan, address, authkey)
    try:
        server.accept()
        server.run()
        return 0
    except MemoryServerError as exc:
        print(f"disttgl memory server: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        server.close()


def start_server(plan: ServerPlan, directory: str | os.PathLike | None = None) -> tuple[subprocess.Popen, str, bytes]:
    """Start the server for ``plan`` as a child process; returns (process, socket address, authkey)."""
    import tempfile

    d = Path(directory or tempfile.gettempdir())
    address = str(d / f"disttgl-mem-{os.getpid()}-{plan.copy}-{secrets.token_hex(4)}.sock")
    authkey = secrets.token_bytes(16)
    proc = subprocess.Popen([sys.executable, "-m", "disttgl.parallel.memory_server", json.dumps(asdict(plan)), address],
                            stdin=subprocess.PIPE)
    proc.stdin.write(authkey.hex().encode() + b"\n")  # the key never shows in `ps`
    proc.stdin.close()
    return proc, address, authkey


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="disttgl memory server (started by the copy's leader rank)")
    parser.add_argument("plan", help="ServerPlan as JSON")
    parser.add_argument("address", help="Unix socket path")
    args = parser.parse_args(argv)
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    plan = ServerPlan(**json.loads(args.plan))
    # die with the rank that started us, through serve()'s cleanup (the shared memory is unlinked)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    exit_with_parent()
    return serve(plan, args.address, authkey)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
