"""The report's RandomTMA / SuperTMA section: TMA runs (summary.json as disttgl.tma.coordinator writes
it) get their own rows, checked against hand-written summaries, and stay out of the TGN sections
(accuracy table, speed-up baseline, static-memory ablation, batch size)."""

import json
import shutil
from pathlib import Path

from disttgl import report
from disttgl.cli import main
from disttgl.report.batch_table import batch_rows
from disttgl.report.collect import load_run
from disttgl.report.plots import _label
from disttgl.report.tma_table import method_label, tma_rows

FIXTURE = Path(__file__).parent / "fixtures" / "report_runs"


def _tma_run(root, dataset, run, *, method="random", parts=3, clusters=None, kept=0.315, dead=(), best=2, rounds=3):
    """A `disttgl tma` run directory: run_summary's fields, the coordinator's, and its config record."""
    d = root / dataset / run
    d.mkdir(parents=True)
    cfg = {"device": "cpu", "static": None, "batch_size": 100, "method": method, "rule": "induced", "parts": parts,
           "clusters": clusters, "partition_seed": 0, "trainers": list(range(parts)), "sync_every": "20steps",
           "time_limit_s": 90.0, "max_rounds": 0, "train_events_kept": kept, "node_share_median": 0.0}
    s = {"best_epoch": best, "val_mrr": 0.4, "val_ap": 0.7, "test_mrr": 0.35, "test_ap": 0.65, "test_ap_1neg": 0.8,
         "epochs": rounds, "train_events_per_s": 900.0, "total_seconds": 30.0, "machine": {"contended": False},
         "config": cfg, "lr": 0.0005, "unit": "round", "rounds": rounds, "rounds_published": rounds,
         "trainers": list(range(parts)), "parts": parts, "dead_trainers": list(dead), "restarts": 0,
         "lighthouse_restarts": 0, "degraded": bool(dead), "best_round": best, "time_to_best_s": 20.5,
         "wall_seconds": 41.25, "training_seconds": 30.0, "train_events": 5000}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "round": e, "val_mrr": 0.3 + 0.05 * e,
                                                         "seconds": 10.0, "train_events_per_s": 900.0}) + "\n"
                                             for e in range(1, rounds + 1)))
    return load_run(d, dataset, run)


def _tgn(root, dataset, run):
    shutil.copytree(FIXTURE / "wiki" / run, root / dataset / run)
    return load_run(root / dataset / run, dataset, run)


def test_tma_runs_have_their_own_section_and_are_no_tgn_baseline(tmp_path):
    res = tmp_path / "res"
    tgn = [_tgn(res, "wiki", "static"), _tgn(res, "wiki", "nostatic")]
    # named to sort before "nostatic": read as a plain 1x1x1 run without static memory it would be the baseline
    rt = _tma_run(res, "wiki", "arandom", dead=[1])
    st = _tma_run(res, "wiki", "asuper", method="super", clusters=64, kept=0.876)
    pa = _tma_run(res, "wiki", "apsgd", method="super", clusters=3, kept=0.9)
    assert all(r.is_tma and r.kind == "tma" for r in (rt, st, pa))
    assert {r.kind for r in tgn} == {"tgn"} and not any(r.is_tma for r in tgn)
    runs = [*tgn, rt, st, pa]
    acc = report.accuracy_rows(runs)  # the TMA runs beside the layouts, never their baseline
    assert [r["run"] for r in acc] == ["static", "nostatic", "arandom", "asuper", "apsgd"]
    assert [r["events_kept"] for r in acc] == ["all", "all", "31.5 %", "87.6 %", "90.0 %"]
    assert [r["parallelism"] for r in acc[2:]] == ["RandomTMA P = 3", "SuperTMA P = 3", "PSGD-PA (C = P) P = 3"]
    ra = acc[2]
    assert ra["trainers"] == 3 and ra["best_epoch"] is None and ra["epochs_to_best"] is None
    assert ra["best_val_mrr"] == 0.4 and "round 2" in ra["note"]
    assert report.ablation_rows(runs)[0]["run_nostatic"] == "nostatic"
    assert batch_rows(runs) == []
    rows = {r["run"]: r for r in tma_rows(runs)}
    assert set(rows) == {"arandom", "asuper", "apsgd"}
    r = rows["arandom"]
    assert (r["method"], r["rule"], r["parts"], r["clusters"], r["trainers"]) == ("RandomTMA", "induced", 3, None, 3)
    assert (r["events_kept"], r["sync_every"], r["rounds"], r["dead"], r["best_round"]) == ("31.5 %", "20steps", 3,
                                                                                           "1", 2)
    # best val MRR from the best round's metrics row (0.3 + 0.05·2); time to best and wall time from the summary
    assert (r["val_mrr"], r["test_mrr"], r["test_ap"], r["time_to_best_s"], r["total_seconds"]) == (
        0.4, 0.35, 0.65, 20.5, 41.25)
    assert rows["asuper"]["method"] == "SuperTMA" and rows["asuper"]["dead"] == "none"
    assert rows["asuper"]["events_kept"] == "87.6 %" and rows["asuper"]["clusters"] == 64
    assert rows["apsgd"]["method"] == "PSGD-PA (C = P)"
    assert [r["run"] for r in tma_rows(runs)] == ["apsgd", "arandom", "asuper"]  # by method label
    assert _label(rt) == "arandom (RandomTMA, rounds)" and _label(st) == "asuper (SuperTMA, rounds)"

    assert main(["report", str(res), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "accuracy.md").read_text()
    section = md[md.index("# RandomTMA / SuperTMA"):].split("# Machine")[0]
    assert "## wiki" in section
    assert "| arandom | RandomTMA | induced | 3 | — | 3 | 31.5 % | 20steps | 3 | 1 | 2 | 0.4000 | 0.3500 |" in section
    before = md[:md.index("# RandomTMA / SuperTMA")]  # in the layouts table, in no other TGN section
    assert "| arandom | ok | RandomTMA P = 3 | 3 | 31.5 % | no |" in before, before[:3000]
    assert all(before.count(name) == 1 for name in ("arandom", "asuper", "apsgd"))
    page = (tmp_path / "o" / "accuracy.html").read_text()
    assert "<h2>RandomTMA / SuperTMA</h2>" in page and "PSGD-PA (C = P)" in page
    csv = (tmp_path / "o" / "accuracy.csv").read_text()  # the layouts table's rows, TMA runs among them
    assert "wiki,arandom,ok,RandomTMA P = 3,3,31.5 %,no," in csv


def test_unfinished_or_other_runs_are_not_tma_rows(tmp_path):
    res = tmp_path / "res"
    run = _tma_run(res, "wiki", "t")
    (res / "wiki" / "t" / "summary.json").unlink()
    missing = load_run(res / "wiki" / "t", "wiki", "t")
    assert missing.status == "missing" and not missing.is_tma
    assert tma_rows([missing, _tgn(res, "wiki", "static")]) == []
    assert run.is_tma  # read before the summary went


def test_method_labels():
    assert method_label("random", 4, None) == "RandomTMA"
    assert method_label("super", 4, 4) == "PSGD-PA (C = P)"
    assert method_label("super", 4, 32) == "SuperTMA"
    assert method_label("super", None, None) == "SuperTMA"
