"""TGB data: the restricted unpickler, hist_rnd against a literal port of TGB's generator, the four
TGB parsers on hand-written files (against literal ports of TGB's functions), the negatives check,
`disttgl tgb-negatives` and the TGB folder export's round trip."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from disttgl.cli import main
from disttgl.data.graph import build_tcsr
from disttgl.data.graph_store import load_graph, write_graph
from disttgl.data.synth import SynthConfig, generate
from disttgl.errors import DataError
from disttgl.tgb.export import write_tgb_folder
from disttgl.tgb.hist_rnd import hist_rnd
from disttgl.tgb.negatives_file import load_negatives, negatives_attrs
from disttgl.tgb.pickles import load_tgb_negatives_pickle, save_tgb_negatives_pickle
from disttgl.tgb.reader import convert_tgb, tgb_split

# ------------------------------------------------------------ literal ports of TGB 2.3.0 (reference)


def tgb_hist_rnd_port(train_src, train_dst, splits, first_dst, last_dst, num_neg, seed=42):
    """negative_generator.py NegativeEdgeGenerator(strategy='hist_rnd'), val then test, transcribed."""
    np.random.seed(seed)
    per_node = {}
    for s, d in zip(train_src, train_dst):
        per_node.setdefault(s, []).append(d)
    hist = {s: np.array(list(set(v))) for s, v in per_node.items()}
    out = []
    for pos_src, pos_dst, pos_t in splits:
        by_t = {}
        for s, d, t in zip(pos_src, pos_dst, pos_t):
            by_t.setdefault(t, {}).setdefault(s, []).append(d)
        all_dst = np.arange(first_dst, last_dst + 1)
        max_hist = int(num_neg * 0.5)
        ev = {}
        for s, d, t in zip(pos_src, pos_dst, pos_t):
            same = np.array(by_t[t][s])
            k, neg_hist, seen = 0, np.array([]), []
            if s in hist:
                seen = hist[s]
                if len(seen) >= 1:
                    f = np.setdiff1d(seen, same)
                    k = max_hist if max_hist <= len(f) else len(f)
                    neg_hist = np.random.choice(f, k, replace=False)
            invalid = np.concatenate((np.array(same), seen)) if len(seen) >= 1 else np.array(same)
            rnd = np.setdiff1d(all_dst, invalid)
            need = num_neg - k
            neg_rnd = rnd if need > len(rnd) else np.random.choice(rnd, need, replace=False)
            ev[(s, d, t)] = np.concatenate((neg_hist, neg_rnd))
        out.append(ev)
    return out


def tgb_wiki_port(rows):
    """load_edgelist_wiki on parsed rows (header dropped): u, i shifted, ts, features."""
    src = np.array([int(r[0]) for r in rows])
    dst = np.array([int(r[1]) for r in rows]) + src.max() + 1
    ts = np.array([float(r[2]) for r in rows]).astype(int)
    return src, dst, ts, np.array([[float(x) for x in r[4:]] for r in rows])


def tgb_sc_port(rows):
    """csv_to_pd_data_sc: first-appearance ids, w (0 -> 1), log2."""
    ids, u, i, ts, w = {}, [], [], [], []
    for r in rows:
        for x in (r[1], r[2]):
            if x not in ids:
                ids[x] = len(ids)
        u.append(ids[r[1]]), i.append(ids[r[2]]), ts.append(int(r[0]))
        v = float(r[3])
        w.append(1 if v == 0 else v)
    return np.array(u), np.array(i), np.array(ts), np.log2(np.array(w))[:, None], ids


def tgb_rc_port(rows):
    """csv_to_pd_data_rc: features [int(row[3]) / 5000] + w = float(int(row[4]))."""
    ids, u, i, ts, f = {}, [], [], [], []
    for r in rows:
        for x in (r[1], r[2]):
            if x not in ids:
                ids[x] = len(ids)
        u.append(ids[r[1]]), i.append(ids[r[2]]), ts.append(int(r[0]))
        f.append([int(r[3]) / 5000, float(int(r[4]))])
    return np.array(u), np.array(i), np.array(ts), np.array(f), ids


def tgb_str2int_port(in_str):
    out = []
    for element in in_str:
        if element.isnumeric():
            out.append(element)
        elif element == "!":
            out.append(-1)
        else:
            out.append(ord(element.upper()) - 44 + 9)
    return np.array(out, dtype=np.float32)


def tgb_flight_port(rows, node_rows):
    """csv_to_pd_data (tgbl-flight) and process_node_feat, transcribed (unix-time rows)."""
    ids, u, i, ts, feat = {}, [], [], [], []
    for r in rows:
        r = list(r)
        if len(r[3]) == 0:
            r[3] = "!!!!!!!!"
        while len(r[3]) < 8:
            r[3] += "!"
        if len(r[4]) == 0:
            r[4] = "!!!!!!!!"
        while len(r[4]) < 8:
            r[4] += "!"
        if len(r[4]) > 8:
            r[4] = "!!!!!!!!"
        for x in (r[1], r[2]):
            if x not in ids:
                ids[x] = len(ids)
        u.append(ids[r[1]]), i.append(ids[r[2]]), ts.append(float(int(r[0])))
        feat.append(tgb_str2int_port(r[3] + r[4]))
    types, conts = {}, {}
    for r in node_rows:
        if r[0] in ids:
            types.setdefault(r[1], len(types))
            conts.setdefault(r[2], len(conts))
    node_feat = np.zeros((len(ids), len(types) + len(conts) + 9))
    for r in node_rows:
        if r[0] not in ids:
            continue
        tv, cv = np.zeros(len(types)), np.zeros(len(conts))
        tv[types[r[1]]] = 1
        cv[conts[r[2]]] = 1
        region = r[3]
        while len(region) < 7:
            region += "!"
        node_feat[ids[r[0]]] = np.concatenate((tv, cv, tgb_str2int_port(region), [float(r[4]), float(r[5])]))
    return np.array(u), np.array(i), np.array(ts).astype(int), np.array(feat), ids, node_feat


def tgb_split_port(ts):
    val_time, test_time = list(np.quantile(ts, [0.70, 0.85]))
    return ts <= val_time, np.logical_and(ts <= test_time, ts > val_time), ts > test_time


# ------------------------------------------------------------------------------------------ helpers


def write_rows(path: Path, header: list[str], rows: list[list]) -> list[list[str]]:
    rows = [[str(x) for x in r] for r in rows]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return rows


def tgb_keys_pickle(path: Path, src, dst, t, mask, seed=0):
    rng = np.random.default_rng(seed)
    d = {(np.int64(s), np.int64(v), np.int64(x)): rng.integers(0, 5, 3)
         for s, v, x in zip(src[mask], dst[mask], t[mask])}
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return d


def wiki_rows(n=60, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 40, n))
    return [[int(rng.integers(0, 7)), int(rng.integers(0, 5)), int(x), 0, *np.round(rng.standard_normal(3), 4)]
            for x in t]


# ------------------------------------------------------------------------------------------ pickles


def test_restricted_unpickler_reads_tgb_pickles_and_normalises(tmp_path):
    p = tmp_path / "ns.pkl"
    d = {(np.int64(1), np.int64(2), np.int64(3)): np.array([4, 5]),
         (np.int64(1), np.int64(9), np.int64(3)): np.concatenate((np.array([]), np.array([7, 8])))}  # float64
    with open(p, "wb") as fh:
        pickle.dump(d, fh, protocol=pickle.HIGHEST_PROTOCOL)
    got = load_tgb_negatives_pickle(p)
    assert set(got) == {(1, 2, 3), (1, 9, 3)}
    assert got[(1, 9, 3)].dtype == np.int64 and got[(1, 9, 3)].tolist() == [7, 8]
    q = tmp_path / "again.pkl"
    save_tgb_negatives_pickle(q, got)
    with open(q, "rb") as fh:
        raw = pickle.load(fh)
    assert all(isinstance(x, np.int64) for k in raw for x in k)
    assert {k: v.tolist() for k, v in load_tgb_negatives_pickle(q).items()} == {k: v.tolist() for k, v in got.items()}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({(1, 2, 3): _Evil()}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(DataError, match=r"evil\.pkl.*refused to unpickle the global (posix|os)\.system"):
        load_tgb_negatives_pickle(p)
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="junk.pkl: not a readable pickle"):
        load_tgb_negatives_pickle(tmp_path / "junk.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="expected a dict"):
        load_tgb_negatives_pickle(tmp_path / "list.pkl")


# ------------------------------------------------------------------------------------------ hist_rnd


@pytest.mark.parametrize("bipartite", [True, False])
@pytest.mark.parametrize("num_neg", [1, 5, 20, 10_000])
def test_hist_rnd_equals_tgb_generator(bipartite, num_neg):
    rng = np.random.default_rng(num_neg + bipartite)
    e = 500
    src = rng.integers(0, 30, e)
    dst = rng.integers(30, 60, e) if bipartite else rng.integers(0, 60, e)
    t = np.sort(rng.integers(0, 120, e))  # ties: repeated (s, t) and (s, d, t) keys
    split = tgb_split(t)
    ours = hist_rnd(src, dst, t.astype(np.float64), split, num_neg=num_neg)
    tr = split == 0
    ref = tgb_hist_rnd_port(src[tr], dst[tr], [(src[split == k], dst[split == k], t[split == k]) for k in (1, 2)],
                            int(dst.min()), int(dst.max()), num_neg)
    for name, k, ev in (("val", 1, ref[0]), ("test", 2, ref[1])):
        m = split == k
        assert ours[name].rows == m.sum()
        for r, key in enumerate(zip(src[m], dst[m], t[m])):
            np.testing.assert_array_equal(ours[name].row(r), ev[key])


def test_hist_rnd_default_takes_every_destination():
    src = np.array([0, 0, 1, 0, 1, 0])
    dst = np.array([2, 3, 4, 5, 2, 4])
    t = np.arange(6.0)
    split = np.array([0, 0, 0, 0, 1, 2])
    neg = hist_rnd(src, dst, t, split)
    # val: source 1 at t=4 -> 2; history {4}; every other destination of [2, 5]
    assert sorted(neg["val"].row(0).tolist()) == [3, 4, 5]
    # test: source 0 at t=5 -> 4; history {2, 3, 5}: at most q/2 = 2 of it, and no other destination is left
    row = neg["test"].row(0).tolist()
    assert len(row) == 2 and set(row) <= {2, 3, 5}


# ------------------------------------------------------------------------------------------ readers


def _store_vs_port(graph, src, dst, ts, feat):
    order = np.argsort(ts, kind="stable")
    np.testing.assert_array_equal(graph.src, src[order])
    np.testing.assert_array_equal(graph.dst, dst[order])
    np.testing.assert_array_equal(graph.t, ts[order].astype(float))
    np.testing.assert_allclose(graph.edge_feat[:-1], feat[order], rtol=1e-6)
    tr, va, te = tgb_split_port(ts)
    np.testing.assert_array_equal(graph.split, (va.astype(int) + 2 * te)[order])
    assert not (tr & (va | te)).any()


def test_wiki_reader_matches_tgb(tmp_path):
    folder = tmp_path / "tgbl_wiki"
    folder.mkdir()
    rows = write_rows(folder / "tgbl-wiki_edgelist_v2.csv", ["user_id", "item_id", "timestamp", "state_label", "f"],
                      wiki_rows())
    graph = convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-wiki")
    src, dst, ts, feat = tgb_wiki_port(rows)
    graph = load_graph(tmp_path / "g.h5")
    _store_vs_port(graph, src, dst, ts, feat)
    assert graph.bipartite and graph.attrs["tgb_name"] == "tgbl-wiki" and graph.attrs["tgb_version"] == 2
    assert graph.attrs["split_rule"] == "tgb"
    np.testing.assert_array_equal(graph.original_id, np.arange(graph.num_nodes))
    assert (graph.side[: src.max() + 1] == 0).all() and (graph.side[src.max() + 1:] == 1).all()
    assert not (tmp_path / "tgb_negatives.h5").exists()  # no pickles in the folder


@pytest.mark.parametrize("name", ["tgbl-review", "tgbl-coin"])
def test_review_coin_reader_matches_tgb(tmp_path, name):
    rows = [[5, "a", "b", 2.0], [3, "c", "a", 0.0], [9, "b", "d", 8.0], [9, "d", "c", 1.0], [12, "e", "a", 4.0],
            [12, "a", "e", 0.5], [15, "c", "b", 16.0]]
    rows = write_rows(tmp_path / f"{name}_edgelist_v2.csv", ["ts", "src", "dst", "weight"], rows)
    convert_tgb(tmp_path, tmp_path / "g.h5", name=name)
    graph = load_graph(tmp_path / "g.h5")
    src, dst, ts, feat, ids = tgb_sc_port(rows)
    _store_vs_port(graph, src, dst, ts, feat)
    assert ids == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    assert graph.original_id.tolist() == ["a", "b", "c", "d", "e"]
    assert not graph.bipartite and graph.edge_dim == 1 and not graph.attrs["sorted_on_input"]
    assert graph.edge_feat[0, 0] == 0.0  # the t=3 row sorts first: weight 0 -> 1 -> log2 = 0


def test_comment_reader_matches_tgb(tmp_path):
    rows = [[1, "u1", "u2", 100, 3], [2, "u2", "u3", 5000, -1], [2, "u3", "u1", 0, 7], [4, "u4", "u2", 250, 2],
            [6, "u1", "u4", 10, 0], [7, "u2", "u1", 33, 9], [8, "u5", "u3", 1, 1]]
    rows = write_rows(tmp_path / "tgbl-comment_edgelist.csv", ["ts", "src", "dst", "num_words", "score"], rows)
    convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-comment")
    graph = load_graph(tmp_path / "g.h5")
    src, dst, ts, feat, ids = tgb_rc_port(rows)
    _store_vs_port(graph, src, dst, ts, feat)
    assert graph.attrs["tgb_version"] == 1 and graph.edge_dim == 2


FLIGHT_NODES = ["airport_code", "type", "continent", "iso_region", "longitude", "latitude"]


def test_flight_reader_matches_tgb(tmp_path):
    rows = [[1546300800, "JFK", "LAX", "AAL1", "B738"], [1546300800, "LAX", "SFO", "", "A320"],
            [1546387200, "SFO", "JFK", "UAL123X", ""], [1546387200, "CDG", "JFK", "AFR7", "B77WLONGER"],
            [1546473600, "JFK", "CDG", "DAL99", "a21n"], [1546560000, "NRT", "LAX", "JAL5-1", "B789"],
            [1546646400, "LAX", "NRT", "AAL1", "B738"]]
    nodes = [["JFK", "large_airport", "NA", "US-NY", "-73.77", "40.64"],
             ["ZZZ", "heliport", "AN", "AQ-X", "0", "0"],  # not in the edge list: ignored, numbers no type
             ["LAX", "large_airport", "NA", "US-CA", "-118.4", "33.94"],
             ["CDG", "medium_airport", "EU", "FR-IDF", "2.55", "49.01"],
             ["NRT", "large_airport", "AS", "JP-12", "140.39", "35.76"],
             ["JFK", "small_airport", "NA", "US", "-73.0", "40.0"]]  # a later row replaces the first; SFO: none
    folder = tmp_path / "tgbl_flight"
    folder.mkdir()
    rows = write_rows(folder / "tgbl-flight_edgelist_v2.csv", ["timestamp", "src", "dst", "callsign", "typecode"],
                      rows)
    write_rows(folder / "airport_node_feat_v2.csv", FLIGHT_NODES, nodes)
    graph = convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-flight")
    graph = load_graph(tmp_path / "g.h5")
    src, dst, ts, feat, ids, node_feat = tgb_flight_port(rows, nodes)
    _store_vs_port(graph, src, dst, ts, feat)
    assert graph.edge_dim == 16 and graph.original_id.tolist() == list(ids)
    np.testing.assert_allclose(graph.node_feat, node_feat, rtol=1e-6)
    assert graph.node_feat[ids["SFO"]].tolist() == [0.0] * graph.node_dim
    assert graph.attrs["tgb_name"] == "tgbl-flight" and graph.attrs["tgb_version"] == 2


def test_flight_reader_errors(tmp_path):
    header = ["timestamp", "src", "dst", "callsign", "typecode"]
    write_rows(tmp_path / "tgbl-flight_edgelist_v2.csv", header, [[1, "A", "B", "X", "Y"]])
    with pytest.raises(DataError, match=r"no airport_node_feat_v2\.csv beside tgbl-flight_edgelist_v2\.csv"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-flight")
    write_rows(tmp_path / "airport_node_feat_v2.csv", FLIGHT_NODES, [["A", "t", "c", "R", "1", "2"]])
    write_rows(tmp_path / "tgbl-flight_edgelist_v2.csv", header, [[1, "A", "B", "X", "Y"], [2, "B", "A", "TOOLONG99", "Y"]])
    with pytest.raises(DataError, match=r"line 3.*callsign 'TOOLONG99' is longer than 8"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-flight")
    write_rows(tmp_path / "tgbl-flight_edgelist_v2.csv", header, [[1, "A", "B", "X", "Y"], ["2019-01-02", "B", "A", "Z", "Y"]])
    with pytest.raises(DataError, match=r"line 3.*timestamp '2019-01-02' is not a unix time"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-flight")
    write_rows(tmp_path / "tgbl-flight_edgelist_v2.csv", header, [[1, "A", "B", "X", "Y"]])
    write_rows(tmp_path / "airport_node_feat_v2.csv", FLIGHT_NODES, [["A", "t", "c", "R", "east", "2"]])
    with pytest.raises(DataError, match=r"airport_node_feat_v2\.csv.*line 2.*not numbers"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-flight")
    assert not (tmp_path / "g.h5").exists()


def test_flight_dates_are_local_midnights_as_tgb(tmp_path):
    import datetime
    write_rows(tmp_path / "tgbl-flight_edgelist_v2.csv", ["day", "src", "dst", "callsign", "typecode"],
               [["2019-01-01", "A", "B", "X", "Y"], ["2019-01-03", "B", "A", "X", "Y"]])
    write_rows(tmp_path / "airport_node_feat_v2.csv", FLIGHT_NODES, [["A", "t", "c", "R", "1", "2"]])
    graph = convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-flight")
    expect = [float(datetime.datetime.strptime(d, "%Y-%m-%d").timestamp()) for d in ("2019-01-01", "2019-01-03")]
    assert graph.t.tolist() == expect


def test_tgb_split_equals_tgb_formula_and_chronological():
    rng = np.random.default_rng(3)
    for _ in range(200):
        t = np.sort(rng.integers(0, rng.integers(2, 50), rng.integers(1, 300)))
        tr, va, te = tgb_split_port(t)
        np.testing.assert_array_equal(tgb_split(t), va.astype(int) + 2 * te)


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="unknown TGB dataset"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-nope")
    with pytest.raises(DataError, match=r"no tgbl-wiki_edgelist_v2\.csv here or in tgbl_wiki/"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-wiki")
    write_rows(tmp_path / "tgbl-coin_edgelist_v2.csv", ["ts", "src", "dst", "weight"],
               [[1, "a", "b", 1], ["x", "b", "a", 2]])
    with pytest.raises(DataError, match=r"tgbl-coin_edgelist_v2\.csv.*line 3.*'x' is not an integer"):
        convert_tgb(tmp_path, tmp_path / "g.h5", name="tgbl-coin")
    assert not (tmp_path / "g.h5").exists()


# ------------------------------------------------------------------------------------------ negatives


def _wiki_folder_with_pickles(tmp_path):
    folder = tmp_path / "tgbl_wiki"
    folder.mkdir()
    rows = write_rows(folder / "tgbl-wiki_edgelist_v2.csv", ["u", "i", "ts", "label"],
                      [r[:4] for r in wiki_rows(80, seed=5)])
    src, dst, ts, _ = tgb_wiki_port([r + ["0"] for r in rows])
    tr, va, te = tgb_split_port(ts)
    val = tgb_keys_pickle(folder / "tgbl-wiki_val_ns_v2.pkl", src, dst, ts, va, seed=1)
    test = tgb_keys_pickle(folder / "tgbl-wiki_test_ns_v2.pkl", src, dst, ts, te, seed=2)
    return folder, src, dst, ts, va, te, val, test


def test_pickles_become_csr_in_event_order(tmp_path):
    folder, src, dst, ts, va, te, val, test = _wiki_folder_with_pickles(tmp_path)
    assert main(["convert", str(tmp_path), "--format", "tgb", "--tgb-name", "tgbl-wiki",
                 "--out", str(tmp_path / "out" / "g.h5")]) == 0
    g = tmp_path / "out" / "g.h5"
    graph = load_graph(g)
    neg_path = tmp_path / "out" / "tgb_negatives.h5"
    attrs = negatives_attrs(neg_path)
    assert attrs["source"] == "tgb" and attrs["tgb_name"] == "tgbl-wiki" and len(attrs["val_pickle_sha256"]) == 64
    for name, mask, d in (("val", va, val), ("test", te, test)):
        neg = load_negatives(neg_path, name, graph_path=g)
        m = graph.split == (1 if name == "val" else 2)
        for r, key in enumerate(zip(graph.src[m], graph.dst[m], graph.t[m].astype(int))):
            np.testing.assert_array_equal(neg.row(r), d[key])


def test_missing_or_extra_pickle_key_is_named(tmp_path, capsys):
    folder, src, dst, ts, va, te, val, test = _wiki_folder_with_pickles(tmp_path)
    first = next(iter(val))
    broken = {k: v for k, v in val.items() if k != first}
    with open(folder / "tgbl-wiki_val_ns_v2.pkl", "wb") as fh:
        pickle.dump(broken, fh, protocol=pickle.HIGHEST_PROTOCOL)
    out = tmp_path / "g.h5"
    assert main(["convert", str(tmp_path), "--format", "tgb", "--tgb-name", "tgbl-wiki", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tgbl-wiki_val_ns_v2.pkl" in err and f"(src {first[0]}, dst {first[1]}, t {first[2]}" in err
    assert not out.exists() and not (tmp_path / "tgb_negatives.h5").exists()
    broken = dict(val)
    broken[(np.int64(999), np.int64(1), np.int64(1))] = np.array([1])
    with open(folder / "tgbl-wiki_val_ns_v2.pkl", "wb") as fh:
        pickle.dump(broken, fh, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(DataError, match=r"holds \d+ keys.*key \(999, 1, 1\) is no val positive"):
        convert_tgb(tmp_path, out, name="tgbl-wiki")
    os.remove(folder / "tgbl-wiki_test_ns_v2.pkl")
    with pytest.raises(DataError, match="--negatives-out given but tgbl-wiki_test_ns_v2.pkl is not there"):
        convert_tgb(tmp_path, out, name="tgbl-wiki", negatives_out=tmp_path / "n.h5")


def test_convert_cli_refuses_misplaced_options(tmp_path, capsys):
    assert main(["convert", str(tmp_path), "--format", "tgb", "--out", str(tmp_path / "g.h5")]) == 2
    assert "needs --tgb-name" in capsys.readouterr().err
    f = tmp_path / "x.csv"
    f.write_text("src,dst,t\n1,2,3\n")
    assert main(["convert", str(f), "--format", "csv", "--tgb-name", "tgbl-wiki", "--out", str(tmp_path / "g.h5")]) == 2
    assert "--tgb-name apply to --format tgb only" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), "--format", "tgb", "--tgb-name", "tgbl-wiki", "--src-col", "1",
                 "--out", str(tmp_path / "g.h5")]) == 2


# ------------------------------------------------------------------------------ command and export


def _integer_time_synth(path: Path, events=1500, nodes=60, bipartite=False) -> Path:
    g = generate(SynthConfig(events=events, nodes=nodes, edge_dim=4, seed=7, bipartite=bipartite))
    g.t = np.floor(g.t / 50.0)  # whole numbers with ties, still sorted
    g.split = tgb_split(g.t)
    g.tcsr = build_tcsr(g.src, g.dst, g.t, g.num_nodes)
    g.attrs["split_rule"] = "tgb"
    write_graph(g, path)
    return path


def test_tgb_negatives_command(tmp_path, capsys):
    g = _integer_time_synth(tmp_path / "g.h5")
    graph = load_graph(g, features=False)
    assert main(["tgb-negatives", str(g), "--out", str(tmp_path / "neg.h5"), "--num-neg", "7"]) == 0
    attrs = negatives_attrs(tmp_path / "neg.h5")
    assert (attrs["source"], attrs["num_neg"], attrs["seed"]) == ("hist_rnd", 7, 42)
    want = hist_rnd(graph.src, graph.dst, graph.t, graph.split, num_neg=7)
    for s in ("val", "test"):
        got = load_negatives(tmp_path / "neg.h5", s, graph_path=g)
        np.testing.assert_array_equal(got.ptr, want[s].ptr)
        np.testing.assert_array_equal(got.dst, want[s].dst)
    assert main(["tgb-negatives", str(g), "--out", str(tmp_path / "all.h5")]) == 0
    assert negatives_attrs(tmp_path / "all.h5")["num_neg"] == int(graph.dst.max() - graph.dst.min() + 1)
    assert main(["tgb-negatives", str(g), "--out", str(tmp_path / "bad.h5"), "--num-neg", "0"]) == 2
    assert "--num-neg must be >= 1" in capsys.readouterr().err and not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("bipartite", [False, True])
def test_export_round_trip(tmp_path, bipartite):
    g = _integer_time_synth(tmp_path / "g.h5", bipartite=bipartite)
    folder = write_tgb_folder(g, tmp_path / "tgb", num_neg=9)
    assert sorted(p.name for p in folder.iterdir()) == [
        "tgbl-wiki_edgelist_v2.csv", "tgbl-wiki_test_ns_v2.pkl", "tgbl-wiki_val_ns_v2.pkl"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    back = tmp_path / "back" / "g.h5"
    assert main(["convert", str(folder), "--format", "tgb", "--tgb-name", "tgbl-wiki", "--out", str(back)]) == 0
    a, b = load_graph(g), load_graph(back)
    for k in ("src", "dst", "t", "split", "edge_feat"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert a.bipartite == b.bipartite == bipartite
    want = hist_rnd(a.src, a.dst, a.t, a.split, num_neg=9)
    for s in ("val", "test"):
        got = load_negatives(tmp_path / "back" / "tgb_negatives.h5", s, graph_path=back)
        np.testing.assert_array_equal(got.ptr, want[s].ptr)
        np.testing.assert_array_equal(got.dst, want[s].dst)
    with pytest.raises(DataError, match="exists and is not empty"):
        write_tgb_folder(g, folder)


def test_export_command_writes_the_same_folder(tmp_path, capsys):
    """`disttgl export --format tgb` is write_tgb_folder behind the CLI: same files, same bytes; a
    store TGB cannot hold (fractional times) is exit 2 naming it, with no folder left behind."""
    g = _integer_time_synth(tmp_path / "g.h5")
    assert main(["export", str(g), "--format", "tgb", "--out", str(tmp_path / "cli"), "--num-neg", "9"]) == 0
    direct = write_tgb_folder(g, tmp_path / "direct", num_neg=9)
    names = sorted(p.name for p in direct.iterdir())
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == names
    for name in names:
        assert (tmp_path / "cli" / name).read_bytes() == (direct / name).read_bytes(), name
    frac = tmp_path / "frac.h5"
    write_graph(generate(SynthConfig(events=600, nodes=30, edge_dim=2, seed=1)), frac)
    assert main(["export", str(frac), "--format", "tgb", "--out", str(tmp_path / "no")]) == 2
    assert str(frac) in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_export_refuses_fractional_times(tmp_path):
    g = tmp_path / "g.h5"
    write_graph(generate(SynthConfig(events=300, nodes=20, edge_dim=2)), g)
    with pytest.raises(DataError, match="TGB casts timestamps to integers"):
        write_tgb_folder(g, tmp_path / "tgb")
    assert not (tmp_path / "tgb").exists()


# ------------------------------------------------------------------------- fetch (zip) and registry


@pytest.fixture
def http_root(tmp_path):
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()
    httpd.server_close()


def _tgb_registry(base: str, members: tuple[str, ...]):
    from disttgl.data.registry import Dataset, RemoteFile

    f = RemoteFile("tgbl-wiki-v2.zip", f"{base}/tgbl-wiki-v2.zip", None, unzip=members)
    return {"tgbl-wiki": Dataset("tgbl-wiki", (f,), "tgb", True, False, "tgb", "test", aliases=("tgbl_wiki",),
                                 tgb_name="tgbl-wiki")}


def test_fetch_unzips_a_tgb_archive_and_convert_reads_it(tmp_path, http_root, caplog):
    import zipfile

    from disttgl.data.fetch import fetch
    from disttgl.data.registry import convert_arguments, raw_paths

    root, base = http_root
    g = _integer_time_synth(tmp_path / "g.h5", bipartite=True)
    folder = write_tgb_folder(g, tmp_path / "tgb", num_neg=5)
    members = tuple(sorted(p.name for p in folder.iterdir()))
    with zipfile.ZipFile(root / "tgbl-wiki-v2.zip", "w") as z:
        for p in folder.iterdir():
            z.write(p, f"tgbl_wiki/{p.name}")  # a folder inside the archive is flattened
    reg = _tgb_registry(base, members)
    raw = tmp_path / "raw"
    paths = fetch("tgbl_wiki", raw, registry=reg, retries=0)
    assert paths == [raw / m for m in members] == raw_paths("tgbl-wiki", raw, reg)
    assert (raw / "tgbl-wiki-v2.zip.sha256").exists()
    for m in members:
        assert (raw / m).read_bytes() == (folder / m).read_bytes()
    args = convert_arguments("tgbl-wiki", raw, reg)
    assert args == [str(raw), "--format", "tgb", "--tgb-name", "tgbl-wiki", "--bipartite", "--split", "tgb"]
    assert main(["convert", *args, "--out", str(tmp_path / "out" / "g.h5")]) == 0
    np.testing.assert_array_equal(load_graph(tmp_path / "out" / "g.h5").src, load_graph(g).src)
    assert (tmp_path / "out" / "tgb_negatives.h5").exists()
    (raw / members[0]).unlink()  # a lost member is extracted again from the present archive
    fetch("tgbl-wiki", raw, registry=reg, retries=0)
    assert (raw / members[0]).exists()


def test_fetch_refuses_a_bad_or_incomplete_archive(tmp_path, http_root):
    import zipfile

    from disttgl.data.fetch import fetch

    root, base = http_root
    (root / "tgbl-wiki-v2.zip").write_bytes(b"PK not really a zip")
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match=r"tgbl-wiki-v2\.zip: not a valid zip archive"):
        fetch("tgbl-wiki", raw, registry=_tgb_registry(base, ("a.csv",)), retries=0)
    assert not (raw / "tgbl-wiki-v2.zip").exists()
    (root / "tgbl-wiki-v2.zip").unlink()
    with zipfile.ZipFile(root / "tgbl-wiki-v2.zip", "w") as z:
        z.writestr("other.csv", "x")
    raw2 = tmp_path / "raw2"
    with pytest.raises(DataError, match=r"the archive has no a\.csv \(it holds other\.csv\)"):
        fetch("tgbl-wiki", raw2, registry=_tgb_registry(base, ("a.csv",)), retries=0)
    assert not (raw2 / "tgbl-wiki-v2.zip").exists()


def test_registry_tgb_entries():
    from disttgl.data.registry import DATASETS, convert_arguments, get_dataset

    for name, archive in [("tgbl-wiki", "tgbl-wiki-v2.zip"), ("tgbl-review", "tgbl-review-v2.zip"),
                          ("tgbl-coin", "tgbl-coin-v2.zip"), ("tgbl-comment", "tgbl-comment.zip")]:
        d = DATASETS[name]
        assert d.files[0].url == ("https://object-arbutus.alliancecan.ca/swift/v1/14c95234f6cd4a21a47deafe20cce2a7"
                                  f"/tgb/{archive}")
        assert (d.format, d.split, d.tgb_name) == ("tgb", "tgb", name)
        assert d.files[0].unzip[0].startswith(f"{name}_edgelist")
        assert get_dataset(name.replace("-", "_")) is d
    assert DATASETS["tgbl-comment"].files[0].unzip == (
        "tgbl-comment_edgelist.csv", "tgbl-comment_val_ns.pkl", "tgbl-comment_test_ns.pkl")
    assert convert_arguments("tgbl-review", "/raw") == [
        "/raw", "--format", "tgb", "--tgb-name", "tgbl-review", "--no-bipartite", "--split", "tgb"]


def test_first_appearance_ids_at_scale():
    import polars as pl

    from disttgl.tgb.reader import _first_appearance_ids

    rng = np.random.default_rng(4)
    names = np.array([f"0x{i:040x}" for i in rng.permutation(3000)])
    src, dst = names[rng.integers(0, 3000, 20_000)], names[rng.integers(0, 3000, 20_000)]
    u, i, _, _, ids = tgb_sc_port([[0, a, b, 1] for a, b in zip(src, dst)])
    s, d, original = _first_appearance_ids(pl.Series(src), pl.Series(dst))
    np.testing.assert_array_equal(s, u)
    np.testing.assert_array_equal(d, i)
    assert original.tolist() == list(ids)


SHARED_TGB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tgb"


@pytest.mark.skipif(not (SHARED_TGB / "tgbl_wiki").is_dir() and not (SHARED_TGB / "tgbl-wiki_edgelist_v2.csv").exists(),
                    reason="TGB's tgbl-wiki files are not in ../shared/datasets/tgb/")
def test_real_tgbl_wiki_pickles_match_the_split(tmp_path):
    """Every val/test positive of the real tgbl-wiki v2 finds its key (id mapping and split parity)."""
    graph = convert_tgb(SHARED_TGB, tmp_path / "g.h5", name="tgbl-wiki", negatives_out=tmp_path / "n.h5")
    assert graph.num_events == 157_474 and graph.num_nodes == 9_227
    for code, s in ((1, "val"), (2, "test")):
        neg = load_negatives(tmp_path / "n.h5", s, graph_path=tmp_path / "g.h5")
        assert neg.rows == (graph.split == code).sum()


def test_export_refuses_multi_label_stores(tmp_path):
    """TGB's edgelist has one integer label an event: a multi-label store is an error naming it."""
    g = load_graph(_integer_time_synth(tmp_path / "g.h5"))
    g.label = (np.arange(g.num_events * 3).reshape(-1, 3) % 2).astype(np.uint8)
    write_graph(g, tmp_path / "ml.h5")
    with pytest.raises(DataError, match="multi-label"):
        write_tgb_folder(tmp_path / "ml.h5", tmp_path / "tgb", num_neg=9)
    assert not (tmp_path / "tgb").exists() or not any((tmp_path / "tgb").iterdir())
