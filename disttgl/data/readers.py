"""Readers for raw event files, one per input format, all returning :class:`RawEvents`.

Parsing is done by polars with an explicit schema (fast, multi-threaded). When polars rejects a file,
or a parsed column holds nulls, a slow line-by-line diagnosis runs to name the exact line and column;
it never runs on good input.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import polars as pl

from disttgl.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("jodie", "tgl", "tgn", "snap", "csv")


@dataclass
class RawEvents:
    """Events as read, before id remapping and sorting. Ids are the input's own (int or str)."""

    path: Path  # the events file, for error messages
    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray  # float64
    label: np.ndarray | None = None
    edge_feat: np.ndarray | None = None  # float32 [E, d], aligned with the rows read
    edge_feat_path: Path | None = None
    node_feat: np.ndarray | None = None  # float32 [rows, d], row = original integer id
    node_feat_path: Path | None = None
    ext_roll: np.ndarray | None = None  # int8 split given by the source (TGL)
    # maps a 0-based data row to its 1-based line number in ``path`` (for error messages)
    line_of: Callable[[int], int] = lambda row: row + 1

    @property
    def num_events(self) -> int:
        return len(self.t)


@dataclass(frozen=True)
class CsvColumns:
    """Columns for the generic ``csv`` format: a header name, or an int, a 0-based position (when
    every column is given by position and the first line is data, the file is read as header-less)."""

    src: str | int = "src"
    dst: str | int = "dst"
    time: str | int = "t"
    label: str | int | None = None
    features: tuple[str | int, ...] = ()
    separator: str = ","


@dataclass(frozen=True)
class SnapColumns:
    """0-based positions for the header-less ``snap`` format; None: the default (src 0, dst 1, and
    the time column detected when the file has 4 columns, else the first remaining column)."""

    src: int | None = None
    dst: int | None = None
    time: int | None = None


# ----------------------------------------------------------------------------------------- helpers

GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def _open_text(path: Path):
    """Text lines of ``path``, gunzipped when its bytes say gzip (as polars decides, not the name).

    utf-8-sig drops a leading byte-order mark, which would otherwise glue onto the first column name.
    A truncated or damaged gzip stream fails mid-read: that becomes a DataError naming the file.
    """
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            yield fh
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(path, f"truncated or corrupt gzip file ({exc})") from None


def _check_nonempty(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "input file does not exist")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    if path.suffix == ".gz" and not _is_gzip(path):
        raise DataError(path, "named .gz but not gzip-compressed; decompress it properly or rename it")


def _data_lines(path: Path, skip_lines: int, comment_prefix: str | None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every data line: past the header, not blank, not a comment."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno <= skip_lines or not line.strip():
                continue
            if comment_prefix is not None and line.startswith(comment_prefix):
                continue
            yield lineno, line


def _row_counter(path: Path, skip_lines: int, comment_prefix: str | None) -> Callable[[int], int]:
    """Return a function mapping a data row index to its line number, honouring blank and comment
    lines (it re-reads the file, so it is only called to word an error)."""

    def line_of(row: int) -> int:
        for seen, (lineno, _) in enumerate(_data_lines(path, skip_lines, comment_prefix)):
            if seen == row:
                return lineno
        return row + skip_lines + 1

    return line_of


def _split_line(line: str, separator: str | None) -> list[str]:
    line = line.rstrip("\r\n")
    return line.split() if separator is None else line.split(separator)


def _diagnose(path: Path, *, skip_lines: int, separator: str | None, kinds: Sequence[str],
              names: Sequence[str], comment_prefix: str | None, min_columns: bool = False) -> None:
    """Scan the file for the first line polars would reject and raise a precise DataError.

    ``kinds`` holds per column "int", "float" or "str"; ``min_columns`` lets rows carry more columns
    (the ragged JODIE feature list is checked against the first row instead).
    """
    expected = len(kinds)
    for lineno, line in _data_lines(path, skip_lines, comment_prefix):
        fields = _split_line(line, separator)
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


def _read(path: Path, *, names: Sequence[str], kinds: Sequence[str], separator: str | None,
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
            _check_header_columns(path, names, separator)
        _diagnose(path, skip_lines=skip_lines if not header_names else 1, separator=separator,
                  kinds=diag_kinds, names=names, comment_prefix=comment_prefix, min_columns=ragged)
        raise DataError(path, f"cannot parse: {str(exc).splitlines()[0]}") from None
    df = df.filter(~pl.all_horizontal(pl.all().is_null()))  # blank lines read as all-null rows
    if df.height == 0:
        raise DataError(path, "file holds no events")
    if df.null_count().sum_horizontal().item():
        _diagnose(path, skip_lines=skip_lines if not header_names else 1, separator=separator,
                  kinds=diag_kinds, names=names, comment_prefix=comment_prefix, min_columns=ragged)
        raise DataError(path, "missing values")
    return df


def _check_header_columns(path: Path, names: Sequence[str], separator: str | None) -> None:
    header = _header(path, separator)
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; the header has {header}", line=1)


def _first_data_line(path: Path, skip_lines: int, comment_prefix: str | None) -> str:
    for _, line in _data_lines(path, skip_lines, comment_prefix):
        return line
    raise DataError(path, "file holds no events")


def _numpy(df: pl.DataFrame, name: str, dtype) -> np.ndarray:
    return df.get_column(name).to_numpy().astype(dtype, copy=False)


def _features(df: pl.DataFrame, names: Sequence[str]) -> np.ndarray | None:
    if not names:
        return None
    return df.select(names).to_numpy().astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------- formats

def read_jodie(path: Path) -> RawEvents:
    """JODIE CSV: ``user,item,timestamp,state_label,f0,f1,...`` with a header that does not list the
    features (the "ragged header"), so the column count comes from the first data row."""
    _check_nonempty(path)
    first = _first_data_line(path, 1, None)
    ncols = len(_split_line(first, ","))
    if ncols < 4:
        raise DataError(path, f"expected at least 4 columns (user,item,timestamp,state_label), found {ncols}",
                        line=2)
    feat_names = [f"f{i}" for i in range(ncols - 4)]
    names = ["user", "item", "timestamp", "state_label", *feat_names]
    kinds = ["int", "int", "float", "int", *(["f32"] * len(feat_names))]
    df = _read(path, names=names, kinds=kinds, separator=",", skip_lines=1)
    return RawEvents(path=path, src=_numpy(df, "user", np.int64), dst=_numpy(df, "item", np.int64),
                     t=_numpy(df, "timestamp", np.float64), label=_numpy(df, "state_label", np.int64),
                     edge_feat=_features(df, feat_names), edge_feat_path=path if feat_names else None,
                     line_of=_row_counter(path, 1, None))


def _sniff_separator(path: Path, comment_prefix: str | None) -> str | None:
    """',' or '\\t' or ' ' when the first row uses exactly that; None for mixed/multiple whitespace."""
    line = _first_data_line(path, 0, comment_prefix).rstrip("\r\n")
    if "," in line:
        return ","
    if "\t" in line and " " not in line and "\t\t" not in line:
        return "\t"
    if " " in line and "\t" not in line and "  " not in line.strip():
        return " "
    return None


def read_snap(path: Path, columns: SnapColumns | None = None) -> RawEvents:
    """SNAP temporal edge list: no header, whitespace or comma separated, ``#``/``%`` comment lines
    allowed, optionally gzipped. By default ``src dst t [extra numeric columns -> edge features]``;
    with exactly 4 columns the time may also be the last one (Bitcoin-OTC/Alpha are
    ``SOURCE,TARGET,RATING,TIME``), so it is detected (:func:`_detect_time`). ``columns`` places
    src/dst/time by 0-based position; every other column becomes an edge feature."""
    columns = columns or SnapColumns()
    _check_nonempty(path)
    comment = _comment_prefix(path)
    sep = _sniff_separator(path, comment)
    ncols = len(_split_line(_first_data_line(path, 0, comment), sep))
    if ncols < 3:
        raise DataError(path, f"expected at least 3 columns (src dst t), found {ncols}",
                        line=_row_counter(path, 0, comment)(0))
    given = {"src": columns.src, "dst": columns.dst, "time": columns.time}
    for role, i in given.items():
        if i is not None and not 0 <= i < ncols:
            raise DataError(path, f"--{role}-col {i} is out of range: the file has {ncols} columns "
                            f"(0..{ncols - 1})", line=_row_counter(path, 0, comment)(0))
    taken = [i for i in given.values() if i is not None]
    if len(set(taken)) != len(taken):
        raise DataError(path, f"--src-col, --dst-col and --time-col must be different columns, got {given}")
    free = [i for i in range(ncols) if i not in taken]
    src = free.pop(0) if columns.src is None else columns.src
    dst = free.pop(0) if columns.dst is None else columns.dst
    time = columns.time
    if time is None and ncols != 4:
        time = free.pop(0)  # the SNAP convention: the column after src and dst
    names = [f"col{i}" for i in range(ncols)]
    kinds = ["f32"] * ncols
    names[src], names[dst] = "src", "dst"
    kinds[src] = kinds[dst] = "int"
    if time is None:
        kinds[free[0]] = kinds[free[1]] = "float"  # both candidates read exactly until one is chosen
    else:
        names[time], kinds[time] = "t", "float"
    if sep is None:
        df = _read_whitespace(path, names, kinds, comment)
    else:
        df = _read(path, names=names, kinds=kinds, separator=sep, comment_prefix=comment)
    if time is None:
        time = _detect_time(path, df, free)
        free.remove(time)
        df = df.rename({names[time]: "t"})
        names[time] = "t"
        log.info("%s: 4 columns, column %d taken as the time and column %d kept as an edge feature "
                 "(--time-col overrides)", path, time, free[0])
    feat_names = [names[i] for i in free]
    return RawEvents(path=path, src=_numpy(df, "src", np.int64), dst=_numpy(df, "dst", np.int64),
                     t=_numpy(df, "t", np.float64), edge_feat=_features(df, feat_names),
                     edge_feat_path=path if feat_names else None, line_of=_row_counter(path, 0, comment))


def _detect_time(path: Path, df: pl.DataFrame, candidates: list[int]) -> int:
    """Which of two candidate columns holds the time. Times are never negative and unix seconds
    dwarf a rating or weight; so the time is the only non-negative column, or the non-negative
    column whose every value exceeds every |value| of the other. Anything else is refused: a wrong
    guess would train on ratings as timestamps without a word."""
    stats = {}
    for i in candidates:
        v = df.get_column(f"col{i}").to_numpy()
        v = v[np.isfinite(v)]  # a NaN/inf time is reported by convert's validation, with its line
        stats[i] = (v.min(), v.max(), np.abs(v).max()) if len(v) else (np.nan, np.nan, np.nan)
    nonneg = [i for i in candidates if stats[i][0] >= 0]
    if len(nonneg) == 1:
        return nonneg[0]
    if len(nonneg) == 2:
        a, b = nonneg
        if stats[a][0] > stats[b][2]:
            return a
        if stats[b][0] > stats[a][2]:
            return b
    ranges = ", ".join(f"column {i} holds {stats[i][0]:g}..{stats[i][1]:g}" for i in candidates)
    raise DataError(path, f"4 columns and the time column cannot be told from the values ({ranges}); "
                    f"pass --time-col {candidates[0]} or --time-col {candidates[1]} (0-based)")


def _comment_prefix(path: Path) -> str | None:
    with _open_text(path) as fh:
        for line in fh:
            if line.strip():
                return line[0] if line[0] in "#%" else None
    return None


def _read_whitespace(path: Path, names: list[str], kinds: list[str], comment: str | None) -> pl.DataFrame:
    """Runs of mixed whitespace: read whole lines, normalise, then split (slower, still vectorised)."""
    try:
        lines = pl.read_csv(path, has_header=False, separator="\x1f", new_columns=["line"], quote_char=None,
                            comment_prefix=comment, schema_overrides=[pl.String])
    except OSError as exc:  # polars' word for a truncated or damaged gzip stream
        raise DataError(path, f"truncated or corrupt gzip file ({exc})" if _is_gzip(path)
                        else f"cannot read ({exc})") from None
    parts = (lines.select(pl.col("line").str.strip_chars().str.replace_all(r"\s+", " ")
                          .str.split(" ").alias("parts")))
    counts = parts.get_column("parts").list.len().to_numpy()
    bad = np.flatnonzero(counts != len(names))
    if len(bad):
        raise DataError(path, f"expected {len(names)} columns, found {counts[bad[0]]}",
                        line=_row_counter(path, 0, comment)(int(bad[0])))
    dtype = {"int": pl.Int64, "float": pl.Float64, "f32": pl.Float32}
    cols = [pl.col("parts").list.get(i).cast(dtype[k], strict=False).alias(n)
            for i, (n, k) in enumerate(zip(names, kinds))]
    df = parts.select(cols)
    if df.null_count().sum_horizontal().item():
        _diagnose(path, skip_lines=0, separator=None, kinds=["float" if k == "f32" else k for k in kinds],
                  names=names, comment_prefix=comment)
    return df


def read_csv_columns(path: Path, columns: CsvColumns) -> RawEvents:
    """Generic CSV; columns chosen by header name or 0-based position. Ids may be integers or strings.

    When every column is given by position and the first line's time field is a number, the file
    has no header and every line is an event."""
    _check_nonempty(path)
    sep = columns.separator
    has_label = columns.label not in (None, "")
    specs = [columns.src, columns.dst, columns.time, *([columns.label] if has_label else []), *columns.features]
    first = _header(path, sep)
    headerless = (all(isinstance(c, int) for c in specs) and columns.time < len(first)
                  and _is_number(first[columns.time]))
    header = [str(i) for i in range(len(first))] if headerless else first
    names = []
    for c in specs:
        if isinstance(c, int) and not 0 <= c < len(header):
            raise DataError(path, f"column index {c} is out of range: the file has {len(header)} columns "
                            f"(0..{len(header) - 1})", line=1)
        names.append(header[c] if isinstance(c, int) else c)
    if len(set(names)) != len(names):
        raise DataError(path, f"a column is named twice in {names}")
    if not headerless:
        if any(n not in header for n in names) and all(_is_number(h) for h in header):
            raise DataError(path, "line 1 holds numbers, not column names: for a header-less file give every "
                            "column by 0-based index, e.g. --src-col 0 --dst-col 1 --time-col 2", line=1)
        _check_header_columns(path, names, sep)
    id_kind = _id_kind(path, sep, [specs[0], specs[1]] if headerless else names[:2], has_header=not headerless)
    kinds = [id_kind, id_kind, "float"] + (["int"] if has_label else []) + ["f32"] * len(columns.features)
    if headerless:
        all_kinds = dict.fromkeys(header, "str") | dict(zip(names, kinds))
        df = _read(path, names=header, kinds=[all_kinds[n] for n in header], separator=sep).select(names)
    else:
        df = _read(path, names=names, kinds=kinds, separator=sep, header_names=True)
    src, dst, time = names[:3]
    label = names[3] if has_label else None
    feat_names = names[3 + has_label:]
    return RawEvents(path=path, src=df.get_column(src).to_numpy(), dst=df.get_column(dst).to_numpy(),
                     t=_numpy(df, time, np.float64), label=_numpy(df, label, np.int64) if label else None,
                     edge_feat=_features(df, feat_names), edge_feat_path=path if feat_names else None,
                     line_of=_row_counter(path, 0 if headerless else 1, None))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header(path: Path, separator: str | None) -> list[str]:
    """The first line's fields, stripped (a byte-order mark is dropped by :func:`_open_text`)."""
    with _open_text(path) as fh:
        return [h.strip() for h in _split_line(fh.readline(), separator)]


def _id_kind(path: Path, separator: str, cols: list[str] | list[int], *, has_header: bool) -> str:
    """Integer ids when the first rows' id fields are integers, else string ids."""
    try:
        sample = pl.read_csv(path, separator=separator, n_rows=1000, columns=cols, has_header=has_header,
                             infer_schema=False)
    except (pl.exceptions.PolarsError, OSError):
        return "str"  # the full read that follows names the problem and its line
    for name in sample.columns:
        if not sample.get_column(name).str.contains(r"^\s*-?\d+\s*$").all():
            return "str"
    return "int"


def _named_header(path: Path, required: Sequence[str]) -> list[str]:
    """Column names of a comma-separated header that must hold ``required``; the unnamed pandas
    index column that TGL and TGN files start with is named ``_index<i>``."""
    _check_nonempty(path)
    header = _header(path, ",")
    for name in required:
        if name not in header:
            raise DataError(path, f"missing column {name!r}; the header has {header}", line=1)
    return [n if n else f"_index{i}" for i, n in enumerate(header)]


def read_tgl(paths: Sequence[Path]) -> RawEvents:
    """TGL layout: ``edges.csv`` (unnamed index column, src, dst, time, optional int_roll, ext_roll)
    plus optional ``edge_features.pt`` and ``node_features.pt`` (plain tensors)."""
    by_name = {p.name: p for p in paths}
    edges = by_name.get("edges.csv")
    if edges is None:
        raise DataError(paths[0] if paths else None, "the tgl format needs an edges.csv among the inputs")
    unknown = set(by_name) - {"edges.csv", "edge_features.pt", "node_features.pt", "labels.csv"}
    if unknown:
        raise DataError(by_name[sorted(unknown)[0]], "unexpected file for the tgl format "
                        "(expected edges.csv, edge_features.pt, node_features.pt, labels.csv)")
    names = _named_header(edges, ("src", "dst", "time"))
    kinds = ["int" if n in ("src", "dst", "int_roll", "ext_roll") or n.startswith("_index") else
             "float" if n == "time" else "str" for n in names]
    df = _read(edges, names=names, kinds=kinds, separator=",", skip_lines=1)
    raw = RawEvents(path=edges, src=_numpy(df, "src", np.int64), dst=_numpy(df, "dst", np.int64),
                    t=_numpy(df, "time", np.float64), line_of=_row_counter(edges, 1, None))
    if "ext_roll" in df.columns:
        roll = _numpy(df, "ext_roll", np.int64)
        if roll.min() < 0 or roll.max() > 2:
            bad = int(np.flatnonzero((roll < 0) | (roll > 2))[0])
            raise DataError(edges, f"ext_roll must be 0, 1 or 2, found {roll[bad]}", line=bad + 2,
                            column="ext_roll")
        raw.ext_roll = roll.astype(np.int8)
    if "edge_features.pt" in by_name:
        raw.edge_feat_path = by_name["edge_features.pt"]
        raw.edge_feat = load_plain_tensor(raw.edge_feat_path)
    if "node_features.pt" in by_name:
        raw.node_feat_path = by_name["node_features.pt"]
        raw.node_feat = load_plain_tensor(raw.node_feat_path)
    return raw


def load_plain_tensor(path: Path) -> np.ndarray:
    """Load a ``.pt`` file that must hold one plain 1-D/2-D tensor (``weights_only=True``: no pickled code)."""
    import pickle

    import torch

    _check_nonempty(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise DataError(path, f"not a plain tensor file ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, torch.Tensor):
        raise DataError(path, f"expected a plain tensor, found {type(obj).__name__}")
    if obj.dim() == 1:
        obj = obj[:, None]
    if obj.dim() != 2:
        raise DataError(path, f"expected a 2-D tensor, found shape {tuple(obj.shape)}")
    return obj.to(torch.float32).numpy()


def read_tgn(paths: Sequence[Path]) -> RawEvents:
    """TGN preprocessed layout: ``ml_NAME.csv`` (index, u, i, ts, label, idx; ids 1-based) with optional
    ``ml_NAME.npy`` edge features (row idx, row 0 padding) and ``ml_NAME_node.npy`` node features."""
    csvs = [p for p in paths if p.suffix == ".csv"]
    if len(csvs) != 1:
        raise DataError(paths[0] if paths else None, "the tgn format needs exactly one ml_NAME.csv")
    path = csvs[0]
    _check_nonempty(path)
    if [h.lower() for h in _header(path, ",")[:2]] == ["user_id", "item_id"]:
        # JODIE numbers users and items from 0 each; read as TGN they would share one id space
        raise DataError(path, "this is a JODIE file (header user_id,item_id,timestamp,state_label,...), not "
                        "TGN's ml_NAME.csv (,u,i,ts,label,idx); convert it with --format jodie", line=1)
    names = _named_header(path, ("u", "i", "ts"))
    kinds = ["float" if n == "ts" else "int" for n in names]
    df = _read(path, names=names, kinds=kinds, separator=",", skip_lines=1)
    raw = RawEvents(path=path, src=_numpy(df, "u", np.int64), dst=_numpy(df, "i", np.int64),
                    t=_numpy(df, "ts", np.float64),
                    label=_numpy(df, "label", np.int64) if "label" in df.columns else None,
                    line_of=_row_counter(path, 1, None))
    stem = path.stem
    for p in paths:
        if p.suffix != ".npy":
            continue
        arr = _load_npy(p)
        if p.stem == f"{stem}_node" or p.stem.endswith("_node"):
            raw.node_feat, raw.node_feat_path = arr, p
        else:
            idx = _numpy(df, "idx", np.int64) if "idx" in df.columns else np.arange(1, len(df) + 1)
            if idx.max() >= len(arr):
                raise DataError(p, f"edge features have {len(arr)} rows but events reference row {idx.max()}")
            raw.edge_feat, raw.edge_feat_path = arr[idx], p
    return raw


def _load_npy(path: Path) -> np.ndarray:
    _check_nonempty(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(path, f"not a plain numeric .npy array ({exc})") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.dtype.kind not in "fiub":
        raise DataError(path, f"expected a 2-D numeric array, found {arr.dtype} {arr.shape}")
    return arr.astype(np.float32, copy=False)


def read_events(paths: Sequence[str | os.PathLike], fmt: str, *, csv_columns: CsvColumns | None = None,
                snap_columns: SnapColumns | None = None) -> RawEvents:
    """Dispatch on ``fmt``; every reader validates its own files."""
    files = [Path(p) for p in paths]
    if not files:
        raise DataError(None, "no input files given")
    if fmt not in FORMATS:
        raise DataError(files[0], f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if fmt in ("jodie", "snap", "csv") and len(files) != 1:
        raise DataError(files[1], f"the {fmt} format takes one input file")
    if fmt == "jodie":
        return read_jodie(files[0])
    if fmt == "snap":
        return read_snap(files[0], snap_columns)
    if fmt == "csv":
        return read_csv_columns(files[0], csv_columns or CsvColumns())
    if fmt == "tgl":
        return read_tgl(files)
    return read_tgn(files)

