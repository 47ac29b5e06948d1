"""RandomTMA / SuperTMA partitions (disttgl.tma.partition, part_store, `disttgl partition`), checked
against brute-force loops and the authors' cluster-grouping rule written out literally."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from disttgl.data.graph_store import load_graph
from disttgl.data.synth import SynthConfig, generate
from disttgl.data.graph_store import write_graph
from disttgl.errors import DataError
from disttgl.tma.part_store import read_partition
from disttgl.tma.partition import (assignment_sha256, coverage, default_clusters, event_mask, group_clusters,
                                   random_nodes, super_nodes, train_projection)
from disttgl.tma.partition_command import partition

WIKI = Path("/work/shared/datasets/wikipedia/wikipedia.csv")
REPO = Path(__file__).resolve().parents[1]


def authors_group_clusters(num_clusters: int, num_groups: int, random_seed: int) -> list:
    """amazon-science/random-tma, src/samplers/ClusterGCN.py, ClusterGCNClusterSampler.group_clusters
    ("uniform-cluster"), written out as the authors wrote it (self.num_clusters as an argument)."""
    rng = np.random.default_rng(seed=random_seed)
    group_list = []
    cluster_per_group = float(num_clusters) / num_groups
    cluster_list = np.arange(num_clusters)
    rng.shuffle(cluster_list)
    p = 0
    for i in range(num_groups):
        group_size = int(np.floor(cluster_per_group))
        if rng.random() < cluster_per_group % 1:
            group_size += 1
        if i != num_groups - 1:
            p_end = p + group_size
        else:
            p_end = num_clusters
        group_list.append(cluster_list[p:p_end])
        p = p_end
    return group_list


@pytest.mark.parametrize("c,p", [(64, 3), (15000, 3), (10, 4), (4, 3), (7, 7), (100, 8), (5, 1)])
def test_group_clusters_is_the_authors_rule_on_many_seeds(c, p):
    for seed in range(100):
        want = authors_group_clusters(c, p, seed)
        got = group_clusters(c, p, seed)
        assert len(got) == p
        for g, w in zip(got, want):
            assert np.array_equal(g, w), (c, p, seed)
        # the groups partition the clusters
        assert sorted(np.concatenate(got).tolist()) == list(range(c))


def test_group_clusters_can_leave_the_last_group_empty_as_the_authors_do():
    # C = 4, P = 3: a group of 1 or 2 each; when the first two take 2 each the last is empty
    empties = [s for s in range(100) if len(group_clusters(4, 3, s)[-1]) == 0]
    assert empties and all(len(authors_group_clusters(4, 3, s)[-1]) == 0 for s in empties)


def test_random_assignment_is_a_partition_with_binomial_sizes():
    n, parts = 20000, 4
    a = random_nodes(n, parts, seed=3)
    assert a.shape == (n,) and a.dtype == np.int64
    assert set(np.unique(a).tolist()) == set(range(parts))  # every node in exactly one part in [0, P)
    sizes = np.bincount(a, minlength=parts)
    sd = np.sqrt(n * (1 / parts) * (1 - 1 / parts))
    assert np.all(np.abs(sizes - n / parts) < 5 * sd), sizes
    assert np.array_equal(a, random_nodes(n, parts, seed=3))  # seeded
    assert not np.array_equal(a, random_nodes(n, parts, seed=4))
    assert assignment_sha256(a) != assignment_sha256(random_nodes(n, parts, seed=4))


def _events(rng, n=30, e=400):
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    split = np.sort(rng.integers(0, 3, e)).astype(np.int8)
    return src, dst, split, n


@pytest.mark.parametrize("rule", ["induced", "incident"])
def test_event_selection_matches_a_brute_force_loop(rule):
    rng = np.random.default_rng(0)
    src, dst, split, n = _events(rng)
    a = random_nodes(n, 3, seed=1)
    for p in range(3):
        want = []
        for u, v in zip(src.tolist(), dst.tolist()):
            inside = [a[u] == p, a[v] == p]
            want.append(all(inside) if rule == "induced" else any(inside))
        assert event_mask(src, dst, a, p, rule).tolist() == want
    with pytest.raises(DataError):
        event_mask(src, dst, a, 0, "events")


@pytest.mark.parametrize("rule", ["induced", "incident"])
def test_coverage_counts_match_a_brute_force_loop(rule):
    rng = np.random.default_rng(1)
    src, dst, split, n = _events(rng)
    parts = 3
    a = random_nodes(n, parts, seed=2)
    cov = coverage(src, dst, split, a, parts, rule)
    kept_any, copies = set(), 0
    for p in range(parts):
        keep = [i for i in range(len(src)) if (a[src[i]] == p and a[dst[i]] == p if rule == "induced"
                                               else a[src[i]] == p or a[dst[i]] == p)]
        row = cov["parts"][p]
        assert row["events"] == {s: sum(split[i] == k for i in keep) for k, s in enumerate(("train", "val", "test"))}
        assert row["nodes"] == int((a == p).sum())
        train = [i for i in keep if split[i] == 0]
        assert row["active_nodes"] == len({x for i in train for x in (src[i], dst[i]) if a[x] == p})
        assert row["ghost_nodes"] == len({x for i in keep for x in (src[i], dst[i]) if a[x] != p})
        kept_any |= set(train)
        copies += len(train)
    ntrain = int((split == 0).sum())
    assert cov["train_events_kept"] == pytest.approx(len(kept_any) / ntrain)
    assert cov["train_event_copies"] == pytest.approx(copies / ntrain)
    seen, total = Counter(), Counter()
    for i in np.flatnonzero(split == 0):
        u, v = int(src[i]), int(dst[i])
        for x in (u, v):
            total[x] += 1
            if rule == "incident" or a[u] == a[v]:
                seen[x] += 1
    shares = [seen[x] / total[x] for x in total]
    assert cov["node_share_median"] == pytest.approx(float(np.median(shares)))
    assert cov["nodes_with_train_events"] == len(total)


def test_train_projection_is_the_weighted_undirected_train_graph():
    rng = np.random.default_rng(2)
    src, dst, split, n = _events(rng, n=12, e=200)
    xadj, adjncy, w = train_projection(src, dst, split, n)
    want: Counter = Counter()
    for u, v, s in zip(src.tolist(), dst.tolist(), split.tolist()):
        if s == 0 and u != v:
            want[(u, v)] += 1
            want[(v, u)] += 1
    got = {(u, int(adjncy[j])): int(w[j]) for u in range(n) for j in range(xadj[u], xadj[u + 1])}
    assert got == dict(want)
    assert xadj[-1] == len(adjncy) == len(w)


def test_super_nodes_deal_whole_clusters():
    pytest.importorskip("pymetis")
    rng = np.random.default_rng(3)
    src, dst, split, n = _events(rng, n=200, e=3000)
    clusters, parts = 20, 3
    a, cluster = super_nodes(src, dst, split, n, parts, clusters, seed=5)
    groups = group_clusters(clusters, parts, seed=5)
    for p, g in enumerate(groups):
        assert set(np.flatnonzero(a == p).tolist()) == set(np.flatnonzero(np.isin(cluster, g)).tolist())
    assert np.array_equal(a, super_nodes(src, dst, split, n, parts, clusters, seed=5)[0])  # seeded METIS
    assert default_clusters(9227, 3) == 46 and default_clusters(100, 8) == 32 and default_clusters(10, 8) == 10
    assert default_clusters(10 ** 8, 3) == 15000


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("tma_part")
    write_graph(generate(SynthConfig(events=1500, nodes=60, edge_dim=4, seed=0)), d / "g.h5")
    return d


@pytest.mark.parametrize("method,rule", [("random", "induced"), ("random", "incident"), ("super", "induced")])
def test_part_stores_hold_the_selected_events_with_global_ids(small_graph, method, rule):
    if method == "super":
        pytest.importorskip("pymetis")
    out = small_graph / f"{method}-{rule}"
    info = partition(str(small_graph / "g.h5"), 3, method, rule, seed=1, out=str(out))
    g = load_graph(small_graph / "g.h5")
    a = np.load(out / "assignment.npy")
    assert assignment_sha256(a) == info.assignment_sha256
    rec = read_partition(out)
    assert rec.method == method and rec.rule == rule and rec.parts == 3 and rec.seed == 1
    assert json.loads((out / "partition.json").read_text())["coverage"]["parts"][0]["events"]["train"] > 0
    shas = set()
    for p in range(3):
        part = load_graph(out / rec.stores[p])
        keep = [i for i in range(g.num_events) if int(a[g.src[i]] == p) + int(a[g.dst[i]] == p) >= (2 if rule == "induced" else 1)]
        assert part.num_nodes == g.num_nodes  # global ids
        assert part.src.tolist() == g.src[keep].tolist() and part.dst.tolist() == g.dst[keep].tolist()
        assert part.t.tolist() == g.t[keep].tolist() and part.split.tolist() == g.split[keep].tolist()
        assert np.array_equal(part.edge_feat[:-1], g.edge_feat[keep]) and not part.edge_feat[-1].any()
        assert rec.coverage["parts"][p]["events"]["train"] == int((part.split == 0).sum())
        shas.add(part.attrs["sha256"])
        assert part.attrs["parent_sha256"] == g.attrs["sha256"]
    assert len(shas) == 3 and g.attrs["sha256"] not in shas  # no part's cache passes for another's


def test_cli_and_bad_input(small_graph):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "disttgl", "partition", str(small_graph / "g.h5"), *args],
                              capture_output=True, text=True, cwd=REPO)

    ok = cli("--parts", "2", "--method", "random", "--out", str(small_graph / "cli"))
    assert ok.returncode == 0, ok.stderr
    assert (small_graph / "cli" / "partition.json").exists() and "training events kept" in ok.stderr
    for bad, msg in [(["--parts", "0"], "--parts"), (["--parts", "2", "--clusters", "5"], "--clusters"),
                     (["--parts", "3", "--method", "super", "--clusters", "2"], "--clusters")]:
        args = bad if "--method" in bad else [*bad, "--method", "random"]
        proc = cli(*args, "--out", str(small_graph / "bad"))
        assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
    assert not (small_graph / "bad" / "partition.json").exists()
    with pytest.raises(DataError, match="no partition here"):
        read_partition(small_graph / "bad")


def test_wikipedia_three_random_induced_parts_keep_about_a_third_of_training_events(tmp_path):
    if not WIKI.exists():
        pytest.skip(f"the shared Wikipedia file is not on this machine ({WIKI})")
    subprocess.run([sys.executable, "-m", "disttgl", "convert", str(WIKI), "--format", "jodie", "--out",
                    str(tmp_path / "wiki.h5")], check=True, capture_output=True, cwd=REPO)
    g = load_graph(tmp_path / "wiki.h5", features=False)
    assert int((g.split == 0).sum()) == 110232  # (spec §2.4 counted 110,231)
    cov = coverage(g.src, g.dst, g.split, random_nodes(g.num_nodes, 3, seed=0), 3, "induced")
    # measured: 0.350 with seed 0; over seeds 0..29 mean 0.334, sd 0.013, range 0.311-0.354 (the
    # issue's 0.315 is one draw); the expectation for independent endpoints is 1/P
    assert cov["train_events_kept"] == pytest.approx(0.350, abs=0.001)
    assert cov["node_share_median"] == 0.0  # most users edit one page: the median user has nothing


def test_tma_refuses_bad_input_before_starting_anything(small_graph):
    def tma(*args):
        return subprocess.run([sys.executable, "-m", "disttgl", "tma", *args, "--out", str(small_graph / "run")],
                              capture_output=True, text=True, cwd=REPO)

    partition(str(small_graph / "g.h5"), 3, "random", "induced", seed=1, out=str(small_graph / "tma-bad"))
    parts = str(small_graph / "tma-bad")
    for args, msg in [([str(small_graph / "nothing")], "no partition here"),
                      ([parts, "--sync-every", "often"], "--sync-every"),
                      ([parts, "--time-limit", "0s"], "--time-limit"),
                      ([parts, "--drop-parts", "0,1,2"], "leaves no part"),
                      ([parts, "--drop-parts", "5"], "--drop-parts")]:
        proc = tma(*args)
        assert proc.returncode == 2 and msg in proc.stderr, (args, proc.stderr[-2000:])
    assert not (small_graph / "run" / "summary.json").exists()
