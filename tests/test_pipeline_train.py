"""MSPipe's training path end to end: staleness 1 through the stale memory is today's training bit
for bit, the background fetch changes nothing but speed, auto resolves from profiled stage times
and resumes, mitigation runs, and bad settings exit 2 with nothing written."""

from __future__ import annotations

import json

import pytest

from disttgl.cli import main
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate
from disttgl.pipeline.strategy import StalePipeline
from disttgl.train.config import TrainConfig
from disttgl.train.fit import fit
from disttgl.train.single import train
from stores import pipeline_store

SMALL = dict(epochs=2, dim=16, time_dim=16, lr=3e-3, threads=1, progress=False, prefetch=2)
FLAGS = ["--epochs", "2", "--dim", "16", "--time-dim", "16", "--lr", "3e-3", "--threads", "1", "--no-progress"]
METRICS = ("train_loss", "val_ap", "val_mrr", "val_ap_1neg")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    graph, cache = pipeline_store(d)
    return d, graph, cache


def cfg(data, out, **kw):
    _, graph, cache = data
    return TrainConfig(graph=str(graph), cache=str(cache), out=str(out), **{**SMALL, **kw})


def rows(run):
    return [{k: r[k] for k in METRICS} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def stage_file(path, tau):
    path.write_text(json.dumps({"kind": "disttgl-stage-times", "tau": dict(zip(
        ("sample", "feature", "memory", "train", "write"), tau))}))
    return path


def test_staleness_one_through_the_stale_memory_is_todays_training(data, tmp_path):
    plain = train(cfg(data, tmp_path / "plain"))
    stale = fit(StalePipeline(cfg(data, tmp_path / "stale")))  # k = 1, but on the StaleMemory
    assert rows(tmp_path / "plain") == rows(tmp_path / "stale")
    assert (plain["test_mrr"], plain["test_ap"]) == (stale["test_mrr"], stale["test_ap"])
    assert stale["staleness"]["k"] == 1 and stale["staleness"]["mean_staleness"] == 0.0


def test_background_fetch_changes_only_speed_and_staleness_changes_the_numbers(data, tmp_path):
    off = fit(StalePipeline(cfg(data, tmp_path / "off", staleness="3")))
    threads = fit(StalePipeline(cfg(data, tmp_path / "threads", staleness="3", pipeline="threads")))
    assert rows(tmp_path / "off") == rows(tmp_path / "threads")
    assert off["test_mrr"] == threads["test_mrr"]
    assert len(rows(tmp_path / "off")) == 2
    seq = fit(StalePipeline(cfg(data, tmp_path / "seq")))
    assert rows(tmp_path / "seq") != rows(tmp_path / "off")  # k = 3 reads other memory than k = 1
    row = json.loads((tmp_path / "off" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["staleness_k"] == 3 and row["mean_staleness"] == pytest.approx(2.0, abs=0.1)  # i - 1 - (i - 3)
    assert seq["staleness"]["mean_staleness"] == 0.0


def test_auto_takes_k_min_from_the_stage_times_and_resumes_like_any_run(data, tmp_path):
    d, graph, cache = data
    stages = stage_file(tmp_path / "stages.json", (0.1, 0.1, 0.2, 1.0, 0.9))  # k_min = 1 + ceil(1.1) = 3
    args = ["train", str(graph), str(cache), "--staleness", "auto", "--stage-times", str(stages), *FLAGS]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    s = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s["staleness"]["k"] == 3 and s["staleness"]["requested"] == "auto"
    # one epoch, then --resume to two: the same rows as the uninterrupted run
    one = [a if a != "2" else "1" for a in args]
    assert main([*one, "--out", str(tmp_path / "part")]) == 0
    assert main([*args, "--out", str(tmp_path / "part"), "--resume"]) == 0
    assert rows(tmp_path / "part") == rows(tmp_path / "full")
    # other stage times give another k: the checkpoint does not fit and is not resumed silently
    stage_file(stages, (0.1, 0.1, 0.0, 1.0, 0.0))  # k_min = 1
    assert main([*args, "--out", str(tmp_path / "part"), "--resume"]) == 0
    s = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert s["staleness"]["k"] == 1


def test_profile_writes_stage_times_that_auto_reads(data, tmp_path, capsys):
    d, graph, cache = data
    out = tmp_path / "stages.json"
    assert main(["profile", str(graph), str(cache), "--out", str(out), "--batches", "6", "--warmup", "2",
                 "--dim", "16", "--time-dim", "16", "--threads", "1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "disttgl-stage-times" and doc["batches_timed"] == 6
    assert set(doc["tau"]) == {"sample", "feature", "memory", "train", "write"}
    assert all(v >= 0 for v in doc["tau"].values()) and doc["tau"]["train"] > 0
    printed = capsys.readouterr().out
    assert "stage times" in printed and ("k_min" in printed or "bounded by" in printed)
    assert main(["train", str(graph), str(cache), "--out", str(tmp_path / "r"), "--staleness", "auto",
                 "--stage-times", str(out), "--epochs", "1", *FLAGS[2:]]) == 0


def test_mitigation_with_a_similar_file(data, tmp_path):
    d, graph, cache = data
    sim = tmp_path / "similar.h5"
    assert main(["similar", str(graph), "--method", "jaccard", "--k", "5", "--out", str(sim)]) == 0
    none = fit(StalePipeline(cfg(data, tmp_path / "none", staleness="3")))
    mit = fit(StalePipeline(cfg(data, tmp_path / "mit", staleness="3", mitigation="similar", similar=str(sim),
                                mitigation_top=0.1)))
    assert rows(tmp_path / "none") != rows(tmp_path / "mit")
    assert mit["staleness"]["mitigation"] == "similar"
    same = fit(StalePipeline(cfg(data, tmp_path / "lam1", staleness="3", mitigation="similar", similar=str(sim),
                                 mitigation_lambda=1.0)))
    assert rows(tmp_path / "lam1") == rows(tmp_path / "none") and same["test_mrr"] == none["test_mrr"]


@pytest.mark.parametrize("extra, message", [
    (["--staleness", "auto"], "needs --stage-times"),
    (["--staleness", "0"], "must be >= 1"),
    (["--staleness", "two"], "whole number"),
    (["--mitigation", "similar"], "needs --similar"),
    (["--pipeline", "streams"], "it needs --device cuda"),
    (["--staleness", "2", "--pipeline", "threads", "--parallelism", "1x1x2"], "--pipeline threads with --parallelism"),
    (["--staleness", "2", "--stage-times", "s.json", "--parallelism", "1x1x2"], "only resolves --staleness auto"),
    (["--staleness", "2", "--stage-times", "nope.json"], "does not exist"),
])
def test_bad_settings_exit_2_and_write_nothing(data, tmp_path, capsys, extra, message):
    d, graph, cache = data
    out = tmp_path / "r"
    assert main(["train", str(graph), str(cache), "--out", str(out), *extra, *FLAGS]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_similar_file_of_another_graph_is_refused(data, tmp_path, capsys):
    d, graph, cache = data
    other = tmp_path / "other.h5"
    write_graph(generate(SynthConfig(events=3000, nodes=120, edge_dim=4, seed=2)), other)
    sim = tmp_path / "similar.h5"
    assert main(["similar", str(other), "--method", "jaccard", "--out", str(sim)]) == 0
    out = tmp_path / "r"
    assert main(["train", str(graph), str(cache), "--out", str(out), "--staleness", "2", "--mitigation", "similar",
                 "--similar", str(sim), *FLAGS]) == 2
    assert str(sim) in capsys.readouterr().err and not out.exists()


def test_jodie_trains_on_stale_memory(data, tmp_path):
    seq = fit(StalePipeline(cfg(data, tmp_path / "rnn1", memory="rnn")))
    plain = train(cfg(data, tmp_path / "rnn_plain", memory="rnn"))
    assert rows(tmp_path / "rnn1") == rows(tmp_path / "rnn_plain") and seq["test_mrr"] == plain["test_mrr"]
    fit(StalePipeline(cfg(data, tmp_path / "rnn3", memory="rnn", staleness="3")))
    assert rows(tmp_path / "rnn3") != rows(tmp_path / "rnn1")  # APAN: tests/test_stale_apan.py


@pytest.mark.parametrize("memory", ["rnn", "apan"])
def test_profile_times_the_model_of_its_memory(data, tmp_path, memory):
    """`disttgl profile --memory rnn|apan` times JODIE's / APAN's own stages (APAN writes mails to
    sampled neighbours, so its write stage differs from TGN's), and their auto runs read them."""
    d, graph, cache = data
    out = tmp_path / f"stages-{memory}.json"
    assert main(["profile", str(graph), str(cache), "--out", str(out), "--batches", "4", "--warmup", "1",
                 "--dim", "16", "--time-dim", "16", "--threads", "1", "--memory", memory]) == 0
    doc = json.loads(out.read_text())
    assert doc["memory"] == memory and doc["batches_timed"] == 4 and doc["tau"]["train"] > 0
    assert main(["train", str(graph), str(cache), "--out", str(tmp_path / "r"), "--staleness", "auto",
                 "--stage-times", str(out), "--epochs", "1", "--memory", memory, *FLAGS[2:]]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["config"]["memory"] == memory and summary["staleness"]["k"] >= 1
