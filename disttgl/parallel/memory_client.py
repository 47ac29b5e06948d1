"""A trainer's side of the memory server protocol (docs/design.md §5.3), and the shared-memory layout
both sides use: the copy's table segment (``[N, 3d]`` float32 memory‖mail, then the ``[N, 3]``
float64 memory clock ``mem_t, mail_t, mail_eid``) and each trainer's buffer segment (a read half
and a write half, each ids int64 ``[cap]``, rows float32 ``[cap, 3d]``, clock float64 ``[cap, 3]``).
"""

from __future__ import annotations

import os
import subprocess
import time
from multiprocessing import connection, resource_tracker, shared_memory

import numpy as np

CLOCK = 3  # mem_t, mail_t, mail_eid (float64: event ids below 2**53 are exact)


class MemoryServerError(RuntimeError):
    """A memory copy cannot go on: its server or one of its trainers died or timed out."""


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach to a segment another process owns (and will unlink): keep this process's resource
    tracker from unlinking it when we exit (Python < 3.13 registers attachments too)."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - only a warning at exit is at stake
        pass
    return shm


def _aligned(n: int) -> int:
    return -(-n // 8) * 8  # float64 views need 8-byte offsets


def table_bytes(num_nodes: int, d3: int) -> int:
    return max(8, _aligned(num_nodes * d3 * 4) + num_nodes * CLOCK * 8)


def table_views(buf: memoryview, num_nodes: int, d3: int) -> tuple[np.ndarray, np.ndarray]:
    """(table [N, 3d] float32, clock [N, 3] float64) in a table segment."""
    table = np.ndarray((num_nodes, d3), np.float32, buf)
    clock = np.ndarray((num_nodes, CLOCK), np.float64, buf, _aligned(num_nodes * d3 * 4))
    return table, clock


def _half_bytes(cap: int, d3: int) -> int:
    return cap * 8 + _aligned(cap * d3 * 4) + cap * CLOCK * 8


def buffer_bytes(cap: int, d3: int) -> int:
    return 2 * _half_bytes(cap, d3)


def buffer_views(buf: memoryview, cap: int, d3: int) -> list[np.ndarray]:
    """[read ids, read rows, read clock, write ids, write rows, write clock] of a trainer's buffer."""
    views = []
    for half in range(2):
        off = half * _half_bytes(cap, d3)
        views.append(np.ndarray((cap,), np.int64, buf, off))
        views.append(np.ndarray((cap, d3), np.float32, buf, off + cap * 8))
        views.append(np.ndarray((cap, CLOCK), np.float64, buf, off + cap * 8 + _aligned(cap * d3 * 4)))
    return views


class MemoryClient:
    """A trainer's connection to its copy's server: ``read``/``write`` node rows, ``flush``."""

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
        self._table_shm, self._buf_shm = attach(table_name), attach(buf_name)
        self.table, self.clock = table_views(self._table_shm.buf, n, d3)
        (self.read_ids, self.read_rows, self.read_clock,
         self.write_ids, self.write_rows, self.write_clock) = buffer_views(self._buf_shm.buf, cap, d3)

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

    def read(self, u: int, nodes: np.ndarray, *, clock: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """[n, 3d] memory‖mail rows of ``nodes`` as stream step ``u`` reads them (the writes of steps
        <= u - k of its segment, k the plan's staleness); with ``clock``, also their [n, 3] clock.

        Args:
            u: the stream step.
            nodes: node ids (at most the buffer's capacity).
            clock: also return the (mem_t, mail_t, mail_eid) rows, as float64.
        """
        n = len(nodes)
        self._fits(n)
        self.read_ids[:n] = nodes
        self._send(("read", u, n))
        self._recv(f"read of step {u}")
        rows = self.read_rows[:n].copy()
        return (rows, self.read_clock[:n].copy()) if clock else rows

    def write(self, u: int, nodes: np.ndarray, rows: np.ndarray, clock: np.ndarray | None = None) -> None:
        """Store [n, 3d] rows (and their [n, 3] clock; None: zeros) for ``nodes`` as step ``u``'s
        write (applied in schedule order). The server copies the buffer when it takes the message,
        before it answers any later message of this trainer, so the next write cannot overwrite it.

        Args:
            u: the stream step.
            nodes: node ids, unique.
            rows: their new memory‖mail.
            clock: their new (mem_t, mail_t, mail_eid), or None.
        """
        n = len(nodes)
        self._fits(n)
        self.write_ids[:n] = nodes
        self.write_rows[:n] = rows
        self.write_clock[:n] = 0 if clock is None else clock
        self._send(("write", u, n))

    def flush(self, u: int, *, clock: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Wait until the writes of steps <= ``u`` are applied; the copy's [N, 3d] table then (and its
        [N, 3] clock with ``clock``): copies, taken while the server holds every later step back.

        Args:
            u: the last step of the pass.
            clock: also return the clock.
        """
        self._send(("flush", u))
        self._recv(f"flush after step {u}")
        table = self.table.copy()
        clk = self.clock.copy() if clock else None
        self._send(("copied", u))
        return (table, clk) if clock else table

    def _fits(self, n: int) -> None:
        if n > self.capacity:
            raise MemoryServerError(f"rank {self.rank}: {n} rows exceed the memory buffer ({self.capacity})")

    def close(self) -> None:
        self.conn.close()
        self.table = self.clock = None  # type: ignore[assignment]
        self.read_rows = self.write_rows = self.read_ids = self.write_ids = None  # type: ignore[assignment]
        self.read_clock = self.write_clock = None  # type: ignore[assignment]
        for shm in (self._table_shm, self._buf_shm):
            try:
                shm.close()
            except BufferError:
                pass
