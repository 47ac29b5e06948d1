"""The report's snapshot DGNN section (docs/design.md §11), pure: runs in, rows out; the figure is
:func:`disttgl.report.plots.snapshot_comm_figure`.

- :func:`snapshot_rows`: one row per finished ``disttgl snapshot-train`` run: model, transfer, ranks,
  the cut, the best epoch's validation and test metrics (MRR@Q and AP against the run's own
  ``eval_negatives``), speed and time.
- :func:`comm_rows`: one row per finished ``--parallel`` run, from its summary's ``parallel`` block:
  the training step's all-to-all bytes an epoch in one direction (``stage_forward``, the
  convolution-to-temporal exchange; its backward moves as much the other way), per rank and in total,
  beside the exact block formula d·(T·N − Σ_r |T_r|·|V_r|) and the linear bound T·N·d·(1 − 1/P)
  (both in bytes), which equal each other when P divides T and N (§11.6).
"""

from __future__ import annotations

from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.sections import markdown_section

SNAPSHOT_COLUMNS = [("run", "run"), ("model", "model"), ("transfer", "transfer"), ("procs", "ranks"),
                    ("num_snapshots", "snapshots"), ("edge_life", "edge life"), ("node_features", "node features"),
                    ("best_epoch", "best epoch"), ("val_mrr", "best val MRR"), ("test_mrr", "test MRR"),
                    ("test_ap", "test AP"), ("test_ap_1neg", "test AP (1 neg)"), ("negatives", "eval negatives"),
                    ("train_events_per_s", "train events/s"), ("time_to_best_s", "time to best (s)"),
                    ("total_seconds", "total time (s)"), ("transfer_bytes", "transfer bytes"),
                    ("stage_bytes_per_epoch", "all-to-all bytes/epoch"), ("contended", "cores shared")]

NOTE = ("Snapshot DGNNs (docs/design.md §11): a graph convolution per snapshot, then a per-vertex temporal "
        "model (GCN + LSTM, or TM-GCN's M-product); the links of snapshot t + 1 are ranked from the embeddings "
        "after t against the run's evaluation negatives. Test metrics are those of the best validation-MRR "
        "epoch; an epoch is one full-batch step. Runs with several ranks split the convolution by snapshot and "
        "the temporal step by vertex, with one all-to-all between (bytes per epoch, one direction). A speed "
        "measured on shared cores (cores shared: yes) is not a measurement.")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parallel(r: RunResult) -> dict[str, Any] | None:
    """The summary's ``parallel`` block when it is complete enough to plot."""
    par = r.summary.get("parallel")
    if not isinstance(par, dict) or not _int(par.get("world")) or not isinstance(par.get("comm_bytes"), list):
        return None
    ok = (len(par["comm_bytes"]) == par["world"] and all(isinstance(x, dict) for x in par["comm_bytes"])
          and all(isinstance(par.get(k), list) and len(par[k]) == par["world"] + 1 and all(map(_int, par[k][1:]))
                  for k in ("snapshot_blocks", "vertex_blocks")))
    return par if ok else None


def _stage_per_rank(par: dict[str, Any], epochs: int) -> list[float]:
    """Each rank's training all-to-all bytes sent per epoch (stage_forward)."""
    sent = [(x.get("stage_forward") or {}).get("sent", 0) for x in par["comm_bytes"]]
    return [float(b) / epochs if isinstance(b, (int, float)) else 0.0 for b in sent]


def snapshot_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per finished snapshot run, by dataset, model, ranks and name."""
    rows = []
    for r in runs:
        if r.status != "ok" or not r.is_snapshot:
            continue
        s = r.summary
        cfg = s.get("config") if isinstance(s.get("config"), dict) else {}
        par, epochs = _parallel(r), _int(s.get("epochs"))
        stage = sum(_stage_per_rank(par, epochs)) if par and epochs else None
        rows.append({"dataset": r.dataset, "run": r.run, "model": str(s.get("model", "?")),
                     "transfer": str(s.get("transfer", "?")), "procs": par["world"] if par else 1,
                     "num_snapshots": s["num_snapshots"], "edge_life": s["edge_life"],
                     "node_features": str(s.get("node_features", "?")), "best_epoch": _int(s.get("best_epoch")),
                     "val_mrr": finite_number(s.get("val_mrr")), "test_mrr": finite_number(s.get("test_mrr")),
                     "test_ap": finite_number(s.get("test_ap")), "test_ap_1neg": finite_number(s.get("test_ap_1neg")),
                     "negatives": _int(cfg.get("eval_negatives")),
                     "train_events_per_s": finite_number(s.get("train_events_per_s")),
                     "time_to_best_s": r.time_to_best, "total_seconds": finite_number(s.get("total_seconds")),
                     "transfer_bytes": _int(s.get("transfer_bytes")), "stage_bytes_per_epoch": stage,
                     "contended": {None: "load not recorded", True: "yes", False: "no"}[r.contended]})
    return sorted(rows, key=lambda row: (row["dataset"], row["model"], row["procs"], row["run"]))


def linear_bound(t: int, n: int, d: int, p: int) -> float:
    """T·N·d·(1 − 1/P): the all-to-all's elements in one direction when P divides T and N, and an upper
    bound on them otherwise (the larger snapshot and vertex blocks go to the same ranks)."""
    return t * n * d * (1 - 1 / p)


def comm_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per finished parallel snapshot run (see the module docstring), by group and P."""
    rows = []
    for r in runs:
        par = _parallel(r) if r.status == "ok" and r.is_snapshot else None
        epochs = _int(r.summary.get("epochs"))
        cfg = r.summary.get("config") if isinstance(r.summary.get("config"), dict) else {}
        d = _int(cfg.get("hidden"))
        if par is None or not epochs or not d:
            continue
        tb, vb = par["snapshot_blocks"], par["vertex_blocks"]
        t, n, p = tb[-1], vb[-1], par["world"]
        size = _int(par.get("element_bytes")) or 4  # float32 where the run did not record it
        own = sum((tb[i + 1] - tb[i]) * (vb[i + 1] - vb[i]) for i in range(p))
        per_rank = _stage_per_rank(par, epochs)
        rows.append({"dataset": r.dataset, "run": r.run, "model": str(r.summary.get("model", "?")), "procs": p,
                     "T": t, "N": n, "d": d, "element_bytes": size, "per_rank": per_rank, "total": sum(per_rank),
                     "formula": float(d * (t * n - own) * size), "bound": linear_bound(t, n, d, p) * size,
                     "ceiling": float(t * n * d * size)})
    return sorted(rows, key=lambda row: (row["dataset"], row["model"], row["T"], row["N"], row["d"], row["procs"],
                                         row["run"]))


def render_snapshot_markdown(rows: Sequence[dict[str, Any]], table) -> list[str]:  # noqa: ANN001
    """The section's Markdown lines (``table``: tables.markdown_table); empty without rows."""
    return markdown_section("Snapshot DGNNs", NOTE, rows, SNAPSHOT_COLUMNS, table)
