"""``disttgl convert``: raw event files -> the HDF5 graph store (docs/design.md §3).

Steps: read (``disttgl.data.readers``), validate, compact ids to 0..N-1 (bipartite: items after users),
sort stably by time, split, add the zero sentinel edge-feature row, build the T-CSR, write atomically.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from disttgl.errors import DataError
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import sha256_files, write_graph
from disttgl.data.pyg import read_pyg
from disttgl.data.readers import FORMATS, CsvColumns, RawEvents, SnapColumns, read_events

log = logging.getLogger(__name__)

SPLIT_RULES = ("chronological", "ext_roll", "tgb")
# the pyg reader lives in disttgl.data.pyg (it needs torch), so its format is added here
INPUT_FORMATS = (*FORMATS, "pyg")


@dataclass(frozen=True)
class ConvertOptions:
    fmt: str
    bipartite: bool | None = None  # None: the format's default (JODIE data is user->item)
    directed: bool = False  # store the T-CSR in the event direction only
    split: str | None = None  # None: ext_roll when the source gives one, else chronological
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    csv_columns: CsvColumns | None = None
    snap_columns: SnapColumns | None = None


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to 0..n-1 in sorted order of the original ids; return (new ids, original id per new id).

    Dense integer ids use a lookup table (no sort, O(max id) memory); sparse or string ids use np.unique.
    """
    if ids.dtype.kind in "iu" and len(ids) and 0 <= ids.min() and ids.max() < 4 * len(ids) + 1024:
        present = np.zeros(int(ids.max()) + 1, dtype=bool)
        present[ids] = True
        original = np.flatnonzero(present)
        table = np.cumsum(present, dtype=np.int64) - 1
        return table[ids], original.astype(np.int64)
    original, inverse = np.unique(ids, return_inverse=True)
    return inverse.astype(np.int64), original


def _validate(raw: RawEvents) -> None:
    bad_t = ~np.isfinite(raw.t)
    if bad_t.any():
        row = int(np.flatnonzero(bad_t)[0])
        raise DataError(raw.path, f"time is {raw.t[row]} (times must be finite numbers)",
                        line=raw.line_of(row), column="time")
    for name, ids in (("src", raw.src), ("dst", raw.dst)):
        if ids.dtype.kind in "iu" and len(ids) and ids.min() < 0:
            row = int(np.flatnonzero(ids < 0)[0])
            raise DataError(raw.path, f"negative node id {ids[row]}", line=raw.line_of(row), column=name)
    if raw.edge_feat is not None and len(raw.edge_feat) != raw.num_events:
        raise DataError(raw.edge_feat_path, f"edge features have {len(raw.edge_feat)} rows but the events "
                        f"file {raw.path} has {raw.num_events} events")
    if raw.edge_feat is not None and not np.isfinite(raw.edge_feat).all():
        row = int(np.flatnonzero(~np.isfinite(raw.edge_feat).all(axis=1))[0])
        raise DataError(raw.edge_feat_path, f"edge feature row {row} holds NaN or infinite values")
    if raw.node_feat is not None:
        max_id = max(int(raw.src.max()), int(raw.dst.max()))
        if len(raw.node_feat) <= max_id:
            raise DataError(raw.node_feat_path, f"node features have {len(raw.node_feat)} rows but the events "
                            f"reference node id {max_id}")


def _remap(raw: RawEvents, bipartite: bool, separate_spaces: bool):
    """Return (src, dst, original_id, side). JODIE users and items live in separate id spaces."""
    src, dst, original, side = _remap_ids(raw, bipartite, separate_spaces)
    if raw.id_names is not None:  # string ids came as codes into the sorted names: same order
        original = raw.id_names[original]
    return src, dst, original, side


def _remap_ids(raw: RawEvents, bipartite: bool, separate_spaces: bool):
    if raw.num_nodes is not None:  # ids already 0..n-1 (pyg): kept, so node n stays node n
        src, dst = raw.src.astype(np.int64), raw.dst.astype(np.int64)
        original = raw.original_id if raw.original_id is not None else np.arange(raw.num_nodes, dtype=np.int64)
        return src, dst, original, _side(raw, src, dst, raw.num_nodes) if bipartite else None
    if bipartite and separate_spaces:
        src, users = _compact(raw.src)
        dst, items = _compact(raw.dst)
        dst += len(users)
        side = np.concatenate([np.zeros(len(users), np.int8), np.ones(len(items), np.int8)])
        return src, dst, np.concatenate([users, items]), side
    both, original = _compact(np.concatenate([raw.src, raw.dst]))
    n = raw.num_events
    src, dst = both[:n], both[n:]
    return src, dst, original, _side(raw, src, dst, len(original)) if bipartite else None


def _side(raw: RawEvents, src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """0 for the nodes that are sources, 1 for the others; refuse a node that is both."""
    is_src = np.zeros(num_nodes, bool)
    is_src[src] = True
    clash = is_src[dst]
    if clash.any():
        row = int(np.flatnonzero(clash)[0])
        node = raw.dst[row] if raw.id_names is None else raw.id_names[raw.dst[row]]
        raise DataError(raw.path, f"declared bipartite, but node {node} is both a source and a "
                        "destination", line=raw.line_of(row), column="dst")
    return (~is_src).astype(np.int8)


def build_graph(raw: RawEvents, options: ConvertOptions, *, source: str, sha256: str) -> Graph:
    """Validate, remap, sort and split ``raw``; pure apart from logging."""
    _validate(raw)
    bipartite = options.bipartite if options.bipartite is not None else options.fmt == "jodie"
    src, dst, original_id, side = _remap(raw, bipartite, separate_spaces=options.fmt in ("jodie", "csv"))
    t, label, edge_feat, ext_roll = raw.t, raw.label, raw.edge_feat, raw.ext_roll
    sorted_on_input = bool(np.all(t[1:] >= t[:-1]))
    if not sorted_on_input:
        log.warning("%s: events are not sorted by time; sorting them stably", raw.path)
        order = np.argsort(t, kind="stable")
        src, dst, t = src[order], dst[order], t[order]
        label = None if label is None else label[order]
        edge_feat = None if edge_feat is None else edge_feat[order]
        ext_roll = None if ext_roll is None else ext_roll[order]
    split_rule = options.split or ("ext_roll" if ext_roll is not None else "chronological")
    if split_rule == "ext_roll":
        if ext_roll is None:
            raise DataError(raw.path, "split rule ext_roll asked for, but the input has no ext_roll column")
        split = ext_roll.astype(np.int8)
    elif split_rule == "chronological":
        v, te = options.val_fraction, options.test_fraction
        if not (0 <= v and 0 <= te and v + te < 1):
            raise DataError(None, f"split fractions val={v}, test={te} must be >= 0 and sum to less than 1")
        split = chronological_split(t, (1 - v - te, 1 - te))
    elif split_rule == "tgb":  # TGB's generate_splits: linear quantiles 0.70/0.85
        from disttgl.tgb.reader import tgb_split

        split = tgb_split(t)
    else:
        raise DataError(None, f"unknown split rule {split_rule!r}; known: {', '.join(SPLIT_RULES)}")
    dim = 0 if edge_feat is None else edge_feat.shape[1]
    sentinel = np.zeros((len(t) + 1, dim), dtype=np.float32)
    if dim:
        sentinel[:-1] = edge_feat
    num_nodes = len(original_id)
    node_feat = None
    if raw.node_feat is not None:
        if raw.num_nodes is not None:  # rows are node ids already
            node_feat = raw.node_feat
        else:
            node_feat = raw.node_feat[original_id] if original_id.dtype.kind in "iu" else None
    tcsr = build_tcsr(src, dst, t, num_nodes, directed=options.directed)
    return Graph(src=src, dst=dst, t=t, split=split, num_nodes=num_nodes, bipartite=bipartite,
                 edge_feat=sentinel, tcsr=tcsr, node_feat=node_feat, label=label, original_id=original_id,
                 side=side,
                 attrs=dict(source=source, sha256=sha256, sorted_on_input=sorted_on_input,
                            split_rule=split_rule, directed=options.directed))


def convert(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, options: ConvertOptions) -> Graph:
    """Read ``inputs`` in ``options.fmt`` and write the graph store to ``out``."""
    from disttgl.atomic import check_writable_dir

    check_writable_dir(out)  # fail before parsing a large file
    if options.fmt == "pyg":
        if len(inputs) != 1:
            raise DataError(inputs[1] if inputs else None, "the pyg format takes one input file (data.pt)")
        raw = read_pyg(inputs[0])
    else:
        raw = read_events(inputs, options.fmt, csv_columns=options.csv_columns,
                          snap_columns=options.snap_columns)
    paths = [Path(p) for p in inputs]
    graph = build_graph(raw, options, source=f"{options.fmt}:{','.join(p.name for p in paths)}",
                        sha256=sha256_files(paths))
    write_graph(graph, out)
    log.info("wrote %s: %d events, %d nodes, edge_dim %d, bipartite=%s, split=%s", out, graph.num_events,
             graph.num_nodes, graph.edge_dim, graph.bipartite, graph.attrs["split_rule"])
    return graph


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raw event file(s); for --format tgb, the folder")
    p.add_argument("--format", required=True, choices=INPUT_FORMATS, dest="fmt",
                   help="input format (pyg: a .pt of PyG TemporalData or its dict of tensors; tgb: a folder of "
                        "TGB's files)")
    p.add_argument("--out", required=True, help="output graph store (.h5)")
    p.add_argument("--bipartite", action=argparse.BooleanOptionalAction, default=None,
                   help="user->item graph (default: yes for jodie, no otherwise)")
    p.add_argument("--directed", action="store_true",
                   help="keep only out-edges in the T-CSR (default: both directions)")
    p.add_argument("--split", choices=SPLIT_RULES, default=None,
                   help="chronological (default), the source's ext_roll (default for TGL inputs that have "
                        "it, and for pyg inputs with train/val/test masks) or tgb (TGB's quantile split; the "
                        "only one for --format tgb)")
    t = p.add_argument_group("tgb (a folder of TGB's published files, flat or in tgbl_wiki/)")
    t.add_argument("--tgb-name", default=None,
                   help="tgbl-wiki, tgbl-review, tgbl-coin, tgbl-comment or tgbl-flight")
    t.add_argument("--tgb-version", type=int, default=None, help="dataset version (default: TGB's current)")
    t.add_argument("--negatives-out", default=None,
                   help="where the val/test negative pickles go as CSR (default: tgb_negatives.h5 beside --out; "
                        "written whenever the folder holds both pickles)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    # defaults are None so that run() can tell a column the user chose from one it did not
    g = p.add_argument_group("columns (csv: header name or 0-based index; snap: 0-based index)")
    g.add_argument("--src-col", default=None, help="source column (csv default: src; snap: 0)")
    g.add_argument("--dst-col", default=None, help="destination column (csv default: dst; snap: 1)")
    g.add_argument("--time-col", default=None,
                   help="time column (csv default: t; snap: 2, or detected when the file has 4 columns)")
    g.add_argument("--label-col", default=None, help="csv only")
    g.add_argument("--feature-cols", default=None, help="csv only: comma-separated edge feature columns")
    g.add_argument("--separator", default=None, help="csv only (default ',')")


def _column(spec: str | None) -> str | int | None:
    """A column option: a 0-based index when it is all digits, else a header name."""
    if spec is None:
        return None
    spec = spec.strip()
    return int(spec) if spec.isdigit() else spec


def _columns(args: argparse.Namespace) -> tuple[CsvColumns | None, SnapColumns | None]:
    """Column options for the format that uses them; refuse them where they would be ignored."""
    where = args.inputs[0]
    given = {f"--{k.replace('_', '-')}": getattr(args, k)
             for k in ("src_col", "dst_col", "time_col", "label_col", "feature_cols", "separator")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.fmt == "csv":
        d = CsvColumns()
        features = tuple(_column(c) for c in (args.feature_cols or "").split(",") if c.strip())
        return CsvColumns(src=_column(args.src_col or d.src), dst=_column(args.dst_col or d.dst),
                          time=_column(args.time_col or d.time), label=_column(args.label_col),
                          features=features, separator=args.separator or d.separator), None
    if args.fmt == "snap":
        extra = [k for k in given if k in ("--label-col", "--feature-cols", "--separator")]
        if extra:
            raise DataError(where, f"{', '.join(extra)} apply to the csv format only (snap: the columns "
                            "other than src, dst and time are the edge features)")
        cols = {k: _column(v) for k, v in given.items()}
        for k, v in cols.items():
            if not isinstance(v, int):
                raise DataError(where, f"{k} {v!r}: the snap format has no header, give a 0-based column "
                                f"index (e.g. {k} 3)")
        return None, SnapColumns(src=cols.get("--src-col"), dst=cols.get("--dst-col"),
                                 time=cols.get("--time-col"))
    if given:
        raise DataError(where, f"{', '.join(given)}: the {args.fmt} format names its own columns; these "
                        "options apply to the csv and snap formats")
    return None, None


def run(args: argparse.Namespace) -> int:
    tgb_options = [f"--{k.replace('_', '-')}" for k in ("tgb_name", "tgb_version", "negatives_out")
                   if getattr(args, k, None) is not None]
    if args.fmt == "tgb":
        _columns(args)  # refuses the csv/snap column options
        from disttgl.tgb.reader import run_convert

        return run_convert(args)
    if tgb_options:
        raise DataError(args.inputs[0], f"{', '.join(tgb_options)} apply to --format tgb only")
    csv_columns, snap_columns = _columns(args)
    options = ConvertOptions(fmt=args.fmt, bipartite=args.bipartite, directed=args.directed, split=args.split,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                             csv_columns=csv_columns, snap_columns=snap_columns)
    convert(args.inputs, args.out, options)
    return 0
