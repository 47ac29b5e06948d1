"""Batch cache: round trip against direct sampling + bookkeeping, determinism, errors, loader."""

from __future__ import annotations

import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch

from disttgl.cache.batch import Batch
from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.cache.memory_clock import plan
from disttgl.cli import main
from disttgl.errors import DataError
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import write_graph
from disttgl.cache.sampling import recent_neighbors

SPLITS = ("train", "val", "test")


def _graph(path, seed=0, bipartite=False, e=300, n=40, sha="abc"):
    rng = np.random.default_rng(seed)
    if bipartite:
        src, dst = rng.integers(0, n // 2, e), rng.integers(n // 2, n, e)
    else:
        src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    t = np.sort(rng.integers(0, 100, e)).astype(np.float64)
    g = Graph(src=src, dst=dst, t=t, split=chronological_split(t), num_nodes=n, bipartite=bipartite,
              edge_feat=np.zeros((e + 1, 2), np.float32), tcsr=build_tcsr(src, dst, t, n),
              attrs={"sha256": sha})
    write_graph(g, path)
    return g


P = BatchParams(batch_size=16, minibatch_parallelism=2, neg_sets=3, eval_negatives=4, neighbors=3, seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    g = _graph(d / "graph.h5", bipartite=True)
    build_cache(d / "graph.h5", d / "cache.h5", P, progress=False)
    return d, g


@pytest.mark.parametrize("bipartite,i,compat", [(False, 1, False), (True, 1, False), (False, 3, False),
                                                (True, 3, False), (False, 2, True)])
def test_round_trip_matches_direct_computation(tmp_path, bipartite, i, compat):
    g = _graph(tmp_path / "g.h5", seed=i, bipartite=bipartite)
    params = BatchParams(batch_size=16, minibatch_parallelism=i, neg_sets=2, eval_negatives=4, neighbors=3,
                         tgl_compat=compat)
    build_cache(tmp_path / "g.h5", tmp_path / "c.h5", params, progress=False)
    dst_set = set(g.dst.tolist())
    with open_cache(tmp_path / "c.h5", graph_path=tmp_path / "g.h5", minibatch_parallelism=i) as cache:
        assert cache.meta.minibatch_parallelism == i and cache.meta.num_events == len(g.src)
        for grp, state in plan(g.src, g.dst, g.t, g.split, 16, i, g.num_nodes):
            for pb in grp:
                split = SPLITS[pb.split]
                for s in range(cache.num_neg_sets(split)):
                    b = cache.batch(split, pb.index, s)
                    _check_batch(b, g, pb, state, dst_set if bipartite else None,
                                 1 if split == "train" else 4, compat)
        assert sum(cache.num_batches(s) for s in SPLITS) == sum(cache.meta.split_batches.values())


def _check_batch(b: Batch, g: Graph, pb, state, dst_set, q, compat):
    ev = pb.eids
    assert b.eid.tolist() == ev.tolist() and torch.equal(b.t, torch.from_numpy(g.t[ev]))
    assert b.src.tolist() == g.src[ev].tolist() and b.dst.tolist() == g.dst[ev].tolist()
    assert b.neg.shape == (len(ev), q) and b.neg.dtype == torch.int64
    if dst_set is not None:
        assert set(b.neg.ravel().tolist()) <= dst_set
    assert int(b.neg.min()) >= 0 and int(b.neg.max()) < g.num_nodes
    nodes = b.nodes.numpy()
    assert len(np.unique(nodes)) == len(nodes)
    roots = np.concatenate([g.src[ev], g.dst[ev], b.neg.numpy().ravel()])
    assert (nodes[b.root_idx.numpy()] == roots).all()
    root_t = b.root_t.numpy()
    nbr, eid, t = recent_neighbors(g.tcsr, roots, root_t, 3, tgl_compat=compat)
    valid = nbr >= 0
    assert b.nbr_root.tolist() == np.nonzero(valid)[0].tolist()
    assert (nodes[b.nbr_idx.numpy()] == nbr[valid]).all() and (b.nbr_eid.numpy() == eid[valid]).all()
    assert np.allclose(b.nbr_dt.numpy(), root_t[np.nonzero(valid)[0]] - t[valid])
    assert b.nbr_dt.dtype == torch.float32 and (b.nbr_dt > 0).all()
    mem_t, mail_t, mail_eid = state.lookup(nodes)
    assert (b.mem_t.numpy() == mem_t).all() and (b.mail_t.numpy() == mail_t).all()
    assert (b.mail_eid.numpy() == mail_eid).all()
    assert b.write_mask.dtype == torch.bool and (b.write_mask.numpy() == pb.write_mask).all()


def test_deterministic_and_seeded(tmp_path, built):
    d, _ = built
    build_cache(d / "graph.h5", tmp_path / "again.h5", P, progress=False)
    build_cache(d / "graph.h5", tmp_path / "other.h5", BatchParams(**{**P.__dict__, "seed": 2}), progress=False)
    with h5py.File(d / "cache.h5") as a, h5py.File(tmp_path / "again.h5") as b, \
            h5py.File(tmp_path / "other.h5") as c:
        for s in SPLITS:
            for name in a[s]:
                assert np.array_equal(a[s][name][()], b[s][name][()]), (s, name)
            assert not np.array_equal(a[s]["neg_root"][()], c[s]["neg_root"][()])
        assert a.attrs["meta"] == b.attrs["meta"]
    with open_cache(d / "cache.h5") as cache:
        sets = [cache.batch("train", 0, s).neg for s in range(3)]
        assert not torch.equal(sets[0], sets[1])  # independent negative sets
        assert torch.equal(cache.batch("val", 0, 0).neg, cache.batch("val", 0, 2).neg)  # one eval set


def test_meta_records_parameters(built):
    d, g = built
    with open_cache(d / "cache.h5") as cache:
        m = cache.meta
        assert (m.batch_size, m.minibatch_parallelism, m.neg_sets, m.eval_negatives, m.neighbors,
                m.strategy, m.seed, m.tgl_compat) == (16, 2, 3, 4, 3, "recent", 1, False)
        assert m.graph_sha256 == "abc" and m.num_nodes == g.num_nodes
        assert m.split_events == {s: int((g.split == k).sum()) for k, s in enumerate(SPLITS)}


def test_mismatch_errors(tmp_path, built):
    d, _ = built
    _graph(tmp_path / "other.h5", seed=5, sha="def")
    with pytest.raises(DataError, match="abc.*def") as err:
        open_cache(d / "cache.h5", graph_path=tmp_path / "other.h5")
    assert "cache.h5" in str(err.value)
    with pytest.raises(DataError, match="i = 2.*i = 3"):
        open_cache(d / "cache.h5", minibatch_parallelism=3)
    open_cache(d / "cache.h5", graph_path=d / "graph.h5", minibatch_parallelism=2).close()
    with pytest.raises(DataError, match="does not exist"):
        open_cache(tmp_path / "missing.h5")


def test_truncated_corrupt_incomplete(tmp_path, built):
    d, _ = built
    src = d / "cache.h5"
    size = src.stat().st_size
    trunc = tmp_path / "trunc.h5"
    with open(src, "rb") as fi, open(trunc, "wb") as fo:
        fo.write(fi.read(size // 2))
    with pytest.raises(DataError, match="trunc.h5"):
        with open_cache(trunc) as c:
            for s in SPLITS:
                for b in range(c.num_batches(s)):
                    c.batch(s, b)
    # flip bytes inside the data: the per-part CRC catches it on read
    bad = tmp_path / "bad.h5"
    shutil.copy(src, bad)
    with h5py.File(bad) as f:
        offset = f["train/pos_nbr"].id.get_offset()
    with open(bad, "r+b") as fh:
        fh.seek(offset + 40)
        fh.write(b"\xde\xad\xbe\xef" * 4)
    with open_cache(bad) as c:
        with pytest.raises(DataError, match="corrupt.*train batch 0"):
            c.batch("train", 0)
    bad_t = tmp_path / "bad_t.h5"
    shutil.copy(src, bad_t)
    with h5py.File(bad_t) as f:
        offset = f["event_t"].id.get_offset()
    with open(bad_t, "r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\x01\x02\x03")
    with pytest.raises(DataError, match="corrupt.*event_t"):
        open_cache(bad_t)
    # a file whose build never finished
    inc = tmp_path / "inc.h5"
    shutil.copy(src, inc)
    with h5py.File(inc, "r+") as f:
        del f.attrs["complete"]
    with pytest.raises(DataError, match="incomplete"):
        open_cache(inc)
    notcache = tmp_path / "x.h5"
    notcache.write_bytes(b"hello")
    with pytest.raises(DataError, match="x.h5"):
        open_cache(notcache)


def test_loader_prefetches_in_order_and_propagates_errors(built):
    d, _ = built
    items = [(1, 2), (0, 0), (2, 1)]
    loader = BatchLoader(d / "cache.h5", "train", items, prefetch=2, minibatch_parallelism=2)
    with open_cache(d / "cache.h5") as cache:
        for (b, s), got in zip(items, loader):
            want = cache.batch("train", b, s)
            assert all(torch.equal(getattr(got, f), getattr(want, f)) for f in want.__dataclass_fields__)
    assert len(list(loader)) == 3  # iterable twice
    clone = pickle.loads(pickle.dumps(loader))  # what spawn / torchrun workers receive
    assert clone._cache is None and len(list(clone)) == 3
    for _ in BatchLoader(d / "cache.h5", "val", [(b, 0) for b in range(3)], prefetch=1):
        break  # an early break must not hang the reader thread
    with pytest.raises(IndexError, match="out of range"):
        list(BatchLoader(d / "cache.h5", "train", [(0, 0), (999, 0)]))
    with pytest.raises(DataError, match="i = 2"):
        list(BatchLoader(d / "cache.h5", "train", [(0, 0)], minibatch_parallelism=1))


def test_cli(tmp_path, built, capsys):
    d, _ = built
    out = tmp_path / "b.h5"
    assert main(["batches", str(d / "graph.h5"), "--out", str(out), "--batch-size", "50",
                 "--minibatch-parallelism", "2", "--neg-sets", "2", "--neighbors", "2",
                 "--strategy", "uniform", "--no-progress"]) == 0
    with open_cache(out, minibatch_parallelism=2) as c:
        assert c.meta.strategy == "uniform" and c.meta.batch_size == 50 and c.num_neg_sets("train") == 2
        b = c.batch("test", 0)
        assert b.num_negatives == 49 and (b.nbr_dt > 0).all()
    assert main(["batches", str(tmp_path / "nope.h5"), "--out", str(out)]) == 2
    assert "nope.h5" in capsys.readouterr().err
    assert main(["batches", str(d / "graph.h5"), "--out", str(out), "--batch-size", "0"]) == 2
