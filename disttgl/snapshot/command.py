"""``disttgl snapshots GRAPH (--delta SECONDS | --num-snapshots T) [--edge-life L] [--symmetric] --out
snapshots.h5``: cut a graph store into snapshots (docs/design.md §11.1)."""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from disttgl.data.graph_store import load_graph
from disttgl.snapshot.build import DIFF_KINDS, SnapshotParams, Snapshots, build_snapshots
from disttgl.snapshot.store import write_snapshots

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SnapshotParams()
    p.add_argument("graph", help="graph store (.h5)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--delta", type=float, help="seconds per snapshot (half-open buckets from the first event)")
    how.add_argument("--num-snapshots", type=int,
                     help="number of snapshots T: the time span cut into T equal buckets, the last one closed")
    p.add_argument("--edge-life", type=int, default=d.edge_life,
                   help=f"snapshots an event stays alive for, its own included (default {d.edge_life})")
    p.add_argument("--symmetric", action="store_true", help="count every event in both directions")
    p.add_argument("--out", required=True, help="output snapshots file (.h5)")


def summarize(snaps: Snapshots) -> dict:
    """What the command prints: sizes, splits and the entry counts of both transfer modes."""
    adj, diff = int(snaps.adjacency.sizes().sum()), int(snaps.diff.sizes().sum())
    counts = np.bincount(snaps.split, minlength=3)
    return {"num_snapshots": snaps.num_snapshots, "num_nodes": snaps.num_nodes, "delta": snaps.delta,
            "edge_life": snaps.edge_life, "symmetric": snaps.symmetric,
            "splits": {"train": int(counts[0]), "val": int(counts[1]), "test": int(counts[2])},
            "adjacency_entries": adj, "diff_entries": diff,
            "diff_kinds": {k: int(v) for k, v in zip(DIFF_KINDS, snaps.diff_kinds.sum(0))},
            "entries_whole_over_diff": adj / diff if diff else None}


def run(args: argparse.Namespace) -> int:
    params = SnapshotParams(delta=args.delta, num_snapshots=args.num_snapshots, edge_life=args.edge_life,
                            symmetric=args.symmetric)
    params.check()  # before reading the graph
    start = time.perf_counter()
    g = load_graph(args.graph, features=False)
    snaps = build_snapshots(g.src, g.dst, g.t, g.split, g.num_nodes, params)
    write_snapshots(snaps, args.out, graph_sha256=str(g.attrs.get("sha256", "")), num_events=g.num_events,
                    bipartite=g.bipartite, source=g.attrs.get("source"))
    log.info("wrote %s: %d snapshots (%.2fs)", args.out, snaps.num_snapshots, time.perf_counter() - start)
    print(json.dumps(summarize(snaps), indent=2))
    return 0
