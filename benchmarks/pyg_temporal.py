"""PyTorch Geometric Temporal baselines on disttgl's snapshots (docs/design.md §11.9): its GConvLSTM
(K = 1 or 2) or EvolveGCN-H as the encoder, everything else disttgl's own.

    python benchmarks/pyg_temporal.py SNAPSHOTS.h5 GRAPH --out RUN [--model gconvlstm|evolvegcn-h]
        [--cheb-k 1|2] [--epochs 100] [--seed 0] [--lr 0.01] [--hidden 32] [--threads 1] ...

Install (optional; only this baseline needs it): ``pip install --no-deps torch-geometric-temporal==0.56.2``.
``--no-deps`` because its metadata requires torch-sparse and torch-scatter, which have no wheel for
torch 2.13 (and ``decorator==4.4.2``); the two layers used here need neither. Its one module-level
use of them, ``from torch_sparse import SparseTensor`` in ``nn/recurrent/evolvegcno.py`` (a type
annotation), is met by registering a stand-in ``torch_sparse`` module whose ``SparseTensor`` is
``torch_geometric.typing.SparseTensor``, PyG's own placeholder when torch-sparse is absent; only
when torch_sparse itself cannot be imported.

Shared with ``disttgl snapshot-train`` by calling its functions, not copies of them: the snapshots
file and graph check, the node features (``--node-features``, default auto: the store's, else
one-hot degrees), the targets of each split, the candidate pool, the evaluation negatives (drawn once
from ``[seed, 1]``, val then test) and the training negatives (``[seed, 0]``, one per positive per
epoch), the streamer, the local step (loss of targets t from Z[t - 1] over snapshots 0 .. last
train target - 1; evaluation from one pass to the last val/test target), the epoch loop (one
full-batch Adam step, metrics.jsonl, test metrics of the best validation-MRR epoch, train events/s)
and the link predictor (the same MLP on [z_u ‖ z_v]). Only the encoder differs:

- ``gconvlstm``: PyG-T's GConvLSTM (Seo et al.'s graph-convolutional LSTM with peepholes) run over
  t from a zero state; Z_t = its H_t. Each gate is ChebConv(X_t) + ChebConv(H_{t-1}). K = 1 is a
  plain linear map per node (the graph is not used at all); K = 2 adds -D^-1/2 A D^-1/2 (no +I,
  self-loops dropped; D from column sums, equal to disttgl's row sums on symmetric snapshots).
- ``evolvegcn-h``: X_t W_in (a learned linear map to ``hidden``, no bias: the layer is square),
  then PyG-T's EvolveGCNH(N, hidden): a GRU evolves the GCN weight from the top-``hidden`` pooled
  nodes of each snapshot; propagation by D^-1/2 (A + I) D^-1/2 (gcn_norm: existing self-loops keep
  their count instead of count + 1; otherwise disttgl's Â). No activation after it.

An entry of disttgl's raw adjacency (row r, col c, count) is PyG edge c -> r with weight count, so row r
aggregates its row as in disttgl's Â X. Resuming is not supported (no ``--resume``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import importlib.util
import logging
import sys
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from disttgl.atomic import check_writable_dir
from disttgl.errors import DataError
from disttgl.snapshot.adjacency import DeviceAdjacency
from disttgl.snapshot.features import NodeFeatures
from disttgl.snapshot.models import LinkPredictor, SnapshotLinkModel
from disttgl.snapshot.resume import Resumed, snapshots_identity
from disttgl.snapshot.store import SnapshotFile, load_snapshots
from disttgl.snapshot.streamer import SnapshotStreamer
from disttgl.snapshot.task import Targets, candidate_pool, draw_negatives
from disttgl.snapshot.train import (LocalStep, SnapshotTrainConfig, _check_graph, _features, _fit, _Run,
                                    _targets)
from disttgl.train.run_files import write_summary

MODELS = ("gconvlstm", "evolvegcn-h")
PACKAGE = "torch-geometric-temporal"


def _load_layers() -> tuple[Any, str | None]:
    """(PyG-T's recurrent layers module, None) or (None, why it cannot be used)."""
    if importlib.util.find_spec("torch_geometric_temporal") is None:
        return None, f"{PACKAGE} is not installed (pip install --no-deps {PACKAGE}==0.56.2)"
    try:
        if importlib.util.find_spec("torch_sparse") is None:
            import torch_geometric.typing as pyg_typing  # noqa: PLC0415 - only once the package is there
            alias = types.ModuleType("torch_sparse", "disttgl's stand-in: PyG's placeholder SparseTensor only")
            alias.SparseTensor = pyg_typing.SparseTensor
            sys.modules["torch_sparse"] = alias
        from torch_geometric_temporal.nn import recurrent  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001 - any failure means: no baseline, say why
        return None, f"{PACKAGE} does not import: {type(exc).__name__}: {exc}"
    return recurrent, None


RECURRENT, UNAVAILABLE = _load_layers()
VERSION = importlib.metadata.version(PACKAGE) if RECURRENT is not None else None


@dataclass(frozen=True)
class PygTemporalConfig:
    """The baseline's settings; every shared one defaults to ``disttgl snapshot-train``'s."""

    snapshots: str
    graph: str
    out: str
    model: str = "gconvlstm"
    cheb_k: int = 1
    transfer: str = SnapshotTrainConfig.transfer
    epochs: int = SnapshotTrainConfig.epochs
    seed: int = SnapshotTrainConfig.seed
    lr: float = SnapshotTrainConfig.lr
    hidden: int = SnapshotTrainConfig.hidden
    node_features: str = SnapshotTrainConfig.node_features
    embedding_dim: int = SnapshotTrainConfig.embedding_dim
    degree_cap: int = SnapshotTrainConfig.degree_cap
    eval_negatives: int = SnapshotTrainConfig.eval_negatives
    device: str = SnapshotTrainConfig.device
    threads: int | None = SnapshotTrainConfig.threads

    @property
    def name(self) -> str:
        """The run's model name in its summary."""
        return f"pyg-gconvlstm-k{self.cheb_k}" if self.model == "gconvlstm" else f"pyg-{self.model}"

    def check(self) -> None:
        if self.model not in MODELS:
            raise DataError(None, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.cheb_k not in (1, 2):
            raise DataError(None, f"--cheb-k must be 1 or 2, got {self.cheb_k}")
        shared = {f.name: getattr(self, f.name) for f in fields(SnapshotTrainConfig)
                  if hasattr(self, f.name) and f.name != "model"}
        SnapshotTrainConfig(**shared).check()  # the shared settings' own checks


def edge_inputs(adj: DeviceAdjacency, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """PyG (edge_index [2, E], edge_weight [E]): entry (r, c, count) as edge c -> r weighted count."""
    return torch.stack([adj.col, adj.row]), adj.count.to(dtype)


class GConvLSTMEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, cheb_k: int):
        super().__init__()
        self.cell = RECURRENT.GConvLSTM(in_dim, hidden, K=cheb_k)

    def forward(self, xs: Sequence[torch.Tensor], graphs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        h = c = None  # the cell starts from zeros
        out = []
        for x, (index, weight) in zip(xs, graphs):
            h, c = self.cell(x, index, weight, h, c)
            out.append(h)
        return torch.stack(out)


class EvolveGCNHEncoder(nn.Module):
    def __init__(self, num_nodes: int, in_dim: int, hidden: int):
        super().__init__()
        if hidden > num_nodes:
            raise DataError(None, f"EvolveGCN-H pools the top --hidden nodes: {hidden} > {num_nodes} nodes")
        self.project = nn.Linear(in_dim, hidden, bias=False)
        self.layer = RECURRENT.EvolveGCNH(num_nodes, hidden)

    def forward(self, xs: Sequence[torch.Tensor], graphs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        self.layer.reinitialize_weight()  # the layer keeps its evolved weight between calls: start afresh
        return torch.stack([self.layer(self.project(x), index, weight) for x, (index, weight) in zip(xs, graphs)])


class PygTemporalLinkModel(nn.Module):
    """disttgl's features and link predictor around a PyG-T encoder; what disttgl's task functions call."""

    score = SnapshotLinkModel.score  # the same scoring of src -> dst from z [N, d]

    def __init__(self, features: NodeFeatures, cfg: PygTemporalConfig):
        super().__init__()
        self.features = features
        self.encoder = (GConvLSTMEncoder(features.out_dim, cfg.hidden, cfg.cheb_k) if cfg.model == "gconvlstm"
                        else EvolveGCNHEncoder(features.num_nodes, features.out_dim, cfg.hidden))
        self.predictor = LinkPredictor(cfg.hidden)

    def embed(self, raws: Sequence[DeviceAdjacency]) -> torch.Tensor:
        """Z [len(raws), N, hidden]: Z_t from snapshots 0 .. t (causal, as disttgl's encoders)."""
        dtype = self.predictor.mlp[0].weight.dtype
        return self.encoder([self.features(r) for r in raws], [edge_inputs(r, dtype) for r in raws])


@dataclass
class EvalSet:
    """What snapshot-train fixes before its epochs: targets, candidates, negatives' generators."""

    targets: dict[str, Targets]
    pool: np.ndarray | None
    eval_negatives: dict[str, list[torch.Tensor]]
    train_rng: np.random.Generator


def eval_set(cfg: PygTemporalConfig, sf: SnapshotFile, device: torch.device) -> EvalSet:
    """The targets and negatives ``disttgl snapshot-train`` draws for ``cfg.seed``, in its order.

    Args:
        cfg: the seed, ``eval_negatives`` and the snapshots' path (for errors).
        sf: the loaded snapshots file.
        device: where the tensors go.
    """
    targets = _targets(cfg, sf, device)
    pool = candidate_pool(sf.snapshots, sf.bipartite)
    rng = np.random.default_rng([cfg.seed, 1])
    negs = {k: draw_negatives(rng, targets[k], cfg.eval_negatives, sf.snapshots.num_nodes, pool, device)
            for k in ("val", "test")}
    return EvalSet(targets, pool, negs, np.random.default_rng([cfg.seed, 0]))


def train_seconds(rows: list[dict[str, Any]], train_events: int) -> float:
    """Seconds of the training halves of the epochs, from metrics.jsonl rows (events / their rate)."""
    return float(sum(train_events / r["train_events_per_s"] for r in rows))


def train(cfg: PygTemporalConfig) -> dict[str, Any]:
    """Train and evaluate the baseline; write ``cfg.out``'s metrics.jsonl, checkpoint.pt and
    summary.json (snapshot-train's keys, ``model`` = ``cfg.name``); return the summary."""
    if RECURRENT is None:
        raise DataError(None, UNAVAILABLE)
    cfg.check()
    out = Path(cfg.out)
    check_writable_dir(out / "summary.json")
    sf = load_snapshots(cfg.snapshots)
    info = _check_graph(cfg, sf)
    snaps, device = sf.snapshots, torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = PygTemporalLinkModel(_features(cfg, info, snaps.num_nodes), cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    es = eval_set(cfg, sf, device)
    eval_stop = max(es.targets["val"].last, es.targets["test"].last)
    streamer = SnapshotStreamer(snaps, device, cfg.transfer)
    (out / "summary.json").unlink(missing_ok=True)
    run = _Run(cfg, model, opt, LocalStep(model, streamer), out, snapshots_identity(sf), 1)
    fresh = Resumed(0, [], {"best_epoch": -1, "val_mrr": -1.0})
    summary = _fit(run, fresh, es.targets, es.eval_negatives, es.train_rng, es.pool, eval_stop)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary |= {"model": cfg.name, "train_seconds": train_seconds(rows, es.targets["train"].events),
                "baseline": PACKAGE, "baseline_version": VERSION,
                "node_features": model.features.mode, "num_snapshots": snaps.num_snapshots,
                "edge_life": snaps.edge_life, "delta": snaps.delta,
                "target_snapshots": {k: len(v.snapshots) for k, v in es.targets.items()},
                "target_positives": {k: v.positives for k, v in es.targets.items()},
                "graph_sha256": sf.graph_sha256}
    write_summary(out, summary, "epoch")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("snapshots", help="snapshots file from `disttgl snapshots`")
    p.add_argument("graph", help="the graph store the snapshots were cut from")
    p.add_argument("--out", required=True, help="run directory")
    defaults = PygTemporalConfig("", "", "")
    for f in fields(PygTemporalConfig)[3:]:
        kind = {"model": str, "transfer": str, "node_features": str, "device": str, "lr": float}.get(f.name, int)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name),
                       choices=MODELS if f.name == "model" else None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        s = train(PygTemporalConfig(**{f.name: getattr(args, f.name) for f in fields(PygTemporalConfig)}))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{s['model']}: test MRR {s['test_mrr']:.4f} AP {s['test_ap']:.4f} (best epoch {s['best_epoch']}), "
          f"{s['train_events_per_s']:,.0f} train events/s, {s['total_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
