"""Training events/s of the three memory models on one batch cache: gru (TGN), rnn (JODIE), apan (APAN).

Each measured pass is the real training step (``disttgl.train.epoch.train_epoch``: read the cached
batch, gather memory, forward, backward + fused Adam, write memory) over ``--batches`` training
batches spread over the epoch, after 3 warm-up steps, from a reset memory. Rounds alternate the
models and the best round of each counts (other tenants of a shared machine only slow a round down).
Prints one line per model and, with ``--out``, writes the numbers as JSON.

    python benchmarks/memories.py GRAPH CACHE [--batches 40] [--rounds 2] [--threads 2]
        [--device cpu] [--dim 100] [--mailbox-size 10] [--memories gru,rnn,apan] [--out out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
from pathlib import Path

import numpy as np
import torch

from disttgl.atomic import atomic_path
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.tgn import ModelConfig
from disttgl.models.variants import build_memory, build_model
from disttgl.runtime import keep_freed_memory
from disttgl.train.epoch import adam, load_features, train_epoch


def measure(kind: str, args: argparse.Namespace, graph, feats, cache: str, items: list[tuple[int, int]],
            device: torch.device) -> dict:
    """One timed pass of ``kind`` over ``items`` (after a warm-up on the first three)."""
    cfg = ModelConfig(dim=args.dim, time_dim=args.dim, edge_dim=graph.edge_dim, node_dim=graph.node_dim,
                      memory=kind, num_nodes=graph.num_nodes, mailbox_size=args.mailbox_size)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    memory = build_memory(cfg, feats.edge_feat, device)
    opt = adam(model.parameters(), 1e-4)
    train_epoch(model, memory, BatchLoader(cache, "train", items[:3], device=device), opt, feats)
    memory.reset()
    sync = device.type == "cuda"
    stats = train_epoch(model, memory, BatchLoader(cache, "train", items, device=device), opt, feats, sync=sync)
    steps = len(items)
    return {"events_per_s": stats.events_per_s, "steps": steps, "events": stats.events, "loss": stats.loss,
            "ms_per_step": {k: 1e3 * v / steps for k, v in stats.timing.items()},
            "ms_per_step_total": 1e3 * stats.seconds / steps,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graph", help="graph store (graph.h5)")
    p.add_argument("cache", help="batch cache (.h5 from `disttgl batches`)")
    p.add_argument("--batches", type=int, default=40, help="training steps measured per model and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (the best of each model counts)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=100, help="memory, embedding and time encoding size")
    p.add_argument("--mailbox-size", type=int, default=10, help="apan: mails kept per node")
    p.add_argument("--memories", default="gru,rnn,apan", help="comma-separated memory kinds to time")
    p.add_argument("--out", default=None, help="write the numbers here as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the training commands do
    device = torch.device(args.device)
    kinds = [k for k in args.memories.split(",") if k]
    feats, graph = load_features(args.graph, device)
    with open_cache(args.cache, graph_path=args.graph) as c:
        nb, sets, meta = c.num_batches("train"), c.num_neg_sets("train"), c.meta
    if nb == 0:
        raise SystemExit(f"{args.cache}: no training batches")
    rng = np.random.default_rng(0)
    idx = np.linspace(0, nb - 1, min(max(args.batches, 4), nb)).astype(int)  # early batches are smaller
    items = [(int(b), int(rng.integers(sets))) for b in idx]
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for kind in kinds:
            got = measure(kind, args, graph, feats, args.cache, items, device)
            if kind not in best or got["events_per_s"] > best[kind]["events_per_s"]:
                best[kind] = got
    result = {"device": str(device), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "graph": args.graph, "cache": args.cache, "batch_size": meta.batch_size,
              "neighbors": meta.neighbors, "dim": args.dim, "mailbox_size": args.mailbox_size,
              "rounds": args.rounds, "train": best,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for kind, r in best.items():
        print(f"{kind:>4}: {r['events_per_s']:>10,.0f} train events/s ({r['steps']} steps of {meta.batch_size}, "
              f"{r['ms_per_step_total']:.1f} ms/step = " +
              " + ".join(f"{k} {v:.1f}" for k, v in r["ms_per_step"].items()) + ")")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
