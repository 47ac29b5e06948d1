"""The report's batch-size section (DistTGL's Fig. 1: TGN's accuracy falls as the batch grows), pure:
runs in, rows out; the figure is :func:`disttgl.report.plots.batch_size_figure`.

Rows: finished single-process runs (1x1x1, sequential memory) of datasets where such runs were
trained with at least two batch sizes; sorted by static memory and batch size, so each curve reads
left to right.
"""

from __future__ import annotations

from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.sections import markdown_section

BATCH_COLUMNS = [("run", "run"), ("batch_size", "batch size"), ("static_memory", "static memory"),
                 ("best_epoch", "best epoch"), ("val_mrr", "best val MRR"), ("test_mrr", "test MRR"),
                 ("test_ap", "test AP"), ("train_events_per_s", "train events/s"), ("contended", "cores shared")]

CAPTION = ("Accuracy against batch size (one trainer, sequential memory): DistTGL's first observation, that a "
           "memory-based TGNN loses accuracy as the batch grows, because the events of one batch cannot see "
           "each other's memory updates.")


def batch_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per qualifying run (see the module docstring)."""
    single = [r for r in runs if r.status == "ok" and not r.is_parallel and r.kind == "tgn" and r.task == "link"
              and isinstance(r.summary.get("batch_size"), int) and not isinstance(r.summary.get("staleness"), dict)]
    sizes: dict[str, set[int]] = {}
    for r in single:
        sizes.setdefault(r.dataset, set()).add(r.summary["batch_size"])
    rows = []
    for r in single:
        if len(sizes[r.dataset]) < 2:
            continue
        s = r.summary
        rows.append({"dataset": r.dataset, "run": r.run, "batch_size": s["batch_size"],
                     "static_memory": {True: "yes", False: "no", None: "?"}[r.static],
                     "best_epoch": s.get("best_epoch"), "val_mrr": r.best_val_mrr,
                     "test_mrr": finite_number(s.get("test_mrr")), "test_ap": finite_number(s.get("test_ap")),
                     "train_events_per_s": finite_number(s.get("train_events_per_s")),
                     "contended": {None: "load not recorded", True: "yes", False: "no"}[r.contended]})
    return sorted(rows, key=lambda row: (row["dataset"], row["static_memory"], row["batch_size"], row["run"]))


def render_batch_markdown(rows: Sequence[dict[str, Any]], table) -> list[str]:  # noqa: ANN001
    """The section's Markdown lines (``table``: tables.markdown_table); empty without rows."""
    return markdown_section("Accuracy against batch size", CAPTION, rows, BATCH_COLUMNS, table)
