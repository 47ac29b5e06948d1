"""The report's TGB section: runs trained with ``--eval tgb`` beside TGB's leaderboard (pure).

A TGB MRR is only comparable with the leaderboard's for the same dataset *version* (tgbl-wiki v2
added every possible negative destination, and TGN fell from 0.72 to ~0.40), so every anchor names
its version and the row says what differs from the leaderboard's setting: features our store
lacks, negatives generated with TGB's rule instead of read from TGB's files.
"""

from __future__ import annotations

from typing import Any, Sequence

from disttgl.report.collect import RunResult, finite_number
from disttgl.report.sections import markdown_section

# TGB's link-property leaderboard (tgb.complexdatalab.com, docs/leaderboard/leader_linkprop.md at
# 86b975f9): test MRR, mean ± std over 5 runs, for the dataset versions named
LEADERBOARD: dict[str, list[tuple[str, float, float | None]]] = {
    "tgbl-wiki-v2": [("TPNet", 0.827, 0.001), ("DyGFormer", 0.798, 0.004), ("EdgeBank (tw)", 0.571, None),
                     ("TGN", 0.396, 0.060)],
    "tgbl-review-v2": [("GraphMixer", 0.521, 0.015), ("TGN", 0.349, 0.020), ("DyGFormer", 0.224, 0.015)],
    "tgbl-coin-v2": [("TPNet", 0.832, None), ("DyGFormer", 0.752, 0.004), ("TGN", 0.586, 0.037)],
    "tgbl-comment-v1": [("TPNet", 0.825, None), ("DyGFormer", 0.670, 0.001), ("TGN", 0.379, 0.021)],
}
# TGB versions of the leaderboard above (tgb/utils/info.py DATA_VERSION_DICT)
CURRENT_VERSION = {"tgbl-wiki": 2, "tgbl-review": 2, "tgbl-coin": 2, "tgbl-comment": 1}
# disttgl datasets that are a TGB dataset's event stream without its features
SAME_STREAM = {"wikipedia": ("tgbl-wiki", "its 172 edge features"), "wiki": ("tgbl-wiki", "its 172 edge features")}

TGB_COLUMNS = [("run", "run"), ("val_tgb_mrr", "val TGB MRR"), ("test_tgb_mrr", "test TGB MRR"),
               ("test_tgb_hits10", "test TGB hits@10"), ("negatives", "negatives"), ("compare", "compared with"),
               ("note", "differs from the leaderboard's setting")]


def tgb_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per finished run that recorded TGB metrics."""
    rows = []
    for r in runs:
        s = r.summary
        if r.status != "ok" or finite_number(s.get("test_tgb_mrr")) is None:
            continue
        info = s.get("tgb") if isinstance(s.get("tgb"), dict) else {}
        name, version = info.get("tgb_name"), info.get("tgb_version")
        notes = []
        if name:
            version = version or CURRENT_VERSION.get(name)
        elif r.dataset.lower() in SAME_STREAM:
            name, lacks = SAME_STREAM[r.dataset.lower()]
            version = CURRENT_VERSION[name]
            notes.append(f"the same events without {lacks}")
        if info.get("source") == "hist_rnd":
            notes.append(f"negatives generated with TGB's hist_rnd rule (q = {info.get('num_neg')}), not TGB's files")
        key = f"{name}-v{version}" if name else None
        rows.append({"dataset": r.dataset, "run": r.run, "val_tgb_mrr": finite_number(s.get("val_tgb_mrr")),
                     "test_tgb_mrr": finite_number(s.get("test_tgb_mrr")),
                     "test_tgb_hits10": finite_number(s.get("test_tgb_hits@10")),
                     "negatives": f"{info.get('source', '?')}, q = {info.get('num_neg', '?')}",
                     "compare": key if key in LEADERBOARD else "(no leaderboard entry)",
                     "note": "; ".join(notes) or "—"})
    return rows


def anchor_lines(key: str) -> list[str]:
    return [f"{model}: {mrr:.3f}" + (f" ± {std:.3f}" if std is not None else "") for model, mrr, std in LEADERBOARD[key]]


TGB_INTRO = ("TGB MRR ranks each positive among its own TGB negatives with ties averaged (TGB's Evaluator); it is "
             "not the MRR@49 above. Best epoch chosen by validation MRR@49; TGB's protocol scores that epoch.")


def render_tgb_markdown(rows: Sequence[dict[str, Any]], table) -> list[str]:  # noqa: ANN001 - tables.markdown_table
    """The section's Markdown lines (``table`` renders rows as a Markdown table); empty without rows."""
    def leaderboard(dataset: str, rs: list[dict[str, Any]]) -> list[str]:
        keys = sorted({r["compare"] for r in rs if r["compare"] in LEADERBOARD})
        return [line for key in keys for line in (f"Leaderboard, {key} (test MRR): " + "; ".join(anchor_lines(key)), "")]

    return markdown_section("TGB protocol", TGB_INTRO, rows, TGB_COLUMNS, table, after=leaderboard)
