"""PyG TemporalData export and import (spec §4.5 (c), test 6): the store -> ``disttgl export --format pyg``
-> ``disttgl convert --format pyg`` round trip, and the reader's refusals.

The file is a dict of tensors, so most tests need only torch; those that build or save a
``TemporalData`` skip when torch_geometric (the ``pyg`` extra) is absent."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from disttgl.cli import main
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import load_graph, write_graph
from disttgl.data.pyg import graph_to_tensors, read_pyg, to_temporal_data
from disttgl.data.synth import SynthConfig, generate
from disttgl.errors import DataError

needs_pyg = pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                               reason="torch_geometric is not installed (pip install 'disttgl[pyg]')")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def _with_extras(graph: Graph, seed: int = 0) -> Graph:
    """``graph`` plus node features and labels (the synthetic graph has neither)."""
    rng = np.random.default_rng(seed)
    graph.node_feat = rng.normal(size=(graph.num_nodes, 5)).astype(np.float32)
    graph.label = rng.integers(0, 2, graph.num_events).astype(np.int64)
    return graph


def _roundtrip(tmp_path: Path, graph: Graph, *convert_flags) -> tuple[Graph, Graph, dict]:
    src_h5, pt, back_h5 = tmp_path / "g.h5", tmp_path / "data.pt", tmp_path / "back.h5"
    write_graph(graph, src_h5)
    assert run_cli("export", src_h5, "--format", "pyg", "--out", pt) == 0
    assert run_cli("convert", pt, "--format", "pyg", "--out", back_h5, *convert_flags) == 0
    return load_graph(src_h5), load_graph(back_h5), torch.load(pt, weights_only=True)


def _assert_same_graph(a: Graph, b: Graph) -> None:
    assert b.num_nodes == a.num_nodes and b.num_events == a.num_events
    for name in ("src", "dst", "t", "split", "edge_feat"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    for name in ("indptr", "nbr", "t", "eid"):
        np.testing.assert_array_equal(getattr(b.tcsr, name), getattr(a.tcsr, name), err_msg=f"tcsr/{name}")
    for name in ("node_feat", "label", "original_id"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(y, x, err_msg=name)


@pytest.mark.parametrize("bipartite", [False, True])
def test_synth_roundtrip_keeps_events_features_split_and_nodes(tmp_path, bipartite):
    graph = _with_extras(generate(SynthConfig(events=3000, nodes=60, edge_dim=6, bipartite=bipartite)))
    flags = ("--bipartite",) if bipartite else ()
    a, b, d = _roundtrip(tmp_path, graph, *flags)
    _assert_same_graph(a, b)
    assert b.bipartite == bipartite
    if bipartite:
        np.testing.assert_array_equal(b.side, a.side)
    assert b.attrs["split_rule"] == "ext_roll"  # the masks, i.e. the source's split
    # the file: the store's arrays under PyG's names, masks from the split
    assert set(d) == {"src", "dst", "t", "msg", "y", "x", "original_id", "train_mask", "val_mask", "test_mask"}
    assert all(isinstance(v, torch.Tensor) for v in d.values())
    np.testing.assert_array_equal(d["src"].numpy(), a.src)
    np.testing.assert_array_equal(d["dst"].numpy(), a.dst)
    np.testing.assert_array_equal(d["msg"].numpy(), a.edge_feat[:-1])
    np.testing.assert_array_equal(d["x"].numpy(), a.node_feat)
    np.testing.assert_array_equal(d["y"].numpy(), a.label)
    for code, name in enumerate(("train_mask", "val_mask", "test_mask")):
        assert d[name].dtype == torch.bool
        np.testing.assert_array_equal(d[name].numpy(), a.split == code)
    assert d["t"].dtype == torch.float64  # the synthetic times are fractional seconds
    np.testing.assert_array_equal(d["t"].numpy(), a.t)


def test_integer_times_are_int64_and_nodes_without_events_survive(tmp_path):
    """PyG and TGB use int64 times; node ids are kept, so an isolated node (9) and its features stay."""
    src = np.array([0, 1, 2, 0, 3, 4, 5, 6, 7, 8], np.int64)
    dst = np.array([1, 2, 3, 2, 4, 5, 6, 7, 8, 0], np.int64)
    t = np.arange(10, dtype=np.float64) * 1000 + 1_600_000_000
    graph = Graph(src=src, dst=dst, t=t, split=chronological_split(t), num_nodes=10, bipartite=False,
                  edge_feat=np.zeros((11, 0), np.float32), tcsr=build_tcsr(src, dst, t, 10),
                  node_feat=np.arange(20, dtype=np.float32).reshape(10, 2),
                  original_id=np.arange(100, 110, dtype=np.int64),  # the input's ids (e.g. TGB's)
                  attrs={"split_rule": "chronological", "source": "test", "sha256": "0"})
    a, b, d = _roundtrip(tmp_path, graph)
    assert d["t"].dtype == torch.int64 and d["msg"].shape == (10, 0)
    np.testing.assert_array_equal(d["original_id"].numpy(), np.arange(100, 110))
    _assert_same_graph(a, b)
    assert b.num_nodes == 10 and b.tcsr.indptr[10] == b.tcsr.indptr[9]


@needs_pyg
def test_the_file_rebuilds_temporal_data(tmp_path):
    from torch_geometric.data import TemporalData

    graph = _with_extras(generate(SynthConfig(events=500, nodes=30, edge_dim=4)))
    write_graph(graph, tmp_path / "g.h5")
    assert run_cli("export", tmp_path / "g.h5", "--format", "pyg", "--out", tmp_path / "data.pt") == 0
    data = TemporalData(**torch.load(tmp_path / "data.pt", weights_only=True))
    assert data.num_events == 500 and data.num_nodes <= 30
    assert torch.equal(data.src, torch.from_numpy(graph.src)) and torch.equal(data.msg, torch.from_numpy(
        graph.edge_feat[:-1]))
    train = data[data.train_mask]  # PyG's slicing works on the masks
    assert train.num_events == int((graph.split == 0).sum())
    same = to_temporal_data(graph)
    for key in data.keys():
        assert torch.equal(same[key], data[key]), key


@needs_pyg
def test_a_users_whole_temporal_data_converts_with_the_chronological_split(tmp_path):
    """A TemporalData saved whole (not a dict) is read with PyG's two classes allow-listed; without
    masks the split is convert's chronological 70/15/15; unsorted times are sorted stably."""
    from torch_geometric.data import TemporalData

    rng = np.random.default_rng(1)
    e = 400
    t = rng.integers(0, 10_000, e)
    data = TemporalData(src=torch.from_numpy(rng.integers(0, 20, e)), dst=torch.from_numpy(rng.integers(20, 40, e)),
                        t=torch.from_numpy(t), msg=torch.from_numpy(rng.normal(size=(e, 3)).astype(np.float32)),
                        y=torch.ones(e, dtype=torch.long))
    torch.save(data, tmp_path / "user.pt")
    assert run_cli("convert", tmp_path / "user.pt", "--format", "pyg", "--out", tmp_path / "g.h5") == 0
    g = load_graph(tmp_path / "g.h5")
    order = np.argsort(t, kind="stable")
    np.testing.assert_array_equal(g.t, t[order].astype(np.float64))
    np.testing.assert_array_equal(g.src, data.src.numpy()[order])
    np.testing.assert_array_equal(g.edge_feat[:-1], data.msg.numpy()[order])
    assert g.attrs["split_rule"] == "chronological" and not g.attrs["sorted_on_input"]
    np.testing.assert_array_equal(g.split, chronological_split(g.t))
    assert g.num_nodes == 40


def test_masks_follow_the_events_when_sorting(tmp_path):
    t = torch.tensor([5, 1, 3, 2], dtype=torch.long)
    d = {"src": torch.tensor([0, 1, 2, 3]), "dst": torch.tensor([1, 2, 3, 0]), "t": t,
         "train_mask": torch.tensor([False, True, False, True]), "val_mask": torch.tensor([False, False, True, False]),
         "test_mask": torch.tensor([True, False, False, False])}
    torch.save(d, tmp_path / "d.pt")
    assert run_cli("convert", tmp_path / "d.pt", "--format", "pyg", "--out", tmp_path / "g.h5") == 0
    g = load_graph(tmp_path / "g.h5")
    np.testing.assert_array_equal(g.t, [1, 2, 3, 5])
    np.testing.assert_array_equal(g.split, [0, 0, 1, 2])
    np.testing.assert_array_equal(g.src, [1, 3, 2, 0])


# ---------------------------------------------------------------------------------------- refusals

def _good() -> dict:
    return {"src": torch.tensor([0, 1, 2]), "dst": torch.tensor([1, 2, 0]), "t": torch.tensor([1.0, 2.0, 3.0])}


def _expect_error(tmp_path, capsys, payload_writer, match: str) -> None:
    path = tmp_path / "bad.pt"
    payload_writer(path)
    with pytest.raises(DataError, match=match) as info:
        read_pyg(path)
    assert info.value.path == str(path)
    capsys.readouterr()
    assert run_cli("convert", path, "--format", "pyg", "--out", tmp_path / "g.h5") == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "g.h5").exists()


def test_truncated_file_is_a_data_error_naming_it(tmp_path, capsys):
    graph = generate(SynthConfig(events=300, nodes=20, edge_dim=4))
    full = tmp_path / "full.pt"
    torch.save(graph_to_tensors(graph), full)
    data = full.read_bytes()
    _expect_error(tmp_path, capsys, lambda p: p.write_bytes(data[: len(data) // 2]), "not a readable PyTorch file")


def test_garbage_and_empty_files_are_data_errors(tmp_path, capsys):
    _expect_error(tmp_path, capsys, lambda p: p.write_bytes(os.urandom(256)), "not a readable PyTorch file")
    _expect_error(tmp_path, capsys, lambda p: p.write_bytes(b""), "empty")


class _Payload:
    """Pickles as a call of os.system: what weights_only loading exists to refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_bearing_file_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    _expect_error(tmp_path, capsys, lambda p: torch.save({**_good(), "evil": _Payload(marker)}, p),
                  "refused: the file holds pickled Python objects")
    assert not marker.exists()


def test_a_file_of_other_objects_is_refused(tmp_path, capsys):
    # numpy arrays are not plain tensors either: weights_only refuses their reconstruction
    _expect_error(tmp_path, capsys, lambda p: torch.save({"src": np.arange(3)}, p), "refused")
    _expect_error(tmp_path, capsys, lambda p: torch.save([1, 2, 3], p), "expected a dict of tensors")


@pytest.mark.parametrize("change, match", [
    ({"src": None}, "no 'src'"),
    ({"dst": torch.tensor([1, 2])}, "dst has 2 entries but src has 3"),
    ({"src": torch.tensor([0, -1, 2])}, r"src\[1\] is -1"),
    ({"src": torch.tensor([0.0, 1.0, 2.0])}, "src has dtype torch.float32, expected integers"),
    ({"t": torch.tensor([1.0, float("nan"), 3.0])}, r"t\[1\] is nan: times must be finite"),
    ({"t": torch.tensor([1, 2, 2 ** 60])}, "too large"),
    ({"msg": torch.zeros(2, 4)}, "msg has 2 rows but there are 3 events"),
    ({"msg": torch.tensor([[0.0], [float("inf")], [1.0]])}, r"msg row 1 \(edge features\)"),
    ({"x": torch.zeros(2, 3)}, "x has 2 rows but the events use node id 2"),
    ({"train_mask": torch.tensor([True, True, False])}, "but not val_mask, test_mask"),
    ({"train_mask": torch.tensor([True, True, False]), "val_mask": torch.tensor([True, False, False]),
      "test_mask": torch.tensor([False, False, True])}, "event 0 is in 2 of"),
    ({"src": torch.zeros(0, dtype=torch.long), "dst": torch.zeros(0, dtype=torch.long),
      "t": torch.zeros(0)}, "holds no events"),
])
def test_invalid_contents_are_data_errors_naming_the_file(tmp_path, capsys, change, match):
    d = {k: v for k, v in {**_good(), **change}.items() if v is not None}
    _expect_error(tmp_path, capsys, lambda p: torch.save(d, p), match)


def test_export_refuses_tgb_flags_for_pyg_and_a_missing_store(tmp_path, capsys):
    write_graph(generate(SynthConfig(events=200, nodes=20)), tmp_path / "g.h5")
    assert run_cli("export", tmp_path / "g.h5", "--format", "pyg", "--out", tmp_path / "d.pt",
                   "--num-neg", "5") == 2
    assert "--num-neg apply to --format tgb only" in capsys.readouterr().err
    assert run_cli("export", tmp_path / "none.h5", "--format", "pyg", "--out", tmp_path / "d.pt") == 2
    assert "none.h5" in capsys.readouterr().err
    assert not (tmp_path / "d.pt").exists()


def test_string_original_ids_are_left_out(tmp_path):
    graph = generate(SynthConfig(events=200, nodes=20))
    graph = replace(graph, original_id=np.array([f"n{i}" for i in range(20)]))
    assert "original_id" not in graph_to_tensors(graph)


def test_multi_label_y_round_trips(tmp_path):
    """A multi-label store's [E, C] 0/1 labels go out as ``y`` [E, C] and come back unchanged."""
    graph = generate(SynthConfig(events=400, nodes=40, edge_dim=4, seed=3, labels=4, multi_label=True))
    assert graph.label.ndim == 2
    a, b, tensors = _roundtrip(tmp_path, graph)
    assert tuple(tensors["y"].shape) == a.label.shape
    _assert_same_graph(a, b)
