"""`disttgl snapshot-train` end to end on the synthetic generator: both models, both transfers,
the run files, the graph check; and the transfer benchmark on a tiny input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from disttgl.cli import main
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("snap")
    write_graph(generate(SynthConfig(events=1500, nodes=40, edge_dim=0, seed=1)), d / "g.h5")
    assert main(["snapshots", str(d / "g.h5"), "--num-snapshots", "20", "--edge-life", "3", "--out",
                 str(d / "s.h5")]) == 0
    write_graph(generate(SynthConfig(events=1500, nodes=40, edge_dim=0, seed=2)), d / "other.h5")
    return d


def _train(data, run, *extra):
    return main(["snapshot-train", str(data / "s.h5"), str(data / "g.h5"), "--out", str(data / run),
                 "--epochs", "3", "--hidden", "8", "--degree-cap", "4", "--eval-negatives", "9", "--threads", "1",
                 *extra])


@pytest.mark.parametrize("model", ["gcn-lstm", "tmgcn"])
def test_train_writes_the_run_files_and_both_transfers_agree(data, model):
    assert _train(data, f"{model}-diff", "--model", model, "--transfer", "diff", "--m-window", "4") == 0
    assert _train(data, f"{model}-whole", "--model", model, "--transfer", "whole", "--m-window", "4") == 0
    diff = json.loads((data / f"{model}-diff" / "summary.json").read_text())
    whole = json.loads((data / f"{model}-whole" / "summary.json").read_text())
    for key in ("test_mrr", "test_ap", "test_ap_1neg", "val_mrr", "val_ap", "best_epoch"):
        assert diff[key] == whole[key], key  # same inputs on the device: the same run
        assert key == "best_epoch" or 0 < diff[key] <= 1
    assert diff["epochs"] == 3 and diff["model"] == model and diff["node_features"] == "degree"
    assert diff["transfer"] == "diff" and whole["transfer"] == "whole"
    assert 0 < diff["transfer_bytes"] < whole["transfer_bytes"]
    assert diff["target_snapshots"]["train"] > 0 and diff["target_snapshots"]["test"] > 0
    assert diff["config"]["model"] == model and "machine" in diff and diff["train_events_per_s"] > 0
    rows = [json.loads(line) for line in (data / f"{model}-diff" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all(math.isfinite(r["train_loss"]) for r in rows)
    assert sum(r["transfer_bytes"] for r in rows) == diff["transfer_bytes"]
    assert not list((data / f"{model}-diff").glob("*.part"))


def test_embedding_features_and_tmgcn_inverse(data):
    assert _train(data, "emb", "--model", "tmgcn", "--node-features", "embedding", "--embedding-dim", "6",
                  "--m-inverse", "--m-window", "3") == 0
    s = json.loads((data / "emb" / "summary.json").read_text())
    assert s["node_features"] == "embedding" and s["config"]["m_inverse"] is True


def test_wrong_graph_and_bad_flags(data, capsys):
    code = main(["snapshot-train", str(data / "s.h5"), str(data / "other.h5"), "--out", str(data / "bad")])
    assert code == 2 and "cut from another graph" in capsys.readouterr().err
    assert _train(data, "bad", "--node-features", "store") == 2
    assert "no node features" in capsys.readouterr().err
    assert not (data / "bad" / "summary.json").exists()
    with pytest.raises(SystemExit):
        _train(data, "bad", "--model", "gcn")


def test_too_few_snapshots_for_the_splits(data, capsys):
    assert main(["snapshots", str(data / "g.h5"), "--num-snapshots", "2", "--out", str(data / "s2.h5")]) == 0
    capsys.readouterr()
    assert main(["snapshot-train", str(data / "s2.h5"), str(data / "g.h5"), "--out", str(data / "few")]) == 2
    assert "target snapshots" in capsys.readouterr().err


def test_transfer_benchmark_runs_on_a_tiny_input(data, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "snapshot_transfer.py"), str(data / "g.h5"),
                           "--num-snapshots", "20", "--edge-life", "3", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["whole"]["bytes"] > result["diff"]["bytes"] > 0
    assert result["bytes_ratio"] == pytest.approx(result["whole"]["bytes"] / result["diff"]["bytes"])
    assert result["identical"] is True and "whole" in proc.stdout


def test_a_diverging_run_stops_at_the_epoch_and_writes_no_metric(data, capsys):
    """lr 1e30: the first step makes the scores inf; the run exits 2 naming the epoch, before writing it."""
    assert _train(data, "diverged", "--lr", "1e30") == 2
    err = capsys.readouterr().err
    assert "non-finite validation or test scores at epoch 0" in err and "lower --lr" in err
    assert not (data / "diverged" / "metrics.jsonl").exists() and not (data / "diverged" / "summary.json").exists()


def test_a_non_finite_loss_stops_before_the_step(data, capsys, monkeypatch):
    import disttgl.snapshot.train as snapshot_train

    real = snapshot_train.train_step
    calls = []

    def nan_on_second_epoch(*args, **kw):
        loss = real(*args, **kw)
        calls.append(1)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(snapshot_train, "train_step", nan_on_second_epoch)
    assert _train(data, "nanloss") == 2
    assert "non-finite training loss (nan) at epoch 1: training diverged" in capsys.readouterr().err
    rows = [json.loads(x) for x in (data / "nanloss" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and math.isfinite(rows[0]["train_loss"])  # epoch 0 kept, 1 not written
