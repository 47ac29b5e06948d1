"""``disttgl report``: collect run directories into accuracy/ablation tables and plots.

:func:`write_report` writes every file of the report (atomically); the steps before it are in
:mod:`disttgl.report`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Sequence

from disttgl.atomic import atomic_path
from disttgl.errors import DataError
from disttgl.report.collect import RunResult, collect, machine_info, parse_expect
from disttgl.report.edge_class_table import edge_class_rows
from disttgl.report.html_page import render_html
from disttgl.report.batch_table import batch_rows
from disttgl.report.snapshot_table import comm_rows, snapshot_rows
from disttgl.report.staleness_table import staleness_rows
from disttgl.report.tgb_table import tgb_rows
from disttgl.report.tma_table import tma_rows
from disttgl.report.tables import (ABLATION_COLUMNS, ACCURACY_COLUMNS, DEFAULT_TTA_FRACTION, ablation_rows,
                                   accuracy_rows, markdown_table, render_csv, render_markdown)

log = logging.getLogger(__name__)

OUTPUTS = ("accuracy.md", "accuracy.csv", "accuracy.html", "convergence.svg", "scaling.svg",
           "static_ablation.svg", "static_ablation.md", "static_ablation.csv", "batch_size.svg",
           "snapshot_comm.svg")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(runs: Sequence[RunResult], out: str | os.PathLike, tta_fraction: float = DEFAULT_TTA_FRACTION,
                 machine: dict[str, str] | None = None) -> list[Path]:
    """Write every report file into ``out``; returns their paths (``OUTPUTS`` order)."""
    from disttgl.report import plots  # matplotlib only when figures are drawn

    out = Path(out)
    acc, abl, tgb, stale = accuracy_rows(runs, tta_fraction), ablation_rows(runs), tgb_rows(runs), staleness_rows(runs)
    batch, ec, snap, tma = batch_rows(runs), edge_class_rows(runs), snapshot_rows(runs), tma_rows(runs)
    _write_text(out / "accuracy.md", render_markdown(acc, abl, tta_fraction, machine, tgb, stale, batch, ec, snap, tma))
    _write_text(out / "accuracy.csv", render_csv(acc, ACCURACY_COLUMNS))
    _write_text(out / "accuracy.html", render_html(acc, abl, tta_fraction, machine, tgb, stale, batch, ec, snap, tma))
    plots.save(plots.convergence_figure(runs), out / "convergence.svg")
    plots.save(plots.scaling_figure(runs, acc), out / "scaling.svg")
    plots.save(plots.ablation_figure(abl), out / "static_ablation.svg")
    plots.save(plots.batch_size_figure(batch), out / "batch_size.svg")
    plots.save(plots.snapshot_comm_figure(comm_rows(runs)), out / "snapshot_comm.svg")
    abl_md = ["# Static memory ablation", ""] + (markdown_table(abl, ABLATION_COLUMNS) if abl else
                                                 ["No dataset has runs both with and without static memory."])
    _write_text(out / "static_ablation.md", "\n".join(abl_md) + "\n")
    _write_text(out / "static_ablation.csv", render_csv(abl, ABLATION_COLUMNS))
    return [out / name for name in OUTPUTS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS_DIR",
                        help="run directories, dataset directories of runs, or a results root")
    parser.add_argument("--out", required=True, help="directory for the tables and plots")
    parser.add_argument("--expect", nargs="*", default=[], metavar="DATASET/RUN",
                        help="runs that must appear; those not found are listed as missing")
    parser.add_argument("--tta-fraction", type=float, default=DEFAULT_TTA_FRACTION,
                        help="time-to-accuracy target as a fraction of the 1x1x1 run's best val MRR "
                             f"(default {DEFAULT_TTA_FRACTION})")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.tta_fraction <= 1:
        raise DataError(None, f"--tta-fraction {args.tta_fraction}: must be in (0, 1]")
    runs = collect(args.results, parse_expect(args.expect))
    if not runs:
        raise DataError(args.results[0], "no run directories found (each holds summary.json or metrics.jsonl)")
    for r in runs:
        if r.status != "ok":
            log.warning("%s/%s: %s (%s)", r.dataset, r.run, r.status, r.reason)
    paths = write_report(runs, args.out, args.tta_fraction, machine_info(runs))
    ok = sum(r.status == "ok" for r in runs)
    log.info("report of %d run(s) (%d ok, %d missing/failed) written to %s: %s", len(runs), ok,
             len(runs) - ok, args.out, ", ".join(p.name for p in paths))
    return 0
