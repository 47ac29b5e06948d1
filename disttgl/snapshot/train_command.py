"""``disttgl snapshot-train SNAPSHOTS.h5 GRAPH --model gcn-lstm|tmgcn --out RUN [--transfer whole|diff]
[--epochs] [--seed] ...``: train a snapshot DGNN on link prediction (docs/design.md §11.5); under
``torchrun --nproc-per-node P -m disttgl snapshot-train ... --parallel`` over P ranks (§11.6)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from disttgl.snapshot.features import MODES as FEATURE_MODES
from disttgl.snapshot.models import MODELS
from disttgl.snapshot.train import SnapshotTrainConfig, train

_HELP = {
    "model": "gcn-lstm (WD-GCN) or tmgcn (TM-GCN)",
    "transfer": "copy each snapshot to the device whole, or as its difference against the previous one",
    "epochs": "full-batch epochs", "seed": "seed of the weights and the negatives", "lr": "Adam learning rate",
    "hidden": "embedding size", "node_features": "auto (the store's, else degree), store, embedding or degree",
    "embedding_dim": "size of learnable embeddings (--node-features embedding)",
    "degree_cap": "largest one-hot degree (--node-features degree)",
    "m_window": "TM-GCN: w, snapshots mixed by M", "m_choice": "TM-GCN: M[t, t-d+1] = 1/d (2) or 1 (1)",
    "m_rownorm": "TM-GCN: normalise M's rows to sum 1", "m_inverse": "TM-GCN: apply M^-1 to the output",
    "eval_negatives": "negatives per positive for validation and test", "device": "cpu, cuda, cuda:1, ...",
    "threads": "torch CPU threads (default: torch's)",
    "parallel": "split the work over the ranks torchrun started (convolution by snapshot, temporal step by "
                "vertex, one all-to-all between; docs/design.md §11.6)",
    "resume": "continue from the run directory's checkpoint.pt when it was made with the same settings "
              "(else start afresh, with a warning)",
}
_CHOICES = {"model": MODELS, "transfer": ("whole", "diff"), "node_features": FEATURE_MODES, "m_choice": (1, 2)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshots", help="snapshots file from `disttgl snapshots`")
    p.add_argument("graph", help="the graph store the snapshots were cut from")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, summary.json)")
    for f in fields(SnapshotTrainConfig):
        if f.name in ("snapshots", "graph", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=_HELP[f.name])
            continue
        kind = {"int": int, "float": float, "str": str, "int | None": int}[str(f.type)]
        p.add_argument(flag, type=kind, default=f.default, choices=_CHOICES.get(f.name),
                       help=_HELP[f.name] + ("" if f.default is None else f" (default {f.default})"))


def run(args: argparse.Namespace) -> int:
    cfg = SnapshotTrainConfig(**{f.name: getattr(args, f.name) for f in fields(SnapshotTrainConfig)})
    train(cfg)
    return 0
