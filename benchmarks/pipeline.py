"""MSPipe's executor: train events/s with ``--pipeline threads`` against ``off`` in one run.

For one staleness bound k (default 2, the bound CPU profiles give), the same epoch is trained with
the memory fetched in line (``off``) and on a background thread (``threads``); rounds alternate
the two (A B A B) so drift on the machine hits both, and each round starts from the same weights.
The plain sequential path (k = 1, ``NodeMemory``) is timed beside them as the baseline. The two
executors must give the same loss (the executor changes speed only); the script checks it.

Reads ../shared/datasets/wikipedia (featureless) or ``--graph``/``--cache``.

    python benchmarks/pipeline.py [--threads 2] [--batches 120] [--rounds 3] [--k 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN, ModelConfig
from disttgl.pipeline.executor import MemoryPrefetch
from disttgl.pipeline.stale_memory import StaleMemory
from disttgl.pipeline.versions import memory_versions
from disttgl.runtime import keep_freed_memory
from disttgl.train import machine_load
from disttgl.train.epoch import adam, load_features, train_epoch

WIKI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wikipedia" / "wikipedia.csv"


def build_inputs(tmp: Path) -> tuple[str, str]:
    if not WIKI.exists():
        sys.exit(f"{WIKI} not found: pass --graph and --cache")
    graph, cache = tmp / "graph.h5", tmp / "cache.h5"
    subprocess.run([sys.executable, "-m", "disttgl", "convert", "--format", "jodie", "--out", str(graph), str(WIKI)],
                   check=True)
    build_cache(graph, cache, BatchParams(batch_size=600, neg_sets=4), progress=False)
    return str(graph), str(cache)


def one_pass(mode: str, state: dict, feats, graph, cache: str, n: int, k: int, device) -> tuple[float, float]:
    """(events/s, mean loss) of one pass over ``n`` batches from the saved weights ``state``."""
    torch.manual_seed(0)
    model = TGN(ModelConfig(edge_dim=graph.edge_dim)).to(device)
    model.load_state_dict(state)
    opt = adam(model.parameters(), 5e-4)
    batches = BatchLoader(cache, "train", [(i, 0) for i in range(n)], prefetch=4, device=device)
    if mode == "plain":
        memory = NodeMemory.zeros(graph.num_nodes, model.cfg.dim, device)
    else:
        memory = StaleMemory(graph.num_nodes, model.cfg.dim, graph.num_events, device)
        memory.start_epoch(memory_versions(n, k))
        if mode == "threads":
            batches = MemoryPrefetch(batches, memory)
    stats = train_epoch(model, memory, batches, opt, feats, loss="bce")
    return stats.events_per_s, stats.loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph")
    ap.add_argument("--cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        graph_path, cache = (args.graph, args.cache) if args.graph else build_inputs(Path(tmp))
        feats, graph = load_features(graph_path, device)
        with open_cache(cache, graph_path=graph_path) as c:
            n = min(args.batches, c.num_batches("train"))
        torch.manual_seed(0)
        state = copy.deepcopy(TGN(ModelConfig(edge_dim=graph.edge_dim)).state_dict())
        one_pass("plain", state, feats, graph, cache, min(n, 10), args.k, device)  # warm-up (kernels, allocator)
        load = machine_load.Interval().start()
        speeds: dict[str, list[float]] = {"plain": [], "off": [], "threads": []}
        losses: dict[str, float] = {}
        for r in range(args.rounds):
            for mode in ("plain", "off", "threads") if r % 2 == 0 else ("threads", "off", "plain"):
                t0 = time.perf_counter()
                ev, loss = one_pass(mode, state, feats, graph, cache, n, args.k, device)
                speeds[mode].append(ev)
                if mode in losses and losses[mode] != loss:
                    sys.exit(f"{mode}: loss {loss} differs between rounds (not deterministic)")
                losses[mode] = loss
                print(f"round {r} {mode:8s} {ev:10,.0f} train events/s  loss {loss:.6f}  ({time.perf_counter() - t0:.1f} s)")
        fields = load.stop()
    if losses["off"] != losses["threads"]:
        sys.exit(f"threads loss {losses['threads']} != off loss {losses['off']}: the executor changed the numbers")
    best = {m: max(v) for m, v in speeds.items()}
    result = {"benchmark": "pipeline", "graph": graph_path if args.graph else "wikipedia (featureless)",
              "batches": n, "k": args.k, "threads": args.threads, "device": str(device), "rounds": args.rounds,
              "events_per_s": speeds, "best_events_per_s": best,
              "threads_over_off": best["threads"] / best["off"], "off_over_plain": best["off"] / best["plain"],
              "loss": losses, "other_cores_busy": fields.get("other_cores_busy"),
              "contended": machine_load.summarize([fields])["contended"], "machine": platform.node(), "cpu": platform.processor(),
              "cores": len(__import__("os").sched_getaffinity(0))}
    print(json.dumps({k: result[k] for k in ("best_events_per_s", "threads_over_off", "off_over_plain",
                                             "other_cores_busy", "contended")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
