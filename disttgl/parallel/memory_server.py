"""Memory server: one process per memory copy owns node memory and mail, in shared memory, and
serialises the copy's reads and writes in schedule order (docs/design.md §5).

For every stream step ``u`` of its copy (see :mod:`disttgl.parallel.schedule`) the server: zeroes the memory
when the copy wraps to batch 0, serves ``read(u)`` to the ``i`` trainers holding step ``u`` (all
before any of their writes, so the ``i`` sub-batches see the same state), then applies their
``write(u)``; at the end of every pass it answers the copy leader's ``flush`` (the leader copies the
memory for evaluation and checkpoints, and the server waits for its ``copied`` before the next step
may reset or write the table). The order is computed from the pure schedule on both
sides, so no message carries sequencing state.

Transport: a Unix socket per trainer (``multiprocessing.connection``) for small control tuples; the
rows travel through shared memory (one segment for the copy's ``[N, 3d]`` memory‖mail table, one
per trainer for its read and write buffers). Every wait is blocking with a timeout
(``connection.wait``/``poll``), never a busy-waited flag; a trainer whose connection drops, or a
server that dies, is an error on the other side naming it, never a hang.
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
from multiprocessing import connection, resource_tracker, shared_memory
from pathlib import Path

import numpy as np

from disttgl.lifetime import exit_with_parent
from disttgl.parallel.schedule import Layout, step

log = logging.getLogger(__name__)


class MemoryServerError(RuntimeError):
    """A memory copy cannot go on: its server or one of its trainers died or timed out."""


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


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach to a segment another process owns (and will unlink): keep this process's resource
    tracker from unlinking it when we exit (Python < 3.13 registers attachments too)."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - only a warning at exit is at stake
        pass
    return shm


# ----------------------------------------------------------------------------------------- server

class _Server:
    def __init__(self, plan: ServerPlan, address: str, authkey: bytes):
        self.plan = plan
        d3 = 3 * plan.dim
        self.table_shm = shared_memory.SharedMemory(create=True, size=max(1, plan.num_nodes * d3 * 4))
        self.table = np.ndarray((plan.num_nodes, d3), np.float32, self.table_shm.buf)
        if plan.state:
            self.table[:] = np.load(plan.state)
        else:
            self.table[:] = 0
        self.listener = connection.Listener(address, family="AF_UNIX", authkey=authkey)
        self.conns: dict[int, connection.Connection] = {}
        self.bufs: dict[int, tuple[shared_memory.SharedMemory, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.inbox: dict[int, deque] = {}

    def _buffer(self, rank: int) -> str:
        cap, d3 = self.plan.capacity, 3 * self.plan.dim
        shm = shared_memory.SharedMemory(create=True, size=2 * cap * (8 + 4 * d3))
        ids_bytes, rows_bytes = cap * 8, cap * d3 * 4
        views = []
        for half in range(2):  # read buffer, write buffer
            off = half * (ids_bytes + rows_bytes)
            views.append(np.ndarray((cap,), np.int64, shm.buf, off))
            views.append(np.ndarray((cap, d3), np.float32, shm.buf, off + ids_bytes))
        self.bufs[rank] = (shm, *views)
        return shm.name

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

    def expect(self, rank: int, kind: str, u: int) -> tuple:
        """Block until ``rank``'s next message arrives, reading every ready connection meanwhile so a
        dead trainer anywhere in the copy is noticed at once."""
        deadline = time.monotonic() + self.plan.timeout
        while not self.inbox[rank]:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"memory server of copy {self.plan.copy}: trainer rank {rank} sent nothing for "
                           f"{self.plan.timeout:.0f} s (waiting for its {kind} of step {u})")
            if rank not in self.conns:
                self._fail(f"trainer rank {rank} hung up with its {kind} of step {u} outstanding")
            for conn in connection.wait(list(self.conns.values()), timeout=left):
                r = next(r for r, c in self.conns.items() if c is conn)
                try:
                    self.inbox[r].append(conn.recv())
                except (EOFError, OSError):
                    if self.remaining[r] > len(self.inbox[r]):
                        self._fail(f"trainer rank {r} died (its connection to the memory server of copy "
                                   f"{self.plan.copy} closed)")
                    del self.conns[r]  # finished its part and hung up
        msg = self.inbox[rank].popleft()
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
        for u in range(p.start, p.end):
            ranks = stream_ranks(p, u)
            if stream_batch(p, u) == 0 and ranks:
                self.table[:] = 0  # the copy wraps round the timeline
            for rank in ranks:
                _, _, n = self.expect(rank, "read", u)
                _, ids, rows, _, _ = self.bufs[rank]
                np.take(self.table, ids[:n], axis=0, out=rows[:n])
                self.conns[rank].send(("ok", u))
            for rank in ranks:
                _, _, n = self.expect(rank, "write", u)
                _, _, _, ids, rows = self.bufs[rank]
                self.table[ids[:n]] = rows[:n]
            if is_pass_end(p, u):
                self.expect(p.leader, "flush", u)
                self.conns[p.leader].send(("ok", u))
                # the leader reads the shared table now: the next step's wrap reset or writes must
                # wait until it says it holds its copy, or evaluation sees a zeroed memory
                self.expect(p.leader, "copied", u)
        # done: wait for the trainers to hang up (an error message from one still counts)
        deadline = time.monotonic() + p.timeout
        while self.conns and time.monotonic() < deadline:
            for conn in connection.wait(list(self.conns.values()), timeout=deadline - time.monotonic()):
                r = next(r for r, c in self.conns.items() if c is conn)
                try:
                    conn.recv()
                except (EOFError, OSError):
                    del self.conns[r]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.listener.close()
        for shm, *_ in self.bufs.values():
            shm.close()
            shm.unlink()
        self.table = None  # type: ignore[assignment]
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


# ----------------------------------------------------------------------------------------- client

class MemoryClient:
    """A trainer's connection to its copy's server: ``read``/``write`` node rows, ``flush``, ``snapshot``."""

    def __init__(self, address: str, authkey: bytes, rank: int, capacity: int, *, timeout: float,
                 server: subprocess.Popen | None = None, connect_timeout: float = 60.0):
        self.rank, self.timeout, self.server = rank, timeout, server
        deadline = time.monotonic() + connect_timeout
        while True:  # the socket appears once the server process has started
            try:
                self.conn = connection.Client(address, family="AF_UNIX", authkey=authkey)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._check_server()
                if time.monotonic() > deadline:
                    raise MemoryServerError(f"rank {rank}: memory server at {address} did not start within "
                                            f"{connect_timeout:.0f} s") from None
                time.sleep(0.05)
        self.conn.send(("hello", rank, os.getpid(), capacity))
        msg = self._recv("hello")
        if msg[0] != "shm":
            raise MemoryServerError(f"rank {rank}: memory server refused the connection: {msg}")
        _, table_name, buf_name, n, dim, cap = msg
        self.num_nodes, self.dim, self.capacity = n, dim, cap
        d3 = 3 * dim
        self._table_shm, self._buf_shm = _attach(table_name), _attach(buf_name)
        self.table = np.ndarray((n, d3), np.float32, self._table_shm.buf)
        ids_bytes, rows_bytes = cap * 8, cap * d3 * 4
        self.read_ids = np.ndarray((cap,), np.int64, self._buf_shm.buf, 0)
        self.read_rows = np.ndarray((cap, d3), np.float32, self._buf_shm.buf, ids_bytes)
        off = ids_bytes + rows_bytes
        self.write_ids = np.ndarray((cap,), np.int64, self._buf_shm.buf, off)
        self.write_rows = np.ndarray((cap, d3), np.float32, self._buf_shm.buf, off + ids_bytes)

    def _check_server(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            raise MemoryServerError(f"rank {self.rank}: the memory server (pid {self.server.pid}) exited with "
                                    f"code {self.server.returncode}")

    def _recv(self, what: str) -> tuple:
        try:
            if not self.conn.poll(self.timeout):
                self._check_server()
                raise MemoryServerError(f"rank {self.rank}: no answer from the memory server for "
                                        f"{self.timeout:.0f} s (waiting for {what})")
            msg = self.conn.recv()
        except (EOFError, OSError):
            self._check_server()
            raise MemoryServerError(f"rank {self.rank}: the memory server died (connection closed while "
                                    f"waiting for {what})") from None
        if msg[0] == "error":
            raise MemoryServerError(msg[1])
        return msg

    def _send(self, msg: tuple) -> None:
        try:
            self.conn.send(msg)
        except OSError:
            self._pending_error()
            self._check_server()
            raise MemoryServerError(f"rank {self.rank}: the memory server died (cannot send {msg[0]})") from None

    def _pending_error(self) -> None:
        """A server that gave up says why before hanging up: raise that reason if it is there."""
        try:
            while self.conn.poll(0.5):
                msg = self.conn.recv()
                if msg[0] == "error":
                    raise MemoryServerError(msg[1])
        except (EOFError, OSError):
            pass

    def read(self, u: int, nodes: np.ndarray) -> np.ndarray:
        """[n, 3d] memory‖mail rows of ``nodes`` as the copy stands before stream step ``u``."""
        n = len(nodes)
        self._fits(n)
        self.read_ids[:n] = nodes
        self._send(("read", u, n))
        self._recv(f"read of step {u}")
        return self.read_rows[:n].copy()

    def write(self, u: int, nodes: np.ndarray, rows: np.ndarray) -> None:
        """Store [n, 3d] rows for ``nodes`` as step ``u``'s write (applied in schedule order)."""
        n = len(nodes)
        self._fits(n)
        self.write_ids[:n] = nodes
        self.write_rows[:n] = rows
        self._send(("write", u, n))

    def flush(self, u: int) -> np.ndarray:
        """Wait until step ``u``'s writes are applied; the copy's [N, 3d] table then (a copy, taken
        while the server holds every later step back)."""
        self._send(("flush", u))
        self._recv(f"flush after step {u}")
        table = self.table.copy()
        self._send(("copied", u))
        return table

    def _fits(self, n: int) -> None:
        if n > self.capacity:
            raise MemoryServerError(f"rank {self.rank}: {n} rows exceed the memory buffer ({self.capacity})")

    def close(self) -> None:
        self.conn.close()
        self.table = self.read_rows = self.write_rows = self.read_ids = self.write_ids = None  # type: ignore
        for shm in (self._table_shm, self._buf_shm):
            try:
                shm.close()
            except BufferError:
                pass


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
