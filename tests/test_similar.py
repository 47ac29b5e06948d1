"""``disttgl similar``: each similarity against a literal per-node loop, the file and its refusals, the CLI."""

from __future__ import annotations

from collections import Counter, defaultdict

import h5py
import numpy as np
import pytest
import torch

from disttgl import cli
from disttgl.data.graph import Graph, build_tcsr
from disttgl.data.graph_store import write_graph
from disttgl.errors import DataError
from disttgl.pipeline.similar import similar_nodes, top_k_rows
from disttgl.pipeline.similar_file import load_similar, save_similar, similar_sha256
from disttgl.train.static_table import save_static


def _graph(seed=0, n=24, e=150, bipartite=False, sha="g1"):
    """Random events; non-bipartite graphs get self loops (which every method must ignore)."""
    rng = np.random.default_rng(seed)
    if bipartite:
        users = n * 2 // 3
        src, dst = rng.integers(0, users, e), rng.integers(users, n, e)
        side = (np.arange(n) >= users).astype(np.int8)
    else:
        src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
        side = None
    t = np.sort(rng.integers(0, 1000, e)).astype(np.float64)
    split = np.zeros(e, np.int8)
    split[int(0.6 * e):] = 1
    split[int(0.8 * e):] = 2
    return Graph(src=src, dst=dst, t=t, split=split, num_nodes=n, bipartite=bipartite,
                 edge_feat=np.zeros((e + 1, 0), np.float32), tcsr=build_tcsr(src, dst, t, n), side=side,
                 attrs={"sha256": sha})


def _counts(g):
    """c[u][x]: train events joining u and x, self loops left out (the literal definition)."""
    c = defaultdict(Counter)
    for u, x, s in zip(g.src.tolist(), g.dst.tolist(), g.split.tolist()):
        if s == 0 and u != x:
            c[u][x] += 1
            c[x][u] += 1
    return c


def _rank(scores: dict[int, float], k: int):
    best = sorted(((s, w) for w, s in scores.items() if s > 0), key=lambda p: (-p[0], p[1]))[:k]
    idx = [w for _, w in best] + [-1] * (k - len(best))
    return idx, [s for s, _ in best] + [0.0] * (k - len(best))


def _reference(g, method, k, table=None):
    c = _counts(g)
    active = {u for u, x, s in zip(g.src.tolist(), g.dst.tolist(), g.split.tolist()) if s == 0} | \
             {x for u, x, s in zip(g.src.tolist(), g.dst.tolist(), g.split.tolist()) if s == 0}
    rows_idx, rows_score = [], []
    for u in range(g.num_nodes):
        scores = {}
        for w in range(g.num_nodes):
            if w == u:
                continue
            if method == "jaccard":
                a, b = set(c[u]), set(c[w])
                scores[w] = len(a & b) / len(a | b) if a & b else 0.0
            elif method == "cooc":
                scores[w] = float(sum(c[u][x] * c[w][x] for x in c[u]))
            else:
                if u not in active or w not in active:
                    continue
                nu, nw = np.linalg.norm(table[u]), np.linalg.norm(table[w])
                scores[w] = float(np.dot(table[u], table[w]) / (nu * nw)) if nu and nw else 0.0
        i, s = _rank(scores, k)
        rows_idx.append(i)
        rows_score.append(s)
    return np.array(rows_idx), np.array(rows_score)


@pytest.mark.parametrize("method", ["jaccard", "cooc", "static-cosine"])
@pytest.mark.parametrize("seed,bipartite", [(0, False), (1, True), (2, False), (3, True)])
def test_matches_literal_loop(method, seed, bipartite):
    g = _graph(seed, bipartite=bipartite)
    table = np.random.default_rng(seed).normal(size=(g.num_nodes, 6)).astype(np.float32)
    table[3] = 0.0  # a zero row has no cosine with anyone
    k = 5
    ref_idx, ref_score = _reference(g, method, k, table.astype(np.float64))
    for block in (1 << 22, 1):  # one block, and one row per block
        idx, score = similar_nodes(g, method, k, static=torch.from_numpy(table), block_entries=block)
        assert idx.dtype == torch.int64 and score.dtype == torch.float32 and idx.shape == (g.num_nodes, k)
        np.testing.assert_array_equal(idx.numpy(), ref_idx, err_msg=f"{method} block {block}")
        np.testing.assert_allclose(score.numpy(), ref_score, rtol=1e-6, atol=1e-7)
    assert not (idx.numpy() == np.arange(g.num_nodes)[:, None]).any()
    if method in ("jaccard", "cooc"):
        # small random graphs have many tied scores: the literal ranking breaks them by lower id
        assert any(len({v for v in r if v > 0}) < sum(v > 0 for v in r) for r in ref_score.tolist())
    if bipartite and method != "static-cosine":
        ok = idx.numpy() >= 0
        sides = g.side[np.where(ok, idx.numpy(), 0)]
        assert (sides == g.side[:, None])[ok].all()  # partners of partners are on one's own side


@pytest.mark.parametrize("method", ["jaccard", "cooc", "static-cosine"])
def test_val_and_test_events_do_not_count(method):
    g = _graph(5)
    table = np.random.default_rng(5).normal(size=(g.num_nodes, 4))
    before = similar_nodes(g, method, 4, static=table)
    rng = np.random.default_rng(9)
    held_out = g.split > 0
    g.src = g.src.copy()
    g.dst = g.dst.copy()
    g.src[held_out] = rng.integers(0, g.num_nodes, held_out.sum())
    g.dst[held_out] = rng.integers(0, g.num_nodes, held_out.sum())
    after = similar_nodes(g, method, 4, static=table)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # and the train events do count: node 0 loses its train events (static-cosine then drops it)
    g.src = np.where(held_out | (g.src != 0), g.src, 1)
    g.dst = np.where(held_out | (g.dst != 0), g.dst, 1)
    changed = similar_nodes(g, method, 4, static=table)[0]
    assert not torch.equal(before[0], changed)
    assert (changed[0] == -1).all() and not (changed == 0).any()


def test_hand_worked_jaccard_and_cooc():
    # 0-2 twice, 0-3, 1-2, 1-3 (train); 4-2 only in test. P(0) = P(1) = {2, 3}; P(2) = P(3) = {0, 1}.
    src, dst = np.array([0, 0, 0, 1, 1, 4]), np.array([2, 2, 3, 2, 3, 2])
    t = np.arange(6, dtype=np.float64)
    g = Graph(src=src, dst=dst, t=t, split=np.array([0, 0, 0, 0, 0, 2], np.int8), num_nodes=5, bipartite=False,
              edge_feat=np.zeros((7, 0), np.float32), tcsr=build_tcsr(src, dst, t, 5), attrs={"sha256": "x"})
    idx, score = similar_nodes(g, "jaccard", 2)
    assert idx.tolist() == [[1, -1], [0, -1], [3, -1], [2, -1], [-1, -1]]
    assert score.tolist() == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    idx, score = similar_nodes(g, "cooc", 2)
    # c(0,2)=2, c(0,3)=1, c(1,2)=1, c(1,3)=1: cooc(0,1) = 2*1 + 1*1 = 3; cooc(2,3) = 2*1 + 1*1 = 3
    assert idx.tolist() == [[1, -1], [0, -1], [3, -1], [2, -1], [-1, -1]]
    assert score[:, 0].tolist() == [3.0, 3.0, 3.0, 3.0, 0.0]


def test_top_k_rows_ties_and_padding():
    s = torch.tensor([[0.0, 2.0, 1.0, 2.0, 0.0, 3.0], [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    idx, score = top_k_rows(s, 4)
    assert idx.tolist() == [[5, 1, 3, 2], [-1, -1, -1, -1]]
    assert score.tolist() == [[3.0, 2.0, 2.0, 1.0], [0.0] * 4]
    idx, _ = top_k_rows(s, 8)  # k beyond N
    assert idx.tolist() == [[5, 1, 3, 2, -1, -1, -1, -1], [-1] * 8]
    idx, _ = top_k_rows(torch.tensor([[2.0, 5.0, 2.0, 2.0, 2.0]]), 3)
    assert idx.tolist() == [[1, 0, 2]]


def test_bad_arguments():
    g = _graph(0)
    with pytest.raises(DataError, match="static memory"):
        similar_nodes(g, "static-cosine")
    with pytest.raises(DataError, match="shape"):
        similar_nodes(g, "static-cosine", static=np.zeros((3, 2)))
    with pytest.raises(DataError, match="unknown"):
        similar_nodes(g, "nope")
    with pytest.raises(DataError, match="at least 1"):
        similar_nodes(g, "jaccard", 0)


def _table(n=6, k=3):
    idx = np.array([[(i + j + 1) % n for j in range(k)] for i in range(n)], np.int64)
    idx[0, 2] = -1
    return idx, np.linspace(1, 0.1, n * k, dtype=np.float32).reshape(n, k)


def test_file_round_trip(tmp_path):
    idx, score = _table()
    save_similar(tmp_path / "s.h5", idx, score, method="jaccard", graph_sha256="abc")
    back_idx, back_score = load_similar(tmp_path / "s.h5", 6, graph_sha256="abc")
    np.testing.assert_array_equal(back_idx.numpy(), idx)
    np.testing.assert_array_equal(back_score.numpy(), score)
    assert back_idx.dtype == torch.int64 and back_score.dtype == torch.float32
    with h5py.File(tmp_path / "s.h5") as f:
        assert f.attrs["kind"] == "disttgl-similar-nodes" and f.attrs["method"] == "jaccard"
        assert f.attrs["k"] == 3 and f.attrs["num_nodes"] == 6 and f.attrs["graph_sha256"] == "abc"
    load_similar(tmp_path / "s.h5", 6)  # no checksum given: that check only is skipped
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]  # no temporary left


def _rewrite(path, **datasets):
    with h5py.File(path, "r+") as f:
        for name, value in datasets.items():
            if name in f:
                del f[name]
            if isinstance(value, str):
                f.attrs[name] = value
            else:
                f.create_dataset(name, data=value)


def test_file_refusals(tmp_path):
    idx, score = _table()
    path = tmp_path / "s.h5"
    save_similar(path, idx, score, method="cooc", graph_sha256="abc")
    with pytest.raises(DataError, match="computed on the graph") as exc:
        load_similar(path, 6, graph_sha256="other")
    assert str(path) in str(exc.value)
    with pytest.raises(DataError, match="has 7 nodes"):
        load_similar(path, 7, graph_sha256="abc")
    with pytest.raises(DataError, match="does not exist"):
        load_similar(tmp_path / "missing.h5", 6)

    flipped = idx.copy()
    flipped[1, 1] = 4
    _rewrite(path, idx=flipped)  # checksum no longer matches
    with pytest.raises(DataError, match="checksum"):
        load_similar(path, 6)
    for bad, message in ((6, "not a node id"), (-2, "not a node id"), (1, "itself")):
        corrupt = idx.copy()
        corrupt[1, 0] = bad
        _rewrite(path, idx=corrupt, table_sha256=similar_sha256(corrupt, score))  # checksum consistent
        with pytest.raises(DataError, match=message) as exc:
            load_similar(path, 6)
        assert str(path) in str(exc.value)
    _rewrite(path, kind="disttgl-static-memory")
    with pytest.raises(DataError, match="not a disttgl similar-nodes file"):
        load_similar(path, 6)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="unreadable"):
        load_similar(path, 6)


@pytest.fixture()
def store(tmp_path):
    g = _graph(4, bipartite=True, sha="store-sha")
    write_graph(g, tmp_path / "g.h5")
    return g, tmp_path / "g.h5"


def test_cli_writes_the_table(tmp_path, store):
    g, path = store
    out = tmp_path / "out" / "similar.h5"
    assert cli.main(["similar", str(path), "--method", "cooc", "--k", "4", "--out", str(out)]) == 0
    idx, score = load_similar(out, g.num_nodes, graph_sha256="store-sha")
    ref_idx, ref_score = similar_nodes(g, "cooc", 4)
    assert torch.equal(idx, ref_idx) and torch.equal(score, ref_score)

    table = np.random.default_rng(0).normal(size=(g.num_nodes, 5)).astype(np.float32)
    save_static(tmp_path / "static.h5", table, graph_path=str(path))
    out2 = tmp_path / "cos.h5"
    assert cli.main(["similar", str(path), "--method", "static-cosine", "--static", str(tmp_path / "static.h5"),
                     "--out", str(out2)]) == 0
    idx, _ = load_similar(out2, g.num_nodes, graph_sha256="store-sha")
    assert idx.shape == (g.num_nodes, 10)
    assert torch.equal(idx, similar_nodes(g, "static-cosine", 10, static=table)[0])


def test_cli_refusals(tmp_path, store, capsys):
    g, path = store
    out = tmp_path / "similar.h5"
    with pytest.raises(SystemExit) as exc:
        cli.main(["similar", str(path), "--method", "nope", "--out", str(out)])
    assert exc.value.code == 2
    assert cli.main(["similar", str(path), "--method", "static-cosine", "--out", str(out)]) == 2
    assert "--static" in capsys.readouterr().err
    assert cli.main(["similar", str(path), "--method", "jaccard", "--k", "0", "--out", str(out)]) == 2
    # a static table of another graph
    save_static(tmp_path / "static.h5", np.ones((g.num_nodes, 3), np.float32), attrs={"graph_sha256": "else"})
    assert cli.main(["similar", str(path), "--method", "static-cosine", "--static", str(tmp_path / "static.h5"),
                     "--out", str(out)]) == 2
    assert not out.exists()
