"""The report's snapshot DGNN section and communication figure: snapshot runs get their own rows
(and never serve as a TGN run's speed-up baseline or ablation partner); the all-to-all bytes of
parallel runs are read per rank and in total and drawn beside the linear bound, all against numbers
worked by hand."""

import json
import shutil
from pathlib import Path

import pytest

from disttgl import report
from disttgl.cli import main
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate
from disttgl.report.collect import load_run
from disttgl.report.plots import snapshot_comm_figure
from disttgl.report.snapshot_table import comm_rows, linear_bound, snapshot_rows

FIXTURE = Path(__file__).parent / "fixtures" / "report_runs"
F32 = 4


def _snapshot_run(root, dataset, run, *, world=1, blocks=None, epochs=2, hidden=8, mrr=0.3, model="gcn-lstm"):
    """A snapshot-train summary; with ``blocks`` = (snapshot offsets, vertex offsets) a parallel one
    whose ranks sent what the block formula says: rank r d·|T_r|·(N − |V_r|) elements an epoch."""
    d = root / dataset / run
    d.mkdir(parents=True)
    s = {"best_epoch": 1, "test_mrr": mrr, "test_ap": 0.4, "test_ap_1neg": 0.6, "val_mrr": mrr + 0.01, "val_ap": 0.5,
         "epochs": epochs, "train_events_per_s": 1000.0, "total_seconds": 3.0, "model": model, "transfer": "diff",
         "node_features": "degree", "num_snapshots": 20, "edge_life": 3, "transfer_bytes": 12345,
         "config": {"hidden": hidden, "eval_negatives": 9, "parallel": world > 1, "device": "cpu"},
         "machine": {"contended": False}}
    if blocks:
        tb, vb = blocks
        n = vb[-1]
        sent = [hidden * (tb[r + 1] - tb[r]) * (n - (vb[r + 1] - vb[r])) * F32 * epochs for r in range(world)]
        s["parallel"] = {"world": world, "snapshot_blocks": tb, "vertex_blocks": vb, "element_bytes": F32,
                         "comm_bytes": [{"stage_forward": {"sent": b, "received": 0}, "scalars": {"sent": 8, "received": 8}}
                                        for b in sent],
                         "transfer_bytes_per_rank": [100] * world}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_mrr": mrr, "seconds": 1.5}) + "\n"
                                             for e in range(epochs)))
    return load_run(d, dataset, run)


def _tgn(root, dataset, run):
    shutil.copytree(FIXTURE / "wiki" / run, root / dataset / run)
    return load_run(root / dataset / run, dataset, run)


def test_snapshot_runs_have_their_own_section_and_are_no_tgn_baseline(tmp_path):
    res = tmp_path / "res"
    tgn = [_tgn(res, "wiki", "static"), _tgn(res, "wiki", "nostatic")]
    # named to sort before "nostatic": were it a 1x1x1 run without static memory, it would be the baseline
    snap = _snapshot_run(res, "wiki", "agcn", mrr=0.25)
    assert snap.is_snapshot and not any(r.is_snapshot for r in tgn)
    acc = report.accuracy_rows([*tgn, snap])
    assert [r["run"] for r in acc] == ["static", "nostatic"]
    assert report.ablation_rows([*tgn, snap])[0]["run_nostatic"] == "nostatic"
    (row,) = snapshot_rows([*tgn, snap])
    assert (row["run"], row["model"], row["procs"], row["num_snapshots"], row["edge_life"]) == ("agcn", "gcn-lstm", 1, 20, 3)
    assert (row["test_mrr"], row["val_mrr"], row["negatives"], row["time_to_best_s"]) == (0.25, 0.26, 9, 3.0)
    assert row["stage_bytes_per_epoch"] is None and row["contended"] == "no"
    assert main(["report", str(res), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "accuracy.md").read_text()
    section = md[md.index("# Snapshot DGNNs"):]
    assert "## wiki" in section and "| agcn | gcn-lstm | diff | 1 | 20 | 3 | degree | 1 |" in section
    assert "agcn" not in md[:md.index("# Snapshot DGNNs")].split("# Machine")[0]
    assert "<h2>Snapshot DGNNs</h2>" in (tmp_path / "o" / "accuracy.html").read_text()
    assert (tmp_path / "o" / "snapshot_comm.svg").exists()


def test_communication_rows_per_rank_total_formula_and_bound(tmp_path):
    res = tmp_path / "res"
    p2 = _snapshot_run(res, "s", "p2", world=2, blocks=([0, 4, 8], [0, 6, 12]))
    p4 = _snapshot_run(res, "s", "p4", world=4, blocks=([0, 2, 4, 6, 8], [0, 3, 6, 9, 12]))
    odd = _snapshot_run(res, "s", "p3", world=3, blocks=([0, 3, 6, 8], [0, 5, 9, 13]), model="tmgcn")
    single = _snapshot_run(res, "s", "one")
    rows = {r["run"]: r for r in comm_rows([p4, single, odd, p2])}
    assert set(rows) == {"p2", "p3", "p4"}  # the plain process has no parallel block
    # T = 8, N = 12, d = 8, float32: rank r sends 8·|T_r|·(12 − |V_r|)·4 bytes an epoch
    assert rows["p2"]["per_rank"] == [8 * 4 * 6 * 4] * 2 == [768.0, 768.0]
    assert rows["p4"]["per_rank"] == [8 * 2 * 9 * 4] * 4
    # P divides T and N: the total is T·N·d·(1 − 1/P) exactly
    assert rows["p2"]["total"] == rows["p2"]["formula"] == rows["p2"]["bound"] == 96 * 8 * 4 / 2 == 1536
    assert rows["p4"]["total"] == rows["p4"]["formula"] == rows["p4"]["bound"] == 2304
    assert rows["p4"]["per_rank"][0] < rows["p2"]["per_rank"][0]  # each rank's share falls with P
    # blocks 3,3,2 and 5,4,4 (T = 8, N = 13): d·(T·N − Σ|T_r||V_r|) = 8·(104 − 35) below the bound
    odd_row = rows["p3"]
    assert odd_row["formula"] == 8 * (104 - 35) * 4 == odd_row["total"]
    assert odd_row["bound"] == pytest.approx(104 * 8 * (2 / 3) * 4) and odd_row["formula"] < odd_row["bound"]
    assert linear_bound(8, 12, 8, 1) == 0
    assert snapshot_rows([p2])[0]["stage_bytes_per_epoch"] == 1536 and snapshot_rows([p2])[0]["procs"] == 2


def test_communication_figure_draws_total_ranks_and_bound(tmp_path):
    res = tmp_path / "res"
    runs = [_snapshot_run(res, "s", "p2", world=2, blocks=([0, 4, 8], [0, 6, 12])),
            _snapshot_run(res, "s", "p4", world=4, blocks=([0, 2, 4, 6, 8], [0, 3, 6, 9, 12]))]
    fig = snapshot_comm_figure(comm_rows(runs))
    lines = {ln.get_gid(): ln for ln in fig.axes[0].lines}
    base = "snapshot_comm/s/gcn-lstm/8/12/8/"
    assert set(lines) == {base + k for k in ("total", "rank", "bound", "ceiling")}
    assert list(lines[base + "total"].get_xdata()) == [2, 4] and list(lines[base + "total"].get_ydata()) == [1536, 2304]
    assert sorted(lines[base + "rank"].get_ydata()) == [576] * 4 + [768] * 2
    assert list(lines[base + "bound"].get_ydata()) == pytest.approx([0, 1536, 2048, 2304])  # P = 1 .. 4
    assert list(lines[base + "ceiling"].get_ydata()) == [96 * 8 * 4] * 2
    assert main(["report", str(res), "--out", str(tmp_path / "o")]) == 0
    assert f'id="{base}total"' in (tmp_path / "o" / "snapshot_comm.svg").read_text()


def test_no_parallel_snapshot_run_draws_a_note():
    fig = snapshot_comm_figure([])
    assert "no snapshot run with several ranks" in fig.axes[0].texts[0].get_text()


def test_a_real_snapshot_run_is_read(tmp_path):
    write_graph(generate(SynthConfig(events=1500, nodes=40, edge_dim=0, seed=1)), tmp_path / "g.h5")
    assert main(["snapshots", str(tmp_path / "g.h5"), "--num-snapshots", "20", "--edge-life", "2", "--out",
                 str(tmp_path / "s.h5")]) == 0
    run = tmp_path / "res" / "synthetic" / "tm"
    assert main(["snapshot-train", str(tmp_path / "s.h5"), str(tmp_path / "g.h5"), "--out", str(run), "--epochs", "2",
                 "--model", "tmgcn", "--hidden", "4", "--m-window", "3", "--eval-negatives", "5", "--threads", "1"]) == 0
    r = load_run(run)
    assert r.status == "ok" and r.is_snapshot
    (row,) = snapshot_rows([r])
    summary = json.loads((run / "summary.json").read_text())
    assert row["model"] == "tmgcn" and row["num_snapshots"] == 20 and row["test_mrr"] == summary["test_mrr"]
    assert row["negatives"] == 5 and row["transfer_bytes"] == summary["transfer_bytes"] > 0
