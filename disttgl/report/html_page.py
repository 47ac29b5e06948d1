"""The report as one HTML page (pure: rows in, a string out), with the tables of
:mod:`disttgl.report.tables`."""

from __future__ import annotations

import html
from typing import Sequence

from disttgl.report.batch_table import BATCH_COLUMNS
from disttgl.report.batch_table import CAPTION as BATCH_CAPTION
from disttgl.report.edge_class_table import EDGE_CLASS_COLUMNS
from disttgl.report.edge_class_table import NOTE as EDGE_CLASS_NOTE
from disttgl.report.sections import by_dataset
from disttgl.report.tables import ABLATION_COLUMNS, ACCURACY_COLUMNS, accuracy_notes, format_cell
from disttgl.report.snapshot_table import NOTE as SNAPSHOT_NOTE
from disttgl.report.snapshot_table import SNAPSHOT_COLUMNS
from disttgl.report.staleness_table import NOTE as STALENESS_NOTE
from disttgl.report.staleness_table import STALENESS_COLUMNS
from disttgl.report.tgb_table import LEADERBOARD, TGB_COLUMNS, anchor_lines
from disttgl.report.tma_table import NOTE as TMA_NOTE
from disttgl.report.tma_table import TITLE as TMA_TITLE
from disttgl.report.tma_table import TMA_COLUMNS

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0 0 1.5em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:0.3em 0.6em;text-align:right}
th{background:#eef}td.t{text-align:left}tr.missing td,tr.failed td{background:#fdd;color:#900}
caption{text-align:left;font-weight:bold;padding:0.3em 0}"""


TEXT_CLASS = ' class="t"'


def _html_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], caption: str) -> list[str]:
    text_cols = {"dataset", "run", "status", "parallelism", "static_memory", "note", "contended", "run_static",
                 "run_nostatic", "negatives", "compare", "requested", "mitigation", "pipeline", "best", "model",
                 "transfer", "node_features", "method", "rule", "dead", "sync_every"}
    out = [f"<table><caption>{html.escape(caption)}</caption>",
           "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for _, h in columns) + "</tr>"]
    for row in rows:
        cls = f' class="{row["status"]}"' if row.get("status") in ("missing", "failed") else ""
        cells = "".join(f'<td{TEXT_CLASS if k in text_cols else ""}>{html.escape(format_cell(k, row.get(k)))}</td>'
                        for k, _ in columns)
        out.append(f"<tr{cls}>{cells}</tr>")
    return out + ["</table>"]


def _html_section(title: str, note: str, rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A titled section with one table per dataset; nothing without rows."""
    if not rows:
        return []
    body = [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>"]
    for dataset, rs in by_dataset(rows).items():
        body += _html_table(rs, columns, dataset)
    return body


def render_html(acc: Sequence[dict], abl: Sequence[dict], tta_fraction: float,
                machine: dict[str, str] | None = None, tgb: Sequence[dict] = (), staleness: Sequence[dict] = (),
                batch: Sequence[dict] = (), edge_class: Sequence[dict] = (), snapshot: Sequence[dict] = (),
                tma: Sequence[dict] = ()) -> str:
    cols = [c for c in ACCURACY_COLUMNS if c[0] != "dataset"]
    body = ["<h1>Accuracy and speed</h1>"]
    for dataset, rows in by_dataset(acc).items():
        body += _html_table(rows, cols, dataset)
    if not acc:
        body.append("<p>No runs found.</p>")
    body += ["<ul>"] + [f"<li>{html.escape(n)}</li>" for n in accuracy_notes(tta_fraction)] + ["</ul>"]
    body.append("<h2>Static memory ablation</h2>")
    body += (_html_table(abl, ABLATION_COLUMNS, "with vs without static memory") if abl
             else ["<p>No dataset has runs both with and without static memory.</p>"])
    if tgb:
        body.append("<h2>TGB protocol</h2>")
        for dataset, rows in by_dataset(tgb).items():
            body += _html_table(rows, TGB_COLUMNS, dataset)
            for key in sorted({r["compare"] for r in rows if r["compare"] in LEADERBOARD}):
                body.append(f"<p>Leaderboard, {html.escape(key)} (test MRR): "
                            f"{html.escape('; '.join(anchor_lines(key)))}</p>")
    body += _html_section("Accuracy against batch size", BATCH_CAPTION, batch, BATCH_COLUMNS)
    body += _html_section("Staleness (MSPipe)", STALENESS_NOTE, staleness, STALENESS_COLUMNS)
    body += _html_section("Edge classification", EDGE_CLASS_NOTE, edge_class, EDGE_CLASS_COLUMNS)
    body += _html_section("Snapshot DGNNs", SNAPSHOT_NOTE, snapshot, SNAPSHOT_COLUMNS)
    body += _html_section(TMA_TITLE, TMA_NOTE, tma, TMA_COLUMNS)
    if machine:
        body += ["<h2>Machine</h2>", "<ul>"]
        body += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in machine.items()] + ["</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>disttgl report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
