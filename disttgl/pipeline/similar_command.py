"""``disttgl similar GRAPH --method static-cosine|jaccard|cooc [--static STATIC.h5] [--k 10] --out similar.h5``

The k most similar nodes of every node from the train split (:mod:`disttgl.pipeline.similar` defines
the methods), for MSPipe's staleness mitigation (docs/design.md). ``static-cosine`` needs the
static memory of ``disttgl pretrain`` for the same graph; ``cooc`` on a non-bipartite graph counts
common partners in either direction (the same formula, documented in that module).
"""

from __future__ import annotations

import argparse
import logging
import time

from disttgl.data.graph_store import load_graph
from disttgl.errors import DataError
from disttgl.pipeline.similar import METHODS, similar_nodes
from disttgl.pipeline.similar_file import save_similar
from disttgl.train.static_table import load_static

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("--method", required=True, choices=METHODS,
                        help="static-cosine: cosine of the static memory; jaccard: partner-set Jaccard; "
                             "cooc: co-interaction counts")
    parser.add_argument("--static", default=None, help="static memory file (static-cosine only)")
    parser.add_argument("--k", type=int, default=10, help="similar nodes per node (default: 10)")
    parser.add_argument("--out", required=True, help="output file (similar.h5)")


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise DataError(None, f"--k must be at least 1, got {args.k}")
    if args.method == "static-cosine" and args.static is None:
        raise DataError(None, "--method static-cosine needs --static STATIC.h5 (from `disttgl pretrain`)")
    if args.method != "static-cosine" and args.static is not None:
        raise DataError(None, f"--static applies to --method static-cosine only, not {args.method}")
    graph = load_graph(args.graph, features=False)
    graph_sha = str(graph.attrs.get("sha256", ""))
    static = None
    extra = {}
    if args.static is not None:
        static = load_static(args.static, graph.num_nodes, graph_sha256=graph_sha)
        extra["static_path"] = str(args.static)
    start = time.perf_counter()
    idx, score = similar_nodes(graph, args.method, args.k, static=static)
    save_similar(args.out, idx, score, method=args.method, graph_sha256=graph_sha, attrs=extra)
    found = (idx >= 0).sum(1)
    log.info("wrote %s: %s, k=%d, %d nodes (%d with no similar node, mean %.1f found) in %.1f s", args.out,
             args.method, args.k, graph.num_nodes, int((found == 0).sum()), float(found.float().mean()),
             time.perf_counter() - start)
    return 0
