"""``disttgl batches``: precompute every mini-batch once into ONE HDF5 cache (:mod:`disttgl.cache.build`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BatchParams()
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("--out", required=True, help="output cache (.h5)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--minibatch-parallelism", "-i", type=int, default=d.minibatch_parallelism,
                        help="i: consecutive batches per memory batch (train with the same i)")
    parser.add_argument("--neg-sets", type=int, default=d.neg_sets, help="train negative sets")
    parser.add_argument("--eval-negatives", type=int, default=d.eval_negatives,
                        help="negatives per positive for val/test")
    parser.add_argument("--neighbors", type=int, default=d.neighbors)
    parser.add_argument("--strategy", choices=("recent", "uniform"), default=d.strategy)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--tgl-compat", action="store_true",
                        help="reproduce TGL's sampler (never returns a node's first edge)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    params = BatchParams(batch_size=args.batch_size, minibatch_parallelism=args.minibatch_parallelism,
                         neg_sets=args.neg_sets, eval_negatives=args.eval_negatives, neighbors=args.neighbors,
                         strategy=args.strategy, seed=args.seed, tgl_compat=args.tgl_compat)
    meta = build_cache(args.graph, args.out, params, progress=not args.no_progress)
    size = Path(args.out).stat().st_size
    log.info("wrote %s: %s batches, %.1f MiB", args.out,
             ", ".join(f"{k} {v}" for k, v in meta.split_batches.items()), size / 2 ** 20)
    return 0
