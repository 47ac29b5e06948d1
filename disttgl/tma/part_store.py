"""A partition on disk: one graph store per part and ``partition.json`` (docs/design.md §14.1).

``DIR/part-{p}/graph.h5`` holds the events part p keeps, in time order, with their split, label
and edge features; node ids stay global (``num_nodes`` is the whole graph's), so every trainer's
model has the same shapes and the weights can be averaged. ``DIR/assignment.npy`` holds each node's
part. ``partition.json`` is written last: a directory without it was never finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from disttgl.atomic import atomic_path
from disttgl.data.graph import Graph, build_tcsr
from disttgl.data.graph_store import write_graph
from disttgl.errors import DataError
from disttgl.tma.partition import event_mask

PARTITION_FILE = "partition.json"
PARTITION_FORMAT = 1


@dataclass
class PartitionInfo:
    """What ``partition.json`` records."""

    graph: str  # the whole graph's store (absolute path)
    graph_sha256: str
    method: str  # random | super
    rule: str  # induced | incident
    parts: int
    seed: int
    clusters: int | None  # SuperTMA's C (None: RandomTMA)
    num_nodes: int
    assignment_sha256: str
    stores: list[str]  # per part, relative to the partition directory
    coverage: dict[str, Any] = field(default_factory=dict)  # disttgl.tma.partition.coverage
    format: int = PARTITION_FORMAT


def part_store_name(p: int) -> str:
    return f"part-{p}/graph.h5"


def part_graph(graph: Graph, mask: np.ndarray, attrs: dict[str, Any]) -> Graph:
    """The events of ``graph`` where ``mask`` holds, as a graph over the same (global) node ids.

    Args:
        graph: the whole graph.
        mask: bool [E], the events kept (their order, hence time order, is kept).
        attrs: the store attributes to write (its own sha256, provenance).
    """
    eids = np.flatnonzero(mask)
    src, dst, t = graph.src[eids], graph.dst[eids], graph.t[eids]
    edge_feat = np.concatenate([graph.edge_feat[eids], np.zeros((1, graph.edge_dim), graph.edge_feat.dtype)])
    directed = bool(graph.attrs.get("directed", False))
    return Graph(src=src, dst=dst, t=t, split=graph.split[eids], num_nodes=graph.num_nodes, bipartite=graph.bipartite,
                 edge_feat=edge_feat, tcsr=build_tcsr(src, dst, t, graph.num_nodes, directed=directed),
                 node_feat=graph.node_feat, label=None if graph.label is None else graph.label[eids],
                 original_id=graph.original_id, side=graph.side, attrs=attrs)


def part_sha256(graph_sha256: str, assignment_sha256: str, rule: str, p: int) -> str:
    """A part store's identity: its caches must never be taken for the whole graph's or another part's."""
    return hashlib.sha256(f"{graph_sha256}|{assignment_sha256}|{rule}|{p}".encode()).hexdigest()


def write_partition(graph: Graph, assignment: np.ndarray, info: PartitionInfo, out: str | os.PathLike) -> None:
    """Write every part's store, the assignment and (last) ``partition.json`` into ``out``.

    Args:
        graph: the whole graph (with features).
        assignment: each node's part (int64 [N]).
        info: the record; ``stores`` is filled in here.
        out: the partition directory.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTITION_FILE).unlink(missing_ok=True)  # a rewrite killed halfway leaves no valid-looking partition
    info.stores = []
    for p in range(info.parts):
        mask = event_mask(graph.src, graph.dst, assignment, p, info.rule)
        attrs = {k: v for k, v in graph.attrs.items() if k not in ("num_nodes", "num_events", "format_version")}
        attrs.update(sha256=part_sha256(info.graph_sha256, info.assignment_sha256, info.rule, p),
                     parent_sha256=info.graph_sha256, tma_method=info.method, tma_rule=info.rule, tma_part=p,
                     tma_parts=info.parts)
        name = part_store_name(p)
        write_graph(part_graph(graph, mask, attrs), out / name)
        info.stores.append(name)
    with atomic_path(out / "assignment.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, assignment.astype(np.int64))
    with atomic_path(out / PARTITION_FILE) as tmp:
        tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")


def read_partition(directory: str | os.PathLike) -> PartitionInfo:
    """The partition in ``directory`` (a DataError when it is missing, unfinished or damaged).

    Args:
        directory: a directory written by ``disttgl partition``.
    """
    path = Path(directory) / PARTITION_FILE
    if not path.exists():
        raise DataError(path, "no partition here (run `disttgl partition GRAPH --parts P --out DIR` first; a "
                              "partition whose writing was interrupted has no partition.json)")
    try:
        raw = json.loads(path.read_text())
        info = PartitionInfo(**raw)
    except (ValueError, TypeError) as exc:
        raise DataError(path, f"unreadable partition record ({exc})") from None
    if info.format != PARTITION_FORMAT:
        raise DataError(path, f"partition format {info.format}, this disttgl reads {PARTITION_FORMAT}: rerun "
                              "`disttgl partition`")
    if len(info.stores) != info.parts:
        raise DataError(path, f"{len(info.stores)} part stores listed for {info.parts} parts")
    for name in info.stores:
        if not (Path(directory) / name).exists():
            raise DataError(Path(directory) / name, "part store listed in partition.json is missing")
    return info
