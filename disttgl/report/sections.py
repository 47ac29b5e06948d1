"""What every section of the report shares: rows grouped by dataset, and a titled Markdown section
with one table per dataset (pure)."""

from __future__ import annotations

from typing import Any, Callable, Sequence


def by_dataset(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows grouped by their ``dataset``, in order of first appearance."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["dataset"], []).append(row)
    return out


def markdown_section(title: str, intro: str, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                     table: Callable[[Sequence[dict], Sequence[tuple[str, str]]], list[str]],
                     after: Callable[[str, list[dict]], list[str]] | None = None) -> list[str]:
    """``# title``, the intro, then per dataset ``## dataset`` and its table (and ``after``'s lines);
    nothing without rows.

    Args:
        table: renders rows as Markdown lines (``disttgl.report.tables.markdown_table``).
        after: extra lines below a dataset's table (e.g. the TGB leaderboard).
    """
    if not rows:
        return []
    lines = [f"# {title}", "", intro, ""]
    for dataset, rs in by_dataset(rows).items():
        lines += [f"## {dataset}", "", *table(rs, columns), ""]
        if after is not None:
            lines += after(dataset, rs)
    return lines
