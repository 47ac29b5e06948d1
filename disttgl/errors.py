"""User-facing errors: every bad input becomes one of these, which the CLI prints and exits non-zero on."""

from __future__ import annotations

import os


class DataError(Exception):
    """Bad input data or configuration. The message names the file (and line/column or key)."""

    def __init__(self, path: str | os.PathLike | None, problem: str, *, line: int | None = None,
                 column: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.line = line
        self.column = column
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{problem}")
