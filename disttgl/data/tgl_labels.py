"""Event labels of the TGL layout (``--format tgl``), for edge classification (docs/design.md §13).

Two files can hold them:

- ``ec_edge_class.pt`` (DistTGL's GDELT edge classes, read as ``DATA/GDELT/ec_edge_class.pt`` by its
  ``gen_minibatch.py``): one row per event of ``edges.csv``, either the class id [E] / [E, 1] or a
  one-hot [E, C] (one positive entry per row: that column is the class). A row with several
  positive entries is multi-label, which disttgl's single-label task does not train: refused.
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

import numpy as np

from disttgl.data.delimited import check_nonempty, column_array, header_fields, read_table
from disttgl.errors import DataError

log = logging.getLogger(__name__)

CLASS_FILE, LABELS_FILE = "ec_edge_class.pt", "labels.csv"


def class_tensor_labels(path: Path, values: np.ndarray, num_events: int) -> np.ndarray:
    """Class ids [E] from ``ec_edge_class.pt``'s tensor (``values``: float [rows, 1] ids or [rows, C] one-hot)."""
    if len(values) != num_events:
        raise DataError(path, f"{len(values)} rows of edge classes, but edges.csv has {num_events} events")
    if values.shape[1] == 1:
        ids = values[:, 0]
        bad = ~np.isfinite(ids) | (ids < 0) | (ids != np.round(ids))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(path, f"row {row} holds class {ids[row]}: class ids are whole numbers >= 0")
        return ids.astype(np.int64)
    hot = (values > 0).sum(1)
    if np.any(hot != 1):
        row = int(np.flatnonzero(hot != 1)[0])
        raise DataError(path, f"row {row} has {hot[row]} positive classes of {values.shape[1]}: disttgl's edge "
                              "classification is single-label (one class per event)")
    return values.argmax(1).astype(np.int64)


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
