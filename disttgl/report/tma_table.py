"""The report's RandomTMA / SuperTMA section (docs/design.md §14), pure: runs in, rows out.

One row per finished ``disttgl tma`` run, from its ``summary.json``: the partition (method, rule,
P, C and the share of training events some part keeps, which the random rule cuts hardest), the
averaging (period, rounds, trainers that died), and the averaged model's metrics on the whole graph
(best validation MRR, test MRR/AP of that round) with the training time up to it. A SuperTMA run
with C = P deals one METIS cluster to each trainer: PSGD-PA's partition, labelled so.
"""

from __future__ import annotations

from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.sections import markdown_section

TITLE = "RandomTMA / SuperTMA"

TMA_COLUMNS = [("run", "run"), ("method", "method"), ("rule", "rule"), ("parts", "P"), ("clusters", "C"),
               ("trainers", "trainers"), ("events_kept", "train events kept"), ("sync_every", "sync every"),
               ("rounds", "rounds"), ("dead", "dead trainers"), ("best_round", "best round"),
               ("val_mrr", "best val MRR"), ("test_mrr", "test MRR"), ("test_ap", "test AP"),
               ("time_to_best_s", "time to best (s)"), ("total_seconds", "wall time (s)"),
               ("contended", "cores shared")]

NOTE = ("RandomTMA / SuperTMA (docs/design.md §14): one trainer per part of the graph, each with its own node "
        "memory, their weights averaged over the live trainers every sync period. RandomTMA deals nodes to parts "
        "at random; SuperTMA deals METIS clusters of the training graph (PSGD-PA: one cluster per trainer, C = P). "
        "A part keeps the events of its rule (induced: both endpoints in the part; incident: either); train events "
        "kept is the share of training events some part trains on. The averaged model is evaluated on the whole "
        "graph with one global memory; test metrics are those of the best validation-MRR round, time to best is "
        "training time from the common start to that round. A trainer that died is listed; the others go on.")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def method_label(method: Any, parts: int | None, clusters: int | None) -> str:
    """RandomTMA, SuperTMA, or PSGD-PA (C = P) for SuperTMA with one cluster per part."""
    if method == "random":
        return "RandomTMA"
    if method == "super":
        return "PSGD-PA (C = P)" if parts is not None and clusters == parts else "SuperTMA"
    return str(method)


def events_kept_label(value: Any) -> str | None:
    """The share of training events the parts keep, as ``31.5 %`` (None when not recorded)."""
    kept = finite_number(value)
    return None if kept is None else f"{100 * kept:.1f} %"


def _dead(value: Any) -> str:
    if not isinstance(value, list):
        return "?"
    return ", ".join(map(str, value)) if value else "none"


def tma_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per finished TMA run, by dataset, method, rule, P and name."""
    rows = []
    for r in runs:
        if r.status != "ok" or not r.is_tma:
            continue
        s, cfg = r.summary, r.summary["config"]
        parts, clusters = _int(cfg.get("parts", s.get("parts"))), _int(cfg.get("clusters"))
        trainers = s.get("trainers")
        best_t = finite_number(s.get("time_to_best_s"))
        rows.append({"dataset": r.dataset, "run": r.run, "method": method_label(cfg["method"], parts, clusters),
                     "rule": str(cfg.get("rule", "?")), "parts": parts, "clusters": clusters,
                     "trainers": len(trainers) if isinstance(trainers, list) else None,
                     "events_kept": events_kept_label(cfg.get("train_events_kept")),
                     "sync_every": str(cfg.get("sync_every", "?")), "rounds": _int(s.get("rounds")),
                     "dead": _dead(s.get("dead_trainers")),
                     "best_round": _int(s.get("best_round", s.get("best_epoch"))),
                     "val_mrr": r.best_val_mrr, "test_mrr": finite_number(s.get("test_mrr")),
                     "test_ap": finite_number(s.get("test_ap")),
                     "time_to_best_s": best_t if best_t is not None else r.time_to_best,
                     "total_seconds": finite_number(s.get("wall_seconds")),
                     "contended": {None: "load not recorded", True: "yes", False: "no"}[r.contended]})
    return sorted(rows, key=lambda row: (row["dataset"], row["method"], row["rule"], row["parts"] or 0, row["run"]))


def render_tma_markdown(rows: Sequence[dict[str, Any]], table) -> list[str]:  # noqa: ANN001
    """The section's Markdown lines (``table``: tables.markdown_table); empty without rows."""
    return markdown_section(TITLE, NOTE, rows, TMA_COLUMNS, table)
