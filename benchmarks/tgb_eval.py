"""Evaluation speed: TGB's protocol (every positive against its own ~1,000 negatives, batches of 200,
built on the fly) against disttgl's cached 49-negative evaluation, on one split, same model.

    python benchmarks/tgb_eval.py --graph wiki.h5 --cache wiki_b.h5 --negatives tgb_negatives.h5
        [--split val] [--chunk 20] [--threads 2] [--json out.json]

The negatives come from `disttgl tgb-negatives` (or `convert --format tgb`). The model has random
weights and zero memory: the cost does not depend on them. Prints positives/s and root embeddings/s
of both paths and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN
from disttgl.tgb.evaluate import evaluate_tgb
from disttgl.tgb.negatives_file import load_negatives
from disttgl.train.config import TrainConfig
from disttgl.train.epoch import evaluate, load_features, model_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--negatives", required=True)
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--chunk", type=int, default=20, help="positives scored at once")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    feats, g = load_features(a.graph, torch.device("cpu"))
    torch.manual_seed(0)
    model = TGN(model_config(TrainConfig(graph="", cache="", out=""), g, feats)).eval()
    neg = load_negatives(a.negatives, a.split, graph_path=a.graph)
    with open_cache(a.cache, graph_path=a.graph) as c:
        nb, q49 = c.num_batches(a.split), c.meta.eval_negatives
    t0 = time.perf_counter()
    evaluate(model, NodeMemory.zeros(g.num_nodes, model.cfg.dim),
             BatchLoader(a.cache, a.split, [(b, 0) for b in range(nb)]), feats)
    t1 = time.perf_counter()
    got = evaluate_tgb(model, NodeMemory.zeros(g.num_nodes, model.cfg.dim), feats, a.graph, neg, a.split, chunk=a.chunk)
    t2 = time.perf_counter()
    pos, q_mean = neg.rows, float(np.diff(neg.ptr).mean())
    out = {"split": a.split, "positives": pos, "threads": a.threads, "chunk": a.chunk,
           "eval49": {"seconds": t1 - t0, "positives_per_s": pos / (t1 - t0), "roots_per_s": pos * (2 + q49) / (t1 - t0)},
           "tgb": {"seconds": t2 - t1, "positives_per_s": pos / (t2 - t1),
                   "roots_per_s": pos * (2 + q_mean) / (t2 - t1), "negatives_per_positive": q_mean,
                   "tgb_mrr_random_model": got["tgb_mrr"]},
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"{a.split}: {pos:,} positives; 49-negative cached evaluation {out['eval49']['positives_per_s']:,.0f} "
          f"positives/s ({out['eval49']['roots_per_s']:,.0f} roots/s); TGB protocol with {q_mean:,.0f} negatives "
          f"each {out['tgb']['positives_per_s']:,.0f} positives/s ({out['tgb']['roots_per_s']:,.0f} roots/s), "
          f"{out['tgb']['seconds']:.0f} s; peak RSS {out['peak_rss_mib']:,.0f} MiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
