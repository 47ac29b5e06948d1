"""Edge-classification runs in the report (their own section, kept out of the link-prediction
ablation and baselines) and in the workflow (run key ``task``, synthetic ``labels``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from disttgl.cli import main
from disttgl.report.collect import load_run
from disttgl.report.edge_class_table import edge_class_rows
from disttgl.report.tables import ablation_rows, accuracy_rows, baseline_for

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "report_runs"


def _edge_class_run(root: Path, dataset: str, run: str, **summary) -> Path:
    d = root / dataset / run
    d.mkdir(parents=True)
    s = {"best_epoch": 3, "test_f1_micro": 0.41, "test_f1_macro": 0.33, "test_accuracy": 0.41, "val_f1_micro": 0.38,
         "task": "edge-class", "num_classes": 8, "majority_test_f1_micro": 0.07, "unseen_labels": {"val": 0, "test": 2},
         "train_events_per_s": 9000.0, "config": {"task": "edge-class", "static": None, "device": "cpu"}, **summary}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_f1_micro": 0.3, "seconds": 1.0}) + "\n"
                                             for e in (1, 2, 3)))
    return d


def test_edge_class_runs_get_their_section_and_stay_out_of_link_comparisons(tmp_path):
    res = tmp_path / "res"
    shutil.copytree(FIXTURE / "wiki" / "static", res / "wiki" / "static")  # a link run with static memory
    shutil.copytree(FIXTURE / "synthetic" / "nostatic", res / "wiki" / "nostatic")
    _edge_class_run(res, "wiki", "aaa_ec")  # sorts first: it must not become the link runs' 1x1x1 baseline
    _edge_class_run(res, "wiki", "bad_ec", test_f1_micro=None)
    runs = [load_run(res / "wiki" / r, "wiki", r) for r in ("static", "nostatic", "aaa_ec", "bad_ec")]
    link, _, ec, bad = runs
    assert ec.status == "ok" and ec.task == "edge-class" and link.task == "link"
    assert bad.status == "failed" and "test_f1_micro" in bad.reason
    assert baseline_for(runs[1], runs) is runs[1] and baseline_for(ec, runs) is ec
    assert [(r["run_static"], r["run_nostatic"]) for r in ablation_rows(runs)] == [("static", "nostatic")]
    rows = edge_class_rows(runs)
    assert rows == [{"dataset": "wiki", "run": "aaa_ec", "parallelism": "1x1x1", "static_memory": "no", "classes": 8,
                     "best": "epoch 3", "val_f1_micro": 0.38, "test_f1_micro": 0.41, "test_f1_macro": 0.33,
                     "majority_f1_micro": 0.07, "unseen": 2, "train_events_per_s": 9000.0}]
    acc = {r["run"]: r for r in accuracy_rows(runs)}
    assert acc["aaa_ec"]["test_mrr"] is None and "F1 in the section below" in acc["aaa_ec"]["note"]
    assert main(["report", str(res), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "accuracy.md").read_text()
    section = md[md.index("# Edge classification"):]
    assert "| aaa_ec | 1x1x1 | no | 8 | epoch 3 | 0.3800 | 0.4100 | 0.3300 | 0.0700 | 2 | 9,000 |" in section
    assert "bad_ec" not in section and "zero_division=0" in section
    html = (tmp_path / "out" / "accuracy.html").read_text()
    assert "<h2>Edge classification</h2>" in html and "aaa_ec" in html
    assert "Edge classification" not in _no_ec_report(tmp_path)


def _no_ec_report(tmp_path: Path) -> str:
    res = tmp_path / "only_link"
    shutil.copytree(FIXTURE / "wiki" / "static", res / "wiki" / "static")
    assert main(["report", str(res), "--out", str(tmp_path / "o2")]) == 0
    return (tmp_path / "o2" / "accuracy.md").read_text()


def _workdir(tmp_path: Path, runs: dict, **synthetic) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path)
    for name in ("workflow", "profiles", ".test"):
        shutil.copytree(REPO / name, tmp_path / name)
    path = tmp_path / ".test" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["runs"] = runs
    config["parallel"]["configs"] = []
    config["synthetic"].update(synthetic)
    path.write_text(yaml.safe_dump(config))
    return tmp_path


def _dry_run(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-n", "-p", "--configfile", ".test/config.yaml"], cwd=workdir,
                          capture_output=True, text=True, timeout=300)


def test_workflow_passes_the_run_task_and_the_synthetic_labels(tmp_path):
    wd = _workdir(tmp_path, {"ec": {"task": "edge-class"}, "plain": {}}, labels=5)
    proc = _dry_run(wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmds = [line.split("Shell command: ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines()
            if "Shell command: " in line]
    trains = {c.split("--out ")[1].split()[0]: c for c in cmds if c.startswith("disttgl train ")}
    assert trains["results/synthetic/ec"].count("--task edge-class") == 1
    assert "--task" not in trains["results/synthetic/plain"]  # link: the default, no flag
    assert any(c.startswith("disttgl synth ") and "--labels 5" in c for c in cmds)


@pytest.mark.slow  # two Snakemake dry runs
def test_workflow_schema_refuses_a_bad_task_or_one_label_class(tmp_path):
    for n, (runs, synthetic, message) in enumerate((({"ec": {"task": "node-class"}}, {}, "'node-class' is not one of"),
                                                    ({"ec": {}}, {"labels": 1}, "['synthetic']['labels']"))):
        proc = _dry_run(_workdir(tmp_path / str(n), runs, **synthetic))
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stdout[-2000:]
