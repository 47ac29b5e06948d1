"""Conversion of every input format into the graph store, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from disttgl.cli import main
from disttgl.data.convert import ConvertOptions, convert
from disttgl.data.graph import build_tcsr
from disttgl.data.graph_store import graph_info, load_graph

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def brute_force_tcsr(src, dst, t, num_nodes, directed=False):
    rows = [[] for _ in range(num_nodes)]
    for e, (u, v, ts) in enumerate(zip(src, dst, t)):
        rows[u].append((ts, e, v))
        if not directed:
            rows[v].append((ts, e, u))
    indptr, nbr, tt, eid = [0], [], [], []
    for r in rows:
        r.sort(key=lambda x: (x[0], x[1]))
        for ts, e, v in r:
            nbr.append(v), tt.append(ts), eid.append(e)
        indptr.append(len(nbr))
    return np.array(indptr), np.array(nbr), np.array(tt), np.array(eid)


def assert_tcsr_matches(graph, directed=False):
    indptr, nbr, tt, eid = brute_force_tcsr(graph.src, graph.dst, graph.t, graph.num_nodes, directed)
    np.testing.assert_array_equal(graph.tcsr.indptr, indptr)
    np.testing.assert_array_equal(graph.tcsr.nbr, nbr)
    np.testing.assert_array_equal(graph.tcsr.eid, eid)
    np.testing.assert_array_equal(graph.tcsr.t, tt)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


# ------------------------------------------------------------------------------------- real datasets

@pytest.mark.skipif(not (SHARED / "wikipedia" / "wikipedia.csv").exists(),
                    reason="../shared/datasets/wikipedia is absent")
def test_wikipedia_jodie(tmp_path):
    out = tmp_path / "wiki.h5"
    assert run_cli("convert", SHARED / "wikipedia" / "wikipedia.csv", "--format", "jodie", "--out", out) == 0
    info = graph_info(out)
    assert info["num_events"] == 157_474
    assert info["num_nodes"] == 9_227
    assert info["bipartite"] is True
    assert info["edge_dim"] == 0 and info["node_dim"] == 0
    g = load_graph(out)
    # users 0..8226 then pages 8227..9226, as in the file
    assert g.src.max() < 8227 <= g.dst.min()
    assert (g.side[:8227] == 0).all() and (g.side[8227:] == 1).all()
    # chronological 70/15/15 by time
    s = info["splits"]
    assert abs(s["train"] / 157_474 - 0.70) < 0.005 and abs(s["test"] / 157_474 - 0.15) < 0.005
    assert g.t[g.split == 0].max() < g.t[g.split == 1].min()
    assert g.t[g.split == 1].max() < g.t[g.split == 2].min()
    assert g.label is not None and int(g.label.sum()) == 217
    assert_tcsr_matches(g)


@pytest.mark.skipif(not (SHARED / "collegemsg" / "CollegeMsg.txt").exists(),
                    reason="../shared/datasets/collegemsg is absent")
def test_collegemsg_snap(tmp_path):
    out = tmp_path / "cm.h5"
    assert run_cli("convert", SHARED / "collegemsg" / "CollegeMsg.txt", "--format", "snap", "--out", out) == 0
    g = load_graph(out)
    assert g.num_events == 59_835 and g.num_nodes == 1_899
    assert not g.bipartite
    # ids 1..1899 become 0..1898, the mapping keeps the original ids
    np.testing.assert_array_equal(g.original_id, np.arange(1, 1900))
    assert_tcsr_matches(g)
    out_dir = tmp_path / "cm_directed.h5"
    convert([SHARED / "collegemsg" / "CollegeMsg.txt"], out_dir, ConvertOptions(fmt="snap", directed=True))
    assert_tcsr_matches(load_graph(out_dir), directed=True)


# ------------------------------------------------------------------------------------- each format

def test_jodie_ragged_header_with_features(tmp_path):
    f = tmp_path / "tiny.csv"
    f.write_text("user_id,item_id,timestamp,state_label,comma_separated_list_of_features\n"
                 "0,0,1.0,0,0.5,1.5\n"
                 "1,0,2.0,1,2.5,3.5\n"
                 "0,1,3.0,0,4.5,5.5\n")
    g = convert([f], tmp_path / "g.h5", ConvertOptions(fmt="jodie"))
    # users 0,1 -> 0,1; items 0,1 -> 2,3 (separate id spaces, items after users)
    np.testing.assert_array_equal(g.src, [0, 1, 0])
    np.testing.assert_array_equal(g.dst, [2, 2, 3])
    g = load_graph(tmp_path / "g.h5")
    assert g.edge_feat.shape == (4, 2)
    np.testing.assert_array_equal(g.edge_feat[-1], [0, 0])
    np.testing.assert_allclose(g.edge_feat[1], [2.5, 3.5])
    np.testing.assert_array_equal(g.label, [0, 1, 0])
    np.testing.assert_array_equal(g.original_id, [0, 1, 0, 1])
    np.testing.assert_array_equal(g.side, [0, 0, 1, 1])


def test_snap_separators_comments_and_extra_columns(tmp_path):
    rows = [(10, 20, 5.0, 0.1), (20, 30, 6.0, 0.2), (10, 30, 7.0, 0.3)]
    for name, sep in (("space", " "), ("tab", "\t"), ("comma", ","), ("mixed", " \t  ")):
        f = tmp_path / f"{name}.txt"
        f.write_text("# a comment\n" + "".join(f"{a}{sep}{b}{sep}{c}{sep}{d}\n" for a, b, c, d in rows))
        g = convert([f], tmp_path / f"{name}.h5", ConvertOptions(fmt="snap"))
        np.testing.assert_array_equal(g.src, [0, 1, 0])
        np.testing.assert_array_equal(g.dst, [1, 2, 2])
        np.testing.assert_allclose(g.edge_feat[:3, 0], [0.1, 0.2, 0.3], rtol=1e-6)
        np.testing.assert_array_equal(g.original_id, [10, 20, 30])


def test_unsorted_input_sorted_stably_and_reported(tmp_path):
    f = tmp_path / "unsorted.txt"
    f.write_text("1 2 30 0.3\n2 3 10 0.1\n3 4 20 0.2\n4 5 10 0.15\n")
    convert([f], tmp_path / "g.h5", ConvertOptions(fmt="snap"))
    g = load_graph(tmp_path / "g.h5")
    np.testing.assert_array_equal(g.t, [10, 10, 20, 30])
    # stable: the two t=10 events keep their input order, features travel with their events
    np.testing.assert_allclose(g.edge_feat[:4, 0], [0.1, 0.15, 0.2, 0.3], rtol=1e-6)
    assert graph_info(tmp_path / "g.h5")["sorted_on_input"] is False
    assert_tcsr_matches(g)


def test_tgl_layout_with_ext_roll_and_features(tmp_path):
    d = tmp_path / "WIKI"
    d.mkdir()
    (d / "edges.csv").write_text(",src,dst,time,int_roll,ext_roll\n"
                                 "0,0,3,1.0,0,0\n1,1,3,2.0,0,0\n2,0,4,3.0,0,1\n3,2,4,4.0,0,2\n")
    torch.save(torch.arange(8, dtype=torch.float32).reshape(4, 2), d / "edge_features.pt")
    torch.save(torch.ones(5, 3), d / "node_features.pt")
    convert([d / "edges.csv", d / "edge_features.pt", d / "node_features.pt"], tmp_path / "g.h5",
            ConvertOptions(fmt="tgl", bipartite=True))
    g = load_graph(tmp_path / "g.h5")
    np.testing.assert_array_equal(g.split, [0, 0, 1, 2])
    assert g.attrs["split_rule"] == "ext_roll"
    assert g.edge_feat.shape == (5, 2) and g.node_feat.shape == (5, 3)
    np.testing.assert_array_equal(g.side, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(g.edge_feat[2], [4, 5])


def test_tgn_layout(tmp_path):
    (tmp_path / "ml_x.csv").write_text(",u,i,ts,label,idx\n0,1,3,1.0,0,1\n1,2,3,2.0,0,2\n2,1,4,3.0,1,3\n")
    np.save(tmp_path / "ml_x.npy", np.arange(8, dtype=np.float32).reshape(4, 2))
    np.save(tmp_path / "ml_x_node.npy", np.arange(10, dtype=np.float32).reshape(5, 2))
    convert([tmp_path / "ml_x.csv", tmp_path / "ml_x.npy", tmp_path / "ml_x_node.npy"], tmp_path / "g.h5",
            ConvertOptions(fmt="tgn", bipartite=True))
    g = load_graph(tmp_path / "g.h5")
    np.testing.assert_array_equal(g.original_id, [1, 2, 3, 4])  # 1-based ids compacted
    np.testing.assert_allclose(g.edge_feat[:3], [[2, 3], [4, 5], [6, 7]])  # row idx, row 0 padding
    np.testing.assert_allclose(g.node_feat, [[2, 3], [4, 5], [6, 7], [8, 9]])
    np.testing.assert_array_equal(g.label, [0, 0, 1])


def test_csv_named_columns_string_ids(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("when,who,what,amount\n1.5,alice,book,3\n2.5,bob,book,4\n3.5,alice,pen,5\n")
    assert run_cli("convert", f, "--format", "csv", "--out", tmp_path / "g.h5", "--src-col", "who",
                   "--dst-col", "what", "--time-col", "when", "--feature-cols", "amount", "--bipartite") == 0
    g = load_graph(tmp_path / "g.h5")
    np.testing.assert_array_equal(g.src, [0, 1, 0])
    np.testing.assert_array_equal(g.dst, [2, 2, 3])
    assert list(g.original_id) == ["alice", "bob", "book", "pen"]
    np.testing.assert_allclose(g.edge_feat[:3, 0], [3, 4, 5])


def test_info_json_keys(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text("1 2 1\n2 3 2\n3 1 3\n")
    run_cli("convert", f, "--format", "snap", "--out", tmp_path / "g.h5")
    capsys.readouterr()
    assert run_cli("info", tmp_path / "g.h5", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("num_events", "num_nodes", "edge_dim", "node_dim", "bipartite", "splits", "t_min", "t_max"):
        assert key in info
    assert set(info["splits"]) == {"train", "val", "test"}
    assert info["t_min"] == 1 and info["t_max"] == 3


def test_tcsr_vectorised_matches_brute_force_random():
    rng = np.random.default_rng(0)
    for directed in (False, True):
        src = rng.integers(0, 30, 500)
        dst = rng.integers(0, 30, 500)
        t = np.sort(rng.integers(0, 50, 500)).astype(float)  # many ties
        tc = build_tcsr(src, dst, t, 30, directed=directed)
        ref = brute_force_tcsr(src, dst, t, 30, directed)
        for got, want in zip((tc.indptr, tc.nbr, tc.t, tc.eid), ref):
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------- bad input

BAD_SNAP = {
    "empty": ("", "file is empty", None),
    "wrong_columns": ("1 2 3\n4 5\n", "expected 3 columns, found 2", 2),
    "non_numeric": ("1 2 3\n4 x 6\n", "'x' is not an integer", 2),
    "nan_time": ("1 2 3\n4 5 nan\n", "times must be finite", 2),
    "inf_time": ("1 2 3\n4 5 6\n6 7 inf\n", "times must be finite", 3),
    "negative_id": ("1 2 3\n-4 5 6\n", "negative node id -4", 2),
}


@pytest.mark.parametrize("case", sorted(BAD_SNAP))
def test_bad_snap_input(tmp_path, capsys, case):
    text, message, line = BAD_SNAP[case]
    f = tmp_path / f"{case}.txt"
    f.write_text(text)
    out = tmp_path / "out" / "g.h5"
    assert run_cli("convert", f, "--format", "snap", "--out", out) != 0
    err = capsys.readouterr().err
    assert str(f) in err and message in err
    if line is not None:
        assert f"line {line}" in err
    assert not out.exists() and not list((tmp_path / "out").glob("*"))


def test_bad_jodie_column_named(tmp_path, capsys):
    f = tmp_path / "j.csv"
    f.write_text("user_id,item_id,timestamp,state_label\n0,1,1.0,0\n1,2,abc,0\n")
    assert run_cli("convert", f, "--format", "jodie", "--out", tmp_path / "g.h5") != 0
    err = capsys.readouterr().err
    assert "line 3" in err and "'timestamp'" in err and "'abc'" in err
    assert not (tmp_path / "g.h5").exists()


def test_feature_rows_not_matching_events(tmp_path, capsys):
    d = tmp_path / "T"
    d.mkdir()
    (d / "edges.csv").write_text(",src,dst,time\n0,0,1,1.0\n1,1,2,2.0\n")
    torch.save(torch.zeros(3, 2), d / "edge_features.pt")
    assert run_cli("convert", d / "edges.csv", d / "edge_features.pt", "--format", "tgl",
                   "--out", tmp_path / "g.h5") != 0
    err = capsys.readouterr().err
    assert "edge_features.pt" in err and "3 rows" in err and "2 events" in err
    assert not (tmp_path / "g.h5").exists()


def test_pt_file_that_is_not_a_plain_tensor(tmp_path, capsys):
    d = tmp_path / "T"
    d.mkdir()
    (d / "edges.csv").write_text(",src,dst,time\n0,0,1,1.0\n1,1,2,2.0\n")
    torch.save({"features": torch.zeros(2, 2)}, d / "edge_features.pt")
    assert run_cli("convert", d / "edges.csv", d / "edge_features.pt", "--format", "tgl",
                   "--out", tmp_path / "g.h5") != 0
    err = capsys.readouterr().err
    assert "edge_features.pt" in err and "expected a plain tensor, found dict" in err
    # a pickled arbitrary object is refused by weights_only loading
    import pickle

    (d / "edge_features.pt").write_bytes(pickle.dumps(object()))
    assert run_cli("convert", d / "edges.csv", d / "edge_features.pt", "--format", "tgl",
                   "--out", tmp_path / "g.h5") != 0
    assert "not a plain tensor file" in capsys.readouterr().err
    assert not (tmp_path / "g.h5").exists()


def test_unknown_format(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text("1 2 3\n")
    with pytest.raises(SystemExit) as exc:
        run_cli("convert", f, "--format", "parquet", "--out", tmp_path / "g.h5")
    assert exc.value.code != 0
    assert "parquet" in capsys.readouterr().err
    from disttgl.errors import DataError
    from disttgl.data.readers import read_events

    with pytest.raises(DataError, match="unknown format 'parquet'"):
        read_events([f], "parquet")


def test_output_directory_not_writable(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text("1 2 3\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a file where the output directory should be: fails even as root
    assert run_cli("convert", f, "--format", "snap", "--out", blocker / "g.h5") != 0
    err = capsys.readouterr().err
    assert "a_file" in err and "output directory" in err


def test_missing_input_and_csv_column(tmp_path, capsys):
    assert run_cli("convert", tmp_path / "nope.txt", "--format", "snap", "--out", tmp_path / "g.h5") != 0
    assert "does not exist" in capsys.readouterr().err
    f = tmp_path / "c.csv"
    f.write_text("a,b,c\n1,2,3\n")
    assert run_cli("convert", f, "--format", "csv", "--out", tmp_path / "g.h5") != 0
    err = capsys.readouterr().err
    assert "missing column" in err and "'src'" in err


def test_bipartite_clash_reported(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text("1 2 1\n2 3 2\n")
    assert run_cli("convert", f, "--format", "snap", "--bipartite", "--out", tmp_path / "g.h5") != 0
    assert "both a source and a destination" in capsys.readouterr().err


def test_killed_write_leaves_no_valid_file(tmp_path, monkeypatch):
    """A failure while writing the store removes the partial file: nothing at the final path."""
    f = tmp_path / "e.txt"
    f.write_text("1 2 1\n2 3 2\n")
    import disttgl.data.graph_store as graph_mod

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(graph_mod, "_write_array", boom)
    with pytest.raises(RuntimeError):
        convert([f], tmp_path / "g.h5", ConvertOptions(fmt="snap"))
    assert list(tmp_path.glob("*.h5*")) == [] and list(tmp_path.glob(".g.h5*")) == []


def test_corrupt_store_reported(tmp_path, capsys):
    bad = tmp_path / "g.h5"
    bad.write_bytes(b"not hdf5")
    assert run_cli("info", bad) != 0
    assert "not a readable HDF5 graph store" in capsys.readouterr().err
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    assert run_cli("info", tmp_path / "other.h5") != 0
    assert "not a disttgl graph store" in capsys.readouterr().err


def test_error_line_counts_comment_and_blank_lines(tmp_path, capsys):
    f = tmp_path / "c.txt"
    f.write_text("# header comment\n1 2 3\n\n# another\n4 5 nan\n")
    assert run_cli("convert", f, "--format", "snap", "--out", tmp_path / "g.h5") != 0
    err = capsys.readouterr().err
    assert "line 5" in err and "times must be finite" in err


@pytest.mark.parametrize("fmt, name, text, line", [
    ("tgl", "edges.csv", ",src,dst,time\n0,0,1,1.0\n1,1,2,nan\n", 3),
    ("tgn", "ml_x.csv", ",u,i,ts,label,idx\n0,1,3,1.0,0,1\n\n1,2,3,inf,0,2\n", 4),
    ("jodie", "j.csv", "user,item,timestamp,state_label\n0,1,1.0,0\n0,2,-inf,0\n", 3),
])
def test_non_finite_time_line_in_every_headed_format(tmp_path, capsys, fmt, name, text, line):
    f = tmp_path / name
    f.write_text(text)
    assert run_cli("convert", f, "--format", fmt, "--out", tmp_path / "g.h5") != 0
    err = capsys.readouterr().err
    assert f"line {line}" in err and "times must be finite" in err and str(f) in err
    assert not (tmp_path / "g.h5").exists()


# ------------------------------------------------------------------------ SNAP signed networks, columns

def _bitcoin(path, rng, n=60, positive=False):
    """A Bitcoin-OTC/Alpha-style file: SOURCE,TARGET,RATING,TIME, no header, slightly unsorted."""
    src = rng.integers(1, 30, n)
    dst = rng.integers(1, 30, n)
    rating = rng.integers(1 if positive else -10, 11, n)
    if not positive:
        rating[0] = -10  # a negative rating is what a time column never holds
    t = 1289241911.72836 + np.cumsum(rng.uniform(1, 5000, n))
    t[[3, 4]] = t[[4, 3]]
    path.write_text("".join(f"{a},{b},{r},{ts:.5f}\n" for a, b, r, ts in zip(src, dst, rating, t)))
    return src, dst, rating, t


@pytest.mark.parametrize("positive", [False, True])
def test_snap_signed_network_time_is_the_last_column(tmp_path, positive):
    f = tmp_path / "soc-sign-bitcoinotc.csv"
    src, dst, rating, t = _bitcoin(f, np.random.default_rng(0), positive=positive)
    assert run_cli("convert", f, "--format", "snap", "--out", tmp_path / "g.h5") == 0
    g = load_graph(tmp_path / "g.h5")
    order = np.argsort(t, kind="stable")
    np.testing.assert_allclose(g.t, t[order], rtol=0, atol=1e-4)  # the TIME column, sorted
    assert g.edge_feat.shape == (len(t) + 1, 1)
    np.testing.assert_array_equal(g.edge_feat[:-1, 0], rating[order])  # the rating, as an edge feature
    np.testing.assert_array_equal(g.original_id[g.src], src[order])


def test_snap_ambiguous_time_column_refused(tmp_path, capsys):
    f = tmp_path / "weights.txt"
    f.write_text("1 2 5 3\n2 3 1 7\n3 1 8 2\n")  # both extra columns non-negative, overlapping ranges
    out = tmp_path / "g.h5"
    assert run_cli("convert", f, "--format", "snap", "--out", out) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "--time-col 2 or --time-col 3" in err
    assert not out.exists()
    # told which column holds the time, it converts; the other extra column is the edge feature
    assert run_cli("convert", f, "--format", "snap", "--time-col", "3", "--out", out) == 0
    g = load_graph(out)
    np.testing.assert_array_equal(g.t, [2, 3, 7])
    np.testing.assert_array_equal(g.edge_feat[:-1, 0], [8, 5, 1])


def test_snap_column_indices_honoured(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text("100 1 2\n200 2 3\n300 3 1\n")  # time first, then dst, then src
    out = tmp_path / "g.h5"
    assert run_cli("convert", f, "--format", "snap", "--time-col", "0", "--src-col", "2", "--dst-col", "1",
                   "--out", out) == 0
    g = load_graph(out)
    np.testing.assert_array_equal(g.t, [100, 200, 300])
    np.testing.assert_array_equal(g.original_id[g.src], [2, 3, 1])
    np.testing.assert_array_equal(g.original_id[g.dst], [1, 2, 3])
    assert g.edge_dim == 0
    for args, message in ((("--time-col", "ts"), "--time-col 'ts': the snap format has no header"),
                          (("--time-col", "3"), "--time-col 3 is out of range: the file has 3 columns"),
                          (("--time-col", "0", "--src-col", "0"), "must be different columns"),
                          (("--label-col", "2"), "apply to the csv format only")):
        assert run_cli("convert", f, "--format", "snap", *args, "--out", tmp_path / "bad.h5") == 2
        err = capsys.readouterr().err
        assert message in err and str(f) in err, (args, err)
    assert not (tmp_path / "bad.h5").exists()


def test_csv_header_less_by_column_index(tmp_path, capsys):
    f = tmp_path / "signed.csv"
    f.write_text("6,2,-4,1289241911.5\n6,5,2,1289241941.5\n1,15,1,1289243140.5\n")
    out = tmp_path / "g.h5"
    assert run_cli("convert", f, "--format", "csv", "--src-col", "0", "--dst-col", "1", "--time-col", "3",
                   "--feature-cols", "2", "--out", out) == 0
    g = load_graph(out)
    assert g.num_events == 3  # the first line is an event, not a header
    np.testing.assert_allclose(g.t, [1289241911.5, 1289241941.5, 1289243140.5])
    np.testing.assert_array_equal(g.edge_feat[:-1, 0], [-4, 2, 1])
    np.testing.assert_array_equal(g.original_id[g.src], [6, 6, 1])
    # a header-less file with a column given by name: say what to do instead of "missing column"
    assert run_cli("convert", f, "--format", "csv", "--time-col", "3", "--out", tmp_path / "b.h5") == 2
    assert "line 1 holds numbers, not column names" in capsys.readouterr().err


def test_csv_index_into_a_header(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("when,who,what\n1.5,alice,book\n2.5,bob,book\n")
    assert run_cli("convert", f, "--format", "csv", "--src-col", "1", "--dst-col", "2", "--time-col", "0",
                   "--out", tmp_path / "g.h5") == 0
    g = load_graph(tmp_path / "g.h5")
    assert list(g.original_id[g.src]) == ["alice", "bob"] and list(g.t) == [1.5, 2.5]


def test_column_options_refused_where_ignored(tmp_path, capsys):
    f = tmp_path / "j.csv"
    f.write_text("user_id,item_id,timestamp,state_label\n0,1,1.0,0\n1,2,2.0,0\n")
    assert run_cli("convert", f, "--format", "jodie", "--time-col", "3", "--out", tmp_path / "g.h5") == 2
    assert "--time-col: the jodie format names its own columns" in capsys.readouterr().err
    assert not (tmp_path / "g.h5").exists()


# ------------------------------------------------------------------------ damaged or unusual input files

def test_gzip_input_plain_truncated_and_fake(tmp_path, capsys):
    import gzip

    rows = "".join(f"{i % 50} {(i * 7) % 50} {i}\n" for i in range(20000))
    good = tmp_path / "e.txt.gz"
    good.write_bytes(gzip.compress(rows.encode()))
    assert run_cli("convert", good, "--format", "snap", "--out", tmp_path / "g.h5") == 0
    assert load_graph(tmp_path / "g.h5").num_events == 20000
    half = tmp_path / "half.txt.gz"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fake = tmp_path / "fake.csv.gz"
    fake.write_text("src,dst,t\n1,2,3\n")
    mixed = tmp_path / "mixed.txt.gz"  # runs of mixed whitespace take another read path
    mixed.write_bytes(gzip.compress(rows.replace(" ", " \t ").encode())[:3000])
    for f, fmt, message in ((half, "snap", "truncated or corrupt gzip file"),
                            (mixed, "snap", "truncated or corrupt gzip file"),
                            (fake, "csv", "named .gz but not gzip-compressed")):
        out = tmp_path / "out" / f"{f.name}.h5"
        assert run_cli("convert", f, "--format", fmt, "--out", out) == 2
        err = capsys.readouterr().err
        assert f"{f}: {message}" in err, err
        assert not list((tmp_path / "out").glob("*"))
    jodie = tmp_path / "j.csv.gz"
    jodie.write_bytes(gzip.compress(("user_id,item_id,timestamp,state_label\n" + "".join(
        f"{i % 9},{i % 4},{i}.0,0\n" for i in range(20000))).encode())[:5000])
    assert run_cli("convert", jodie, "--format", "jodie", "--out", tmp_path / "j.h5") == 2
    assert f"{jodie}: truncated or corrupt gzip file" in capsys.readouterr().err


def test_utf8_bom_before_the_header_is_dropped(tmp_path):
    bom = "\ufeff"
    f = tmp_path / "bom.csv"
    f.write_text(bom + "src,dst,t\n1,2,1.0\n2,3,2.0\n", encoding="utf-8")
    assert run_cli("convert", f, "--format", "csv", "--out", tmp_path / "g.h5") == 0
    np.testing.assert_array_equal(load_graph(tmp_path / "g.h5").t, [1, 2])
    (tmp_path / "ml_b.csv").write_text(bom + ",u,i,ts,label,idx\n0,1,3,1.0,0,1\n1,2,3,2.0,1,2\n", encoding="utf-8")
    g = convert([tmp_path / "ml_b.csv"], tmp_path / "t.h5", ConvertOptions(fmt="tgn"))
    np.testing.assert_array_equal(g.label, [0, 1])
    (tmp_path / "c.txt").write_text(bom + "# comment\n1 2 3\n2 3 4\n", encoding="utf-8")
    assert convert([tmp_path / "c.txt"], tmp_path / "c.h5", ConvertOptions(fmt="snap")).num_events == 2


def test_full_disk_while_writing_the_store(tmp_path, capsys, monkeypatch):
    import errno

    f = tmp_path / "e.txt"
    f.write_text("1 2 1\n2 3 2\n3 1 3\n")
    real = h5py.Group.create_dataset
    calls = []

    def full_disk(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) > 3:  # a few datasets in, as a real full disk would
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full_disk)
    out = tmp_path / "out" / "g.h5"
    assert run_cli("convert", f, "--format", "snap", "--out", out) == 2
    assert f"no space left on device writing {out}" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []  # no partial file under any name


def test_jodie_file_given_as_tgn_refused(tmp_path, capsys):
    f = tmp_path / "wikipedia.csv"
    f.write_text("user_id,item_id,timestamp,state_label,comma_separated_list_of_features\n"
                 "0,0,1.0,0,0.5\n1,0,2.0,1,0.6\n")
    assert run_cli("convert", f, "--format", "tgn", "--out", tmp_path / "g.h5") == 2
    err = capsys.readouterr().err
    assert str(f) in err and "JODIE file" in err and "--format jodie" in err
    assert not (tmp_path / "g.h5").exists()
