"""Event labels of the TGL layout (``--format tgl``), for edge classification (docs/design.md §13).

Two files can hold them:

- ``ec_edge_class.pt`` (DistTGL's GDELT edge classes, read as ``DATA/GDELT/ec_edge_class.pt`` by its
  ``gen_minibatch.py``; published on TGL's S3 as ``ec_edge_class.pt.pt``, which is read the same):
  one row per event of ``edges.csv``, either the class id [E] / [E, 1] or [E, C] over C classes.
  When every row is one-hot (one positive entry: that column is the class) the labels are class ids
  [E], single-label as before; when any row has several positive entries (GDELT's: a float [E, 52]
  multi-hot) they are a multi-label uint8 0/1 matrix [E, C] (docs/design.md §13.1), and every entry
  must then be 0 or 1. Without a multi-hot row, a row with no positive entry is refused.
- ``labels.csv``: TGL's *dynamic node* labels, ``,node,time,label,ext_roll`` (TGL's ``train_node.py``
  reads ``node``, ``time``, ``label`` and ``ext_roll``); rows are (node, time) queries, not events.
  Where they line up one to one with the events (as many rows, row i's time is event i's and its
  node one of event i's endpoints: TGL's Wikipedia and Reddit, whose rows are JODIE's per-event
  state labels) they are the events' labels. Otherwise (GDELT's node classes) they label nodes,
  which disttgl does not train: a warning, and no labels are stored.

``ec_edge_class.pt`` wins when both are given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from disttgl.data.delimited import check_nonempty, column_array, header_fields, read_table
from disttgl.errors import DataError

log = logging.getLogger(__name__)

CLASS_FILE, LABELS_FILE = "ec_edge_class.pt", "labels.csv"
CLASS_FILE_PUBLISHED = "ec_edge_class.pt.pt"  # the name on TGL's S3 (DistTGL's down.sh): the same file
_ROWS = 1 << 20  # rows checked at a time: GDELT's is 191M x 52


def files_by_name(paths: Sequence[Path]) -> dict[str, Path]:
    """The tgl inputs by file name, the published ``ec_edge_class.pt.pt`` under :data:`CLASS_FILE`."""
    names = [CLASS_FILE if p.name == CLASS_FILE_PUBLISHED else p.name for p in paths]
    if names.count(CLASS_FILE) > 1:
        raise DataError(paths[names.index(CLASS_FILE)], f"give one of {CLASS_FILE} and {CLASS_FILE_PUBLISHED} "
                                                        "(the same file under two names)")
    return dict(zip(names, paths))


def class_tensor_labels(path: Path, values: np.ndarray, num_events: int) -> np.ndarray:
    """Labels from ``ec_edge_class.pt``'s tensor (``values``: float [rows, 1] ids or [rows, C] rows):
    class ids [E] (ids, or one-hot rows), or a uint8 0/1 matrix [E, C] when a row is multi-hot."""
    if len(values) != num_events:
        raise DataError(path, f"{len(values)} rows of edge classes, but edges.csv has {num_events} events")
    if values.shape[1] == 1:
        ids = values[:, 0]
        bad = ~np.isfinite(ids) | (ids < 0) | (ids != np.round(ids))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(path, f"row {row} holds class {ids[row]}: class ids are whole numbers >= 0")
        return ids.astype(np.int64)
    hot = np.concatenate([(values[a:a + _ROWS] > 0).sum(1) for a in range(0, len(values), _ROWS)]) \
        if len(values) else np.zeros(0, np.int64)
    if np.any(hot > 1):
        return _multi_hot(path, values)
    if np.any(hot != 1):
        row = int(np.flatnonzero(hot != 1)[0])
        raise DataError(path, f"row {row} has {hot[row]} positive classes of {values.shape[1]}: rows are one-hot "
                              "(one class per event) or multi-hot 0/1 rows (several classes per event)")
    return values.argmax(1).astype(np.int64)


def _multi_hot(path: Path, values: np.ndarray) -> np.ndarray:
    """The multi-label uint8 matrix of ``values``, whose entries must all be 0 or 1."""
    out = np.empty(values.shape, np.uint8)
    for a in range(0, len(values), _ROWS):
        part = values[a:a + _ROWS]
        wrong = ((part != 0) & (part != 1)).any(1)
        if wrong.any():
            row = a + int(np.flatnonzero(wrong)[0])
            shown = values[row][(values[row] != 0) & (values[row] != 1)][:5].tolist()
            raise DataError(path, f"row {row} holds {shown}: a multi-label (multi-hot) row of edge classes is "
                                  "0 or 1 in every class")
        out[a:a + _ROWS] = part
    log.info("%s: multi-hot rows: %d events x %d classes stored as multi-label event labels", path, *values.shape)
    return out


def labels_csv_events(path: Path, src: np.ndarray, dst: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """Event labels from TGL's ``labels.csv`` when its rows are the events (module docstring), else None."""
    check_nonempty(path)
    header = [h if h else f"_index{i}" for i, h in enumerate(header_fields(path, ","))]
    for name in ("node", "time", "label"):
        if name not in header:
            raise DataError(path, f"missing column {name!r} (TGL's labels.csv is ,node,time,label,ext_roll); "
                                  f"the header has {header}", line=1)
    kinds = ["float" if n == "time" else "int" if n in ("node", "label", "ext_roll") or n.startswith("_index")
             else "str" for n in header]
    df = read_table(path, names=header, kinds=kinds, separator=",", skip_lines=1)
    node, time = column_array(df, "node", np.int64), column_array(df, "time", np.float64)
    label = column_array(df, "label", np.int64)
    if len(label) == len(t) and np.array_equal(time, t) and np.all((node == src) | (node == dst)):
        log.info("%s: one label per event: stored as the events' labels", path)
        return label
    log.warning("%s: %d (node, time) labels that are not one per event of edges.csv (%d): TGL's dynamic node "
                "labels, which disttgl does not train; no event labels stored (DistTGL's GDELT edge classes "
                "are %s)", path, len(label), len(t), CLASS_FILE)
    return None
