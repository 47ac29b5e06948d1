"""``disttgl partition GRAPH --parts P --method random|super --rule induced|incident --out DIR``:
RandomTMA / SuperTMA partitions, one graph store per part (docs/design.md §14.1)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from disttgl.data.graph_store import load_graph
from disttgl.errors import DataError
from disttgl.tma.part_store import PartitionInfo, write_partition
from disttgl.tma.partition import (METHODS, RULES, assignment_sha256, coverage, default_clusters, random_nodes,
                                   super_nodes)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("--parts", type=int, required=True, help="P: trainers, one part each")
    parser.add_argument("--method", choices=METHODS, required=True,
                        help="random: RandomTMA (each node to a random part); super: SuperTMA (METIS "
                             "super-nodes of the train split dealt at random; needs pip install 'disttgl[tma]')")
    parser.add_argument("--clusters", type=int, default=None,
                        help="super: C METIS clusters (default: about one per 200 nodes, at least 4 per part, "
                             "at most 15000)")
    parser.add_argument("--rule", choices=RULES, default="induced",
                        help="events a part keeps: induced (both endpoints in the part: the paper's) or incident "
                             "(an endpoint in the part)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the assignment (and of METIS)")
    parser.add_argument("--out", required=True, help="partition directory (part-P/graph.h5, partition.json)")


def partition(graph_path: str, parts: int, method: str, rule: str, seed: int, out: str,
              clusters: int | None = None) -> PartitionInfo:
    """Partition ``graph_path`` and write the part stores and ``partition.json`` into ``out``.

    Args:
        graph_path: the whole graph's store.
        parts: P.
        method: random | super.
        rule: induced | incident.
        seed: seed of the assignment and of METIS.
        out: the partition directory.
        clusters: SuperTMA's C (None: :func:`~disttgl.tma.partition.default_clusters`).
    """
    if method not in METHODS:
        raise DataError(None, f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if rule not in RULES:
        raise DataError(None, f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    graph = load_graph(graph_path)
    n = graph.num_nodes
    if not 1 <= parts <= n:
        raise DataError(None, f"--parts must be between 1 and the {n} nodes, got {parts}")
    if method == "random":
        if clusters is not None:
            raise DataError(None, "--clusters applies to --method super only")
        assignment = random_nodes(n, parts, seed)
    else:
        clusters = default_clusters(n, parts) if clusters is None else clusters
        if not parts <= clusters <= n:
            raise DataError(None, f"--clusters must be between --parts ({parts}) and the {n} nodes, got {clusters}")
        assignment, _ = super_nodes(graph.src, graph.dst, graph.split, n, parts, clusters, seed)
    cover = coverage(graph.src, graph.dst, graph.split, assignment, parts, rule)
    empty = [r["part"] for r in cover["parts"] if r["events"]["train"] == 0]
    if empty:
        raise DataError(None, f"part(s) {', '.join(map(str, empty))} keep no training event (seed {seed}); a trainer "
                              "would have nothing to learn: use fewer parts, more clusters or another seed")
    info = PartitionInfo(graph=str(Path(graph_path).resolve()), graph_sha256=str(graph.attrs.get("sha256", "")),
                         method=method, rule=rule, parts=parts, seed=seed, clusters=clusters, num_nodes=n,
                         assignment_sha256=assignment_sha256(assignment), stores=[], coverage=cover)
    write_partition(graph, assignment, info, out)
    return info


def run(args: argparse.Namespace) -> int:
    info = partition(args.graph, args.parts, args.method, args.rule, args.seed, args.out, args.clusters)
    c = info.coverage
    log.info("wrote %s: %s-%s P=%d%s: %.1f %% of training events kept (%.2f copies), median node sees %.1f %% "
             "of its training events", args.out, info.method, info.rule, info.parts,
             f" C={info.clusters}" if info.clusters else "", 100 * c["train_events_kept"], c["train_event_copies"],
             100 * c["node_share_median"])
    for r in c["parts"]:
        log.info("  part %d: %d nodes, %d/%d/%d train/val/test events, %d active nodes, %d ghost nodes", r["part"],
                 r["nodes"], r["events"]["train"], r["events"]["val"], r["events"]["test"], r["active_nodes"],
                 r["ghost_nodes"])
    return 0
