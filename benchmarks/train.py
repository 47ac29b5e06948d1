"""Training throughput of the TGN on Wikipedia shape (batch 600, d = 100, 10 neighbours).

Reads ../shared/datasets/wikipedia (featureless) or the given ``--graph``/``--cache``; builds the
graph store and batch cache in a temporary folder when they are not given. Reports:

1. Train events/s over ``--batches`` cached batches through ``BatchLoader`` (the real loop:
   read, forward, backward + Adam, memory write) and the time per step split into
   load / forward / backward / memory write; peak RSS.
2. The same steps with a straightforward attention (one Linear over the concatenated
   [h_u ‖ e ‖ phi(dt)] per neighbour slot, scatter softmax, advanced indexing) measured in the same
   run: the baseline the per-root projections and hand-written backward passes of ``disttgl.models.tgn``
   are compared against. Rounds alternate the two and the best round of each counts.
3. On CPU, when the fused C kernels (``disttgl.models.native``) built: the same steps with the model's
   pure-torch attention path (``attn.fused = False``), also alternated, to show what they add.
4. Eval events/s (49 negatives per positive, no gradient).
5. With ``--bf16``: the same train steps and evaluation under ``--precision bf16`` (bf16 autocast
   for the matmuls, fp32 state: disttgl.train.precision), alternated with fp32 in every round, and
   a bare matmul of the model's shapes in both precisions (what bf16 can give at most).

    python benchmarks/train.py [--threads 2] [--batches 60] [--rounds 3] [--device cpu] [--bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from disttgl.models import native
from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN, ModelConfig, TemporalAttention
from disttgl.runtime import keep_freed_memory
from disttgl.train.epoch import adam, evaluate, load_features, train_epoch
from disttgl.train.precision import cpu_has_native_bf16

WIKI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wikipedia" / "wikipedia.csv"


def segment_softmax(score: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``score`` [M, H] within the groups given by ``seg`` [M] (scatter ops)."""
    index = seg.unsqueeze(1).expand_as(score)
    shift = score.new_full((num_segments, score.shape[1]), float("-inf"))
    shift = shift.scatter_reduce(0, index, score.detach(), "amax", include_self=True)
    e = torch.exp(score - shift[seg])
    return e / score.new_zeros(num_segments, score.shape[1]).index_add(0, seg, e)[seg]


class NaiveAttention(TemporalAttention):
    """Same weights, computed the direct way: concat per slot, one Linear each for q, k, v, out."""

    def forward(self, h, root_idx, nbr_root, nbr_idx, nbr_feat, nbr_dt):
        d, nh = self.dim, self.heads
        num_roots, m = root_idx.shape[0], nbr_root.shape[0]
        wq, wk, wv, wo = self.node.weight.split(d)
        bq, bk, bv, bo = self.node.bias.split(d)
        wkt, wvt = self.kv_time.weight.split(d)
        hv = h[root_idx]
        q = F.linear(torch.cat([hv, self.time(h.new_zeros(num_roots))], 1),
                     torch.cat([wq, self.q_time.weight], 1), bq)
        x = [h[nbr_idx], self.time(nbr_dt)]
        wk_all, wv_all = [wk, wkt], [wv, wvt]
        if self.kv_edge is not None:
            we_k, we_v = self.kv_edge.weight.split(d)
            x.append(nbr_feat)
            wk_all.append(we_k)
            wv_all.append(we_v)
        x = torch.cat(x, 1)
        k = F.linear(x, torch.cat(wk_all, 1), bk).view(m, nh, -1)
        v = F.linear(x, torch.cat(wv_all, 1), bv).view(m, nh, -1)
        score = F.leaky_relu((q[nbr_root].view(m, nh, -1) * k).sum(2), 0.2)
        att = F.dropout(segment_softmax(score, nbr_root, num_roots), self.p, self.training)
        agg = torch.zeros(num_roots, nh, d // nh).index_add(0, nbr_root, att.unsqueeze(2) * v).view(num_roots, d)
        out = F.linear(torch.cat([agg, hv], 1), torch.cat([self.out.weight, wo], 1), bo)
        return self.norm(F.relu(F.dropout(out, self.p, self.training)))


def cpu_bf16_flags() -> list[str]:
    """The bf16 matrix flags /proc/cpuinfo lists (avx512_bf16, amx_bf16, amx_tile)."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def build_inputs(tmp: Path) -> tuple[str, str]:
    if not WIKI.exists():
        sys.exit(f"{WIKI} not found: pass --graph and --cache")
    graph = tmp / "wikipedia.h5"
    subprocess.run([sys.executable, "-m", "disttgl", "convert", "--format", "jodie", "--out", str(graph),
                    str(WIKI)], check=True)
    cache = tmp / "batches.h5"
    build_cache(graph, cache, BatchParams(batch_size=600, neg_sets=4), progress=False)
    return str(graph), str(cache)


def run_steps(model, feats, num_nodes, cache, items, device, sync, precision="fp32"):
    memory = NodeMemory.zeros(num_nodes, model.cfg.dim, device)
    opt = adam(model.parameters(), 1e-4)
    warm = BatchLoader(cache, "train", items[:3], device=device)
    train_epoch(model, memory, warm, opt, feats, precision=precision)
    memory.reset()
    stats = train_epoch(model, memory, BatchLoader(cache, "train", items, device=device), opt, feats, sync=sync,
                        precision=precision)
    steps = len(items)
    return {"events_per_s": stats.events_per_s, "steps": steps, "events": stats.events,
            "ms_per_step": {k: 1e3 * v / steps for k, v in stats.timing.items()},
            "ms_per_step_total": 1e3 * stats.seconds / steps}


def eval_speed(model, feats, num_nodes, cache, items, device, precision="fp32") -> float:
    memory = NodeMemory.zeros(num_nodes, model.cfg.dim, device)
    batches = list(BatchLoader(cache, "val", items, device=device))
    t0 = time.perf_counter()
    evaluate(model, memory, batches, feats, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(b.num_events for b in batches) / (time.perf_counter() - t0)


def matmul_speed(device: torch.device, rounds: int = 5) -> dict[str, float]:
    """GFLOP/s of [3600, 100] x [100, 400] (the attention's node projection at batch 600) in fp32 and
    bf16, alternated, best of ``rounds``: the ceiling of what bf16 can give the model's matmuls."""
    a = torch.randn(3600, 100, device=device)
    b = torch.randn(100, 400, device=device)
    best = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(rounds):
        for name, (x, y) in {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}.items():
            reps = 200
            torch.mm(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = max(best[name], 2 * 3600 * 100 * 400 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph")
    p.add_argument("--cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, default=60, help="train steps measured")
    p.add_argument("--baseline-batches", type=int, default=20)
    p.add_argument("--eval-batches", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (best counts)")
    p.add_argument("--bf16", action="store_true", help="also measure --precision bf16, alternated with fp32")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the training commands do
    device = torch.device(args.device)
    sync = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        graph, cache = (args.graph, args.cache) if args.graph and args.cache else build_inputs(Path(tmp))
        feats, g = load_features(graph, device)
        with open_cache(cache) as c:
            nb = c.num_batches("train")
            sets = c.num_neg_sets("train")
            n_val = c.num_batches("val")
        rng = np.random.default_rng(0)
        # spread the measured steps over the epoch (early batches have smaller neighbourhoods)
        idx = np.linspace(0, nb - 1, min(args.batches, nb)).astype(int)
        items = [(int(b), int(rng.integers(sets))) for b in idx]
        cfg = ModelConfig(edge_dim=g.edge_dim, node_dim=g.node_dim)
        torch.manual_seed(0)
        model = TGN(cfg).to(device)
        naive = None
        if args.baseline_batches and device.type == "cpu":
            torch.manual_seed(0)
            naive = TGN(cfg)
            naive.attn.__class__ = NaiveAttention
            bidx = idx[np.linspace(0, len(idx) - 1, min(args.baseline_batches, len(idx))).astype(int)]
        # rounds alternate ours/baseline and the best round of each counts: on a shared machine the
        # other tenants only ever slow a round down
        fused = device.type == "cpu" and native.kernels() is not None
        ours = base = unfused = bf16 = None
        best = lambda new, old: new if old is None or new["events_per_s"] > old["events_per_s"] else old  # noqa: E731
        for _ in range(args.rounds):
            ours = best(run_steps(model, feats, g.num_nodes, cache, items, device, sync), ours)
            if args.bf16:
                bf16 = best(run_steps(model, feats, g.num_nodes, cache, items, device, sync, "bf16"), bf16)
            if fused:
                model.attn.fused = False
                unfused = best(run_steps(model, feats, g.num_nodes, cache, items, device, sync), unfused)
                model.attn.fused = True
            if naive is not None:
                base = best(run_steps(naive, feats, g.num_nodes, cache, [(int(b), 0) for b in bidx], device, False),
                            base)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # eval throughput (memory state irrelevant for speed), with the fused kernels and without
        items_val = [(b, 0) for b in range(min(args.eval_batches, n_val))]
        ev_s = eval_speed(model, feats, g.num_nodes, cache, items_val, device)
        ev_bf16 = None
        if args.bf16:  # alternated with fp32, best of the rounds for each
            for _ in range(args.rounds):
                ev_bf16 = max(ev_bf16 or 0.0, eval_speed(model, feats, g.num_nodes, cache, items_val, device, "bf16"))
                ev_s = max(ev_s, eval_speed(model, feats, g.num_nodes, cache, items_val, device))
        ev_unfused = None
        if fused:
            model.attn.fused = model.predict.fused = False
            ev_unfused = eval_speed(model, feats, g.num_nodes, cache, items_val, device)
            model.attn.fused = model.predict.fused = True
    result = {
        "device": str(device), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "batch_size": 600, "dim": cfg.dim, "neighbors": 10,
        "fused_kernels": fused, "train": ours, "train_torch_attention": unfused,
        "speedup_vs_torch_attention": None if unfused is None else ours["events_per_s"] / unfused["events_per_s"],
        "baseline_naive_attention": base,
        "speedup_vs_naive": None if base is None else ours["events_per_s"] / base["events_per_s"],
        "eval_events_per_s": ev_s, "eval_events_per_s_torch_ops": ev_unfused, "peak_rss_mib": peak_rss,
        "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
    }
    if args.bf16:
        result["bf16"] = {
            "train": bf16, "eval_events_per_s": ev_bf16,
            "train_speedup_vs_fp32": bf16["events_per_s"] / ours["events_per_s"],
            "eval_speedup_vs_fp32": ev_bf16 / ev_s,
            "matmul_gflops": matmul_speed(device),
            "cpu_native_bf16": cpu_has_native_bf16() if device.type == "cpu" else None,
            "cpu_flags": cpu_bf16_flags() if device.type == "cpu" else None,
        }
    kind = f"{device}, fused kernels" if fused else str(device)
    print(f"train: {ours['events_per_s']:,.0f} events/s on {args.threads} threads ({kind}); "
          f"ms/step {ours['ms_per_step_total']:.1f} = " +
          " + ".join(f"{k} {v:.1f}" for k, v in ours["ms_per_step"].items()))
    if unfused:
        print(f"same model, torch attention path (no fused kernels): {unfused['events_per_s']:,.0f} events/s "
              f"-> fused kernels {result['speedup_vs_torch_attention']:.2f}x")
    if base:
        print(f"baseline (naive attention): {base['events_per_s']:,.0f} events/s -> speed-up "
              f"{result['speedup_vs_naive']:.2f}x")
    print(f"eval: {ev_s:,.0f} events/s (49 negatives)"
          + (f", {ev_unfused:,.0f} with torch ops only" if ev_unfused else "") + f"; peak RSS {peak_rss:,.0f} MiB")
    if args.bf16:
        r = result["bf16"]
        mm = r["matmul_gflops"]
        print(f"bf16: train {bf16['events_per_s']:,.0f} events/s ({r['train_speedup_vs_fp32']:.2f}x fp32), "
              f"eval {ev_bf16:,.0f} events/s ({r['eval_speedup_vs_fp32']:.2f}x); bare matmul "
              f"{mm['bf16']:.0f} vs {mm['fp32']:.0f} GFLOP/s ({mm['bf16'] / mm['fp32']:.2f}x); "
              f"CPU bf16 flags: {r['cpu_flags']}")
    print(f"load average {load_start:.2f} at the start, {result['load_avg_end']:.2f} at the end "
          "(2 cores: above ~0.5 others were running)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
