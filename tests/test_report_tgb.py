"""The report's TGB section: runs with TGB metrics beside the leaderboard of the same dataset version."""

import json
import shutil
from pathlib import Path

from disttgl.cli import main
from disttgl.report.collect import load_run
from disttgl.report.tgb_table import LEADERBOARD, tgb_rows

FIXTURE = Path(__file__).parent / "fixtures" / "report_runs"


def _with_tgb(tmp_path, dataset, run, tgb):
    d = tmp_path / "res" / dataset / run
    shutil.copytree(FIXTURE / "wiki" / "static", d)
    s = json.loads((d / "summary.json").read_text())
    s.update({"val_tgb_mrr": 0.41, "test_tgb_mrr": 0.3875, "val_tgb_hits@10": 0.6, "test_tgb_hits@10": 0.58,
              "tgb": tgb})
    (d / "summary.json").write_text(json.dumps(s))
    return d


def test_wikipedia_with_generated_negatives_is_compared_with_tgbl_wiki_v2_saying_what_differs(tmp_path):
    d = _with_tgb(tmp_path, "wikipedia", "static", {"source": "hist_rnd", "num_neg": 1000})
    (row,) = tgb_rows([load_run(d, "wikipedia", "static")])
    assert row["compare"] == "tgbl-wiki-v2" and row["test_tgb_mrr"] == 0.3875
    assert "172 edge features" in row["note"] and "hist_rnd" in row["note"]
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "accuracy.md").read_text()
    assert "# TGB protocol" in md and "0.3875" in md and "TGN: 0.396 ± 0.060" in md and "DyGFormer: 0.798" in md
    html = (tmp_path / "o" / "accuracy.html").read_text()
    assert "TGB protocol" in html and "TPNet: 0.827" in html


def test_a_tgb_store_is_compared_with_its_own_version_and_others_with_nothing(tmp_path):
    a = _with_tgb(tmp_path, "tgbl-review", "static", {"source": "tgb", "num_neg": 100, "tgb_name": "tgbl-review",
                                                      "tgb_version": 2})
    b = _with_tgb(tmp_path, "mylog", "static", {"source": "hist_rnd", "num_neg": 20})
    c = _with_tgb(tmp_path, "old", "static", {"source": "tgb", "tgb_name": "tgbl-wiki", "tgb_version": 1})
    rows = {r["dataset"]: r for r in tgb_rows([load_run(a, "tgbl-review", "static"), load_run(b, "mylog", "static"),
                                               load_run(c, "old", "static")])}
    assert rows["tgbl-review"]["compare"] == "tgbl-review-v2" and rows["tgbl-review"]["note"] == "—"
    assert rows["mylog"]["compare"] == "(no leaderboard entry)"
    assert rows["old"]["compare"] == "(no leaderboard entry)"  # v1 numbers are another metric's: not listed
    assert set(LEADERBOARD) == {"tgbl-wiki-v2", "tgbl-review-v2", "tgbl-coin-v2", "tgbl-comment-v1"}


def test_runs_without_tgb_metrics_add_no_section(tmp_path):
    assert main(["report", str(FIXTURE / "wiki"), "--out", str(tmp_path / "o")]) == 0
    assert "TGB protocol" not in (tmp_path / "o" / "accuracy.md").read_text()
    assert tgb_rows([load_run(FIXTURE / "wiki" / "static", "wiki", "static")]) == []
