"""tgbl-flight's two files, parsed as TGB's ``csv_to_pd_data`` and ``process_node_feat`` do (py-tgb 2.3.0,
``tgb/utils/pre_process.py``; docs/design.md "TGB data").

Edge list ``ts, src, dst, callsign, typecode`` (header line): airport codes numbered by first appearance (src
before dst, row by row); ``ts`` is a unix time when the first row's is all digits, else a ``%Y-%m-%d`` date that
TGB turns into a timestamp in the machine's local time zone (so do we: the same machine gives TGB's ids and
times). Edge feature: callsign and typecode each padded to 8 characters with ``!`` (an empty field is 8 ``!``;
a typecode longer than 8 becomes 8 ``!``; a longer callsign breaks TGB's loader, so it is an error here), then
every character encoded as TGB's ``convert_str2int``: a digit is its value, ``!`` is -1, any other character
``ord(upper) - 35``. 16 values.

Node file ``airport_node_feat[_v2].csv`` (``airport_code, type, continent, iso_region, longitude, latitude``):
rows whose airport appears in the edge list get ``[one-hot type ‖ one-hot continent ‖ iso_region (padded to 7
with ``!``, encoded as above) ‖ longitude ‖ latitude]`` (TGB's docstring says the coordinates are scaled; its
code does not scale them, and neither do we); types and continents are numbered by first appearance among those
rows; a later row for the same airport replaces an earlier one; airports without a row get zeros. TGB fixes
the width at 20 (its file has 11 types and continents together); another file gets its own width and a warning.
"""

from __future__ import annotations

import datetime
import inspect
import logging
from pathlib import Path

import numpy as np
import polars as pl

from disttgl.data.delimited import check_nonempty
from disttgl.errors import DataError

log = logging.getLogger(__name__)

NODE_FILE = {1: "airport_node_feat.csv"}  # version >= 2: airport_node_feat_v{version}.csv
TGB_NODE_DIM = 20


def node_file_name(version: int) -> str:
    return NODE_FILE.get(version, f"airport_node_feat_v{version}.csv")


def encode_chars(text: str) -> list[float]:
    """TGB's ``convert_str2int`` of one string: digit -> value, ``!`` -> -1, else ``ord(upper) - 35``."""
    out = []
    for ch in text:
        if ch.isdigit() and ch.isascii():
            out.append(float(ch))
        elif ch == "!":
            out.append(-1.0)
        else:
            out.append(float(ord(ch.upper()[0]) - 44 + 9))
    return out


def _padded(value: str, width: int, *, too_long_blank: bool) -> str | None:
    if value == "":
        return "!" * width
    if len(value) > width:
        return "!" * width if too_long_blank else None
    return value + "!" * (width - len(value))


def _read_strings(path: Path, names: list[str]) -> pl.DataFrame:
    """All columns as strings, empty fields as "" (TGB's csv.reader keeps them), header line skipped."""
    check_nonempty(path)
    # polars 2 names the option empty_string_is_null, polars 1 missing_utf8_is_empty_string
    keep_empty = ({"empty_string_is_null": False} if "empty_string_is_null" in inspect.signature(pl.read_csv).parameters
                  else {"missing_utf8_is_empty_string": True})
    try:
        df = pl.read_csv(path, has_header=False, skip_rows=1, new_columns=names, infer_schema=False,
                         truncate_ragged_lines=False, **keep_empty)
    except pl.exceptions.NoDataError:
        raise DataError(path, "file holds no rows") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(path, f"cannot parse as {len(names)} comma-separated columns ({', '.join(names)}): "
                              f"{str(exc).splitlines()[0]}") from None
    if df.width < len(names):
        raise DataError(path, f"expected {len(names)} columns ({', '.join(names)}), found {df.width}", line=2)
    df = df.select(names[: len(names)])
    if df.height == 0:
        raise DataError(path, "file holds no rows")
    return df


def _encode_column(path: Path, values: pl.Series, width: int, column: str, *, too_long_blank: bool) -> np.ndarray:
    """[rows, width] float32 codes; each distinct string is encoded once."""
    uniq = values.unique(maintain_order=True)
    inverse = values.to_frame("v").join(uniq.to_frame("v").with_row_index("i"), on="v", how="left",
                                        maintain_order="left").get_column("i").to_numpy()
    table = np.zeros((len(uniq), width), np.float32)
    for row, value in enumerate(uniq.to_list()):
        padded = _padded(value, width, too_long_blank=too_long_blank)
        if padded is None:
            line = int(np.flatnonzero(inverse == row)[0]) + 2
            raise DataError(path, f"{column} {value!r} is longer than {width} characters (TGB's loader fails "
                                  f"on it too)", line=line, column=column)
        table[row] = encode_chars(padded)
    return table[inverse]


def flight_times(path: Path, ts: pl.Series) -> np.ndarray:
    """int64 timestamps: unix seconds, or ``%Y-%m-%d`` dates in local time as TGB converts them."""
    values = ts.to_list()
    digits = values[0].isdigit()
    uniq = ts.unique(maintain_order=True)
    out = {}
    for value in uniq.to_list():
        if digits:
            if not value.isdigit():
                raise DataError(path, f"timestamp {value!r} is not a unix time like the first row's",
                                line=values.index(value) + 2, column="timestamp")
            out[value] = int(value)
        else:
            try:
                out[value] = int(datetime.datetime.strptime(value, "%Y-%m-%d").timestamp())
            except ValueError:
                raise DataError(path, f"timestamp {value!r} is not a %Y-%m-%d date like the first row's",
                                line=values.index(value) + 2, column="timestamp") from None
    mapped = pl.Series([out[v] for v in uniq.to_list()], dtype=pl.Int64)
    return ts.to_frame("v").join(pl.DataFrame({"v": uniq, "t": mapped}), on="v", how="left",
                                 maintain_order="left").get_column("t").to_numpy()


def read_flight_edges(path: Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(the string columns, int64 times, float32 edge features [E, 16])."""
    df = _read_strings(path, ["timestamp", "src", "dst", "callsign", "typecode"])
    for column in ("timestamp", "src", "dst"):
        empty = df.get_column(column) == ""
        if empty.any():
            raise DataError(path, f"empty {column}", line=int(np.flatnonzero(empty.to_numpy())[0]) + 2, column=column)
    t = flight_times(path, df.get_column("timestamp"))
    feat = np.concatenate([
        _encode_column(path, df.get_column("callsign"), 8, "callsign", too_long_blank=False),
        _encode_column(path, df.get_column("typecode"), 8, "typecode", too_long_blank=True)], axis=1)
    return df, t, feat


def read_airport_features(path: Path, codes: np.ndarray) -> np.ndarray:
    """float32 [len(codes), d] node features for the TGB ids whose airport codes are ``codes``."""
    df = _read_strings(path, ["airport_code", "type", "continent", "iso_region", "longitude", "latitude"])
    index = {code: i for i, code in enumerate(codes.tolist())}
    rows = [(line + 2, r) for line, r in enumerate(df.iter_rows()) if r[0] in index]
    types: dict[str, int] = {}
    continents: dict[str, int] = {}
    for _, r in rows:
        types.setdefault(r[1], len(types))
        continents.setdefault(r[2], len(continents))
    dim = len(types) + len(continents) + 7 + 2
    if rows and dim != TGB_NODE_DIM:
        log.warning("%s: %d airport types and %d continents give %d node features; TGB's loader expects %d",
                    path, len(types), len(continents), dim, TGB_NODE_DIM)
    feat = np.zeros((len(codes), dim), np.float32)
    for line, (code, kind, continent, region, lng, lat) in rows:
        region = _padded(region, 7, too_long_blank=False)
        if region is None:
            raise DataError(path, "iso_region longer than 7 characters (TGB's loader fails on it too)",
                            line=line, column="iso_region")
        try:
            coords = [float(lng), float(lat)]
        except ValueError:
            raise DataError(path, f"longitude/latitude {lng!r}, {lat!r} are not numbers", line=line) from None
        vec = np.zeros(dim, np.float32)
        vec[types[kind]] = 1
        vec[len(types) + continents[continent]] = 1
        vec[len(types) + len(continents):] = encode_chars(region) + coords
        feat[index[code]] = vec
    if not rows:
        log.warning("%s: no airport of the edge list has a row; node features are all zero", path)
    return feat
