"""Sampler throughput, batch-cache build time/size, and cached-batch load time.

On Wikipedia from ../shared/datasets (a synthetic bipartite graph of the same shape when absent):

1. Roots/s of ``recent_neighbors`` for 1,800-root batches (600 events: src, dst, 1 negative) with
   10 neighbours, against a per-root Python loop (bisect in the T-CSR row) measured in the same run.
2. Time and on-disk size to build the whole cache (train with --neg-sets, val/test with 49).
3. Time to load one cached batch (``BatchCache.batch``) against sampling the same batch from
   scratch (``BatchSampler.batch`` with one negative set: sampling, unique nodes, bookkeeping),
   and BatchLoader throughput.

    python benchmarks/sampling.py [--neg-sets 32] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from disttgl.cache.build import BatchSampler, build_cache
from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.cache.memory_clock import plan
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import sha256_files, write_graph
from disttgl.cache.sampling import negative_candidates, prepare, recent_neighbors, sample_negatives

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
WIKI = SHARED / "wikipedia" / "wikipedia.csv"


def wikipedia_graph() -> tuple[Graph, str]:
    if WIKI.exists():
        import polars as pl

        df = pl.read_csv(WIKI)
        src, dst = df["u"].to_numpy().astype(np.int64), df["i"].to_numpy().astype(np.int64)
        t = df["ts"].to_numpy().astype(np.float64)
        source, sha = "wikipedia", sha256_files([WIKI])
    else:  # same shape: 157,474 events, 8,227 users -> 1,000 pages, integer seconds over a month
        rng = np.random.default_rng(0)
        e = 157_474
        src = rng.integers(0, 8227, e)
        dst = 8227 + np.minimum(rng.zipf(1.5, e) - 1, 999)
        t = np.sort(rng.integers(0, 2_678_374, e)).astype(np.float64)
        source, sha = "synthetic-wikipedia-shape", "synthetic"
    n = int(max(src.max(), dst.max())) + 1
    g = Graph(src=src, dst=dst, t=t, split=chronological_split(t), num_nodes=n, bipartite=True,
              edge_feat=np.zeros((len(src) + 1, 0), np.float32), tcsr=build_tcsr(src, dst, t, n),
              attrs={"sha256": sha, "source": source})
    return g, source


def python_loop(tcsr, nodes, times, k):
    """The baseline: one bisect and one slice per root, in Python."""
    import bisect

    indptr, tt, nbr, eid = tcsr.indptr, tcsr.t.tolist(), tcsr.nbr, tcsr.eid
    out = np.full((len(nodes), k), -1, np.int64)
    oute = np.full((len(nodes), k), -1, np.int64)
    for r, (n, t) in enumerate(zip(nodes.tolist(), times.tolist())):
        lo = int(indptr[n])
        hi = bisect.bisect_left(tt, t, lo, int(indptr[n + 1]))
        s = max(lo, hi - k)
        out[r, :hi - s] = nbr[s:hi][::-1]
        oute[r, :hi - s] = eid[s:hi][::-1]
    return out, oute


def root_batches(g: Graph, batch_size: int = 600):
    rng = np.random.default_rng(0)
    cands = negative_candidates(g.num_nodes, g.dst, g.bipartite)
    out = []
    for lo in range(0, g.num_events - batch_size + 1, batch_size):
        s = slice(lo, lo + batch_size)
        neg = sample_negatives(rng, (batch_size,), g.num_nodes, cands)
        out.append((np.concatenate([g.src[s], g.dst[s], neg]), np.tile(g.t[s], 3)))
    return out


def best_of(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def train_step_time(cache_path: Path, g: Graph, batches: list[int]) -> float | None:
    """Median forward + backward + Adam step of the default TGN on cached batches (CPU)."""
    try:
        from disttgl.models.memory import NodeMemory
        from disttgl.models.tgn import TGN, Features, ModelConfig, link_loss
    except ImportError:
        return None
    torch.manual_seed(0)
    model = TGN(ModelConfig(edge_dim=g.edge_dim))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    feats = Features(edge_feat=torch.from_numpy(g.edge_feat))
    mem = NodeMemory.zeros(g.num_nodes, model.cfg.dim)
    times = []
    with open_cache(cache_path) as cache:
        for b in batches:
            batch = cache.batch("train", b, 0)
            t0 = time.perf_counter()
            memory, mail = mem.gather(batch)
            pos, neg, new_memory = model(batch, feats, memory, mail)
            loss = link_loss(pos, neg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mem.write(batch, new_memory)
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neg-sets", type=int, default=32)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="build the cache in DIR and keep it")
    args = ap.parse_args()
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "load_avg_start": os.getloadavg()[0]}}
    g, source = wikipedia_graph()
    res["dataset"] = {"source": source, "events": g.num_events, "nodes": g.num_nodes}
    print(f"dataset: {source}, {g.num_events} events, {g.num_nodes} nodes")

    # 1. sampler throughput
    t0 = time.perf_counter()
    index = prepare(g.tcsr, pad=10)
    res["prepare_s"] = time.perf_counter() - t0
    batches = root_batches(g)
    roots = sum(len(n) for n, _ in batches)
    def sample_all():
        for n, t in batches:  # results dropped, as a consumer would after use
            recent_neighbors(index, n, t, 10)

    dt = best_of(sample_all, reps=5)
    per_batch = []
    for n, t in batches:
        t0 = time.perf_counter()
        recent_neighbors(index, n, t, 10)
        per_batch.append(time.perf_counter() - t0)
    median = float(np.median(per_batch))
    sub = batches[::10]
    sub_roots = sum(len(n) for n, _ in sub)
    dt_loop = best_of(lambda: [python_loop(g.tcsr, n, t, 10) for n, t in sub], reps=1)
    for n, t in sub[:3]:  # the baseline computes the same thing
        a, _, _ = recent_neighbors(index, n, t, 10)
        assert (a == python_loop(g.tcsr, n, t, 10)[0]).all()
    res["sampler"] = {"roots_per_batch": 1800, "neighbors": 10, "batches": len(batches),
                      "roots_per_s": roots / dt, "median_batch_roots_per_s": 1800 / median,
                      "python_loop_roots_per_s": sub_roots / dt_loop,
                      "speedup_vs_python_loop": (roots / dt) / (sub_roots / dt_loop)}
    print(f"sampler: {roots / dt / 1e6:.2f} M roots/s (1,800-root batches, 10 recent; median batch "
          f"{1800 / median / 1e6:.2f} M/s), per-root Python "
          f"loop {sub_roots / dt_loop / 1e6:.3f} M roots/s -> {res['sampler']['speedup_vs_python_loop']:.0f}x")

    # 2. cache build
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    d = args.keep or Path(tmp.name)
    d.mkdir(parents=True, exist_ok=True)
    write_graph(g, d / "graph.h5")
    params = BatchParams(neg_sets=args.neg_sets)
    t0 = time.perf_counter()
    meta = build_cache(d / "graph.h5", d / "cache.h5", params, progress=False)
    build_s = time.perf_counter() - t0
    size = (d / "cache.h5").stat().st_size
    res["cache"] = {"build_s": build_s, "size_bytes": size, "params": params.__dict__,
                    "batches": meta.split_batches}
    print(f"cache build: {build_s:.1f} s, {size / 2 ** 20:.0f} MiB ({meta.split_batches})")

    # 3. cached load vs sampling the same batch
    cands = negative_candidates(g.num_nodes, g.dst, g.bipartite)
    one = BatchParams(neg_sets=1)
    sampler = BatchSampler(index, one, g.num_nodes, g.num_events, cands, np.dtype(np.int32))
    work = []
    for grp, state in plan(g.src, g.dst, g.t, g.split, 600, 1, g.num_nodes):
        pb = grp[0]
        if pb.split == 0 and pb.index % 4 == 0:  # a copy of the state: plan updates it in place
            snap = copy.deepcopy(state)
            work.append((pb, snap))
    ev = [(pb, snap, g.src[pb.eids], g.dst[pb.eids], g.t[pb.eids]) for pb, snap in work]
    t_sample = best_of(lambda: [sampler.batch(0, pb.index, pb.eids, s, d_, t, pb.write_mask, snap, 1, 1)
                                for pb, snap, s, d_, t in ev]) / len(ev)
    rng = np.random.default_rng(1)
    sets = rng.integers(0, args.neg_sets, len(work))
    with open_cache(d / "cache.h5") as cache:
        t_load = best_of(lambda: [cache.batch("train", pb.index, int(s)) for (pb, _), s in zip(work, sets)]) \
            / len(work)
        nb = cache.num_batches("train")
    items = [(b, int(s)) for b, s in zip(range(nb), rng.integers(0, args.neg_sets, nb))]
    loader = BatchLoader(d / "cache.h5", "train", items, prefetch=4)
    t_loader = best_of(lambda: sum(1 for _ in loader)) / nb
    loader.close()
    t_step = train_step_time(d / "cache.h5", g, [pb.index for pb, _ in work[:10]])
    res["load"] = {"cached_batch_ms": t_load * 1e3, "sample_same_batch_ms": t_sample * 1e3,
                   "train_step_ms": None if t_step is None else t_step * 1e3,
                   "sample_over_load": t_sample / t_load, "loader_ms_per_batch": t_loader * 1e3,
                   "load_avg_end": os.getloadavg()[0]}
    print(f"batch: load from cache {t_load * 1e3:.2f} ms, sample the same batch {t_sample * 1e3:.2f} ms "
          f"({t_sample / t_load:.1f}x); BatchLoader {t_loader * 1e3:.2f} ms/batch over {nb} train batches")
    if t_step is not None:
        print(f"train step (TGN d=100, CPU, {torch.get_num_threads()} threads): {t_step * 1e3:.1f} ms "
              f"= {t_step / t_load:.0f}x the cached load")
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
