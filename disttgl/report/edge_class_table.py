"""The report's edge-classification section: runs trained with ``--task edge-class`` (pure: runs in,
rows out), DistTGL's GDELT task (docs/design.md §13).

One row per finished edge-classification run: test F1-micro (DistTGL's metric; with one label per
event it equals accuracy), F1-macro, the best validation F1-micro that chose the epoch, and the
majority baseline (always predicting the train split's most frequent class) beside them. A
multi-label run (a 0/1 label matrix, DistTGL's GDELT task, docs/design.md §13.1) is marked
"multi-label" in its classes cell; its F1 is over the indicator matrix of logit > 0 and its baseline
predicts the train split's most frequent label alone.
"""

from __future__ import annotations

from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.sections import markdown_section

EDGE_CLASS_COLUMNS = [("run", "run"), ("parallelism", "i x j x k"), ("static_memory", "static memory"),
                      ("classes", "classes"), ("best", "best epoch / pass"),
                      ("val_f1_micro", "best val F1-micro"), ("test_f1_micro", "test F1-micro"),
                      ("test_f1_macro", "test F1-macro"), ("majority_f1_micro", "majority class (test F1-micro)"),
                      ("unseen", "test events of unseen classes"), ("train_events_per_s", "train events/s")]

NOTE = ("Edge classification: the class of each event (events/label) from its endpoints' embeddings; the epoch "
        "(pass) with the best validation F1-micro is tested. F1-micro counts every event once (with one label per "
        "event it is the accuracy); F1-macro averages the classes present in the split's labels or predictions "
        "(a class never predicted scores 0, as sklearn's zero_division=0). Majority class: always predicting the "
        "train split's most frequent class. Multi-label runs (marked in the classes column): F1 over the 0/1 matrix "
        "of events x classes with the decisions logit > 0 (micro over all entries, macro over the train classes), "
        "and the baseline predicts the train split's most frequent label alone.")


def edge_class_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per finished edge-classification run, by dataset then run."""
    rows = []
    for r in runs:
        if r.status != "ok" or r.task != "edge-class":
            continue
        s = r.summary
        be = s.get("best_epoch")
        unseen = s.get("unseen_labels") if isinstance(s.get("unseen_labels"), dict) else {}
        rows.append({"dataset": r.dataset, "run": r.run, "parallelism": r.par_label,
                     "static_memory": None if r.static is None else ("yes" if r.static else "no"),
                     "classes": _classes(s),
                     "best": None if not isinstance(be, int) else f"{'pass' if r.is_parallel else 'epoch'} {be}",
                     "val_f1_micro": finite_number(s.get("val_f1_micro")),
                     "test_f1_micro": finite_number(s.get("test_f1_micro")),
                     "test_f1_macro": finite_number(s.get("test_f1_macro")),
                     "majority_f1_micro": finite_number(s.get("majority_test_f1_micro")),
                     "unseen": unseen.get("test"),
                     "train_events_per_s": finite_number(s.get("train_events_per_s"))})
    return sorted(rows, key=lambda row: (row["dataset"], row["run"]))


def _classes(s: dict[str, Any]) -> Any:
    """The classes cell: their number, marked for a multi-label run."""
    return f"{s.get('num_classes')} (multi-label)" if s.get("multi_label") else s.get("num_classes")


def render_edge_class_markdown(rows: Sequence[dict[str, Any]], table) -> list[str]:  # noqa: ANN001
    """The section's Markdown lines (``table``: tables.markdown_table); empty without rows."""
    return markdown_section("Edge classification", NOTE, rows, EDGE_CLASS_COLUMNS, table)
