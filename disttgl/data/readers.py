"""Readers for raw event files, one per input format, all returning :class:`RawEvents`.

Each reader knows its format's columns and files; reading the text itself (checks, polars parsing,
line-precise errors) is :mod:`disttgl.data.delimited`'s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import polars as pl

from disttgl.data.delimited import (check_header_columns, check_nonempty, column_array, feature_matrix,
                                    first_data_line, header_fields, is_number, open_text, read_table,
                                    read_whitespace_table, row_counter, split_line)
from disttgl.data.tgl_labels import CLASS_FILE, LABELS_FILE, class_tensor_labels, files_by_name, labels_csv_events
from disttgl.data.string_ids import string_codes
from disttgl.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("jodie", "tgl", "tgn", "snap", "csv", "tgb")


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
    ext_roll: np.ndarray | None = None  # int8 split given by the source (TGL, PyG masks)
    # ids already dense 0..num_nodes-1 (PyG): kept as they are, nodes without events included,
    # instead of being compacted; node_feat rows are then node ids
    num_nodes: int | None = None
    original_id: np.ndarray | None = None  # with num_nodes: the input's own id of each node
    id_names: np.ndarray | None = None  # string ids: src/dst are codes into these sorted names
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


# ----------------------------------------------------------------------------------------- formats

def read_jodie(path: Path) -> RawEvents:
    """JODIE CSV: ``user,item,timestamp,state_label,f0,f1,...`` with a header that does not list the
    features (the "ragged header"), so the column count comes from the first data row."""
    check_nonempty(path)
    first = first_data_line(path, 1, None)
    ncols = len(split_line(first, ","))
    if ncols < 4:
        raise DataError(path, f"expected at least 4 columns (user,item,timestamp,state_label), found {ncols}",
                        line=2)
    feat_names = [f"f{i}" for i in range(ncols - 4)]
    names = ["user", "item", "timestamp", "state_label", *feat_names]
    kinds = ["int", "int", "float", "int", *(["f32"] * len(feat_names))]
    df = read_table(path, names=names, kinds=kinds, separator=",", skip_lines=1)
    return RawEvents(path=path, src=column_array(df, "user", np.int64), dst=column_array(df, "item", np.int64),
                     t=column_array(df, "timestamp", np.float64), label=column_array(df, "state_label", np.int64),
                     edge_feat=feature_matrix(df, feat_names), edge_feat_path=path if feat_names else None,
                     line_of=row_counter(path, 1, None))


def _sniff_separator(path: Path, comment_prefix: str | None) -> str | None:
    """',' or '\\t' or ' ' when the first row uses exactly that; None for mixed/multiple whitespace."""
    line = first_data_line(path, 0, comment_prefix).rstrip("\r\n")
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
    check_nonempty(path)
    comment = _comment_prefix(path)
    sep = _sniff_separator(path, comment)
    ncols = len(split_line(first_data_line(path, 0, comment), sep))
    if ncols < 3:
        raise DataError(path, f"expected at least 3 columns (src dst t), found {ncols}",
                        line=row_counter(path, 0, comment)(0))
    given = {"src": columns.src, "dst": columns.dst, "time": columns.time}
    for role, i in given.items():
        if i is not None and not 0 <= i < ncols:
            raise DataError(path, f"--{role}-col {i} is out of range: the file has {ncols} columns "
                            f"(0..{ncols - 1})", line=row_counter(path, 0, comment)(0))
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
        df = read_whitespace_table(path, names, kinds, comment)
    else:
        df = read_table(path, names=names, kinds=kinds, separator=sep, comment_prefix=comment)
    if time is None:
        time = _detect_time(path, df, free)
        free.remove(time)
        df = df.rename({names[time]: "t"})
        names[time] = "t"
        log.info("%s: 4 columns, column %d taken as the time and column %d kept as an edge feature "
                 "(--time-col overrides)", path, time, free[0])
    feat_names = [names[i] for i in free]
    return RawEvents(path=path, src=column_array(df, "src", np.int64), dst=column_array(df, "dst", np.int64),
                     t=column_array(df, "t", np.float64), edge_feat=feature_matrix(df, feat_names),
                     edge_feat_path=path if feat_names else None, line_of=row_counter(path, 0, comment))


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
    with open_text(path) as fh:
        for line in fh:
            if line.strip():
                return line[0] if line[0] in "#%" else None
    return None



def read_csv_columns(path: Path, columns: CsvColumns) -> RawEvents:
    """Generic CSV; columns chosen by header name or 0-based position. Ids may be integers or strings.

    When every column is given by position and the first line's time field is a number, the file
    has no header and every line is an event."""
    check_nonempty(path)
    sep = columns.separator
    has_label = columns.label not in (None, "")
    specs = [columns.src, columns.dst, columns.time, *([columns.label] if has_label else []), *columns.features]
    first = header_fields(path, sep)
    headerless = (all(isinstance(c, int) for c in specs) and columns.time < len(first)
                  and is_number(first[columns.time]))
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
        if any(n not in header for n in names) and all(is_number(h) for h in header):
            raise DataError(path, "line 1 holds numbers, not column names: for a header-less file give every "
                            "column by 0-based index, e.g. --src-col 0 --dst-col 1 --time-col 2", line=1)
        check_header_columns(path, names, sep)
    id_kind = _id_kind(path, sep, [specs[0], specs[1]] if headerless else names[:2], has_header=not headerless)
    kinds = [id_kind, id_kind, "float"] + (["int"] if has_label else []) + ["f32"] * len(columns.features)
    if headerless:
        all_kinds = dict.fromkeys(header, "str") | dict(zip(names, kinds))
        df = read_table(path, names=header, kinds=[all_kinds[n] for n in header], separator=sep).select(names)
    else:
        df = read_table(path, names=names, kinds=kinds, separator=sep, header_names=True)
    src, dst, time = names[:3]
    label = names[3] if has_label else None
    feat_names = names[3 + has_label:]
    if id_kind == "str":  # codes, not one Python str per event (disttgl.data.string_ids)
        src_ids, dst_ids, names = string_codes(df.get_column(src), df.get_column(dst))
    else:
        src_ids, dst_ids, names = df.get_column(src).to_numpy(), df.get_column(dst).to_numpy(), None
    return RawEvents(path=path, src=src_ids, dst=dst_ids, id_names=names,
                     t=column_array(df, time, np.float64), label=column_array(df, label, np.int64) if label else None,
                     edge_feat=feature_matrix(df, feat_names), edge_feat_path=path if feat_names else None,
                     line_of=row_counter(path, 0 if headerless else 1, None))



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
    check_nonempty(path)
    header = header_fields(path, ",")
    for name in required:
        if name not in header:
            raise DataError(path, f"missing column {name!r}; the header has {header}", line=1)
    return [n if n else f"_index{i}" for i, n in enumerate(header)]


def read_tgl(paths: Sequence[Path]) -> RawEvents:
    """TGL layout: ``edges.csv`` (unnamed index column, src, dst, time, optional int_roll, ext_roll)
    plus optional ``edge_features.pt`` and ``node_features.pt`` (plain tensors) and event labels
    (``ec_edge_class.pt``, or ``labels.csv`` when it has one row per event: :mod:`disttgl.data.tgl_labels`)."""
    by_name = files_by_name(paths)
    edges = by_name.get("edges.csv")
    if edges is None:
        raise DataError(paths[0] if paths else None, "the tgl format needs an edges.csv among the inputs")
    unknown = set(by_name) - {"edges.csv", "edge_features.pt", "node_features.pt", LABELS_FILE, CLASS_FILE}
    if unknown:
        raise DataError(by_name[sorted(unknown)[0]], "unexpected file for the tgl format (expected edges.csv, "
                        f"edge_features.pt, node_features.pt, {LABELS_FILE}, {CLASS_FILE})")
    names = _named_header(edges, ("src", "dst", "time"))
    kinds = ["int" if n in ("src", "dst", "int_roll", "ext_roll") or n.startswith("_index") else
             "float" if n == "time" else "str" for n in names]
    df = read_table(edges, names=names, kinds=kinds, separator=",", skip_lines=1)
    raw = RawEvents(path=edges, src=column_array(df, "src", np.int64), dst=column_array(df, "dst", np.int64),
                    t=column_array(df, "time", np.float64), line_of=row_counter(edges, 1, None))
    if "ext_roll" in df.columns:
        roll = column_array(df, "ext_roll", np.int64)
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
    if CLASS_FILE in by_name:
        raw.label = class_tensor_labels(by_name[CLASS_FILE], load_plain_tensor(by_name[CLASS_FILE]), raw.num_events)
    elif LABELS_FILE in by_name:
        raw.label = labels_csv_events(by_name[LABELS_FILE], raw.src, raw.dst, raw.t)
    return raw


def load_plain_tensor(path: Path) -> np.ndarray:
    """Load a ``.pt`` file that must hold one plain 1-D/2-D tensor (``weights_only=True``: no pickled code)."""
    import pickle

    import torch

    check_nonempty(path)
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
    check_nonempty(path)
    if [h.lower() for h in header_fields(path, ",")[:2]] == ["user_id", "item_id"]:
        # JODIE numbers users and items from 0 each; read as TGN they would share one id space
        raise DataError(path, "this is a JODIE file (header user_id,item_id,timestamp,state_label,...), not "
                        "TGN's ml_NAME.csv (,u,i,ts,label,idx); convert it with --format jodie", line=1)
    names = _named_header(path, ("u", "i", "ts"))
    kinds = ["float" if n == "ts" else "int" for n in names]
    df = read_table(path, names=names, kinds=kinds, separator=",", skip_lines=1)
    raw = RawEvents(path=path, src=column_array(df, "u", np.int64), dst=column_array(df, "i", np.int64),
                    t=column_array(df, "ts", np.float64),
                    label=column_array(df, "label", np.int64) if "label" in df.columns else None,
                    line_of=row_counter(path, 1, None))
    stem = path.stem
    for p in paths:
        if p.suffix != ".npy":
            continue
        arr = _load_npy(p)
        if p.stem == f"{stem}_node" or p.stem.endswith("_node"):
            raw.node_feat, raw.node_feat_path = arr, p
        else:
            idx = column_array(df, "idx", np.int64) if "idx" in df.columns else np.arange(1, len(df) + 1)
            if idx.max() >= len(arr):
                raise DataError(p, f"edge features have {len(arr)} rows but events reference row {idx.max()}")
            raw.edge_feat, raw.edge_feat_path = arr[idx], p
    return raw


def _load_npy(path: Path) -> np.ndarray:
    check_nonempty(path)
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
    if fmt == "tgb":  # a folder of TGB's files, with TGB's own ids and split: disttgl.tgb.reader
        raise DataError(files[0], "the tgb format is read by `disttgl convert DIR --format tgb --tgb-name NAME`")
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

