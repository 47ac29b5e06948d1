"""The embedded synthetic dataset: determinism, store layout, planted temporal structure, CLI."""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import pytest

from disttgl import cli
from disttgl.errors import DataError
from disttgl.data.graph_store import load_graph, write_graph
from disttgl.data.synth import SynthConfig, generate, plant

SMALL = SynthConfig(events=3000, nodes=80, edge_dim=8, seed=3)


def _arrays(g):
    t = g.tcsr
    return {"src": g.src, "dst": g.dst, "t": g.t, "split": g.split, "edge_feat": g.edge_feat,
            "indptr": t.indptr, "nbr": t.nbr, "tcsr_t": t.t, "eid": t.eid}


@pytest.fixture(scope="module")
def default_graph():
    return generate(SynthConfig())


def test_deterministic_and_seeded():
    a, b, c = generate(SMALL), generate(SMALL), generate(SynthConfig(**{**SMALL.__dict__, "seed": 4}))
    for name, arr in _arrays(a).items():
        np.testing.assert_array_equal(arr, _arrays(b)[name], err_msg=name)
    assert a.attrs == b.attrs
    assert not np.array_equal(a.dst, c.dst) and not np.array_equal(a.t, c.t)
    assert a.attrs["sha256"] != c.attrs["sha256"]


def test_file_round_trip_layout(tmp_path):
    g = generate(SMALL)
    write_graph(g, tmp_path / "g.h5")
    write_graph(generate(SMALL), tmp_path / "again.h5")
    back = load_graph(tmp_path / "g.h5")
    for name, arr in _arrays(g).items():
        np.testing.assert_array_equal(back_arr := _arrays(back)[name], arr, err_msg=name)
        assert back_arr.dtype == arr.dtype
    e, n = SMALL.events, SMALL.nodes
    assert back.src.dtype == back.dst.dtype == np.int64 and back.t.dtype == np.float64
    assert back.split.dtype == np.int8 and back.edge_feat.dtype == np.float32
    assert back.edge_feat.shape == (e + 1, SMALL.edge_dim)
    assert not back.edge_feat[-1].any() and back.edge_feat[:-1].any()  # zero sentinel row only
    assert back.num_nodes == n and not back.bipartite and back.side is None
    np.testing.assert_array_equal(back.original_id, np.arange(n))
    assert back.tcsr.indptr.shape == (n + 1,) and back.tcsr.indptr[-1] == 2 * e  # both directions
    a = back.attrs
    assert a["source"] == "synthetic" and a["sorted_on_input"] and a["split_rule"] == "chronological"
    assert a["sha256"] == SMALL.sha256() and len(a["sha256"]) == 64
    assert '"communities": 8' in a["synth_config"]  # generator parameters are recorded
    # Same config, same bytes: the store is reproducible, not just its arrays.
    assert (tmp_path / "g.h5").read_bytes() == (tmp_path / "again.h5").read_bytes()


def test_events_well_formed(default_graph):
    g = default_graph
    assert g.num_events == 20000 and g.num_nodes == 400 and g.edge_dim == 16
    assert np.all(np.diff(g.t) > 0) and g.t[0] == 0.0
    assert g.src.min() >= 0 and g.dst.min() >= 0 and max(g.src.max(), g.dst.max()) < g.num_nodes
    assert not np.any(g.src == g.dst)
    assert np.all(np.diff(g.split) >= 0) and np.bincount(g.split).tolist() == [14000, 3000, 3000]
    # Most nodes take part (the default size is meant to exercise every node's memory).
    assert len(np.unique(np.concatenate([g.src, g.dst]))) > 0.95 * g.num_nodes
    # Bursty times: the gap distribution is over-dispersed against a Poisson process (CV 1).
    gaps = np.diff(g.t)
    assert gaps.std() / gaps.mean() > 1.2


def test_tcsr_matches_events():
    g = generate(SMALL)
    rows = defaultdict(list)
    for eid, (u, v) in enumerate(zip(g.src, g.dst)):
        rows[u].append((g.t[eid], eid, v))
        rows[v].append((g.t[eid], eid, u))
    tc = g.tcsr
    for node in range(g.num_nodes):
        lo, hi = tc.indptr[node], tc.indptr[node + 1]
        assert sorted(rows[node]) == list(zip(tc.t[lo:hi], tc.eid[lo:hi], tc.nbr[lo:hi]))


def test_bipartite_sides(tmp_path):
    cfg = SynthConfig(events=4000, nodes=100, bipartite=True, seed=1)
    g = generate(cfg)
    num_users = int((g.side == 0).sum())
    assert g.bipartite and num_users == 80
    np.testing.assert_array_equal(g.side, (np.arange(100) >= num_users).astype(np.int8))
    assert g.src.max() < num_users <= g.dst.min() and g.dst.max() < 100
    write_graph(g, tmp_path / "b.h5")
    back = load_graph(tmp_path / "b.h5")
    assert back.bipartite and back.side.dtype == np.int8
    np.testing.assert_array_equal(back.side, g.side)


def test_tiny_configs_work():
    for cfg in (SynthConfig(events=1, nodes=2), SynthConfig(events=50, nodes=2, bipartite=True),
                SynthConfig(events=10, nodes=3, edge_dim=0, communities=1, phases=1)):
        g = generate(cfg)
        assert g.num_events == cfg.events and g.edge_feat.shape == (cfg.events + 1, cfg.edge_dim)
        assert not np.any(g.src == g.dst)


def _ranks(g, score_fn, negatives):
    """Expected rank of the true destination among it and its negatives (ties split evenly)."""
    ranks = []
    for i, negs in negatives:
        pos, neg = score_fn(i, g.dst[i]), np.array([score_fn(i, v) for v in negs])
        ranks.append(1 + (neg > pos).sum() + 0.5 * (neg == pos).sum())
    return np.array(ranks, dtype=float)


def _predictor_mrrs(g, window=10, num_neg=49):
    """MRR on the test split of a recent-partner predictor and two static ones fitted on train."""
    rng = np.random.default_rng(0)
    lo_dst = int(g.side.argmax()) if g.bipartite else 0
    train = g.split == 0
    popularity = np.bincount(g.dst[train], minlength=g.num_nodes)
    pair = defaultdict(int)
    for u, v in zip(g.src[train], g.dst[train]):
        pair[u, v] += 1
    recent = defaultdict(lambda: deque(maxlen=window))
    recent_sets = {}
    for i, (u, v) in enumerate(zip(g.src, g.dst)):
        if g.split[i] == 2:
            recent_sets[i] = set(recent[u])
        recent[u].append(v)
        recent[v].append(u)
    test = np.flatnonzero(g.split == 2)
    negatives = [(i, rng.integers(lo_dst, g.num_nodes, num_neg)) for i in test]
    # Binary and count scores break their ties by popularity, so "recent" measures what recency adds.
    tie = lambda v: popularity[v] / (popularity.max() + 1)  # noqa: E731
    scores = {
        "recent": lambda i, v: float(v in recent_sets[i]) + tie(v),
        "popularity": lambda i, v: float(popularity[v]),
        "pair_frequency": lambda i, v: pair.get((g.src[i], v), 0) + tie(v),
    }
    return {name: float(np.mean(1.0 / _ranks(g, fn, negatives))) for name, fn in scores.items()}


@pytest.mark.parametrize("bipartite", [False, True])
def test_recent_partners_beat_static_baselines(bipartite, default_graph):
    g = generate(SynthConfig(bipartite=True)) if bipartite else default_graph
    mrr = _predictor_mrrs(g)
    static = max(mrr["popularity"], mrr["pair_frequency"])
    assert mrr["recent"] > static + 0.15 and mrr["recent"] > 1.7 * static, mrr


def test_without_repeats_the_recency_signal_vanishes():
    # The check above must be able to fail: with no planted repeats recency is worth little.
    g = generate(SynthConfig(repeat=0.0, burst=0.0))
    mrr = _predictor_mrrs(g)
    assert mrr["recent"] < max(mrr["popularity"], mrr["pair_frequency"]) + 0.1, mrr


def _dst_community_dist(g, community, c, lo, hi):
    sel = (community[g.src] == c) & (np.arange(g.num_events) >= lo) & (np.arange(g.num_events) < hi)
    return np.bincount(community[g.dst[sel]], minlength=community.max() + 1) / max(1, sel.sum())


@pytest.mark.parametrize("phases, drifts", [(8, True), (1, False)])
def test_community_preferences_drift(phases, drifts):
    cfg = SynthConfig(phases=phases)
    g, planted = generate(cfg), plant(cfg)
    e, com = g.num_events, planted.community
    tv = [0.5 * np.abs(_dst_community_dist(g, com, c, 0, e // 3)
                       - _dst_community_dist(g, com, c, 2 * e // 3, e)).sum()
          for c in range(planted.num_communities)]
    if drifts:
        assert min(tv) > 0.2, tv  # every community changes whom it talks to
    else:
        assert max(tv) < 0.15, tv
    # Within a phase the preferred community dominates fresh and repeated contacts alike.
    first = _dst_community_dist(g, com, 0, 0, e // (3 * phases))
    assert first.argmax() == planted.preference[0, 0] and first.max() > 0.6


def test_edge_features_carry_the_community_signal(default_graph):
    # Nearest-centroid decoding of the destination's community from the message, fitted on train.
    g = default_graph
    com = plant(SynthConfig()).community
    x, y, train = g.edge_feat[:-1], com[g.dst], g.split == 0
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(com.max() + 1)])
    pred = ((x[~train, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[~train]).mean() > 0.4  # chance is 1/8


def test_cli_writes_store(tmp_path):
    out = tmp_path / "sub" / "graph.h5"
    rc = cli.main(["synth", "--out", str(out), "--events", "500", "--nodes", "30", "--edge-dim", "4",
                   "--seed", "7", "--bipartite"])
    assert rc == 0 and out.exists()
    g = load_graph(out)
    assert (g.num_events, g.num_nodes, g.edge_dim, g.bipartite) == (500, 30, 4, True)
    ref = generate(SynthConfig(events=500, nodes=30, edge_dim=4, seed=7, bipartite=True))
    np.testing.assert_array_equal(g.dst, ref.dst)
    assert not list(out.parent.glob("*.part"))


@pytest.mark.parametrize("args, key", [(["--events", "0"], "events"), (["--nodes", "1"], "nodes"),
                                       (["--edge-dim", "-1"], "edge_dim"), (["--seed", "-2"], "seed")])
def test_cli_bad_values(tmp_path, capsys, args, key):
    out = tmp_path / "graph.h5"
    rc = cli.main(["synth", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc != 0 and key in err and args[0] in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs", [dict(events=2.5), dict(bipartite="yes"), dict(repeat=1.5),
                                    dict(recency=0.0), dict(item_fraction=1.0), dict(mean_gap=0.0)])
def test_config_validation(kwargs):
    with pytest.raises(DataError, match=next(iter(kwargs))):
        SynthConfig(**kwargs)
