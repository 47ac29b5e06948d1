"""The report's tables (pure): runs -> accuracy and static-memory ablation rows, and those rows as
CSV and Markdown. The second step of ``disttgl report`` (see :mod:`disttgl.report`)."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.batch_table import render_batch_markdown
from disttgl.report.edge_class_table import render_edge_class_markdown
from disttgl.report.sections import by_dataset
from disttgl.report.snapshot_table import render_snapshot_markdown
from disttgl.report.staleness_table import render_staleness_markdown
from disttgl.report.tma_table import events_kept_label, method_label, render_tma_markdown
from disttgl.report.tgb_table import render_tgb_markdown

DEFAULT_TTA_FRACTION = 0.98


ACCURACY_COLUMNS = [
    # (csv name, display header)
    ("dataset", "dataset"), ("run", "run"), ("status", "status"), ("parallelism", "i x j x k"),
    ("trainers", "trainers"), ("events_kept", "train events kept"), ("static_memory", "static memory"),
    # single-process runs count epochs; a parallel run's metrics count passes of j·k epochs each
    ("best_epoch", "best epoch"), ("best_pass", "best pass"), ("epochs_to_best", "epochs trained to best"),
    ("test_mrr", "test MRR@49"), ("test_ap", "test AP"), ("test_ap_1neg", "test AP (1 neg)"),
    ("best_val_mrr", "best val MRR"), ("time_to_best_s", "time to best val MRR (s)"),
    ("train_events_per_s", "train events/s"), ("speedup_events_per_s", "events/s speed-up"),
    ("time_to_target_s", "time to target (s)"), ("speedup_tta", "time-to-accuracy speed-up"),
    ("contended", "cores shared"), ("note", "note"),
]


def baseline_for(run: RunResult, runs: Sequence[RunResult]) -> RunResult | None:
    """The 1x1x1 run of the same dataset, task and static setting (the one named ``1x1x1`` first)."""
    cands = [r for r in runs if r.status == "ok" and r.dataset == run.dataset and r.static == run.static
             and r.parallelism == (1, 1, 1) and r.task == run.task]
    cands.sort(key=lambda r: (r.run != "1x1x1", r.run))
    return cands[0] if cands else None


def accuracy_rows(runs: Sequence[RunResult], tta_fraction: float = DEFAULT_TTA_FRACTION) -> list[dict]:
    """One row per run. Speed-ups are over the 1x1x1 run of the same dataset and static setting;
    time-to-accuracy uses the target ``tta_fraction`` x the baseline's best validation MRR. RandomTMA /
    SuperTMA runs get a row here too, beside the i x j x k layouts (their trainers, the share of
    training events their parts keep, their time to the same target; details in their own section,
    :mod:`disttgl.report.tma_table`); snapshot DGNN runs have only theirs
    (:mod:`disttgl.report.snapshot_table`)."""
    tma = [r for r in runs if r.kind == "tma"]
    runs = [r for r in runs if r.kind == "tgn"]
    rows = []
    for r in [*runs, *tma]:
        s = r.summary
        row = {k: None for k, _ in ACCURACY_COLUMNS}
        row.update(dataset=r.dataset, run=r.run, status=r.status, note=r.reason,
                   parallelism=None if r.parallelism is None else r.par_label, trainers=r.trainers,
                   static_memory=None if r.static is None else ("yes" if r.static else "no"),
                   events_kept="all" if r.kind == "tgn" and r.status == "ok" else None)
        if r.kind == "tma":
            _tma_fields(r, row)
        if r.status == "ok":
            be = s.get("best_epoch")
            be = be if isinstance(be, int) and not isinstance(be, bool) else None
            tgn = r.kind == "tgn"
            row.update(best_epoch=be if tgn and not r.is_parallel else None,
                       best_pass=be if tgn and r.is_parallel else None,
                       epochs_to_best=r.best_epochs_trained if tgn else None,
                       test_mrr=finite_number(s.get("test_mrr")), test_ap=finite_number(s.get("test_ap")),
                       test_ap_1neg=finite_number(s.get("test_ap_1neg")), best_val_mrr=r.best_val_mrr,
                       time_to_best_s=r.time_to_best,
                       train_events_per_s=finite_number(s.get("train_events_per_s")) if r.kind == "tgn" else
                       row["train_events_per_s"],
                       contended={True: "yes", False: "no", None: "load not recorded"}[r.contended])
            notes = [r.reason, r.contention_note(),
                     "edge classification: F1 in the section below" if r.task == "edge-class" else "",
                     f"averaged model, best at round {be}; see the RandomTMA / SuperTMA section" if not tgn else ""]
            base = baseline_for(r, runs)
            # A speed-up is a ratio of two speeds: neither may have been measured on shared cores.
            refuse = r.contended or (base is not None and base.contended)
            if base is not None and base.contended and base is not r:
                notes.append(f"no speed-up: its 1x1x1 baseline {base.run} was measured on shared cores")
            if base is not None:
                b_eps = finite_number(base.summary.get("train_events_per_s"))
                if b_eps and row["train_events_per_s"] is not None and not refuse:
                    row["speedup_events_per_s"] = row["train_events_per_s"] / b_eps
                if base.best_val_mrr is not None:
                    target = tta_fraction * base.best_val_mrr
                    row["time_to_target_s"] = mine = r.time_to(target)
                    theirs = base.time_to(target)
                    if mine and theirs and not refuse:
                        row["speedup_tta"] = theirs / mine
            row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
    return rows


def _tma_fields(r: RunResult, row: dict[str, Any]) -> None:
    """A TMA run's row beside the layouts: its method and P as the layout, its trainers, the events its
    parts keep, its training events/s (all trainers together, from start to the last round)."""
    s = r.summary
    cfg = s.get("config") if isinstance(s.get("config"), dict) else {}
    parts, trainers = cfg.get("parts", s.get("parts")), s.get("trainers")
    row["parallelism"] = f"{method_label(cfg.get('method'), parts, cfg.get('clusters'))} P = {parts}"
    row["trainers"] = len(trainers) if isinstance(trainers, list) else None
    row["events_kept"] = events_kept_label(cfg.get("train_events_kept"))
    events, seconds = finite_number(s.get("train_events")), finite_number(s.get("training_seconds"))
    row["train_events_per_s"] = events / seconds if events is not None and seconds else None
    static = cfg.get("static")
    row["static_memory"] = "yes" if static else "no"


ABLATION_COLUMNS = [
    ("dataset", "dataset"), ("parallelism", "i x j x k"), ("run_static", "run (static)"),
    ("run_nostatic", "run (no static)"), ("test_mrr_static", "test MRR@49 static"),
    ("test_mrr_nostatic", "test MRR@49 no static"), ("delta_mrr", "Δ MRR"),
    ("test_ap_static", "test AP static"), ("test_ap_nostatic", "test AP no static"), ("delta_ap", "Δ AP"),
]


def ablation_rows(runs: Sequence[RunResult]) -> list[dict]:
    """With vs without static memory, per dataset and parallelism where runs of both settings exist.
    A run without a readable summary has no known setting, so it only appears in the accuracy table."""
    groups: dict[tuple[str, str], dict[bool, RunResult]] = {}
    for r in runs:
        if r.static is None or r.task != "link" or r.kind != "tgn":  # MRR/AP pairs: TGN link prediction runs only
            continue
        side = groups.setdefault((r.dataset, r.par_label), {})
        side.setdefault(r.static, r)
    rows = []
    for (dataset, par), side in sorted(groups.items()):
        if len(side) < 2:
            continue
        st, ns = side[True], side[False]
        row = dict(dataset=dataset, parallelism=par, run_static=st.run, run_nostatic=ns.run)
        for key, short in (("test_mrr", "mrr"), ("test_ap", "ap")):
            a, b = finite_number(st.summary.get(key)), finite_number(ns.summary.get(key))
            row[f"{key}_static"], row[f"{key}_nostatic"] = a, b
            row[f"delta_{short}"] = None if a is None or b is None else a - b
        rows.append(row)
    return rows



_DIGITS = {"test_mrr": 4, "test_ap": 4, "test_ap_1neg": 4, "best_val_mrr": 4, "time_to_best_s": 1,
           "time_to_target_s": 1, "train_events_per_s": 0, "total_seconds": 1, "stage_bytes_per_epoch": 0}


def format_cell(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key.startswith("speedup"):
        return f"{value:.2f}x"
    if key.startswith("delta"):
        return f"{value:+.4f}"
    if isinstance(value, float):
        digits = _DIGITS.get(key, 4)
        return f"{value:,.{digits}f}"
    return str(value)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def render_csv(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k for k, _ in columns])
    for row in rows:
        w.writerow([_csv_value(row.get(k)) for k, _ in columns])
    return buf.getvalue()


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> list[str]:
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [("**" + row[k] + "**" if k == "status" and row[k] != "ok" else format_cell(k, row.get(k)))
                 for k, _ in columns]
        out.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return out


def accuracy_notes(tta_fraction: float) -> list[str]:
    return [
        "MRR@49 and AP rank each positive against 49 negatives (ties favour the positive); "
        "AP (1 neg) is TGN-style AP with one negative per positive.",
        "Time to best val MRR: cumulative wall-clock seconds of training and validation up to the best epoch.",
        "Speed-ups are over the 1x1x1 run of the same dataset and static-memory setting: events/s ratio, "
        f"and time-to-accuracy ratio with the target {tta_fraction:g} x that run's best validation MRR "
        "(— where a run never reaches it).",
        "Best epoch / best pass: a single-process run's metrics count epochs; a parallel i x j x k run's "
        "count passes, each training j·k epochs (epochs trained to best = pass·j·k).",
        "Cores shared: whether other processes kept the machine's cores busy while the run was timed "
        "(recorded by the trainer; 'load not recorded' for older runs). No speed-up is computed from a "
        "speed measured on shared cores, the run's own or its baseline's.",
        "RandomTMA / SuperTMA / PSGD-PA rows (layout 'RandomTMA P = 3' ...): independent trainers on parts of "
        "the graph, weights averaged; train events kept is the share of training events some part trains on "
        "(an i x j x k layout trains on all), events/s counts every trainer, times are training seconds from "
        "the common start; the averaged model is evaluated on the whole graph (details in their section).",
        "Runs marked missing or failed were expected but have no readable summary.json.",
    ]


def render_markdown(acc: Sequence[dict], abl: Sequence[dict], tta_fraction: float,
                    machine: dict[str, str] | None = None, tgb: Sequence[dict] = (),
                    staleness: Sequence[dict] = (), batch: Sequence[dict] = (),
                    edge_class: Sequence[dict] = (), snapshot: Sequence[dict] = (),
                    tma: Sequence[dict] = ()) -> str:
    cols = [c for c in ACCURACY_COLUMNS if c[0] != "dataset"]
    lines = ["# Accuracy and speed", ""]
    for dataset, rows in by_dataset(acc).items():
        lines += [f"## {dataset}", "", *markdown_table(rows, cols), ""]
    if not acc:
        lines += ["No runs found.", ""]
    lines += [f"- {n}" for n in accuracy_notes(tta_fraction)] + [""]
    lines += ["# Static memory ablation", ""]
    lines += (markdown_table(abl, ABLATION_COLUMNS) if abl else ["No dataset has runs both with and without static memory."])
    lines.append("")
    lines += render_tgb_markdown(tgb, markdown_table)
    lines += render_batch_markdown(batch, markdown_table)
    lines += render_staleness_markdown(staleness, markdown_table)
    lines += render_edge_class_markdown(edge_class, markdown_table)
    lines += render_snapshot_markdown(snapshot, markdown_table)
    lines += render_tma_markdown(tma, markdown_table)
    if machine:
        lines += ["# Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()] + [""]
    return "\n".join(lines)
