"""``disttgl tgb-negatives GRAPH --out NEG.h5 [--num-neg Q] [--seed 42]``: TGB's hist_rnd evaluation
negatives for any graph store (docs/design.md "TGB data").

Q defaults to every possible destination (``max_dst - min_dst + 1``): tgbl-wiki v2's choice (TGB
generated it with q = 12,000, more than its destinations, so each row is all of them but the
source's positives at that time). TGB used q = 100 for tgbl-review and 20 for coin, comment and
flight. The validation split is generated first and the test split continues the same random stream.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from disttgl.data.graph_store import load_graph
from disttgl.errors import DataError
from disttgl.tgb.hist_rnd import DEFAULT_SEED, hist_rnd
from disttgl.tgb.negatives_file import check_split, save_negatives

log = logging.getLogger(__name__)


def make_negatives(graph_path: str | Path, out: str | Path, *, num_neg: int | None = None,
                   seed: int = DEFAULT_SEED) -> dict:
    """Generate and write the negatives; return the attributes written."""
    if num_neg is not None and num_neg < 1:
        raise DataError(None, f"--num-neg must be >= 1, got {num_neg}")
    g = load_graph(graph_path, features=False)
    if g.num_events == 0:
        raise DataError(graph_path, "the graph holds no events")
    start = time.perf_counter()
    negatives = hist_rnd(g.src, g.dst, g.t, g.split, num_neg=num_neg, seed=seed)
    q = num_neg if num_neg is not None else int(g.dst.max()) - int(g.dst.min()) + 1
    for s, neg in negatives.items():
        check_split(out, s, neg, events=int((g.split == ("val", "test").index(s) + 1).sum()),
                    num_nodes=g.num_nodes)
    attrs = dict(source="hist_rnd", num_neg=int(q), seed=int(seed))
    save_negatives(out, negatives, graph_path=graph_path, attrs=attrs)
    log.info("wrote %s: hist_rnd q=%d seed=%d, %d val and %d test rows, %.1f s", out, q, seed,
             negatives["val"].rows, negatives["test"].rows, time.perf_counter() - start)
    return attrs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="graph store (.h5)")
    p.add_argument("--out", required=True, help="negatives file to write (e.g. tgb_negatives.h5)")
    p.add_argument("--num-neg", type=int, default=None,
                   help="negatives per positive (default: all possible destinations, as tgbl-wiki v2)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="np.random.seed of TGB's generator (42)")


def run(args: argparse.Namespace) -> int:
    make_negatives(args.graph, args.out, num_neg=args.num_neg, seed=args.seed)
    return 0
