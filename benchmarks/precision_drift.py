"""What ``--precision bf16`` does to a trained model's numbers with the weights held fixed.

Training noise (a different trajectory from the first rounding on) hides a precision's own effect on
accuracy behind the seed spread. Here the weights are a run's checkpoint and nothing is trained: the
train split, then the validation split, are replayed through ``disttgl.train.epoch.evaluate`` (the
memory updated as in evaluation) under fp32 and under bf16. Reported: each split's MRR and AP under
both, and the relative Frobenius error of the bf16 memory against the fp32 memory after the train
split (0 when the memory recurrence runs in float32, docs/design.md §4.8).

    python benchmarks/precision_drift.py RUN/checkpoint.pt GRAPH CACHE [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.variants import build_memory, build_model
from disttgl.train.config import TrainConfig
from disttgl.train.epoch import evaluate, load_features, model_config
from disttgl.train.run_files import load_checkpoint


def replay(model, cfg: TrainConfig, feats, graph, cache: str, precision: str) -> tuple[dict, torch.Tensor]:
    """(metrics of the train and val splits, memory after the train split) under ``precision``."""
    memory = build_memory(model.cfg, feats.edge_feat, "cpu")
    with open_cache(cache, graph_path=cfg.graph) as c:
        batches = {s: c.num_batches(s) for s in ("train", "val")}
    metrics = {}
    after_train = None
    for split in ("train", "val"):
        loader = BatchLoader(cache, split, [(i, 0) for i in range(batches[split])])
        metrics[split] = {k: round(v, 6) for k, v in evaluate(model, memory, loader, feats, precision=precision).items()}
        if split == "train":
            after_train = memory.memory.clone()
    return metrics, after_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a run's checkpoint.pt (its config names the model)")
    ap.add_argument("graph")
    ap.add_argument("cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(Path(args.checkpoint))
    saved = ckpt["config"]
    known = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{**known, "graph": args.graph, "cache": args.cache})
    feats, graph = load_features(args.graph, torch.device("cpu"))
    model = build_model(model_config(cfg, graph, feats))
    model.load_state_dict(ckpt["model"])
    model.eval()
    runs = {p: replay(model, cfg, feats, graph, args.cache, p) for p in ("fp32", "bf16")}
    ref, got = runs["fp32"][1], runs["bf16"][1]
    result = {"checkpoint": args.checkpoint, "memory": cfg.memory, "threads": args.threads,
              "metrics": {p: r[0] for p, r in runs.items()},
              "memory_rel_error_after_train": float((got - ref).norm() / ref.norm()) if ref.norm() else 0.0}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
