"""Out-of-core preparation: the streamed cache build equals the in-memory one; maps, chunked checks,
the row-bisection sampler, the streamed split walk, the size formula, string ids without objects."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest

from disttgl.cache.build import BatchSampler, build_cache
from disttgl.cache.format import (NEGATIVE_PARTS, PARTS, POSITIVE_PARTS, BatchParams, SizeFactors, cache_bytes,
                                  parts_crc)
from disttgl.cache.memory_clock import (ClockState, apply_writes, groups, iter_split_batches, plan, split_batches,
                                        write_masks)
from disttgl.cache.reader import open_cache
from disttgl.cache.sampling import RowIndex, prepare, recent_neighbors, uniform_neighbors
from disttgl.data import graph_map
from disttgl.data.convert import ConvertOptions, convert
from disttgl.data.graph import build_tcsr
from disttgl.data.graph_map import map_graph
from disttgl.data.graph_store import check_graph, load_graph, write_graph
from disttgl.data.readers import CsvColumns, read_events
from disttgl.data.synth import SynthConfig, _features, generate, plant
from disttgl.errors import DataError


def _store(tmp_path, name="g.h5", interleaved=False, **kw):
    g = generate(SynthConfig(**{"events": 1500, "nodes": 60, "edge_dim": 3, "seed": 1, **kw}))
    if interleaved:  # a source's own split (TGL's ext_roll) may interleave train, val and test
        g = replace(g, split=np.random.default_rng(0).choice(3, g.num_events, p=[0.6, 0.2, 0.2]).astype(np.int8),
                    attrs={**g.attrs, "split_rule": "ext_roll"})
    write_graph(g, tmp_path / name)
    return tmp_path / name


# ------------------------------------------------------------------ the streamed build = the old build

def _old_build_parts(graph_path, params):
    """Every batch's parts as the build made them before it streamed: the whole store in memory,
    the key index (``prepare``), the split cut in memory (``split_batches``) and np.unique candidates."""
    g = load_graph(graph_path, features=False)
    n, e = g.num_nodes, g.num_events
    itype = np.dtype(np.int32)
    sampler = BatchSampler(prepare(g.tcsr, pad=max(params.neighbors, 1)), params, n, e,
                           np.unique(g.dst) if g.bipartite else None, itype)
    state = ClockState.initial(n, e)
    out = {"train": [], "val": [], "test": []}
    for s, batches in enumerate(split_batches(g.split, params.batch_size)):
        for grp in groups(len(batches), params.minibatch_parallelism if s == 0 else 1):
            eids = [batches[b] for b in grp]
            srcs, dsts = [g.src[x] for x in eids], [g.dst[x] for x in eids]
            masks = write_masks(srcs, dsts)
            sets, q = (params.neg_sets, 1) if s == 0 else (1, params.eval_negatives)
            for b, x, m in zip(grp, eids, masks):
                out[("train", "val", "test")[s]].append(
                    sampler.batch(s, b, x, g.src[x], g.dst[x], g.t[x], m, state, sets, q))
            apply_writes(state, srcs, dsts, [g.t[x] for x in eids], eids, masks)
    return g, out


def _assert_cache_holds(path, graph, parts, params):
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["event_t"][()], np.concatenate([graph.t, [0.0]]))
        meta = json.loads(f.attrs["meta"])
        assert meta["split_events"] == {s: int(c) for s, c in zip(("train", "val", "test"),
                                                                   np.bincount(graph.split, minlength=3))}
        for split, batches in parts.items():
            grp = f[split]
            assert grp.attrs["num_batches"] == len(batches)
            for name in PARTS:
                want = np.concatenate([b[name] for b in batches]) if batches else np.zeros(0)
                got = grp[name][()]
                assert got.shape[0] == len(want) and np.array_equal(got.reshape(len(want), -1),
                                                                    np.asarray(want).reshape(len(want), -1)), name
            sizes = {"event_ptr": "t", "pos_node_ptr": "pos_node", "pos_nbr_ptr": "pos_nbr"}
            for ptr, name in sizes.items():
                assert np.array_equal(grp[ptr][()], np.cumsum([0] + [len(b[name]) for b in batches])), ptr
            for name in NEGATIVE_PARTS:
                counts = np.concatenate([b["_counts"][name] for b in batches]) if batches else []
                assert np.array_equal(grp[name + "_ptr"][()], np.cumsum(np.r_[0, counts]).astype(np.int64)), name
            assert grp["pos_crc"][()].tolist() == [parts_crc(b[k] for k in POSITIVE_PARTS) for b in batches]
            neg = []
            for b in batches:
                bounds = {k: np.r_[0, np.cumsum(b["_counts"][k])] for k in NEGATIVE_PARTS}
                neg += [parts_crc(b[k][bounds[k][s]:bounds[k][s + 1]] for k in NEGATIVE_PARTS)
                        for s in range(len(b["_counts"]["neg_root"]))]
            assert grp["neg_crc"][()].tolist() == neg


CASES = {
    "default": ({}, BatchParams(batch_size=64, neg_sets=3, eval_negatives=4, seed=2)),
    "i2-uniform": ({}, BatchParams(batch_size=50, minibatch_parallelism=2, neg_sets=2, eval_negatives=3,
                                   strategy="uniform", seed=5)),
    "bipartite-tgl": ({"bipartite": True}, BatchParams(batch_size=70, neg_sets=2, eval_negatives=5, tgl_compat=True)),
    "interleaved": ({"interleaved": True}, BatchParams(batch_size=40, neg_sets=2, eval_negatives=3, neighbors=4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_build_writes_the_old_builds_batches_for_any_chunk(tmp_path, case):
    store_kw, params = CASES[case]
    store = _store(tmp_path, **store_kw)
    graph, parts = _old_build_parts(store, params)
    for chunk in (1, 7, 500, 1 << 22):
        out = tmp_path / f"c{chunk}.h5"
        build_cache(store, out, params, progress=False, chunk=chunk)
        _assert_cache_holds(out, graph, parts, params)
        with open_cache(out, graph_path=store) as c:  # and the reader (checksums, layout) takes it
            c.batch("val", c.num_batches("val") - 1)


def test_the_build_never_reads_the_event_arrays_or_the_tcsr_into_memory(tmp_path, monkeypatch):
    store = _store(tmp_path)
    read = []
    real = graph_map._read
    monkeypatch.setattr(graph_map, "_read", lambda path, f, name: read.append(name) or real(path, f, name))
    build_cache(store, tmp_path / "c.h5", BatchParams(batch_size=100, neg_sets=1, eval_negatives=2), progress=False)
    assert sorted(read) == ["node_map/original_id", "tcsr/indptr"]  # O(N) arrays only


# ------------------------------------------------------------------ the pieces

def test_map_graph_gives_load_graphs_arrays_as_read_only_maps(tmp_path):
    store = _store(tmp_path, bipartite=True)
    g, m = load_graph(store, features=False), map_graph(store, chunk=13)
    for name in ("src", "dst", "t", "split", "side", "original_id"):
        assert np.array_equal(getattr(m, name), getattr(g, name)), name
    for name in ("indptr", "nbr", "t", "eid"):
        assert np.array_equal(getattr(m.tcsr, name), getattr(g.tcsr, name)), name
    assert isinstance(m.src, np.memmap) and isinstance(m.tcsr.nbr, np.memmap) and not m.tcsr.t.flags.writeable
    assert m.attrs == g.attrs and m.edge_dim == 0
    full = map_graph(store, features=True)
    assert np.array_equal(full.edge_feat, load_graph(store).edge_feat) and full.edge_dim == 3


def test_map_graph_finds_a_changed_byte(tmp_path):
    store = _store(tmp_path)
    with h5py.File(store, "r") as f:
        offset = f["tcsr/eid"].id.get_offset() + 8 * 100
    with open(store, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match="tcsr/eid fails its checksum"):
        map_graph(store)


def _broken(graph, what):
    """``graph`` with one planted fault; its whole-array check message is the reference."""
    tc = graph.tcsr
    if what == "time-order":
        t = graph.t.copy()
        t[701], t[702] = t[702], t[701] - 1.0
        return replace(graph, t=t)
    if what == "tcsr-row-order":  # swap two entries inside one long row
        row = int(np.argmax(np.diff(tc.indptr)))
        a = int(tc.indptr[row]) + 3
        t = tc.t.copy()
        t[a], t[a + 1] = t[a + 1], t[a]
        return replace(graph, tcsr=replace(tc, t=t))
    if what == "nbr-range":
        nbr = tc.nbr.copy()
        nbr[len(nbr) - 2] = graph.num_nodes
        return replace(graph, tcsr=replace(tc, nbr=nbr))
    if what == "tcsr-time":
        t = tc.t.copy()
        row = int(np.argmax(np.diff(tc.indptr)))
        t[int(tc.indptr[row + 1]) - 1] += 1.0  # the row's last entry: still sorted, wrong time
        return replace(graph, tcsr=replace(tc, t=t))
    raise ValueError(what)


@pytest.mark.parametrize("what", ["time-order", "tcsr-row-order", "nbr-range", "tcsr-time"])
def test_chunked_checks_name_the_same_fault_for_any_chunk(tmp_path, what):
    g = load_graph(_store(tmp_path), features=False)
    bad = _broken(g, what)
    messages = set()
    for chunk in (1, 2, 5, 64, 1 << 22):
        with pytest.raises(DataError) as exc:
            check_graph(bad, "g.h5", edge_feat=False, chunk=chunk)
        messages.add(str(exc.value))
    assert len(messages) == 1, messages
    for chunk in (1, 3, 1 << 22):  # the intact graph passes: row starts may go down in time
        check_graph(g, "g.h5", edge_feat=False, chunk=chunk)


def _brute_recent(src, dst, t, node, time, k, compat):
    """Literal reference: the node's edges strictly before ``time`` in (t, eid) order, newest first."""
    hist = []  # one entry per endpoint that is the node (a self-loop has two)
    for e, (s, d, te) in enumerate(zip(src, dst, t)):
        if te < time:
            hist += [(int(d), e)] * int(s == node) + [(int(s), e)] * int(d == node)
    hist = hist[1:] if compat else hist
    return [x for x, _ in hist[::-1][:k]], [e for _, e in hist[::-1][:k]]


@pytest.mark.parametrize("integral", [True, False])
def test_row_bisection_finds_the_key_searchs_neighbours(integral):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n, e = 12, 150
        src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
        t = np.sort(rng.integers(0, 25, e).astype(float) if integral else np.round(rng.random(e) * 9, 1))
        tc = build_tcsr(src, dst, t, n)
        nodes = np.r_[rng.integers(0, n, 300), [0, 1]]
        times = np.r_[rng.choice(np.r_[t, [-1.0, 0.05, 99.0]], 300), [t[0], t[-1] + 1]]
        for k, compat in ((1, False), (4, True), (10, False)):
            want = recent_neighbors(prepare(tc, pad=k), nodes, times, k, tgl_compat=compat)
            got = recent_neighbors(RowIndex(tc), nodes, times, k, tgl_compat=compat)
            assert all(np.array_equal(a, b, equal_nan=True) and a.dtype == b.dtype for a, b in zip(got, want))
            for r in range(0, len(nodes), 37):  # and the literal definition, on a few roots
                nbr, eid = _brute_recent(src, dst, t, nodes[r], times[r], k, compat)
                assert got[0][r][:len(nbr)].tolist() == nbr and got[1][r][:len(eid)].tolist() == eid
                assert (got[0][r][len(nbr):] == -1).all()
            want = uniform_neighbors(prepare(tc), nodes, times, k, np.random.default_rng(3), tgl_compat=compat)
            got = uniform_neighbors(RowIndex(tc), nodes, times, k, np.random.default_rng(3), tgl_compat=compat)
            assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want))


def test_split_walk_streams_the_in_memory_cut():
    split = np.random.default_rng(1).choice(3, 1003, p=[0.5, 0.3, 0.2]).astype(np.int8)
    want = split_batches(split, 17)
    for chunk in (1, 16, 17, 100, 5000):
        for s in range(3):
            got = list(iter_split_batches(split, s, 17, chunk=chunk))
            assert len(got) == len(want[s]) and all(np.array_equal(a, b) for a, b in zip(got, want[s]))
    src, dst = np.arange(1003) % 7, (np.arange(1003) * 3 + 1) % 7
    t = np.arange(1003, dtype=float)
    walks = [[(pb.split, pb.index, pb.eids.tolist(), pb.write_mask.tolist()) for grp, _ in
              plan(src, dst, t, split, 17, 3, 7, chunk=c) for pb in grp] for c in (1, 50, 1 << 22)]
    assert walks[0] == walks[1] == walks[2] and len(walks[0]) == sum(map(len, want))
    with pytest.raises(ValueError):
        next(plan(src, dst, t, split, 17, 0, 7))


def test_cache_size_formula(tmp_path):
    """With the cache's own factors the formula gives its size up to HDF5's metadata; the worst case
    bounds it. Hand-worked worst case: one train event, one set of one negative, k = 1, I = 4:
    8 * 2 (event_t) + 32 + 24 + 16 + 48 (events and t, 2 roots, 2 neighbour slots, 4 distinct nodes)
    + 12 + 8 + 24 (the negative root, its slot, 2 nodes) + 8 * 6 + 4 * 2 (the batch's offsets and
    CRCs) + 8 * 6 (the offsets' leading zeros) = 284."""
    assert cache_bytes({"train": 1}, BatchParams(neg_sets=1, neighbors=1)) == 284
    store = _store(tmp_path)
    params = BatchParams(batch_size=64, neg_sets=3, eval_negatives=4)
    out = tmp_path / "c.h5"
    build_cache(store, out, params, progress=False)
    with h5py.File(out, "r") as f:
        meta = json.loads(f.attrs["meta"])
        rows = {k: sum(f[s][k].shape[0] for s in ("train", "val", "test")) for k in PARTS}
    pos, neg = sum(meta["split_events"].values()), rows["neg_root"]
    factors = SizeFactors(fill_pos=rows["pos_nbr"] / (20 * pos), fill_neg=rows["neg_nbr"] / (10 * neg),
                          nodes_pos=rows["pos_node"] / pos, nodes_neg=rows["neg_node"] / neg)
    size = out.stat().st_size
    exact = cache_bytes(meta["split_events"], params, factors=factors)
    assert 0 <= size - exact < 64 << 10, (size, exact)
    assert cache_bytes(meta["split_events"], params) > size


def test_synth_features_fill_in_pieces_as_one_draw_would():
    cfg = SynthConfig(events=(1 << 18) + 5, nodes=30, edge_dim=2, seed=4)
    planted = plant(cfg)
    rng = np.random.default_rng(11)
    src, dst = rng.integers(0, 30, cfg.events), rng.integers(0, 30, cfg.events)
    phase = rng.integers(0, cfg.phases, cfg.events)
    got = _features(cfg, planted, src, dst, phase, np.random.default_rng(7))
    ref_rng = np.random.default_rng(7)  # the formula with one (E, d) noise draw
    codes = [ref_rng.standard_normal((k, 2), dtype=np.float32) for k in (planted.num_communities,) * 2 + (cfg.phases,)]
    body = (codes[0][planted.community[src]] + codes[1][planted.community[dst]] + codes[2][phase]) \
        * np.float32(1 / np.sqrt(3))
    body += ref_rng.standard_normal(body.shape, dtype=np.float32) * np.float32(cfg.feature_noise)
    assert np.array_equal(got[:-1], body) and not got[-1].any()


def test_string_ids_are_read_as_codes_and_numbered_as_before(tmp_path):
    path = tmp_path / "e.csv"
    rows = [("b", "ä", 1.0), ("10", "a", 2.0), ("9", "b", 3.0), ("ä", "10", 4.0)]
    path.write_text("u,i,t\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    raw = read_events([path], "csv", csv_columns=CsvColumns(src="u", dst="i", time="t"))
    assert raw.src.dtype == np.int64 and raw.dst.dtype == np.int64  # no Python str per event
    g = convert([path], tmp_path / "g.h5", ConvertOptions(fmt="csv", bipartite=False,
                                                          csv_columns=CsvColumns(src="u", dst="i", time="t")))
    names = ["10", "9", "a", "b", "ä"]  # code-point order, as np.unique sorts Python strings
    assert list(g.original_id) == names
    assert [names[x] for x in g.src] == [r[0] for r in rows] and [names[x] for x in g.dst] == [r[1] for r in rows]


def test_training_reads_the_cache_through_the_map_not_whole(tmp_path, monkeypatch):
    """open_cache/BatchLoader read only the per-batch offsets and CRCs through h5py; the batch data are
    views of the file's memory map, sliced per batch."""
    store = _store(tmp_path)
    out = tmp_path / "c.h5"
    build_cache(store, out, BatchParams(batch_size=100, neg_sets=2, eval_negatives=3), progress=False)
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: read.append(self.name) or real(self, key))
    with open_cache(out, graph_path=store) as c:
        views = [c._data[s][name] for s in ("train", "val") for name in PARTS]
        for b in range(c.num_batches("train")):
            c.batch("train", b, 1)
    assert read and all(name.rsplit("/", 1)[1].endswith(("_ptr", "_crc")) for name in read), sorted(set(read))
    for v in views:  # no copy: each is an ndarray over the one np.memmap of the file
        assert not v.flags.owndata and isinstance(v.base, np.memmap)
