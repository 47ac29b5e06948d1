"""Snapshots: against a literal per-event builder (dicts, loops over events), a hand-worked case,
the differences replayed with dicts, the splits, the file's round trip and checks, and the command."""

from __future__ import annotations

import math
import zlib
from collections import Counter

import h5py
import numpy as np
import pytest

from disttgl.cli import main
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import write_graph
from disttgl.errors import DataError
from disttgl.snapshot.build import SnapshotParams, build_snapshots
from disttgl.snapshot.store import load_snapshots, read_snapshot_attrs, write_snapshots


def brute_force(src, dst, t, num_nodes, *, delta=None, num=None, life=10, symmetric=False):
    """One event at a time: its bucket, then per snapshot a Counter of the alive events' pairs."""
    t0, t_max = t[0], t[-1]
    buckets = []
    for x in t.tolist():
        if delta is not None:
            buckets.append(math.floor((x - t0) / delta))
        else:
            buckets.append(min(math.floor((x - t0) * num / (t_max - t0)), num - 1))
    T = buckets[-1] + 1 if delta is not None else num
    adj = [Counter() for _ in range(T)]
    own = [Counter() for _ in range(T)]
    for u, v, b in zip(src.tolist(), dst.tolist(), buckets):
        own[b][(u, v)] += 1
        pairs = [(u, v)] + ([(v, u)] if symmetric and u != v else [])
        for s in range(b, min(b + life, T)):
            for p in pairs:
                adj[s][p] += 1
    diffs = []
    for s in range(T):
        prev = adj[s - 1] if s else Counter()
        d = {p: adj[s][p] - prev[p] for p in set(adj[s]) | set(prev) if adj[s][p] != prev[p]}
        diffs.append(d)
    return adj, own, diffs, buckets


def as_dict(lists, s):
    row, col, value = lists.part(s)
    return {(int(r), int(c)): int(v) for r, c, v in zip(row, col, value)}


def random_events(seed, n=12, e=300, span=1000):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, e)
    dst = rng.integers(0, n, e)  # self-loops and repeated pairs included
    t = np.sort(rng.integers(0, span, e)).astype(np.float64)
    return src, dst, t, n


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("life", [1, 2, 3, 10])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_the_per_event_builder(seed, life, symmetric):
    src, dst, t, n = random_events(seed)
    for how in ({"delta": 37.0}, {"num": 23}):
        params = SnapshotParams(delta=how.get("delta"), num_snapshots=how.get("num"), edge_life=life,
                                symmetric=symmetric)
        snaps = build_snapshots(src, dst, t, np.zeros(len(t), np.int8), n, params)
        adj, own, diffs, _ = brute_force(src, dst, t, n, delta=how.get("delta"), num=how.get("num"), life=life,
                                         symmetric=symmetric)
        assert snaps.num_snapshots == len(adj)
        for s in range(len(adj)):
            assert as_dict(snaps.adjacency, s) == dict(adj[s])
            assert as_dict(snaps.events, s) == dict(own[s])
            assert as_dict(snaps.diff, s) == diffs[s]
            prev = adj[s - 1] if s else Counter()
            added = sum(1 for p in diffs[s] if prev[p] == 0)
            removed = sum(1 for p in diffs[s] if adj[s][p] == 0)
            assert snaps.diff_kinds[s].tolist() == [added, removed, len(diffs[s]) - added - removed]


@pytest.mark.parametrize("life", [1, 4, 10])
@pytest.mark.parametrize("symmetric", [False, True])
def test_replaying_the_differences_rebuilds_every_snapshot(life, symmetric):
    src, dst, t, n = random_events(7, n=30, e=800, span=5000)
    snaps = build_snapshots(src, dst, t, np.zeros(len(t), np.int8), n,
                            SnapshotParams(delta=97.0, edge_life=life, symmetric=symmetric))
    current: dict = {}
    for s in range(snaps.num_snapshots):
        for pair, change in as_dict(snaps.diff, s).items():
            current[pair] = current.get(pair, 0) + change
            if current[pair] == 0:
                del current[pair]
        assert current == as_dict(snaps.adjacency, s)
        row, col, _ = snaps.adjacency.part(s)
        key = row.astype(np.int64) * n + col
        assert (np.diff(key) > 0).all()  # CSR order, no duplicate pair


def test_hand_worked_case():
    # delta 10, L 2: events at 0 (0->1), 5 (0->1), 12 (1->2), 31 (0->1); snapshots [0,10) [10,20) [20,30) [30,40)
    src, dst = np.array([0, 0, 1, 0]), np.array([1, 1, 2, 1])
    t = np.array([0.0, 5.0, 12.0, 31.0])
    snaps = build_snapshots(src, dst, t, np.array([0, 0, 1, 2]), 3, SnapshotParams(delta=10.0, edge_life=2))
    assert snaps.num_snapshots == 4 and not snaps.last_closed
    assert [as_dict(snaps.adjacency, s) for s in range(4)] == [
        {(0, 1): 2}, {(0, 1): 2, (1, 2): 1}, {(1, 2): 1}, {(0, 1): 1}]
    assert [as_dict(snaps.diff, s) for s in range(4)] == [
        {(0, 1): 2}, {(1, 2): 1}, {(0, 1): -2}, {(0, 1): 1, (1, 2): -1}]
    assert snaps.diff_kinds.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    # snapshot 1 holds a val event, snapshot 2 none (inherits val), snapshot 3 a test event
    assert snaps.split.tolist() == [0, 1, 1, 2]
    indptr, col, value = snaps.adjacency.csr(1, 3)
    assert indptr.tolist() == [0, 1, 2, 2] and col.tolist() == [1, 2] and value.tolist() == [2, 1]


def test_count_change_and_symmetric_self_loop():
    # L 3, delta 1: (0,1) at 0, again at 1 -> count 1, 2, 2, 1, gone; self-loop (2,2) counted once
    src, dst, t = np.array([0, 0, 2]), np.array([1, 1, 2]), np.array([0.0, 1.0, 1.0])
    snaps = build_snapshots(src, dst, t, np.zeros(3, np.int8), 3,
                            SnapshotParams(delta=1.0, edge_life=3, symmetric=True))
    assert as_dict(snaps.adjacency, 1) == {(0, 1): 2, (1, 0): 2, (2, 2): 1}
    assert as_dict(snaps.diff, 1) == {(0, 1): 1, (1, 0): 1, (2, 2): 1}
    assert snaps.diff_kinds[1].tolist() == [1, 0, 2]
    assert as_dict(snaps.events, 1) == {(0, 1): 1, (2, 2): 1}  # targets keep the events' own direction


def test_num_snapshots_closes_the_last_bucket():
    t = np.array([0.0, 10.0, 20.0, 29.0, 30.0])
    src = dst = np.zeros(5, np.int64)
    snaps = build_snapshots(src, dst, t, np.zeros(5, np.int8), 1, SnapshotParams(num_snapshots=3, edge_life=1))
    assert snaps.delta == 10.0 and snaps.last_closed
    assert [as_dict(snaps.events, s) for s in range(3)] == [{(0, 0): 1}, {(0, 0): 1}, {(0, 0): 3}]


def test_split_is_the_later_one_and_never_goes_back():
    t = np.arange(10, dtype=np.float64)
    split = np.array([0, 0, 0, 1, 0, 1, 1, 2, 1, 2], np.int8)  # interleaved, as a source's own split may be
    snaps = build_snapshots(np.zeros(10, np.int64), np.ones(10, np.int64), t, split, 2,
                            SnapshotParams(delta=2.0, edge_life=1))
    # buckets {0,1} {2,3} {4,5} {6,7} {8,9}: latest splits 0 1 1 2 2
    assert snaps.split.tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("params, message", [
    (SnapshotParams(), "exactly one"), (SnapshotParams(delta=1.0, num_snapshots=2), "exactly one"),
    (SnapshotParams(delta=0.0), "--delta"), (SnapshotParams(num_snapshots=0), "--num-snapshots"),
    (SnapshotParams(delta=1.0, edge_life=0), "--edge-life")])
def test_bad_parameters(params, message):
    with pytest.raises(DataError, match=message):
        build_snapshots(np.zeros(2, np.int64), np.ones(2, np.int64), np.array([0.0, 1.0]), np.zeros(2), 2, params)


def test_too_many_snapshots():
    with pytest.raises(DataError, match="larger --delta"):
        build_snapshots(np.zeros(2, np.int64), np.ones(2, np.int64), np.array([0.0, 1e7]), np.zeros(2), 2,
                        SnapshotParams(delta=1.0))


def test_zero_time_span_with_num_snapshots():
    with pytest.raises(DataError, match="zero time span"):
        build_snapshots(np.zeros(2, np.int64), np.ones(2, np.int64), np.zeros(2), np.zeros(2), 2,
                        SnapshotParams(num_snapshots=3))


# ------------------------------------------------------------------------------------- the file


@pytest.fixture
def written(tmp_path):
    src, dst, t, n = random_events(3, n=20, e=400)
    snaps = build_snapshots(src, dst, t, chronological_split(t), n, SnapshotParams(delta=50.0, edge_life=3))
    path = tmp_path / "snapshots.h5"
    write_snapshots(snaps, path, graph_sha256="abc", num_events=len(t), bipartite=False, source="test")
    return snaps, path


def test_round_trip(written):
    snaps, path = written
    loaded = load_snapshots(path)
    assert loaded.graph_sha256 == "abc" and loaded.num_events == 400 and not loaded.bipartite
    got = loaded.snapshots
    for name in ("adjacency", "diff", "events"):
        for field in ("ptr", "row", "col", "value"):
            assert np.array_equal(getattr(getattr(got, name), field), getattr(getattr(snaps, name), field))
    assert np.array_equal(got.split, snaps.split) and np.array_equal(got.diff_kinds, snaps.diff_kinds)
    attrs = read_snapshot_attrs(path)
    assert attrs["kind"] == "disttgl-snapshots" and attrs["edge_life"] == 3 and attrs["delta"] == 50.0
    assert attrs["num_snapshots"] == snaps.num_snapshots and attrs["symmetric"] is False
    assert not list(path.parent.glob("*.part"))


def _edit(path, name, fn, keep_crc=False):
    with h5py.File(path, "r+") as f:
        data = fn(f[name][()])
        crc = f[name].attrs["crc32"]
        del f[name]
        f.create_dataset(name, data=data)
        # keep_crc: the old checksum (changed bytes); else a valid one, so the invariants must catch it
        f[name].attrs["crc32"] = crc if keep_crc else zlib.crc32(np.ascontiguousarray(data).view(np.uint8))


def test_wrong_kind_and_missing_file(written, tmp_path):
    _, path = written
    with h5py.File(path, "r+") as f:
        f.attrs["kind"] = "disttgl-batches"
    with pytest.raises(DataError, match="not a disttgl snapshots file") as exc:
        load_snapshots(path)
    assert str(path) in str(exc.value)
    with pytest.raises(DataError, match="does not exist"):
        load_snapshots(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        load_snapshots(tmp_path / "junk.h5")


@pytest.mark.parametrize("name, fn, keep_crc, message", [
    ("adj/value", lambda a: a + 1, True, "checksum"),
    ("adj/value", lambda a: np.r_[a[:-1], 0].astype(a.dtype), False, "must be positive"),
    ("diff/value", lambda a: a * 2, False, "does not turn snapshot"),
    ("adj/col", lambda a: a[::-1].copy(), False, "not sorted"),
    ("adj/row", lambda a: np.r_[a[:-1], 999].astype(a.dtype), False, "outside"),
    ("events/ptr", lambda a: a[:-1], False, "entries for"),
    ("split", lambda a: a[::-1].copy(), False, "never decreasing"),
])
def test_corrupt_arrays_are_found(written, name, fn, keep_crc, message):
    _, path = written
    _edit(path, name, fn, keep_crc)
    with pytest.raises(DataError, match=message) as exc:
        load_snapshots(path)
    assert str(path) in str(exc.value)


def test_missing_dataset(written):
    _, path = written
    with h5py.File(path, "r+") as f:
        del f["diff/row"]
    with pytest.raises(DataError, match="diff/row is missing"):
        load_snapshots(path)


# ---------------------------------------------------------------------------------- the command


def _graph(path, seed=0, n=15, e=300):
    src, dst, t, n = random_events(seed, n=n, e=e)
    g = Graph(src=src, dst=dst, t=t, split=chronological_split(t), num_nodes=n, bipartite=False,
              edge_feat=np.zeros((e + 1, 0), np.float32), tcsr=build_tcsr(src, dst, t, n),
              attrs={"sha256": "s" * 64, "source": "test", "split_rule": "chronological"})
    write_graph(g, path)
    return g


def test_command_writes_the_file(tmp_path, capsys):
    g = _graph(tmp_path / "g.h5")
    out = tmp_path / "snaps.h5"
    assert main(["snapshots", str(tmp_path / "g.h5"), "--num-snapshots", "12", "--edge-life", "4",
                 "--symmetric", "--out", str(out)]) == 0
    assert '"num_snapshots": 12' in capsys.readouterr().out
    loaded = load_snapshots(out)
    assert loaded.graph_sha256 == "s" * 64 and loaded.snapshots.symmetric and loaded.snapshots.edge_life == 4
    adj, _, _, _ = brute_force(g.src, g.dst, g.t, g.num_nodes, num=12, life=4, symmetric=True)
    assert all(as_dict(loaded.snapshots.adjacency, s) == dict(adj[s]) for s in range(12))


def test_command_errors(tmp_path, capsys):
    _graph(tmp_path / "g.h5")
    assert main(["snapshots", str(tmp_path / "g.h5"), "--delta", "-1", "--out", str(tmp_path / "x.h5")]) == 2
    assert "--delta must be a positive" in capsys.readouterr().err
    assert main(["snapshots", str(tmp_path / "missing.h5"), "--delta", "5", "--out", str(tmp_path / "x.h5")]) == 2
    with pytest.raises(SystemExit):
        main(["snapshots", str(tmp_path / "g.h5"), "--delta", "5", "--num-snapshots", "3", "--out", "x.h5"])
    assert not (tmp_path / "x.h5").exists()
