"""The report's MSPipe section: staleness-bounded runs beside the sequential ones of the same dataset
(pure: runs in, rows out).

A row per finished single-process run of a dataset that has at least one MSPipe run (its summary
holds ``staleness``): the sequential runs are the k = 1 baseline. Distributed i x j x k runs with a
k (docs/design.md §5.7) join them, their layout beside k: within a memory batch their i sub-batches
also share one state (``group_staleness`` = i - 1), and their mean staleness counts memory batches.
Speeds measured on shared cores are marked, as in the accuracy table, and no ratio is drawn from them.
"""

from __future__ import annotations

from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.sections import markdown_section

STALENESS_COLUMNS = [("run", "run"), ("layout", "i x j x k"), ("k", "k"), ("group_staleness", "i - 1"),
                     ("requested", "staleness"), ("mitigation", "mitigation"), ("pipeline", "pipeline"),
                     ("mean_staleness", "mean staleness (batches)"),
                     ("val_mrr", "val MRR"), ("val_ap", "val AP"), ("test_mrr", "test MRR"), ("test_ap", "test AP"),
                     ("train_events_per_s", "train events/s"), ("contended", "cores shared")]


def staleness_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """The section's rows, datasets with an MSPipe run only."""
    ok = [r for r in runs if r.status == "ok" and r.kind == "tgn" and r.task == "link"
          and (not r.is_parallel or isinstance(r.summary.get("staleness"), dict))]
    datasets = {r.dataset for r in ok if isinstance(r.summary.get("staleness"), dict)}
    rows = []
    for r in ok:
        if r.dataset not in datasets:
            continue
        s = r.summary
        st = s.get("staleness") if isinstance(s.get("staleness"), dict) else {}
        rows.append({"dataset": r.dataset, "run": r.run, "layout": r.par_label, "k": st.get("k", 1),
                     "group_staleness": st.get("group_staleness", 0), "requested": str(st.get("requested", 1)),
                     "mitigation": st.get("mitigation", "none"), "pipeline": st.get("pipeline", "off"),
                     "mean_staleness": finite_number(st.get("mean_staleness", 0.0)),
                     "val_mrr": finite_number(s.get("val_mrr")), "val_ap": finite_number(s.get("val_ap")),
                     "test_mrr": finite_number(s.get("test_mrr")), "test_ap": finite_number(s.get("test_ap")),
                     "train_events_per_s": finite_number(s.get("train_events_per_s")),
                     "contended": {None: "load not recorded", True: "yes", False: "no"}[r.contended]})
    return sorted(rows, key=lambda row: (row["dataset"], row["k"], row["mitigation"], row["layout"], row["run"]))


NOTE = ("MSPipe (docs/design.md \"Pipeline staleness\"): training batch i reads the memory holding the writes of "
        "batches up to i - k at most (k = 1: sequential); mean staleness counts the earlier batches' writes a "
        "read missed (memory batches of i·B events for an i x j x k run, whose i sub-batches also share one "
        "state: i - 1). Validation and test always read the memory in order. A speed measured on shared cores "
        "(cores shared: yes) is not a measurement.")


def render_staleness_markdown(rows: Sequence[dict[str, Any]], table) -> list[str]:  # noqa: ANN001
    """The section's Markdown lines (``table``: tables.markdown_table); empty without rows."""
    return markdown_section("Staleness (MSPipe)", NOTE, rows, STALENESS_COLUMNS, table)
