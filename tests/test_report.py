"""`disttgl report`: tables checked against numbers worked by hand from the fixture runs, figures
parsed as XML, byte-identical reruns, CLI exit codes, and the Snakemake rule + HTML report.

Fixture (tests/fixtures/report_runs), epochs 1-based, seconds per epoch / val MRR per epoch:
  synthetic/static    1x1x1 static   10,10,10 / .50,.60,.58  best 2  1000 ev/s  (config.static = path)
  synthetic/nostatic  1x1x1 none     10,10,10 / .30,.55,.57  best 3  1100 ev/s  (config.static = null)
  synthetic/2x1x1     2x1x1 static    6,6,6   / .45,.59,.60  best 3  1800 ev/s  (config.static_memory)
  synthetic/1x2x1     1x2x1 static    5,5     / .40,.50      best 2  1900 ev/s  (parallelism top-level,
                                                                      epochs_trained 2, 4 in metrics)
  synthetic/broken    corrupt summary.json, one logged epoch
  wiki/static, wiki/nostatic  1x1x1, two epochs each
plus synthetic/1x1x2, expected but absent.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from disttgl import report
from disttgl.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "report_runs"
REPO = Path(__file__).parents[1]
SVG = "{http://www.w3.org/2000/svg}"
MACHINE = {"host": "test", "CPU": "fixture"}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    runs = report.collect([FIXTURE], report.parse_expect(["synthetic/1x1x2", "synthetic/static"]))
    d = tmp_path_factory.mktemp("report")
    report.write_report(runs, d, machine=MACHINE)
    return d


def _csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["dataset"], r["run"]): r for r in csv.DictReader(io.StringIO(path.read_text()))}


def _ids(svg: Path, prefix: str) -> dict[str, ET.Element]:
    root = ET.parse(svg).getroot()  # also checks well-formed XML
    assert root.tag == f"{SVG}svg"
    return {g.get("id"): g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith(prefix)}


def test_collect_keeps_missing_and_failed_runs():
    runs = report.collect([FIXTURE], [("synthetic", "1x1x2")])
    status = {r.key: r.status for r in runs}
    assert len(runs) == 8
    assert status[("synthetic", "1x1x2")] == "missing"
    assert status[("synthetic", "broken")] == "failed"
    assert sum(s == "ok" for s in status.values()) == 6
    broken = next(r for r in runs if r.run == "broken")
    assert "summary.json" in broken.reason and len(broken.epochs) == 1


def test_run_dataset_and_root_dirs_are_all_accepted():
    assert [p.name for p in report.find_run_dirs(FIXTURE / "wiki" / "static")] == ["static"]
    assert {p.name for p in report.find_run_dirs(FIXTURE / "wiki")} == {"static", "nostatic"}
    assert len(report.find_run_dirs(FIXTURE)) == 7
    run = report.load_run(FIXTURE / "wiki" / "static")
    assert (run.dataset, run.run, run.parallelism, run.static) == ("wiki", "static", (1, 1, 1), True)


@pytest.mark.parametrize("run, par, world, static", [
    ("static", (1, 1, 1), 1, True), ("nostatic", (1, 1, 1), 1, False),
    ("2x1x1", (2, 1, 1), 2, True), ("1x2x1", (1, 2, 1), 2, True)])
def test_summary_key_variants(run, par, world, static):
    r = report.load_run(FIXTURE / "synthetic" / run)
    assert (r.status, r.parallelism, r.trainers, r.static) == ("ok", par, world, static)


def test_epochs_trained_counts_parallel_passes():
    r = report.load_run(FIXTURE / "synthetic" / "1x2x1")
    assert [(e.epoch, e.epochs_trained, e.cum_seconds) for e in r.epochs] == [(1, 2, 5.0), (2, 4, 10.0)]


def test_accuracy_csv_matches_hand_computed_numbers(out):
    rows = _csv(out / "accuracy.csv")
    assert len(rows) == 8
    st, ns = rows[("synthetic", "static")], rows[("synthetic", "nostatic")]
    two, jj = rows[("synthetic", "2x1x1")], rows[("synthetic", "1x2x1")]
    assert (st["best_epoch"], st["test_mrr"], st["test_ap"], st["test_ap_1neg"]) == ("2", "0.61", "0.7", "0.9")
    assert st["static_memory"] == "yes" and ns["static_memory"] == "no" and two["trainers"] == "2"
    # time to best val MRR = epoch seconds summed up to the best epoch
    assert float(st["time_to_best_s"]) == 20.0 and float(ns["time_to_best_s"]) == 30.0
    assert float(two["time_to_best_s"]) == 18.0 and float(jj["time_to_best_s"]) == 10.0
    # events/s speed-up over the 1x1x1 run of the same static setting
    assert float(two["speedup_events_per_s"]) == pytest.approx(1800 / 1000)
    assert float(jj["speedup_events_per_s"]) == pytest.approx(1900 / 1000)
    assert float(ns["speedup_events_per_s"]) == 1.0  # its own baseline, not the static run's
    # target 0.98 * 0.60 = 0.588: static reaches it at 20 s (epoch 2), 2x1x1 at 12 s (0.59), 1x2x1 never
    assert float(two["time_to_target_s"]) == 12.0
    assert float(two["speedup_tta"]) == pytest.approx(20 / 12, abs=1e-6)
    assert jj["time_to_target_s"] == "" and jj["speedup_tta"] == ""
    assert float(st["speedup_tta"]) == 1.0
    missing, failed = rows[("synthetic", "1x1x2")], rows[("synthetic", "broken")]
    assert missing["status"] == "missing" and missing["test_mrr"] == "" and missing["note"]
    assert failed["status"] == "failed" and "summary.json" in failed["note"]


def test_tta_fraction_changes_the_target():
    runs = report.collect([FIXTURE / "synthetic"])
    rows = {r["run"]: r for r in report.accuracy_rows(runs, tta_fraction=1.0)}
    # target 0.60: static at 20 s, 2x1x1 only at epoch 3 (18 s)
    assert rows["2x1x1"]["time_to_target_s"] == 18.0
    assert rows["2x1x1"]["speedup_tta"] == pytest.approx(20 / 18)


def test_ablation_table(out):
    rows = list(csv.DictReader(io.StringIO((out / "static_ablation.csv").read_text())))
    assert [(r["dataset"], r["parallelism"]) for r in rows] == [("synthetic", "1x1x1"), ("wiki", "1x1x1")]
    assert float(rows[0]["delta_mrr"]) == pytest.approx(0.61 - 0.56)
    assert float(rows[1]["delta_ap"]) == pytest.approx(0.80 - 0.78)
    assert "| synthetic | 1x1x1 | static | nostatic |" in (out / "static_ablation.md").read_text()


def test_markdown_and_html_show_missing_runs(out):
    md = (out / "accuracy.md").read_text()
    assert "## synthetic" in md and "## wiki" in md
    assert "| 1x1x2 | **missing** |" in md and "| broken | **failed** |" in md
    page = (out / "accuracy.html").read_text()
    ET.fromstring(page.split("\n", 1)[1])  # written as well-formed XHTML-style markup
    assert page.count('<tr class="missing">') == 1 and page.count('<tr class="failed">') == 1
    assert "<b>CPU</b>: fixture" in page


def test_convergence_has_one_line_per_run_and_axis(out):
    ids = _ids(out / "convergence.svg", "convergence/")
    expected = {f"convergence/{d}/{r}/{a}" for d, rs in
                (("synthetic", ["static", "nostatic", "2x1x1", "1x2x1", "broken"]), ("wiki", ["static", "nostatic"]))
                for r in rs for a in ("time", "epoch")}
    assert set(ids) == expected
    # one marker per logged epoch
    assert len(list(ids["convergence/synthetic/1x2x1/time"].iter(f"{SVG}use"))) == 2
    assert len(list(ids["convergence/synthetic/static/epoch"].iter(f"{SVG}use"))) == 3


def test_scaling_series_and_ideal_line(out):
    ids = _ids(out / "scaling.svg", "scaling/")
    for metric in ("speedup_events_per_s", "speedup_tta"):
        series = {k for k in ids if k.startswith(f"scaling/{metric}/")}
        assert series == {f"scaling/{metric}/{x}" for x in
                          ("ideal", "synthetic/static", "synthetic/nostatic", "wiki/static", "wiki/nostatic")}
    # synthetic static: 1x1x1, 1x2x1, 2x1x1 for events/s; 1x2x1 never reaches the target
    assert len(list(ids["scaling/speedup_events_per_s/synthetic/static"].iter(f"{SVG}use"))) == 3
    assert len(list(ids["scaling/speedup_tta/synthetic/static"].iter(f"{SVG}use"))) == 2


def test_ablation_bars(out):
    ids = _ids(out / "static_ablation.svg", "ablation/")
    assert len(ids) == 8  # 2 datasets x with/without x (MRR, AP)
    assert "ablation/test_mrr/nostatic/wiki/1x1x1" in ids


def test_rerun_is_byte_identical(out, tmp_path):
    runs = report.collect([FIXTURE], [("synthetic", "1x1x2"), ("synthetic", "static")])
    paths = report.write_report(runs, tmp_path, machine=MACHINE)
    assert [p.name for p in paths] == list(report.OUTPUTS)
    for p in paths:
        assert p.read_bytes() == (out / p.name).read_bytes(), p.name
    assert not list(tmp_path.glob(".*part"))  # atomic writes left no temporaries


def test_empty_results_still_render(tmp_path):
    runs = report.collect([], [("synthetic", "static")])
    report.write_report(runs, tmp_path, machine=None)
    assert "missing" in (tmp_path / "accuracy.csv").read_text()
    for name in ("convergence.svg", "scaling.svg", "static_ablation.svg"):
        ET.parse(tmp_path / name)


def test_metrics_resume_duplicates_and_bad_lines(tmp_path):
    d = tmp_path / "ds" / "run"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(
        '{"epoch": 1, "val_mrr": 0.1, "seconds": 5}\n{"epoch": 2, "val_mrr": 0.2, "seconds": 5}\n'
        '{"epoch": 2, "val_mrr": 0.3, "seconds": 7}\n{"epoch": 3, "val_mr\n')
    (d / "summary.json").write_text('{"best_epoch": 2, "test_mrr": 0.3, "test_ap": 0.4}')
    run = report.load_run(d)
    assert run.status == "ok" and run.parallelism == (1, 1, 1) and run.static is False
    assert [(e.epoch, e.val_mrr, e.cum_seconds) for e in run.epochs] == [(1, 0.1, 5.0), (2, 0.3, 12.0)]
    assert run.time_to_best == 12.0 and "line(s) 4" in run.reason
    (d / "summary.json").write_text('{"best_epoch": 2, "test_ap": 0.4}')
    assert report.load_run(d).status == "failed"


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope: results directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no run directories found" in capsys.readouterr().err
    assert main(["report", str(FIXTURE), "--out", str(tmp_path / "o"), "--expect", "static"]) == 2
    assert "DATASET/RUN" in capsys.readouterr().err
    assert main(["report", str(FIXTURE / "wiki"), str(FIXTURE / "synthetic" / "static"),
                 "--out", str(tmp_path / "o"), "--expect", "wiki/1x1x2"]) == 0
    rows = _csv(tmp_path / "o" / "accuracy.csv")
    assert set(rows) == {("wiki", "static"), ("wiki", "nostatic"), ("synthetic", "static"), ("wiki", "1x1x2")}
    assert "host" in (tmp_path / "o" / "accuracy.md").read_text()


@pytest.mark.slow
def test_snakemake_rule_and_html_report(tmp_path):
    pytest.importorskip("snakemake")
    shutil.copytree(FIXTURE / "synthetic", tmp_path / "res" / "synthetic")
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""\
        configfile: "config.yaml"
        report: "{REPO}/workflow/report/workflow.rst"
        include: "{REPO}/workflow/rules/common.smk"  # every input function, the config's defaults
        include: "{REPO}/workflow/rules/report.smk"
        """))
    (tmp_path / "config.yaml").write_text(textwrap.dedent("""\
        datasets: [synthetic]
        results_dir: res
        runs:
          static: {static_memory: true}
          nostatic: {static_memory: false, epochs: 3}
          broken: {static_memory: true}
        parallel: {configs: [2x1x1], static_memory: true}
        model: {dim: 100, heads: 2, dropout: 0.2, lr: 0.0001, loss: ce}
        train: {epochs: 10, device: cpu, seed: 0}
        """))
    smk = [sys.executable, "-m", "snakemake", "--cores", "1", "report"]
    done = subprocess.run(smk, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _csv(tmp_path / "res" / "report" / "accuracy.csv")
    assert rows[("synthetic", "broken")]["status"] == "failed"
    assert {r["status"] for k, r in rows.items() if k[1] != "broken"} == {"ok"}
    assert "report of 4 run(s)" in (tmp_path / "logs" / "report.log").read_text()
    done = subprocess.run(smk + ["--report", "report.html"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR" not in done.stderr  # docutils complains about broken rst links in captions
    page = (tmp_path / "report.html").read_text()
    for name in ("accuracy.html", "accuracy.csv", "convergence.svg", "scaling.svg", "static_ablation.svg"):
        assert f'"{name}"' in page
    page = page.replace('\\"', '"')
    assert "<strong>Datasets</strong>: synthetic." in page
    # runs are single-process (the schema has no `parallelism` key); layouts come from parallel.configs
    assert "parallelism 1x1x1" not in page and "one process (1x1x1), static memory no, 3 epochs" in page
    assert "distributed, <em>i x j x k</em> = 2x1x1 trainers on 1 machine(s), static memory yes" in page
    assert "best pass" in page


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed (Debian package chromium)")
def test_html_renders_in_headless_browser(out, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1400,900", (out / "accuracy.html").as_uri()],
                   capture_output=True, timeout=60, check=False)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # A blank page compresses to almost nothing; a rendered table does not.
    assert len(data) > 20_000


def test_parallel_runs_report_best_pass_and_epochs_trained(out):
    rows = _csv(out / "accuracy.csv")
    st, jj, two = rows[("synthetic", "static")], rows[("synthetic", "1x2x1")], rows[("synthetic", "2x1x1")]
    # single process: epochs; 1x2x1: its best_epoch 2 is a pass of j·k = 2 epochs (metrics: epochs_trained 4)
    assert (st["best_epoch"], st["best_pass"], st["epochs_to_best"]) == ("2", "", "2")
    assert (jj["best_epoch"], jj["best_pass"], jj["epochs_to_best"]) == ("", "2", "4")
    assert (two["best_epoch"], two["best_pass"], two["epochs_to_best"]) == ("", "3", "3")
    md = (out / "accuracy.md").read_text()
    assert "| best epoch | best pass | epochs trained to best |" in md
    assert "| 1x2x1 | ok | 1x2x1 | 2 | all | yes | — | 2 | 4 |" in md


def _runs_with_machine(tmp_path, machines: dict) -> list:
    shutil.copytree(FIXTURE / "synthetic", tmp_path / "synthetic")
    for run, machine in machines.items():
        path = tmp_path / "synthetic" / run / "summary.json"
        summary = json.loads(path.read_text())
        summary["machine"] = machine
        path.write_text(json.dumps(summary))
    return report.collect([tmp_path / "synthetic"])


BUSY = {"contended": True, "load_avg_max": 3.9, "other_cores_busy_max": 1.6, "cpu_count": 2}
IDLE = {"contended": False, "load_avg_max": 0.1, "other_cores_busy_max": 0.0, "cpu_count": 2}


def test_speed_measured_on_shared_cores_is_flagged_and_gives_no_speed_up(tmp_path):
    runs = _runs_with_machine(tmp_path, {"static": IDLE, "2x1x1": BUSY, "1x2x1": IDLE})
    rows = {r["run"]: r for r in report.accuracy_rows(runs)}
    two, jj, ns = rows["2x1x1"], rows["1x2x1"], rows["nostatic"]
    assert two["contended"] == "yes" and two["speedup_events_per_s"] is None and two["speedup_tta"] is None
    assert "speed measured while other processes used 1.6 of 2 cores, load up to 3.9: not a measurement" in two["note"]
    assert two["train_events_per_s"] == 1800.0 and two["time_to_target_s"] == 12.0  # raw numbers stay
    assert jj["contended"] == "no" and jj["speedup_events_per_s"] == pytest.approx(1.9)
    # a run without the record (older trainer) says so and keeps its numbers
    assert ns["contended"] == "load not recorded" and ns["speedup_events_per_s"] == 1.0
    page = report.render_html(report.accuracy_rows(runs), [], 0.98)
    assert "not a measurement" in page and "cores shared" in page


def test_no_speed_up_against_a_baseline_measured_on_shared_cores(tmp_path):
    runs = _runs_with_machine(tmp_path, {"static": BUSY, "2x1x1": IDLE, "1x2x1": IDLE})
    rows = {r["run"]: r for r in report.accuracy_rows(runs)}
    for run in ("2x1x1", "1x2x1", "static"):
        assert rows[run]["speedup_events_per_s"] is None and rows[run]["speedup_tta"] is None, run
    assert "no speed-up: its 1x1x1 baseline static was measured on shared cores" in rows["2x1x1"]["note"]
    assert rows["nostatic"]["speedup_events_per_s"] == 1.0  # another baseline (no static memory)
    # the scaling figure only draws measured speed-ups
    report.write_report(runs, tmp_path / "out", machine=MACHINE)
    ids = _ids(tmp_path / "out" / "scaling.svg", "scaling/")
    assert "scaling/speedup_events_per_s/synthetic/static" not in ids
