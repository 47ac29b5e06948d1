"""``disttgl profile GRAPH CACHE --out stages.json``: time MSPipe's five stages on real batches and
print τ, k_min and the bottleneck (docs/design.md "Pipeline staleness (MSPipe)").

The stages, per training batch, timed one after another in this process (no overlap, so each is
its own cost): 1 sample — read the batch from the cache (its sampled neighbourhood was drawn when
the cache was built; reading it is what a run pays) and move it to the device; 2 feature fetch —
gather the edge (and node) feature rows the batch uses; 3 memory fetch — gather its memory and
mail rows; 4 train — forward, loss, backward, optimizer step; 5 memory write. τ_j is the median
over the timed batches after a warm-up, so a stray slow batch does not set the bound.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disttgl.atomic import atomic_path, check_writable_dir
from disttgl.cache.reader import open_cache
from disttgl.errors import DataError
from disttgl.models.tgn import link_loss
from disttgl.models.variants import build_memory, build_model
from disttgl.pipeline.plan import STAGE_TIMES_KIND
from disttgl.pipeline.timing import STAGES, min_staleness, speedup_bound
from disttgl.train.config import PRESETS, TrainConfig, resolve_lr
from disttgl.train.epoch import adam, load_features, model_config
from disttgl.train.rng import seed_everything


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_stages(cfg: TrainConfig, *, batches: int = 40, warmup: int = 5) -> dict[str, Any]:
    """Median seconds per stage over ``batches`` training batches (after ``warmup`` untimed ones).

    Args:
        cfg: the model and run settings (graph, cache, device, dims, loss, threads, seed).
        batches: batches timed (fewer if the split has fewer).
        warmup: batches run first and not timed (allocator and kernel warm-up).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    feats, graph = load_features(cfg.graph, device, cfg.static)
    model_cfg = model_config(cfg, graph, feats)  # cfg.memory's model: TGN, JODIE or APAN (their stages differ)
    model = build_model(model_cfg).to(device)
    memory = build_memory(model_cfg, feats.edge_feat, device)
    times: list[list[float]] = []
    with open_cache(cfg.cache, graph_path=cfg.graph) as cache:
        n = cache.num_batches("train")
        if n == 0:
            raise DataError(cfg.cache, "the cache has no training batches to profile")
        optimizer = adam(model.parameters(), resolve_lr(cfg, n, quiet=True))
        model.train()
        clock = time.perf_counter
        for i in range(min(n, warmup + batches)):
            t0 = clock()
            batch = cache.batch("train", i, 0).to(device)
            _sync(device)
            t1 = clock()
            edge = feats.edge_feat.index_select(0, torch.cat([batch.nbr_eid, batch.mail_eid]))
            node = None if feats.node_feat is None else feats.node_feat.index_select(0, batch.nodes)
            _sync(device)
            t2 = clock()
            mem, mail = memory.gather(batch)
            _sync(device)
            t3 = clock()
            pos, neg, new_mem = model(batch, feats, mem, mail)
            loss = link_loss(pos, neg, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            t4 = clock()
            memory.write(batch, new_mem)
            _sync(device)
            t5 = clock()
            del edge, node
            if i >= warmup:
                times.append([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4])
    if not times:  # a split shorter than the warm-up: time what there is
        raise DataError(cfg.cache, f"only {n} training batches: fewer than the warm-up ({warmup}); use --warmup 0")
    per_stage = np.median(np.asarray(times), axis=0)
    tau = {name: float(v) for name, v in zip(STAGES, per_stage)}
    stage_times = tuple(tau.values())
    bound = min_staleness(stage_times)
    return {"kind": STAGE_TIMES_KIND, "memory": cfg.memory, "tau": tau, "k_min": bound.k, "bottleneck": bound.bottleneck,
            "reason": bound.reason, "speedup_bound": speedup_bound(stage_times), "batches_timed": len(times),
            "warmup": warmup, "graph": str(cfg.graph),
            "cache": str(cfg.cache), "device": str(device), "threads": torch.get_num_threads(),
            "machine": platform.node(), "batch_size": int(cache.meta.batch_size)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("cache", help="batch cache (.h5 from `disttgl batches`)")
    parser.add_argument("--out", required=True, help="stage-times JSON (for `disttgl train --stage-times`)")
    parser.add_argument("--batches", type=int, default=40, help="training batches timed (default: 40)")
    parser.add_argument("--warmup", type=int, default=5, help="batches run untimed first (default: 5)")
    defaults = TrainConfig(graph="", cache="", out="")
    kinds = {"threads": int, "lr": float}
    for name in ("device", "memory", "mailbox_size", "dim", "time_dim", "heads", "dropout", "lr", "threads", "loss",
                 "seed", "static"):
        value = getattr(defaults, name)
        kind = type(value) if value is not None else kinds.get(name, str)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value,
                            help=f"as for `disttgl train` (default: {value})")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="as for `disttgl train`")


def run(args: argparse.Namespace) -> int:
    if args.batches < 1 or args.warmup < 0:
        raise DataError(None, f"--batches must be >= 1 and --warmup >= 0, got {args.batches}, {args.warmup}")
    check_writable_dir(args.out)
    preset = PRESETS.get(args.preset or "", {})
    cfg = TrainConfig(graph=args.graph, cache=args.cache, out=args.out, device=args.device, dim=args.dim,
                      time_dim=args.time_dim, heads=args.heads, dropout=args.dropout, threads=args.threads,
                      lr=args.lr if args.lr is not None else preset.get("lr"),
                      loss=preset.get("loss", args.loss) if args.loss == TrainConfig.loss else args.loss,
                      seed=args.seed, static=args.static, memory=args.memory, mailbox_size=args.mailbox_size)
    cfg.check()
    result = profile_stages(cfg, batches=args.batches, warmup=args.warmup)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    tau = result["tau"]
    print("stage times (median s per batch): " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in tau.items()))
    if result["k_min"] is not None:
        print(f"training is the bottleneck: k_min = {result['k_min']} ({result['reason']})")
    else:
        print(f"the pipeline is bounded by {result['bottleneck']}: {result['reason']}")
    print(f"a pipeline can run at most {result['speedup_bound']:.3f}x the sequential speed "
          "(sum of the stages over the slowest resource)")
    return 0
