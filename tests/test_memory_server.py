"""The memory server: strict write(u) -> read(u+1) order, resets at the wrap, i-way reads before
writes, and dead peers turned into errors (never hangs)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from disttgl.parallel.memory_server import MemoryClient, MemoryServerError, ServerPlan, start_server, stream_ranks
from disttgl.parallel.schedule import Layout, step

N, DIM = 12, 2


def plan(T=4, i=1, j=1, k=1, copy=0, end=None, timeout=20.0):
    return ServerPlan(T=T, i=i, j=j, k=k, copy=copy, num_batches=T * i, num_nodes=N, dim=DIM, start=0,
                      end=T if end is None else end, capacity=N, timeout=timeout)


def run_trainers(p: ServerPlan, body, ranks=None):
    """Start the server and one thread per trainer rank; returns (server returncode, errors by rank)."""
    proc, address, key = start_server(p)
    errors: dict[int, BaseException] = {}
    clients = {}

    def work(rank):
        try:
            c = MemoryClient(address, key, rank, N, timeout=p.timeout, server=proc)
            clients[rank] = c
            body(rank, c)
            c.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors[rank] = exc

    threads = [threading.Thread(target=work, args=(r,)) for r in (ranks or p.ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a trainer hung"
    return proc.wait(timeout=30), errors


def scheduled(p: ServerPlan, rank: int):
    lay = Layout(p.i, p.j, p.k)
    for t in range(p.start, p.end):
        s = step(p.T, lay, rank, t, num_batches=p.num_batches)
        yield t, s


def test_reads_see_the_previous_write_and_the_wrap_resets():
    seen: dict[int, list] = {}

    def body(rank, c):
        for t, s in scheduled(p, rank):
            if s is not None and s.writes:
                rows = c.read(s.stream, np.arange(N))
                seen.setdefault(rank, []).append((s.stream, s.batch, float(rows[0, 0])))
                c.write(s.stream, np.arange(N), np.full((N, 3 * DIM), s.stream + 1, np.float32))
            if (t + 1) % p.T == 0 and rank == p.leader:
                table = c.flush(t)
                assert (table == t + 1).all()

    # copy 1 of k = 2, j = 2: phase 2, stream 0..7 is batch 2,3,0,1,2,3,0,1; resets before batch 0
    p = plan(T=4, j=2, k=2, copy=1, end=8)
    code, errors = run_trainers(p, body)
    assert not errors and code == 0
    got = sorted(seen[2] + seen[3])
    assert got == [(0, 2, 0.0), (1, 3, 1.0), (2, 0, 0.0), (3, 1, 3.0), (4, 2, 4.0), (5, 3, 5.0),
                   (6, 0, 0.0), (7, 1, 7.0)]


def test_i_way_reads_all_come_before_the_writes():
    p = plan(T=3, i=2)
    reads: dict[tuple, float] = {}

    def body(rank, c):
        m = rank % 2
        mine = np.arange(m, N, 2)  # the two sub-batches write disjoint nodes
        for t, s in scheduled(p, rank):
            rows = c.read(s.stream, np.arange(N))
            reads[(rank, s.stream)] = rows[:, 0].copy()
            time.sleep(0.05 * (1 - m))  # rank 0 lags: its read must still see no write of rank 1
            c.write(s.stream, mine, np.full((len(mine), 3 * DIM), 10 * s.stream + m + 1, np.float32))
            if (t + 1) % p.T == 0 and rank == p.leader:
                c.flush(t)

    code, errors = run_trainers(p, body)
    assert not errors and code == 0
    for u in range(3):
        assert (reads[(0, u)] == reads[(1, u)]).all()
    assert (reads[(0, 0)] == 0).all()
    assert reads[(0, 1)][0] == 1 and reads[(0, 1)][1] == 2  # both writes of step 0 landed
    assert reads[(1, 2)][0] == 11 and reads[(1, 2)][1] == 12


class _SlowTable:
    """The shared table as a client sees it, with a copy that takes a while (a large N)."""

    def __init__(self, table):
        self.table = table

    def copy(self):
        time.sleep(0.3)
        return self.table.copy()


def test_the_flushed_copy_is_taken_before_the_next_pass_resets_the_table():
    # k = 1: the step after a pass end is batch 0 again, where the server zeroes the copy's memory;
    # the leader's copy (for evaluation and the memory file) must still hold the pass's writes
    p = plan(T=3, end=6)
    tables = []

    def body(rank, c):
        c.table = _SlowTable(c.table)
        for t, s in scheduled(p, rank):
            c.read(s.stream, np.arange(N))
            c.write(s.stream, np.arange(N), np.full((N, 3 * DIM), s.stream + 1, np.float32))
            if (t + 1) % p.T == 0:
                tables.append(c.flush(t))

    code, errors = run_trainers(p, body)
    assert not errors and code == 0
    assert [float(t.min()) for t in tables] == [3.0, 6.0] and [float(t.max()) for t in tables] == [3.0, 6.0]


def test_stream_ranks_skip_a_short_last_memory_batch():
    p = ServerPlan(T=3, i=2, j=1, k=1, copy=0, num_batches=5, num_nodes=N, dim=DIM, start=0, end=3, capacity=N, timeout=20.0)
    assert [stream_ranks(p, u) for u in range(3)] == [[0, 1], [0, 1], [0]]


def test_a_dead_trainer_is_an_error_for_the_others():
    p = plan(T=4, j=2, timeout=30.0)

    def body(rank, c):
        for t, s in scheduled(p, rank):
            if rank == 1 and t == 2:
                c.conn.close()  # dies without a word
                raise SystemExit
            if s is not None and s.writes:
                c.read(s.stream, np.arange(N))
                c.write(s.stream, np.arange(N), np.zeros((N, 3 * DIM), np.float32))
            if (t + 1) % p.T == 0 and rank == p.leader:
                c.flush(t)

    start = time.monotonic()
    code, errors = run_trainers(p, body)
    assert time.monotonic() - start < 20
    assert code == 1
    assert isinstance(errors.get(0), MemoryServerError) and "trainer rank 1 died" in str(errors[0])


def test_a_dead_server_is_an_error_for_the_trainer():
    p = plan(T=4, j=2, timeout=30.0)
    proc, address, key = start_server(p)
    c0 = MemoryClient(address, key, 0, N, timeout=30, server=proc)
    c1 = MemoryClient(address, key, 1, N, timeout=30, server=proc)
    c0.read(0, np.arange(3))
    proc.kill()
    start = time.monotonic()
    with pytest.raises(MemoryServerError, match="memory server"):
        c0.write(0, np.arange(3), np.zeros((3, 3 * DIM), np.float32))
        c1.read(1, np.arange(3))
    assert time.monotonic() - start < 10
    c0.close()
    c1.close()


def test_a_silent_trainer_times_out():
    p = plan(T=2, j=1, timeout=1.5)
    proc, address, key = start_server(p)
    c = MemoryClient(address, key, 0, N, timeout=10, server=proc)
    start = time.monotonic()
    with pytest.raises(MemoryServerError, match="sent nothing"):
        c._recv("nothing")  # the server waits for read(0); nothing comes, so it gives up and says so
    assert time.monotonic() - start < 8
    assert proc.wait(timeout=10) == 1
    c.close()
