"""`disttgl snapshot-train` never loses a run (docs/design.md §11.7): a run stopped after an epoch
leaves its checkpoint and no summary, and `--resume` then gives exactly the uninterrupted run (rows,
summary, weights, counters); a checkpoint of other settings is not resumed; a planted checkpoint
is refused; a second run on the directory waits for the first."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import pytest
import torch

import disttgl.snapshot.train as snapshot_train
from disttgl.cli import main
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate
from disttgl.train.run_lock import run_dir_lock

# the fields of a row that measure time or the machine, not the run
TIMING = {"seconds", "train_events_per_s", "load_avg", "cpu_count", "threads", "own_cores_busy", "other_cores_busy"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    write_graph(generate(SynthConfig(events=1500, nodes=40, edge_dim=0, seed=1)), d / "g.h5")
    assert main(["snapshots", str(d / "g.h5"), "--num-snapshots", "20", "--edge-life", "3", "--out",
                 str(d / "s.h5")]) == 0
    return d


def _train(data, run, epochs, *extra):
    return main(["snapshot-train", str(data / "s.h5"), str(data / "g.h5"), "--out", str(data / run),
                 "--epochs", str(epochs), "--hidden", "8", "--degree-cap", "4", "--eval-negatives", "9",
                 "--threads", "1", "--m-window", "4", *extra])


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in path.read_text().splitlines()]


class Stop(Exception):
    pass


def _stop_after(monkeypatch, epochs_done):
    """Make the run die right after the checkpoint of epoch ``epochs_done`` is written."""
    real = snapshot_train.save_epoch

    def save_then_die(out, **kw):
        real(out, **kw)
        if kw["epochs_done"] == epochs_done:
            raise Stop

    monkeypatch.setattr(snapshot_train, "save_epoch", save_then_die)


@pytest.mark.parametrize("model, features", [("gcn-lstm", "degree"), ("tmgcn", "embedding")])
def test_a_stopped_run_resumes_to_the_uninterrupted_one(data, monkeypatch, model, features):
    flags = ("--model", model, "--node-features", features, "--embedding-dim", "5", "--transfer", "diff")
    assert _train(data, f"{model}-whole", 4, *flags) == 0
    with monkeypatch.context() as m:
        _stop_after(m, 2)
        with pytest.raises(Stop):
            _train(data, f"{model}-cut", 4, *flags, "--resume")
    cut = data / f"{model}-cut"
    assert not (cut / "summary.json").exists() and (cut / "checkpoint.pt").exists()
    assert [r["epoch"] for r in _rows(cut / "metrics.jsonl")] == [0, 1]
    assert _train(data, f"{model}-cut", 4, *flags, "--resume") == 0
    whole, resumed = (json.loads((data / r / "summary.json").read_text()) for r in (f"{model}-whole", f"{model}-cut"))
    assert _rows(cut / "metrics.jsonl") == _rows(data / f"{model}-whole" / "metrics.jsonl")  # losses bit for bit
    for key in ("best_epoch", "epochs", "test_mrr", "test_ap", "test_ap_1neg", "val_mrr", "val_ap",
                "transfer_bytes", "transfer_entries"):
        assert resumed[key] == whole[key], key
    a, b = (torch.load(data / r / "checkpoint.pt", weights_only=True) for r in (f"{model}-whole", f"{model}-cut"))
    assert a["epoch"] == b["epoch"] == 4 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["train_rng"] == b["train_rng"]


def test_a_finished_run_resumed_with_more_epochs_continues(data):
    assert _train(data, "more", 2, "--resume") == 0
    assert _train(data, "more", 3, "--resume") == 0
    assert [r["epoch"] for r in _rows(data / "more" / "metrics.jsonl")] == [0, 1, 2]
    assert _train(data, "three", 3) == 0
    assert _rows(data / "more" / "metrics.jsonl") == _rows(data / "three" / "metrics.jsonl")
    assert json.loads((data / "more" / "summary.json").read_text())["epochs"] == 3


def test_other_settings_start_afresh_and_without_resume_too(data, caplog):
    assert _train(data, "changed", 2, "--resume") == 0
    assert _train(data, "changed", 3, "--resume", "--lr", "0.02") == 0
    assert "different settings (lr)" in caplog.text
    rows = _rows(data / "changed" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert _train(data, "fresh", 3, "--lr", "0.02") == 0
    assert rows == _rows(data / "fresh" / "metrics.jsonl")
    assert _train(data, "changed", 1) == 0  # no --resume: from scratch, the checkpoint replaced
    assert torch.load(data / "changed" / "checkpoint.pt", weights_only=True)["epoch"] == 1


class Planted:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_planted_checkpoint_is_refused(data, capsys):
    run = data / "planted"
    run.mkdir()
    with open(run / "checkpoint.pt", "wb") as fh:
        pickle.dump({"epoch": 1, "x": Planted()}, fh)
    assert _train(data, "planted", 2, "--resume") == 2
    assert "refused checkpoint" in capsys.readouterr().err
    assert not (run / "summary.json").exists()


def test_a_second_run_waits_for_the_lock(data):
    run = data / "locked"
    result = {}
    with run_dir_lock(run, wait=0):
        t = threading.Thread(target=lambda: result.setdefault("code", _train(data, "locked", 1)))
        t.start()
        t.join(1.0)
        # it cannot write before it holds the lock, however long it has had
        assert t.is_alive() and not (run / "metrics.jsonl").exists()
    t.join(120)
    assert result["code"] == 0 and (run / "summary.json").exists()
