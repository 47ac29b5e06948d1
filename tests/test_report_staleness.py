"""The report's MSPipe section: staleness-bounded runs beside the sequential runs of their dataset."""

import json
import shutil
from pathlib import Path

from disttgl.cli import main
from disttgl.report.collect import load_run
from disttgl.report.staleness_table import staleness_rows

FIXTURE = Path(__file__).parent / "fixtures" / "report_runs"


def _run(tmp_path, dataset, run, staleness=None, test_mrr=0.5):
    d = tmp_path / "res" / dataset / run
    shutil.copytree(FIXTURE / "wiki" / "static", d)
    s = json.loads((d / "summary.json").read_text())
    s["test_mrr"] = test_mrr
    if staleness is not None:
        s["staleness"] = staleness
    (d / "summary.json").write_text(json.dumps(s))
    return load_run(d, dataset, run)


def test_mspipe_runs_sit_beside_the_sequential_baseline_in_order_of_k(tmp_path):
    base = _run(tmp_path, "wiki", "seq", test_mrr=0.61)
    k3 = _run(tmp_path, "wiki", "k3", {"k": 3, "requested": "3", "mitigation": "none", "pipeline": "threads",
                                       "mean_staleness": 1.98}, test_mrr=0.6)
    mit = _run(tmp_path, "wiki", "k3mit", {"k": 3, "requested": "3", "mitigation": "similar", "pipeline": "off",
                                           "mean_staleness": 1.98}, test_mrr=0.605)
    other = _run(tmp_path, "college", "seq")  # no MSPipe run on this dataset: no rows
    rows = staleness_rows([mit, other, k3, base])
    assert [(r["run"], r["k"], r["mitigation"]) for r in rows] == [("seq", 1, "none"), ("k3", 3, "none"),
                                                                   ("k3mit", 3, "similar")]
    assert rows[0]["mean_staleness"] == 0.0 and rows[1]["pipeline"] == "threads" and rows[2]["test_mrr"] == 0.605
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "accuracy.md").read_text()
    section = md[md.index("# Staleness (MSPipe)"):]
    assert "## wiki" in section and "k3mit" in section and "1.9800" in section and "## college" not in section
    assert "Staleness (MSPipe)" in (tmp_path / "o" / "accuracy.html").read_text()


def test_no_mspipe_run_no_section(tmp_path):
    assert staleness_rows([_run(tmp_path, "wiki", "seq")]) == []
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "o")]) == 0
    assert "Staleness" not in (tmp_path / "o" / "accuracy.md").read_text()


def test_batch_size_section_needs_two_sizes_and_orders_them(tmp_path):
    from disttgl.report.batch_table import batch_rows

    def sized(run, size, mrr, dataset="wiki"):
        r = _run(tmp_path, dataset, run, test_mrr=mrr)
        s = json.loads((Path(r.path) / "summary.json").read_text())
        s["batch_size"] = size
        (Path(r.path) / "summary.json").write_text(json.dumps(s))
        return load_run(Path(r.path), dataset, run)

    runs = [sized("b2400", 2400, 0.55), sized("b600", 600, 0.6), sized("b150", 150, 0.62),
            sized("only", 600, 0.5, dataset="college")]
    rows = batch_rows(runs)
    assert [(r["run"], r["batch_size"]) for r in rows] == [("b150", 150), ("b600", 600), ("b2400", 2400)]
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "accuracy.md").read_text()
    assert "# Accuracy against batch size" in md and "## college" not in md[md.index("# Accuracy against"):]
    svg = (tmp_path / "o" / "batch_size.svg").read_text()
    assert 'id="batch_size/wiki/' in svg
