"""Event labels for edge classification (docs/design.md §13): the synthetic generator's, TGL's
``ec_edge_class.pt`` and ``labels.csv``, and csv ``--label-col``, through convert and its time sort."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from disttgl.cli import main
from disttgl.data.convert import ConvertOptions, convert
from disttgl.data.graph_store import graph_info, load_graph
from disttgl.data.readers import CsvColumns
from disttgl.data.synth import SynthConfig, generate, plant
from disttgl.errors import DataError

SMALL = dict(events=2000, nodes=60, edge_dim=4, seed=2)


# ------------------------------------------------------------------------------------------ synth

def test_synth_labels_are_the_preferred_community_of_the_source_in_the_phase():
    cfg = SynthConfig(**SMALL, labels=3)
    g, p = generate(cfg), plant(cfg)
    t_end = g.t[-1]
    for e in range(0, cfg.events, 7):  # literal: the phase of the event's time, then the permutation
        phase = min(int(cfg.phases * g.t[e] / t_end), cfg.phases - 1)
        assert g.label[e] == p.preference[phase, p.community[g.src[e]]] % 3, e
    assert g.label.dtype == np.int64 and set(np.unique(g.label)) == {0, 1, 2}
    default = generate(SynthConfig(**SMALL))
    assert set(np.unique(default.label)) == set(range(8))  # one class per community


def test_synth_labels_change_no_other_array_and_not_the_default_checksum():
    base = generate(SynthConfig(**SMALL))
    for labels in (0, 2, 5):
        other = generate(SynthConfig(**SMALL, labels=labels))
        for name in ("src", "dst", "t", "split", "edge_feat"):
            np.testing.assert_array_equal(getattr(base, name), getattr(other, name), err_msg=name)
        assert other.attrs["sha256"] != base.attrs["sha256"]  # a different dataset (its labels)
    assert generate(SynthConfig(**SMALL, labels=0)).label is None
    # the default dataset keeps the checksum it had before labels existed: caches built from it stay valid
    assert SynthConfig().sha256() == "3734afcf5a99e159a49864058b36f96d54fae28661e9fd0d1db75e384ae5a67a"


@pytest.mark.parametrize("labels", [1, -2, 2.5])
def test_synth_refuses_a_bad_number_of_classes(labels):
    with pytest.raises(DataError, match="labels"):
        SynthConfig(labels=labels)


def test_synth_cli_writes_labels_unless_zero(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "a.h5"), "--events", "500", "--nodes", "30", "--labels", "4"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b.h5"), "--events", "500", "--nodes", "30", "--labels", "0"]) == 0
    assert graph_info(tmp_path / "a.h5")["has_label"] and not graph_info(tmp_path / "b.h5")["has_label"]
    assert load_graph(tmp_path / "a.h5").label.max() < 4


# ------------------------------------------------------------------------------------------ tgl

def _tgl(d, rows):
    """edges.csv in TGL's layout: index, src, dst, time, ext_roll."""
    lines = [",src,dst,time,ext_roll"] + [f"{i},{s},{t},{ts},{r}" for i, (s, t, ts, r) in enumerate(rows)]
    (d / "edges.csv").write_text("\n".join(lines) + "\n")
    return d / "edges.csv"


ROWS = [(0, 1, 1.0, 0), (1, 2, 2.0, 0), (2, 0, 3.0, 0), (0, 2, 4.0, 1), (1, 0, 5.0, 2)]


def test_tgl_ec_edge_class_ids_and_one_hot(tmp_path):
    edges = _tgl(tmp_path, ROWS)
    ids = tmp_path / "ec_edge_class.pt"
    torch.save(torch.tensor([3, 0, 1, 3, 2]), ids)
    g = convert([edges, ids], tmp_path / "a.h5", ConvertOptions(fmt="tgl"))
    np.testing.assert_array_equal(g.label, [3, 0, 1, 3, 2])
    torch.save(torch.nn.functional.one_hot(torch.tensor([3, 0, 1, 3, 2]), 5).float(), ids)
    g = convert([edges, ids], tmp_path / "b.h5", ConvertOptions(fmt="tgl"))
    np.testing.assert_array_equal(load_graph(tmp_path / "b.h5").label, [3, 0, 1, 3, 2])


@pytest.mark.parametrize("tensor, match", [
    # several positives in a row make the labels multi-label (tests/test_multilabel.py): then 0/1 only
    (torch.tensor([[1.0, 0.5], [1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]]), r"row 0 holds \[0.5\]"),
    (torch.tensor([[0.0, 0.0], [1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]]), "row 0 has 0 positive classes"),
    (torch.tensor([0, 1, 2]), "3 rows of edge classes, but edges.csv has 5 events"),
    (torch.tensor([0.0, 1.5, 2.0, 0.0, 1.0]), "row 1 holds class 1.5"),
])
def test_tgl_ec_edge_class_refusals_name_the_file(tmp_path, tensor, match):
    edges = _tgl(tmp_path, ROWS)
    torch.save(tensor, tmp_path / "ec_edge_class.pt")
    with pytest.raises(DataError, match=match) as err:
        convert([edges, tmp_path / "ec_edge_class.pt"], tmp_path / "g.h5", ConvertOptions(fmt="tgl"))
    assert str(err.value.path).endswith("ec_edge_class.pt") and not (tmp_path / "g.h5").exists()


def test_tgl_labels_csv_one_per_event_is_the_event_labels(tmp_path):
    edges = _tgl(tmp_path, ROWS)
    labels = tmp_path / "labels.csv"  # TGL's Wikipedia/Reddit: the source's state at each event
    labels.write_text(",node,time,label,ext_roll\n" + "".join(
        f"{i},{s},{ts},{i % 2},{r}\n" for i, (s, _, ts, r) in enumerate(ROWS)))
    g = convert([edges, labels], tmp_path / "g.h5", ConvertOptions(fmt="tgl"))
    np.testing.assert_array_equal(g.label, [0, 1, 0, 1, 0])
    torch.save(torch.tensor([4, 4, 4, 4, 5]), tmp_path / "ec_edge_class.pt")  # the edge classes win
    g = convert([edges, labels, tmp_path / "ec_edge_class.pt"], tmp_path / "h.h5", ConvertOptions(fmt="tgl"))
    np.testing.assert_array_equal(g.label, [4, 4, 4, 4, 5])


def test_tgl_node_labels_are_not_event_labels(tmp_path, caplog):
    edges = _tgl(tmp_path, ROWS)
    labels = tmp_path / "labels.csv"  # GDELT: (node, time) queries of dynamic node classification
    labels.write_text(",node,time,label,ext_roll\n0,2,2.5,7,0\n1,1,4.5,3,1\n")
    with caplog.at_level(logging.WARNING):
        g = convert([edges, labels], tmp_path / "g.h5", ConvertOptions(fmt="tgl"))
    assert g.label is None and "labels.csv" in caplog.text and "node labels" in caplog.text
    labels.write_text(",node,when,label\n0,2,2.5,7\n")
    with pytest.raises(DataError, match="missing column 'time'"):
        convert([edges, labels], tmp_path / "h.h5", ConvertOptions(fmt="tgl"))


# ------------------------------------------------------------------------------------------ csv

def test_csv_label_column_by_name_and_index_follows_the_time_sort(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("a,b,ts,kind,amount\nu1,i1,3.0,2,0.5\nu2,i1,1.0,0,1.5\nu1,i2,2.0,1,2.5\n")
    by_name = convert([f], tmp_path / "n.h5", ConvertOptions(
        fmt="csv", csv_columns=CsvColumns(src="a", dst="b", time="ts", label="kind", features=("amount",))))
    np.testing.assert_array_equal(by_name.t, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(by_name.label, [0, 1, 2])  # sorted with the events
    assert main(["convert", str(f), "--format", "csv", "--src-col", "0", "--dst-col", "1", "--time-col", "2",
                 "--label-col", "3", "--out", str(tmp_path / "i.h5")]) == 0
    np.testing.assert_array_equal(load_graph(tmp_path / "i.h5").label, [0, 1, 2])
    f.write_text("a,b,ts,kind\nu1,i1,3.0,x\n")
    with pytest.raises(DataError) as err:
        convert([f], tmp_path / "x.h5", ConvertOptions(fmt="csv", csv_columns=CsvColumns(
            src="a", dst="b", time="ts", label="kind")))
    assert str(err.value.path) == str(f) and "line 2" in str(err.value)
