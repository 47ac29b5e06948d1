"""Multi-label edge classification (docs/design.md §13.1): a 0/1 ``events/label`` [E, C] through the store,
the tgl reader (DistTGL's multi-hot ``ec_edge_class.pt``), the synthetic generator, the classes and
baseline, the loss, F1 over the indicator matrix against sklearn, and runs on one process and on 2 ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from disttgl.cli import main
from disttgl.data.convert import ConvertOptions, convert
from disttgl.data.graph_map import map_graph
from disttgl.data.graph_store import load_graph, read_labels, write_graph
from disttgl.data.registry import convert_arguments
from disttgl.data.synth import SynthConfig, generate, plant
from disttgl.errors import DataError
from disttgl.report.collect import load_run
from disttgl.report.edge_class_table import edge_class_rows
from disttgl.train.metrics import MultiLabelMetrics, multilabel_f1_scores
from disttgl.train.multilabel import MultiLabelTask, multilabel_classes
from disttgl.train.task import label_classes, make_task

SMALL = dict(events=800, nodes=40, edge_dim=4, seed=3)


# ------------------------------------------------------------------------------------------ store

def test_store_round_trips_a_label_matrix_and_refuses_values_other_than_0_1(tmp_path):
    g = generate(SynthConfig(**SMALL, labels=5, multi_label=True))
    assert g.label.shape == (800, 5) and g.label.dtype == np.uint8
    write_graph(g, tmp_path / "g.h5")
    for back in (load_graph(tmp_path / "g.h5").label, read_labels(tmp_path / "g.h5")[0],
                 map_graph(tmp_path / "g.h5").label):
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, g.label)
    g.label = g.label.copy()
    g.label[7, 2] = 2
    write_graph(g, tmp_path / "bad.h5")
    with pytest.raises(DataError, match="events/label row 7 holds values other than 0 and 1"):
        load_graph(tmp_path / "bad.h5")
    g.label = np.zeros((799, 5), np.uint8)  # one row short
    write_graph(g, tmp_path / "short.h5")
    with pytest.raises(DataError, match=r"events/label has shape \(799, 5\), expected \(800, 5\)"):
        read_labels(tmp_path / "short.h5")


# ------------------------------------------------------------------------------------------ tgl reader

ROWS = [(0, 1, 1.0, 0), (1, 2, 2.0, 0), (2, 0, 3.0, 0), (0, 2, 4.0, 1), (1, 0, 5.0, 2)]


def _edges(d):
    lines = [",src,dst,time,ext_roll"] + [f"{i},{s},{t},{ts},{r}" for i, (s, t, ts, r) in enumerate(ROWS)]
    (d / "edges.csv").write_text("\n".join(lines) + "\n")
    return d / "edges.csv"


def test_tgl_one_hot_rows_give_ids_and_multi_hot_rows_give_the_matrix(tmp_path):
    edges = _edges(tmp_path)
    pt = tmp_path / "ec_edge_class.pt"
    torch.save(torch.tensor([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]]), pt)
    g = convert([edges, pt], tmp_path / "a.h5", ConvertOptions(fmt="tgl"))
    assert g.label.ndim == 1 and g.label.tolist() == [2, 0, 1, 2, 0]
    hot = [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]]  # row 0 multi-hot, row 1 empty: allowed
    torch.save(torch.tensor(hot, dtype=torch.float32), pt)
    convert([edges, pt], tmp_path / "b.h5", ConvertOptions(fmt="tgl"))
    back = load_graph(tmp_path / "b.h5").label
    assert back.dtype == np.uint8 and back.tolist() == hot
    published = tmp_path / "ec_edge_class.pt.pt"  # the name on TGL's S3 (DistTGL's down.sh)
    pt.rename(published)
    assert convert([edges, published], tmp_path / "c.h5", ConvertOptions(fmt="tgl")).label.tolist() == hot
    torch.save(torch.tensor(hot, dtype=torch.float32), pt)
    with pytest.raises(DataError, match="give one of"):
        convert([edges, pt, published], tmp_path / "d.h5", ConvertOptions(fmt="tgl"))


def test_the_registry_gdelt_files_convert_with_the_multi_label_classes(tmp_path):
    _edges(tmp_path)  # the registry's GDELT files, tiny, under the names `disttgl fetch` leaves
    torch.save(torch.ones(5, 2), tmp_path / "edge_features.pt")
    torch.save(torch.ones(3, 2), tmp_path / "node_features.pt")
    (tmp_path / "labels.csv").write_text(",node,time,label,ext_roll\n0,1,1.5,3,0\n")  # node labels: not used
    hot = [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]]
    torch.save(torch.tensor(hot, dtype=torch.float32), tmp_path / "ec_edge_class.pt.pt")
    args = convert_arguments("GDELT", tmp_path)
    assert str(tmp_path / "ec_edge_class.pt.pt") in args
    assert main(["convert", *args, "--out", str(tmp_path / "g.h5")]) == 0
    assert load_graph(tmp_path / "g.h5").label.tolist() == hot


@pytest.mark.parametrize("rows, match", [
    ([[1, 0, 1], [0, 1, 0], [0, 2, 0], [1, 0, 0], [0, 0, 1]], r"row 2 holds \[2.0\]"),
    ([[1, 0, 0], [0, 1, 1], [0, 1, 0], [0.5, 0.5, 0], [0, 0, 1]], r"row 3 holds \[0.5, 0.5\]"),
])
def test_tgl_multi_hot_values_other_than_0_1_are_refused_naming_the_file_and_row(tmp_path, rows, match):
    edges, pt = _edges(tmp_path), tmp_path / "ec_edge_class.pt"
    torch.save(torch.tensor(rows, dtype=torch.float32), pt)
    with pytest.raises(DataError, match=match) as err:
        convert([edges, pt], tmp_path / "g.h5", ConvertOptions(fmt="tgl"))
    assert str(err.value.path).endswith("ec_edge_class.pt") and not (tmp_path / "g.h5").exists()


# ------------------------------------------------------------------------------------------ synth

def test_synth_multi_label_rule_other_arrays_unchanged_and_deterministic():
    cfg = SynthConfig(**SMALL, labels=6, multi_label=True)
    g, p, single = generate(cfg), plant(cfg), generate(SynthConfig(**SMALL, labels=6))
    for name in ("src", "dst", "t", "split", "edge_feat"):
        np.testing.assert_array_equal(getattr(g, name), getattr(single, name), err_msg=name)
    np.testing.assert_array_equal(generate(cfg).label, g.label)
    assert not np.array_equal(generate(SynthConfig(**{**SMALL, "seed": 4}, labels=6, multi_label=True)).label[:50],
                              generate(SynthConfig(**{**SMALL, "seed": 4}, labels=6)).label[:50])
    counts = g.label.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3 and {1, 2, 3} <= set(counts.tolist())
    for e in range(0, cfg.events, 5):  # literal: the single-label class, the dst's community, src's + 1
        first = single.label[e]
        allowed = {first, p.community[g.dst[e]] % 6, (p.community[g.src[e]] + 1) % 6}
        held = set(np.flatnonzero(g.label[e]).tolist())
        assert first in held and held <= allowed, e
    assert cfg.sha256() != SynthConfig(**SMALL, labels=6).sha256()
    with pytest.raises(DataError, match="multi_label"):
        SynthConfig(labels=0, multi_label=True)


# ------------------------------------------------------------------------------------------ F1

def _sk(t, p):
    return {"f1_micro": f1_score(t, p, average="micro", zero_division=0),
            "f1_macro": f1_score(t, p, average="macro", zero_division=0), "exact_match": accuracy_score(t, p)}


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_f1_equals_sklearn_on_random_indicator_matrices(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 200)), int(rng.integers(2, 9))
    t = (rng.random((n, c)) < rng.uniform(0.1, 0.6)).astype(np.uint8)
    p = np.where(rng.random((n, c)) < 0.6, t, rng.random((n, c)) < 0.3).astype(np.uint8)
    t[: n // 5] = 0  # all-zero rows
    t[:, 0], p[:, 0] = 0, 0  # a column with no positive anywhere: F1 0/0 -> 0
    p[:, 1] = 0  # a column never predicted
    got, want = multilabel_f1_scores(t, p), _sk(t, p)
    assert got == pytest.approx(want, abs=1e-12)
    # columns the model has no output for: never predicted, false negatives in micro only
    extra = (rng.random((n, 2)) < 0.3).astype(np.uint8)
    got = multilabel_f1_scores(t, p, missed=extra.sum(1))
    wide_t, wide_p = np.hstack([t, extra]), np.hstack([p, np.zeros_like(extra)])
    assert got["f1_micro"] == pytest.approx(f1_score(wide_t, wide_p, average="micro", zero_division=0), abs=1e-12)
    assert got["f1_macro"] == pytest.approx(want["f1_macro"], abs=1e-12)
    assert got["exact_match"] == pytest.approx(accuracy_score(wide_t, wide_p), abs=1e-12)
    # accumulated batch by batch from logits (decision: logit > 0; a logit of exactly 0 is not a positive)
    logits = np.where(p == 1, rng.uniform(0.01, 3, (n, c)), -rng.uniform(0, 3, (n, c)))
    zero = np.argwhere(p == 0)[:5]
    logits[zero[:, 0], zero[:, 1]] = 0.0
    acc = MultiLabelMetrics()
    for a in range(0, n, 17):
        acc.update(torch.from_numpy(logits[a:a + 17]), torch.from_numpy(t[a:a + 17]),
                   torch.from_numpy(extra.sum(1)[a:a + 17]))
    assert acc.compute() == pytest.approx(got, abs=1e-12)


def test_multilabel_f1_hand_worked_and_empty():
    t = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    p = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    # TP 2, FP 1, FN 2: micro 4 / 7; columns: 2·2/(4+0+0) = 1, 0/(0+1+1) = 0, 0/(0+0+1) = 0
    got = multilabel_f1_scores(t, p)
    assert got["f1_micro"] == pytest.approx(4 / 7) and got["f1_macro"] == pytest.approx(1 / 3)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert multilabel_f1_scores(np.zeros((0, 3)), np.zeros((0, 3))) == {"f1_micro": 0.0, "f1_macro": 0.0,
                                                                        "exact_match": 0.0}
    assert MultiLabelMetrics().compute()["f1_micro"] == 0.0


# ------------------------------------------------------------------------------------------ classes, loss

def test_classes_drop_columns_without_a_train_positive_and_the_baseline_is_literal(caplog):
    label = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0],  # train
                      [1, 0, 1, 0], [0, 1, 0, 0],  # val
                      [0, 0, 1, 1], [1, 0, 0, 0]], np.uint8)  # test
    split = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    kept, info = multilabel_classes(label, split, "g.h5")
    assert kept.tolist() == [0, 1, 3] and info["dropped_classes"] == [2] and info["num_classes"] == 3
    assert info["majority_class"] == 0 and info["multi_label"] is True
    # predict column 0 alone: val TP 1, FP 1, FN 2 (of 3 positives) -> 2/5; test TP 1, FP 1, FN 2 -> 2/5
    assert info["majority_val_f1_micro"] == pytest.approx(2 / 5) and info["majority_test_f1_micro"] == pytest.approx(2 / 5)
    assert info["unseen_labels"] == {"val": 1, "test": 1} and "g.h5" in caplog.text
    index, k, _ = label_classes(label, split, "g.h5")  # the one check of either shape
    assert index.tolist() == [0, 1, 3] and k == 3
    task = make_task("edge-class", "bce", label, split, torch.device("cpu"))
    assert isinstance(task, MultiLabelTask) and task.num_classes == 3
    assert task.labels.tolist() == label[:, [0, 1, 3]].tolist() and task.missed.tolist() == label[:, 2].tolist()


@pytest.mark.parametrize("label, split, match", [
    (np.array([[1, 0], [0, 3]]), np.zeros(2, np.int8), r"row 1 of the multi-label"),
    (np.array([[1, 0], [1, 0]]), np.zeros(2, np.int8), "1 of the 2 label columns"),
    (np.array([[1, 1], [1, 0]]), np.array([1, 2]), "train split has no events"),
])
def test_classes_refusals_name_the_file(label, split, match):
    with pytest.raises(DataError, match=match) as err:
        make_task("edge-class", "bce", label, split, torch.device("cpu"), "store.h5")
    assert str(err.value.path) == "store.h5"


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_loss_equals_a_literal_reference(loss):
    label = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]], np.uint8)
    task = make_task("edge-class", loss, label, np.zeros(4, np.int8), torch.device("cpu"))
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7], [0.0, 0.4, -2.2], [-0.1, 0.9, 0.5]])
    batch = type("B", (), {"eid": torch.tensor([3, 0, 2, 1])})()
    got = float(task.loss(logits, batch))
    z, y = logits.double().numpy(), label[[3, 0, 2, 1]].astype(np.float64)
    if loss == "bce":  # mean over entries of -(y log σ(z) + (1 - y) log(1 - σ(z)))
        sig = 1 / (1 + np.exp(-z))
        want = float(np.mean(-(y * np.log(sig) + (1 - y) * np.log(1 - sig))))
    else:  # DistTGL's: the 0/1 row as soft target of a softmax, mean over events
        logsm = z - np.log(np.exp(z).sum(1, keepdims=True))
        want = float(np.mean(-(y * logsm).sum(1)))
    assert got == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------------------ runs

@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml_run")
    assert main(["synth", "--out", str(d / "g.h5"), "--events", "3000", "--nodes", "100", "--edge-dim", "16",
                 "--labels", "4", "--multi-label"]) == 0
    assert main(["batches", str(d / "g.h5"), "--out", str(d / "c.h5"), "--batch-size", "50", "--neg-sets", "2",
                 "--no-progress"]) == 0
    return d


@pytest.mark.slow
def test_multi_label_training_beats_the_baseline_and_is_marked_in_the_report(multi):
    d, out = multi, multi / "ds" / "run"
    rc = main(["train", str(d / "g.h5"), str(d / "c.h5"), "--out", str(out), "--task", "edge-class", "--epochs", "3",
               "--dim", "16", "--time-dim", "16", "--lr", "5e-3", "--threads", "1", "--no-progress"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["multi_label"] is True and s["num_classes"] == 4 and s["multi_label_loss"] == "bce"
    assert all(math.isfinite(s[k]) for k in MultiLabelTask.summary_keys)
    # measured (synth/train seeds 0-5, this setting): test F1-micro 0.42-0.61 against baselines 0.20-0.38;
    # seed 0: 0.61 against 0.24
    assert s["test_f1_micro"] > s["majority_test_f1_micro"] + 0.15, s
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all({"val_f1_micro", "val_f1_macro", "val_exact_match"} <= set(r) for r in rows)
    (row,) = edge_class_rows([load_run(out, "ds", "run")])
    assert row["classes"] == "4 (multi-label)" and row["test_f1_micro"] == pytest.approx(s["test_f1_micro"])


@pytest.mark.slow
def test_multi_label_on_two_ranks_finishes_with_finite_metrics(multi):
    assert main(["batches", str(multi / "g.h5"), "--out", str(multi / "c2.h5"), "--batch-size", "100", "-i", "2",
                 "--neg-sets", "2", "--no-progress"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "disttgl.train",
           "g.h5", "c2.h5", "--out", "run2", "--parallelism", "2x1x1", "--task", "edge-class", "--dim", "16",
           "--time-dim", "16", "--heads", "2", "--epochs", "1", "--timeout", "60", "--threads", "1", "--no-progress"]
    proc = subprocess.run(cmd, cwd=multi, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((multi / "run2" / "summary.json").read_text())
    assert s["parallelism"] == "2x1x1" and s["multi_label"] is True and "test_mrr" not in s
    assert all(math.isfinite(s[k]) and 0 <= s[k] <= 1 for k in MultiLabelTask.summary_keys)
