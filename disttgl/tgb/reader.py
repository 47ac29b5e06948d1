"""``disttgl convert DIR --format tgb --tgb-name NAME``: TGB's published link-prediction files, read
offline into the graph store (spec §4.1, §4.5a; docs/design.md "TGB data").

TGB's own parsers (``tgb/utils/pre_process.py``, py-tgb 2.3.0) are re-implemented on the project's
polars readers, with the same ids, features and split, so the store's node ids *are* TGB's node ids
and TGB's negative pickles index it directly:

- ``tgbl-wiki`` (``load_edgelist_wiki``): header line, then ``src, dst, ts, state_label, f...``;
  ``dst <- dst + max(src) + 1``; edge features = columns 4.. .
- ``tgbl-review``, ``tgbl-coin`` (``csv_to_pd_data_sc``): ``ts, src, dst, weight`` with string ids
  numbered by first appearance (row by row, src before dst, one id space); ``w = weight`` (0 -> 1),
  then ``log2(w)``; the edge feature is that 1-d ``w``.
- ``tgbl-comment`` (``csv_to_pd_data_rc``): ``ts, src, dst`` and columns 3 and 4 read as integers
  (TGB's row[3], row[4]); edge features ``[row[3] / 5000, float(row[4])]``.
- ``tgbl-flight`` (``csv_to_pd_data``, ``process_node_feat``): ``ts, src, dst, callsign, typecode`` with
  airport codes numbered by first appearance; 16 character-code edge features and 20 airport node features
  from ``airport_node_feat_v2.csv`` (:mod:`disttgl.tgb.flight`).

Timestamps are TGB's ``astype(int)``; the split is TGB's ``np.quantile(ts, [0.70, 0.85])``
(linear): train ``t <= val_time``, val ``val_time < t <= test_time``, test ``t > test_time``.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from disttgl.data.delimited import check_nonempty, column_array, first_data_line, read_table, split_line
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import sha256_files, write_graph
from disttgl.data.readers import read_jodie
from disttgl.errors import DataError
from disttgl.tgb.flight import node_file_name, read_airport_features, read_flight_edges
from disttgl.tgb.negatives_file import SPLITS, SplitNegatives, check_split, save_negatives
from disttgl.tgb.pickles import load_tgb_negatives_pickle

log = logging.getLogger(__name__)

# name -> (current version, parser); versions from TGB's info.py DATA_VERSION_DICT
TGB_DATASETS = {
    "tgbl-wiki": (2, "wiki"),
    "tgbl-review": (2, "sc"),
    "tgbl-coin": (2, "sc"),
    "tgbl-comment": (1, "rc"),
    "tgbl-flight": (2, "flight"),
}
NEGATIVES_NAME = "tgb_negatives.h5"


@dataclass
class TgbEvents:
    """Events as TGB's loader holds them, in file order (TGB does not sort)."""

    src: np.ndarray  # int64 TGB node ids
    dst: np.ndarray
    t: np.ndarray  # int64 (TGB's astype(int))
    edge_feat: np.ndarray | None  # float32 [E, d]
    label: np.ndarray | None
    original_id: np.ndarray  # per TGB id: the file's id (str) or the TGB id itself (wiki)
    num_nodes: int
    node_feat: np.ndarray | None = None  # float32 [N, d_v] (tgbl-flight's airports)


def tgb_file_names(name: str, version: int) -> dict[str, str]:
    """The published names: ``{name}_edgelist_v2.csv``... (no suffix for version 1); tgbl-flight also
    has its airport node file."""
    suffix = "" if version <= 1 else f"_v{version}"
    names = {"edgelist": f"{name}_edgelist{suffix}.csv", "val": f"{name}_val_ns{suffix}.pkl",
             "test": f"{name}_test_ns{suffix}.pkl"}
    if TGB_DATASETS.get(name, (0, ""))[1] == "flight":
        names["nodes"] = node_file_name(version)
    return names


def check_name(name: str, version: int | None) -> int:
    if name not in TGB_DATASETS:
        raise DataError(None, f"unknown TGB dataset {name!r}; known: {', '.join(TGB_DATASETS)}")
    v = TGB_DATASETS[name][0] if version is None else int(version)
    if v < 1:
        raise DataError(None, f"--tgb-version must be >= 1, got {v}")
    return v


def locate(directory: str | os.PathLike, name: str, version: int) -> dict[str, Path | None]:
    """The dataset's files in ``directory`` or its ``tgbl_wiki/``-style subfolder; pickles may be absent."""
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError(folder, "not a folder (the tgb format reads a folder holding TGB's files)")
    names = tgb_file_names(name, version)
    for base in (folder, folder / name.replace("-", "_")):
        if (base / names["edgelist"]).is_file():
            return {k: (base / v if (base / v).is_file() else None) for k, v in names.items()}
    raise DataError(folder, f"no {names['edgelist']} here or in {name.replace('-', '_')}/ (TGB {name} "
                            f"version {version}; --tgb-version picks another)")


# ------------------------------------------------------------------------------------------ parsers

def _first_appearance_ids(src: pl.Series, dst: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TGB's ``node_ids`` dict: ids in order of first appearance, scanning src then dst per row.

    In polars (a group-by and a join), not numpy: numpy's fixed-width strings would take
    rows x 2 x the longest id x 4 bytes (~8 GB for tgbl-coin's addresses)."""
    n = len(src)
    pos = np.arange(n, dtype=np.int64) * 2
    keys = pl.DataFrame({"k": pl.concat([src.cast(pl.String), dst.cast(pl.String)]), "pos": np.r_[pos, pos + 1]})
    first = keys.group_by("k").agg(pl.col("pos").min()).sort("pos").with_row_index("id")
    ids = keys.join(first.select("k", "id"), on="k", how="left", maintain_order="left").get_column("id")
    ids = ids.cast(pl.Int64).to_numpy()
    return ids[:n], ids[n:], first.get_column("k").to_numpy().astype(str)


def _int_column(path: Path, df, name: str) -> np.ndarray:
    return column_array(df, name, np.int64)


def read_wiki(path: Path) -> TgbEvents:
    raw = read_jodie(path)  # same columns: src, dst, ts, state label, features (header line skipped)
    src = raw.src.astype(np.int64)
    dst = raw.dst.astype(np.int64) + int(src.max()) + 1
    ids = max(int(src.max()), int(dst.max())) + 1
    if (dst < 0).any():
        row = int(np.flatnonzero(dst < 0)[0])
        raise DataError(path, f"destination {raw.dst[row]} maps to the negative TGB id {dst[row]}",
                        line=raw.line_of(row), column="dst")
    if src.min() < 0:
        row = int(np.flatnonzero(src < 0)[0])
        raise DataError(path, f"negative source id {src[row]}", line=raw.line_of(row), column="src")
    return TgbEvents(src=src, dst=dst, t=_tgb_time(path, raw.t, raw.line_of), edge_feat=raw.edge_feat,
                     label=raw.label, original_id=np.arange(ids, dtype=np.int64), num_nodes=ids)


def _tgb_time(path: Path, t: np.ndarray, line_of) -> np.ndarray:
    if not np.isfinite(t).all():
        row = int(np.flatnonzero(~np.isfinite(t))[0])
        raise DataError(path, f"time is {t[row]}", line=line_of(row), column="ts")
    return t.astype(np.int64)  # TGB: timestamps.astype(int)


def _columns(path: Path, minimum: int, what: str) -> int:
    check_nonempty(path)
    n = len(split_line(first_data_line(path, 1, None), ","))
    if n < minimum:
        raise DataError(path, f"expected at least {minimum} columns ({what}), found {n}", line=2)
    return n


def read_sc(path: Path) -> TgbEvents:
    n = _columns(path, 4, "ts,src,dst,weight")
    names = ["ts", "src", "dst", "weight"] + [f"c{i}" for i in range(4, n)]
    df = read_table(path, names=names, kinds=["int", "str", "str", "float"] + ["str"] * (n - 4), separator=",",
                    skip_lines=1)
    src, dst, original = _first_appearance_ids(df.get_column("src"), df.get_column("dst"))
    w = column_array(df, "weight", np.float64).copy()
    w[w == 0] = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.log2(w)  # TGB: "normalize by log 2 for stablecoin", for review too
    if not np.isfinite(w).all():
        row = int(np.flatnonzero(~np.isfinite(w))[0])
        raise DataError(path, f"weight {df.get_column('weight')[row]} is negative (TGB takes its log2)",
                        line=row + 2, column="weight")
    return TgbEvents(src=src, dst=dst, t=_int_column(path, df, "ts"), edge_feat=w[:, None].astype(np.float32),
                     label=None, original_id=original, num_nodes=len(original))


def read_rc(path: Path) -> TgbEvents:
    n = _columns(path, 5, "ts,src,dst,num_words,score")
    names = ["ts", "src", "dst", "c3", "c4"] + [f"c{i}" for i in range(5, n)]
    df = read_table(path, names=names, kinds=["int", "str", "str", "int", "int"] + ["str"] * (n - 5),
                    separator=",", skip_lines=1)
    src, dst, original = _first_appearance_ids(df.get_column("src"), df.get_column("dst"))
    feat = np.stack([column_array(df, "c3", np.int64) / 5000, column_array(df, "c4", np.int64).astype(np.float64)],
                    axis=1)
    return TgbEvents(src=src, dst=dst, t=_int_column(path, df, "ts"), edge_feat=feat.astype(np.float32),
                     label=None, original_id=original, num_nodes=len(original))


def read_flight(path: Path, node_path: Path) -> TgbEvents:
    df, t, feat = read_flight_edges(path)
    src, dst, original = _first_appearance_ids(df.get_column("src"), df.get_column("dst"))
    return TgbEvents(src=src, dst=dst, t=t, edge_feat=feat, label=None, original_id=original,
                     num_nodes=len(original), node_feat=read_airport_features(node_path, original))


PARSERS = {"wiki": read_wiki, "sc": read_sc, "rc": read_rc}


def read_tgb_edgelist(path: str | os.PathLike, name: str, node_path: str | os.PathLike | None = None) -> TgbEvents:
    check_name(name, None)
    if TGB_DATASETS[name][1] == "flight":
        if node_path is None:
            raise DataError(Path(path).parent, "tgbl-flight needs its airport node file beside the edge list")
        return read_flight(Path(path), Path(node_path))
    return PARSERS[TGB_DATASETS[name][1]](Path(path))


def tgb_split(t: np.ndarray) -> np.ndarray:
    """TGB's split (``generate_splits``): linear quantiles 0.70/0.85, train ``<=``, test ``>``."""
    t = np.asarray(t)
    split = np.zeros(len(t), dtype=np.int8)
    if len(t) == 0:
        return split
    val_time, test_time = np.quantile(t, [0.70, 0.85])
    split[(t > val_time) & (t <= test_time)] = 1
    split[t > test_time] = 2
    return split


# ------------------------------------------------------------------------------------------- build

def build_tgb_graph(ev: TgbEvents, *, path: Path, name: str, version: int, sha256: str,
                    directed: bool = False, bipartite: bool | None = None) -> tuple[Graph, np.ndarray]:
    """The store's Graph (events sorted stably by time) and the order that sorted them."""
    split_file_order = tgb_split(ev.t)
    t = ev.t.astype(np.float64)
    sorted_on_input = bool(np.all(ev.t[1:] >= ev.t[:-1]))
    order = np.arange(len(t)) if sorted_on_input else np.argsort(ev.t, kind="stable")
    if not sorted_on_input:
        log.warning("%s: events are not sorted by time; sorting them stably (TGB keeps file order)", path)
    src, dst, t, split = ev.src[order], ev.dst[order], t[order], split_file_order[order]
    if not np.array_equal(split, chronological_split(t)):
        log.info("%s: TGB's split differs from disttgl's chronological split; the store keeps TGB's", path)
    dim = 0 if ev.edge_feat is None else ev.edge_feat.shape[1]
    edge_feat = np.zeros((len(t) + 1, dim), dtype=np.float32)
    if dim:
        edge_feat[:-1] = ev.edge_feat[order]
    is_src = np.zeros(ev.num_nodes, bool)
    is_src[src] = True
    disjoint = not is_src[dst].any()
    if bipartite and not disjoint:
        row = int(np.flatnonzero(is_src[dst])[0])
        raise DataError(path, f"--bipartite given, but TGB node {dst[row]} is both a source and a destination")
    bipartite = disjoint if bipartite is None else bipartite
    side = None
    if bipartite:
        side = np.zeros(ev.num_nodes, np.int8)
        side[dst] = 1
        if TGB_DATASETS[name][1] == "wiki":  # every id above max(src) is a destination id
            side[int(src.max()) + 1:] = 1
    tcsr = build_tcsr(src, dst, t, ev.num_nodes, directed=directed)
    graph = Graph(src=src, dst=dst, t=t, split=split, num_nodes=ev.num_nodes, bipartite=bipartite,
                  edge_feat=edge_feat, tcsr=tcsr, label=None if ev.label is None else ev.label[order],
                  original_id=ev.original_id, side=side, node_feat=ev.node_feat,
                  attrs=dict(source=f"tgb:{name}-v{version}:{path.name}", sha256=sha256,
                             sorted_on_input=sorted_on_input, split_rule="tgb", directed=directed,
                             tgb_name=name, tgb_version=int(version)))
    return graph, order


def negatives_from_mapping(path: Path, mapping: dict[tuple[int, int, int], np.ndarray], split_name: str,
                           src: np.ndarray, dst: np.ndarray, t: np.ndarray) -> SplitNegatives:
    """One CSR row per event of the split (store order), each the pickle's entry for its (s, d, t);
    every positive must find its key and the pickle must hold no other keys."""
    keys = list(zip(src.tolist(), dst.tolist(), t.astype(np.int64).tolist()))
    rows = []
    for i, k in enumerate(keys):
        row = mapping.get(k)
        if row is None:
            raise DataError(path, f"{split_name} positive {i} (src {k[0]}, dst {k[1]}, t {k[2]}, TGB ids) has no "
                                  f"key in the pickle: the id mapping or the split does not match TGB's")
        rows.append(row)
    positives = set(keys)
    distinct = len(positives)
    if distinct != len(mapping):
        extra = next(k for k in mapping if k not in positives)
        raise DataError(path, f"the pickle holds {len(mapping)} keys, the {split_name} split {distinct} distinct "
                              f"(src, dst, t) positives; e.g. key {extra} is no {split_name} positive")
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return SplitNegatives(ptr, flat)


def convert_tgb(directory: str | os.PathLike, out: str | os.PathLike, *, name: str, version: int | None = None,
                negatives_out: str | os.PathLike | None = None, directed: bool = False,
                bipartite: bool | None = None) -> Graph:
    """Read TGB's files from ``directory`` and write the store (and, with the pickles, its negatives)."""
    from disttgl.atomic import check_writable_dir

    version = check_name(name, version)
    files = locate(directory, name, version)
    check_writable_dir(out)
    pickles = [files[s] for s in SPLITS]
    if negatives_out is not None and None in pickles:
        missing = tgb_file_names(name, version)[SPLITS[pickles.index(None)]]
        raise DataError(files["edgelist"].parent, f"--negatives-out given but {missing} is not there")
    edgelist = files["edgelist"]
    if "nodes" in files and files["nodes"] is None:
        raise DataError(edgelist.parent, f"no {tgb_file_names(name, version)['nodes']} beside {edgelist.name} "
                                         f"(tgbl-flight's airport node features)")
    ev = read_tgb_edgelist(edgelist, name, files.get("nodes"))
    sources = [edgelist] + ([files["nodes"]] if "nodes" in files else [])
    graph, _ = build_tgb_graph(ev, path=edgelist, name=name, version=version, sha256=sha256_files(sources),
                               directed=directed, bipartite=bipartite)
    negatives = None
    if None not in pickles:
        negatives = {}
        for s, p in zip(SPLITS, pickles):
            m = graph.split == SPLITS.index(s) + 1
            neg = negatives_from_mapping(p, load_tgb_negatives_pickle(p), s, graph.src[m], graph.dst[m], graph.t[m])
            check_split(p, s, neg, events=int(m.sum()), num_nodes=graph.num_nodes)
            negatives[s] = neg
    write_graph(graph, out)
    with h5py.File(out, "r") as f:  # the store holds TGB's split (the masks of generate_splits)
        stored = f["events/split"][()]
    if not np.array_equal(stored, graph.split):
        raise DataError(out, "the written split is not TGB's (internal error)")
    log.info("wrote %s: TGB %s v%d, %d events, %d nodes, edge_dim %d, bipartite=%s", out, name, version,
             graph.num_events, graph.num_nodes, graph.edge_dim, graph.bipartite)
    if negatives is not None:
        neg_path = Path(negatives_out) if negatives_out is not None else Path(out).parent / NEGATIVES_NAME
        save_negatives(neg_path, negatives, graph_path=out,
                       attrs=dict(source="tgb", tgb_name=name, tgb_version=int(version),
                                  val_pickle_sha256=sha256_files([pickles[0]]),
                                  test_pickle_sha256=sha256_files([pickles[1]])))
        log.info("wrote %s: TGB negatives for %d val and %d test positives", neg_path, negatives["val"].rows,
                 negatives["test"].rows)
    else:
        log.info("%s: no val/test negative pickles beside the edge list; `disttgl tgb-negatives` makes "
                 "hist_rnd ones", edgelist.parent)
    return graph


def run_convert(args: argparse.Namespace) -> int:
    """``disttgl convert`` with ``--format tgb`` (called from :func:`disttgl.data.convert.run`)."""
    if len(args.inputs) != 1:
        raise DataError(args.inputs[1], "the tgb format takes one folder")
    if not args.tgb_name:
        raise DataError(args.inputs[0], "--format tgb needs --tgb-name (e.g. tgbl-wiki)")
    if args.split not in (None, "tgb"):
        raise DataError(args.inputs[0], f"--split {args.split}: TGB data uses TGB's own split (--split tgb)")
    convert_tgb(args.inputs[0], args.out, name=args.tgb_name, version=args.tgb_version,
                negatives_out=args.negatives_out, directed=args.directed, bipartite=args.bipartite)
    return 0
