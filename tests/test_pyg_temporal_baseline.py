"""The PyTorch Geometric Temporal baselines (benchmarks/pyg_temporal.py, docs/design.md §11.9): they
train on disttgl's snapshots, and are evaluated on exactly the targets and negatives that
``disttgl snapshot-train`` evaluates on (recorded from a real snapshot-train run with the same
seed); the propagation matrices differ from disttgl's Â only where §11.9 says."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import disttgl.snapshot.train as snapshot_train
from disttgl.cli import main
from disttgl.snapshot.adjacency import DeviceAdjacency, normalized_adjacency
from disttgl.snapshot.store import load_snapshots

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pyg_temporal  # noqa: E402 - from the benchmarks folder

if pyg_temporal.RECURRENT is None:
    pytest.skip(pyg_temporal.UNAVAILABLE, allow_module_level=True)
from torch_geometric.nn import ChebConv  # noqa: E402 - installed with the baseline

SMALL = {"epochs": 2, "seed": 5, "hidden": 8, "degree_cap": 4, "threads": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pygt")
    assert main(["synth", "--events", "2000", "--nodes", "60", "--out", str(d / "g.h5")]) == 0
    assert main(["snapshots", str(d / "g.h5"), "--num-snapshots", "8", "--edge-life", "2", "--symmetric",
                 "--out", str(d / "s.h5")]) == 0
    return d


def _record(monkeypatch) -> dict[str, list]:
    """Wrap the task functions snapshot-train's local step calls, keeping what they were given."""
    calls: dict[str, list] = {"train": [], "eval": []}
    real_step, real_eval = snapshot_train.train_step, snapshot_train.evaluate

    def step(model, raws, targets, negatives):
        calls["train"].append(([r.index for r in raws], targets, [n.clone() for n in negatives]))
        return real_step(model, raws, targets, negatives)

    def evaluate(model, z, targets, negatives):
        calls["eval"].append((z.shape[0], targets, [n.clone() for n in negatives]))
        return real_eval(model, z, targets, negatives)

    monkeypatch.setattr(snapshot_train, "train_step", step)
    monkeypatch.setattr(snapshot_train, "evaluate", evaluate)
    return calls


def _same(a, b) -> None:
    (inputs_a, ta, na), (inputs_b, tb, nb) = a, b
    assert inputs_a == inputs_b and ta.snapshots == tb.snapshots and ta.events == tb.events
    for xs, ys in ((ta.src, tb.src), (ta.dst, tb.dst), (na, nb)):
        assert len(xs) == len(ys) and all(torch.equal(x, y) for x, y in zip(xs, ys))


def test_evaluated_on_exactly_snapshot_trains_targets_and_negatives(data, monkeypatch):
    ours = _record(monkeypatch)
    snapshot_train.train(snapshot_train.SnapshotTrainConfig(str(data / "s.h5"), str(data / "g.h5"),
                                                            str(data / "dt"), **SMALL))
    theirs = {k: list(v) for k, v in ours.items()}
    for v in ours.values():
        v.clear()
    pyg_temporal.train(pyg_temporal.PygTemporalConfig(str(data / "s.h5"), str(data / "g.h5"), str(data / "pg"),
                                                      model="evolvegcn-h", **SMALL))
    assert len(theirs["train"]) == len(ours["train"]) == 2 and len(theirs["eval"]) == len(ours["eval"]) == 4
    for a, b in zip(theirs["train"] + theirs["eval"], ours["train"] + ours["eval"]):
        _same(a, b)
    # not vacuous: the two epochs' training negatives differ, val and test targets differ, and the
    # first val target's negatives are numpy's draws from [seed, 1], 49 per positive, by hand
    assert not torch.equal(theirs["train"][0][2][0], theirs["train"][1][2][0])
    val, test = theirs["eval"][0][1], theirs["eval"][1][1]
    assert val.snapshots and test.snapshots and not set(val.snapshots) & set(test.snapshots)
    first = np.random.default_rng([5, 1]).integers(0, 60, (len(val.src[0]), 49))
    assert np.array_equal(theirs["eval"][0][2][0].numpy(), first)
    # the positives of a target t are the distinct directed pairs of snapshot t's own events
    events = load_snapshots(data / "s.h5").snapshots.events
    t = test.snapshots[0]
    row, col, _ = events.part(t)
    assert set(zip(row.tolist(), col.tolist())) == set(zip(test.src[0].tolist(), test.dst[0].tolist()))
    assert len(row) == len(test.src[0])
    # scored from one pass up to the last val/test target, target t reading Z[t - 1]
    assert theirs["eval"][0][0] == ours["eval"][0][0] == max(val.last, test.last)


@pytest.mark.parametrize("model,k", [("gconvlstm", 1), ("gconvlstm", 2), ("evolvegcn-h", 1)])
def test_trains_loss_falls_metrics_finite(data, model, k):
    out = data / f"{model}-k{k}"
    cfg = pyg_temporal.PygTemporalConfig(str(data / "s.h5"), str(data / "g.h5"), str(out), model=model, cheb_k=k,
                                         **(SMALL | {"epochs": 8, "lr": 0.05}))
    s = pyg_temporal.train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert min(losses[-3:]) < losses[0] - 0.02, losses
    assert json.loads((out / "summary.json").read_text()) == s
    assert s["model"] == cfg.name and s["node_features"] == "degree" and s["baseline_version"] == "0.56.2"
    for key in ("test_mrr", "test_ap", "val_mrr", "val_ap"):
        assert 0 < s[key] <= 1, key
    assert s["train_events_per_s"] > 0 and 0 < s["train_seconds"] < s["total_seconds"]


def test_defaults_are_snapshot_trains():
    ours, theirs = pyg_temporal.PygTemporalConfig("", "", ""), snapshot_train.SnapshotTrainConfig("", "", "")
    for name in ("epochs", "lr", "hidden", "seed", "node_features", "degree_cap", "eval_negatives", "transfer"):
        assert getattr(ours, name) == getattr(theirs, name), name


def _adjacency() -> DeviceAdjacency:
    """A symmetric 4-node graph with counts, node 3 isolated, optionally a self-loop on node 0."""
    pairs = {(0, 1): 2, (1, 0): 2, (1, 2): 1, (2, 1): 1, (0, 2): 3, (2, 0): 3}
    row, col = zip(*sorted(pairs))
    return DeviceAdjacency(0, torch.tensor(row), torch.tensor(col), torch.tensor([pairs[p] for p in sorted(pairs)]))


def test_propagation_matrices_differ_from_disttgls_only_where_stated():
    adj, n = _adjacency(), 4
    a_hat = normalized_adjacency(adj, n, torch.float64).to_dense()
    index, weight = pyg_temporal.edge_inputs(adj, torch.float64)
    gcn = pyg_temporal.RECURRENT.evolvegcno.GCNConv_Fixed_W(n, n)
    eye = torch.eye(n, dtype=torch.float64)
    assert torch.allclose(gcn(eye, eye, index, weight), a_hat, atol=1e-12)  # EvolveGCN-H: disttgl's Â
    # a self-loop of count 2 on node 0: disttgl adds it to I's 1 (3), gcn_norm keeps 2 in place of the 1
    loop = DeviceAdjacency(0, torch.cat([adj.row, torch.tensor([0])]), torch.cat([adj.col, torch.tensor([0])]),
                           torch.cat([adj.count, torch.tensor([2])]))
    dense = torch.zeros(n, n, dtype=torch.float64)
    dense[loop.row, loop.col] = loop.count.double()
    dense += torch.diag(torch.tensor([0.0, 1, 1, 1], dtype=torch.float64))  # gcn_norm: +1 only without a loop
    dinv = dense.sum(1).rsqrt()
    index, weight = pyg_temporal.edge_inputs(loop, torch.float64)
    assert torch.allclose(gcn(eye, eye, index, weight), dinv[:, None] * dense * dinv[None, :], atol=1e-12)
    assert not torch.allclose(normalized_adjacency(loop, n, torch.float64).to_dense(), gcn(eye, eye, index, weight))
    # ChebConv K = 2's second term: -D^-1/2 A D^-1/2 (no I; isolated node 3 all zeros)
    cheb = ChebConv(n, n, K=2).double()
    with torch.no_grad():
        cheb.lins[0].weight.zero_()
        cheb.lins[1].weight.copy_(eye)
        cheb.bias.zero_()
    a = torch.zeros(n, n, dtype=torch.float64)
    a[adj.row, adj.col] = adj.count.double()
    d = a.sum(1)
    dh = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    index, weight = pyg_temporal.edge_inputs(adj, torch.float64)
    assert torch.allclose(cheb(eye, index, weight), -(dh[:, None] * a * dh[None, :]), atol=1e-12)


def test_gconvlstm_k1_ignores_the_graph():
    torch.manual_seed(0)
    cell = pyg_temporal.RECURRENT.GConvLSTM(3, 5, K=1)
    x, adj = torch.randn(4, 3), _adjacency()
    index, weight = pyg_temporal.edge_inputs(adj, torch.float32)
    empty = torch.zeros(2, 0, dtype=torch.long)
    h, c = cell(x, index, weight)
    assert torch.equal(h, cell(x, empty, torch.zeros(0))[0])
    cell2 = pyg_temporal.RECURRENT.GConvLSTM(3, 5, K=2)
    assert not torch.allclose(cell2(x, index, weight)[0], cell2(x, empty, torch.zeros(0))[0])


def test_without_the_package_the_benchmark_skips_the_baselines(data, monkeypatch, capsys):
    real = pyg_temporal.importlib.util.find_spec
    monkeypatch.setattr(pyg_temporal.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_geometric_temporal" else real(name, *a))
    layers, why = pyg_temporal._load_layers()
    assert layers is None and "not installed" in why and "--no-deps" in why
    import snapshot  # noqa: PLC0415 - benchmarks/snapshot.py, which imports pyg_temporal

    monkeypatch.setattr(pyg_temporal, "UNAVAILABLE", why)
    args = type("Args", (), {"baseline": "pyg-temporal", "pyg_models": ["evolvegcn-h"]})()
    assert snapshot._baselines(data / "s.h5", data, None, args) == []
    assert capsys.readouterr().out.strip().splitlines() == [f"skipping the PyG-Temporal baselines: {why}"]
