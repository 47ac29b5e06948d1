"""Delimited text files (comma, tab or whitespace separated, optionally gzipped), as the readers of
:mod:`disttgl.data.readers` see them: input checks, the data lines, and parsing into a polars frame.

Parsing is done by polars with an explicit schema (fast, multi-threaded). When polars rejects a file,
or a parsed column holds nulls, a slow line-by-line diagnosis runs to name the exact line and column;
it never runs on good input.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import polars as pl

from disttgl.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_text(path: Path):
    """Text lines of ``path``, gunzipped when its bytes say gzip (as polars decides, not the name).

    utf-8-sig drops a leading byte-order mark, which would otherwise glue onto the first column name.
    A truncated or damaged gzip stream fails mid-read: that becomes a DataError naming the file.
    """
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            yield fh
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(path, f"truncated or corrupt gzip file ({exc})") from None


def check_nonempty(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "input file does not exist")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    if path.suffix == ".gz" and not is_gzip(path):
        raise DataError(path, "named .gz but not gzip-compressed; decompress it properly or rename it")


def data_lines(path: Path, skip_lines: int, comment_prefix: str | None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every data line: past the header, not blank, not a comment."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno <= skip_lines or not line.strip():
                continue
            if comment_prefix is not None and line.startswith(comment_prefix):
                continue
            yield lineno, line


def row_counter(path: Path, skip_lines: int, comment_prefix: str | None) -> Callable[[int], int]:
    """Return a function mapping a data row index to its line number, honouring blank and comment
    lines (it re-reads the file, so it is only called to word an error)."""

    def line_of(row: int) -> int:
        for seen, (lineno, _) in enumerate(data_lines(path, skip_lines, comment_prefix)):
            if seen == row:
                return lineno
        return row + skip_lines + 1

    return line_of


def split_line(line: str, separator: str | None) -> list[str]:
    line = line.rstrip("\r\n")
    return line.split() if separator is None else line.split(separator)


def diagnose(path: Path, *, skip_lines: int, separator: str | None, kinds: Sequence[str],
              names: Sequence[str], comment_prefix: str | None, min_columns: bool = False) -> None:
    """Scan the file for the first line polars would reject and raise a precise DataError.

    ``kinds`` holds per column "int", "float" or "str"; ``min_columns`` lets rows carry more columns
    (the ragged JODIE feature list is checked against the first row instead).
    """
    expected = len(kinds)
    for lineno, line in data_lines(path, skip_lines, comment_prefix):
        fields = split_line(line, separator)
        if len(fields) != expected and not (min_columns and len(fields) > expected):
            raise DataError(path, f"expected {expected} columns, found {len(fields)}", line=lineno)
        for name, kind, value in zip(names, kinds, fields):
            value = value.strip()
            if value == "":
                raise DataError(path, "empty field", line=lineno, column=name)
            try:
                if kind == "int":
                    int(value)
                elif kind == "float":
                    float(value)
            except ValueError:
                raise DataError(path, f"{value!r} is not a{'n integer' if kind == 'int' else ' number'}",
                                line=lineno, column=name) from None


def read_table(path: Path, *, names: Sequence[str], kinds: Sequence[str], separator: str | None,
          skip_lines: int = 0, comment_prefix: str | None = None, header_names: bool = False,
          ragged: bool = False) -> pl.DataFrame:
    """Parse with polars; on any failure or null, diagnose the exact line and raise DataError."""
    dtype = {"int": pl.Int64, "float": pl.Float64, "str": pl.String, "f32": pl.Float32}
    diag_kinds = ["float" if k == "f32" else k for k in kinds]
    try:
        if header_names:
            df = pl.read_csv(path, separator=separator or " ", comment_prefix=comment_prefix,
                             columns=list(names),
                             schema_overrides={n: dtype[k] for n, k in zip(names, kinds)},
                             raise_if_empty=True)
            df = df.select(names)
        else:
            df = pl.read_csv(path, has_header=False, separator=separator or " ", skip_rows=skip_lines,
                             comment_prefix=comment_prefix, new_columns=list(names),
                             schema_overrides=[dtype[k] for k in kinds], raise_if_empty=True,
                             truncate_ragged_lines=False)
    except pl.exceptions.NoDataError:
        raise DataError(path, "file holds no events") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        if header_names:
            check_header_columns(path, names, separator)
        diagnose(path, skip_lines=skip_lines if not header_names else 1, separator=separator,
                  kinds=diag_kinds, names=names, comment_prefix=comment_prefix, min_columns=ragged)
        raise DataError(path, f"cannot parse: {str(exc).splitlines()[0]}") from None
    df = df.filter(~pl.all_horizontal(pl.all().is_null()))  # blank lines read as all-null rows
    if df.height == 0:
        raise DataError(path, "file holds no events")
    if df.null_count().sum_horizontal().item():
        diagnose(path, skip_lines=skip_lines if not header_names else 1, separator=separator,
                  kinds=diag_kinds, names=names, comment_prefix=comment_prefix, min_columns=ragged)
        raise DataError(path, "missing values")
    return df


def check_header_columns(path: Path, names: Sequence[str], separator: str | None) -> None:
    header = header_fields(path, separator)
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; the header has {header}", line=1)


def first_data_line(path: Path, skip_lines: int, comment_prefix: str | None) -> str:
    for _, line in data_lines(path, skip_lines, comment_prefix):
        return line
    raise DataError(path, "file holds no events")


def column_array(df: pl.DataFrame, name: str, dtype) -> np.ndarray:
    return df.get_column(name).to_numpy().astype(dtype, copy=False)


def feature_matrix(df: pl.DataFrame, names: Sequence[str]) -> np.ndarray | None:
    if not names:
        return None
    return df.select(names).to_numpy().astype(np.float32, copy=False)

def read_whitespace_table(path: Path, names: list[str], kinds: list[str], comment: str | None) -> pl.DataFrame:
    """Runs of mixed whitespace: read whole lines, normalise, then split (slower, still vectorised)."""
    try:
        lines = pl.read_csv(path, has_header=False, separator="\x1f", new_columns=["line"], quote_char=None,
                            comment_prefix=comment, schema_overrides=[pl.String])
    except OSError as exc:  # polars' word for a truncated or damaged gzip stream
        raise DataError(path, f"truncated or corrupt gzip file ({exc})" if is_gzip(path)
                        else f"cannot read ({exc})") from None
    parts = (lines.select(pl.col("line").str.strip_chars().str.replace_all(r"\s+", " ")
                          .str.split(" ").alias("parts")))
    counts = parts.get_column("parts").list.len().to_numpy()
    bad = np.flatnonzero(counts != len(names))
    if len(bad):
        raise DataError(path, f"expected {len(names)} columns, found {counts[bad[0]]}",
                        line=row_counter(path, 0, comment)(int(bad[0])))
    dtype = {"int": pl.Int64, "float": pl.Float64, "f32": pl.Float32}
    cols = [pl.col("parts").list.get(i).cast(dtype[k], strict=False).alias(n)
            for i, (n, k) in enumerate(zip(names, kinds))]
    df = parts.select(cols)
    if df.null_count().sum_horizontal().item():
        diagnose(path, skip_lines=0, separator=None, kinds=["float" if k == "f32" else k for k in kinds],
                  names=names, comment_prefix=comment)
    return df

def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def header_fields(path: Path, separator: str | None) -> list[str]:
    """The first line's fields, stripped (a byte-order mark is dropped by :func:`open_text`)."""
    with open_text(path) as fh:
        return [h.strip() for h in split_line(fh.readline(), separator)]
