"""MSPipe's executor: train events/s with ``--pipeline threads`` (and, on CUDA, ``streams``) against
``off`` in one run.

For one staleness bound k (default 2, the bound CPU profiles give), the same epoch is trained with
the memory fetched in line (``off``), on a background thread (``threads``) and, with ``--device
cuda``, on a background thread with the batch copies and the fetch on their own CUDA streams
(``streams``); rounds alternate the order (A B A B) so drift on the machine hits all, and each round
starts from the same weights. The plain sequential path (k = 1, ``NodeMemory``) is timed beside them
as the baseline. The executors must give the same loss (the executor changes speed only); the script
checks it: exactly on CPU, to a relative 1e-4 on CUDA, whose atomic reductions in the backward pass
are not bit-reproducible from run to run.

Reads ../shared/datasets/wikipedia (featureless) or ``--graph``/``--cache``.

    python benchmarks/pipeline.py [--threads 2] [--batches 120] [--rounds 3] [--k 2] [--device cpu|cuda]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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
from disttgl.pipeline.streams import StageStreams
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
    streams = StageStreams(device) if mode == "streams" else None
    batches = BatchLoader(cache, "train", [(i, 0) for i in range(n)], prefetch=4, device=device,
                          copy_stream=None if streams is None else streams.copy)
    if mode == "plain":
        memory = NodeMemory.zeros(graph.num_nodes, model.cfg.dim, device)
    else:
        memory = StaleMemory(graph.num_nodes, model.cfg.dim, graph.num_events, device,
                             stream_events=streams is not None)
        memory.start_epoch(memory_versions(n, k))
        if mode in ("threads", "streams"):
            batches = MemoryPrefetch(batches, memory, streams=streams)
    t0 = time.perf_counter()
    stats = train_epoch(model, memory, batches, opt, feats, loss="bce")
    if device.type == "cuda":  # the last step's work may still be queued on the device
        torch.cuda.synchronize(device)
    return stats.events / (time.perf_counter() - t0), stats.loss


def same_loss(a: float, b: float, device: torch.device) -> bool:
    """Equal on CPU; equal to a relative 1e-4 on CUDA (its backward reductions are not reproducible)."""
    return a == b if device.type != "cuda" else math.isclose(a, b, rel_tol=1e-4)


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
        modes = ("plain", "off", "threads") + (("streams",) if device.type == "cuda" else ())
        speeds: dict[str, list[float]] = {m: [] for m in modes}
        losses: dict[str, float] = {}
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                t0 = time.perf_counter()
                ev, loss = one_pass(mode, state, feats, graph, cache, n, args.k, device)
                speeds[mode].append(ev)
                if mode in losses and not same_loss(losses[mode], loss, device):
                    sys.exit(f"{mode}: loss {loss} differs between rounds (not deterministic)")
                losses[mode] = loss
                print(f"round {r} {mode:8s} {ev:10,.0f} train events/s  loss {loss:.6f}  ({time.perf_counter() - t0:.1f} s)")
        fields = load.stop()
    for mode in modes[2:]:
        if not same_loss(losses["off"], losses[mode], device):
            sys.exit(f"{mode} loss {losses[mode]} != off loss {losses['off']}: the executor changed the numbers")
    best = {m: max(v) for m, v in speeds.items()}
    result = {"benchmark": "pipeline", "graph": graph_path if args.graph else "wikipedia (featureless)",
              "batches": n, "k": args.k, "threads": args.threads, "device": str(device), "rounds": args.rounds,
              "events_per_s": speeds, "best_events_per_s": best,
              "threads_over_off": best["threads"] / best["off"], "off_over_plain": best["off"] / best["plain"],
              "streams_over_off": best["streams"] / best["off"] if "streams" in best else None,
              "streams_over_plain": best["streams"] / best["plain"] if "streams" in best else None,
              "loss": losses, "other_cores_busy": fields.get("other_cores_busy"),
              "contended": machine_load.summarize([fields])["contended"], "machine": platform.node(), "cpu": platform.processor(),
              "cores": len(__import__("os").sched_getaffinity(0))}
    print(json.dumps({k: result[k] for k in ("best_events_per_s", "threads_over_off", "off_over_plain",
                                             "streams_over_off", "streams_over_plain", "other_cores_busy",
                                             "contended")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
