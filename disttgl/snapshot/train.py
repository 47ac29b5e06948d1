"""Training a snapshot DGNN on one device (docs/design.md §11.5).

Each epoch streams snapshots 0 .. (last training target - 1) to the device, embeds them, takes one
full-batch step on the training targets, then streams snapshots up to the last evaluation target
and scores validation and test from that one forward pass (the models are causal: Z_t depends on
snapshots <= t only). The reported test metrics are those of the best validation-MRR epoch, as in
every disttgl run. ``metrics.jsonl`` is rewritten each epoch and ``summary.json`` at the end,
both atomically, in the run directory's format (§3.4) plus the transfer's bytes and seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disttgl.atomic import check_writable_dir
from disttgl.data.graph_store import graph_info, load_graph
from disttgl.errors import DataError
from disttgl.snapshot.features import NodeFeatures, resolve_mode
from disttgl.snapshot.models import ModelConfig, SnapshotLinkModel
from disttgl.snapshot.store import SnapshotFile, load_snapshots
from disttgl.snapshot.streamer import SnapshotStreamer
from disttgl.snapshot.task import Targets, candidate_pool, draw_negatives, evaluate, split_targets, train_step
from disttgl.train import machine_load
from disttgl.train.run_files import run_summary, write_jsonl, write_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotTrainConfig:
    snapshots: str
    graph: str
    out: str
    model: str = "gcn-lstm"
    transfer: str = "diff"
    epochs: int = 100
    seed: int = 0
    lr: float = 0.01
    hidden: int = 32
    node_features: str = "auto"
    embedding_dim: int = 32
    degree_cap: int = 32
    m_window: int = 20
    m_choice: int = 2
    m_rownorm: bool = False
    m_inverse: bool = False
    eval_negatives: int = 49
    device: str = "cpu"
    threads: int | None = None

    def model_config(self) -> ModelConfig:
        return ModelConfig(model=self.model, hidden=self.hidden, m_window=self.m_window, m_choice=self.m_choice,
                           m_rownorm=self.m_rownorm, m_inverse=self.m_inverse)

    def check(self) -> None:
        if self.epochs < 1 or self.eval_negatives < 1 or not self.lr > 0:
            raise DataError(None, "--epochs and --eval-negatives must be >= 1 and --lr positive")
        if self.transfer not in ("whole", "diff"):
            raise DataError(None, f"--transfer must be whole or diff, got {self.transfer!r}")
        try:
            self.model_config().check()
            device = torch.device(self.device)
        except (ValueError, RuntimeError) as exc:
            raise DataError(None, f"{exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DataError(None, f"--device {self.device}: this torch has no CUDA device")


def _check_graph(cfg: SnapshotTrainConfig, sf: SnapshotFile) -> dict[str, Any]:
    info = graph_info(cfg.graph)
    if (str(info["sha256"] or "") != sf.graph_sha256 or info["num_nodes"] != sf.snapshots.num_nodes
            or info["num_events"] != sf.num_events):
        raise DataError(cfg.snapshots, f"snapshots were cut from another graph: sha256 {sf.graph_sha256 or '?'} "
                                       f"({sf.num_events} events), {cfg.graph} has {info['sha256'] or '?'} "
                                       f"({info['num_events']} events); re-run `disttgl snapshots`")
    return info


def _features(cfg: SnapshotTrainConfig, info: dict[str, Any], num_nodes: int) -> NodeFeatures:
    try:
        mode = resolve_mode(cfg.node_features, info["node_dim"] > 0)
    except ValueError as exc:
        raise DataError(cfg.graph, str(exc)) from None
    table = torch.from_numpy(load_graph(cfg.graph).node_feat) if mode == "store" else None
    return NodeFeatures(mode, num_nodes, table=table, dim=cfg.embedding_dim, degree_cap=cfg.degree_cap)


def _targets(cfg: SnapshotTrainConfig, sf: SnapshotFile, device: torch.device) -> dict[str, Targets]:
    out = {name: split_targets(sf.snapshots, i, device) for i, name in enumerate(("train", "val", "test"))}
    empty = [name for name, tg in out.items() if not tg.snapshots]
    if empty:
        raise DataError(cfg.snapshots, f"no {' or '.join(empty)} target snapshots (a target is a non-empty snapshot "
                                       f"t >= 1 of its split; splits per snapshot {np.bincount(sf.snapshots.split, minlength=3).tolist()}): "
                                       "use more snapshots (a smaller --delta)")
    return out


def train(cfg: SnapshotTrainConfig) -> dict[str, Any]:
    """Train and evaluate; write metrics.jsonl and summary.json under ``cfg.out``; return the summary."""
    cfg.check()
    out = Path(cfg.out)
    check_writable_dir(out / "summary.json")
    sf = load_snapshots(cfg.snapshots)
    info = _check_graph(cfg, sf)
    snaps = sf.snapshots
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = SnapshotLinkModel(_features(cfg, info, snaps.num_nodes), cfg.model_config()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    targets = _targets(cfg, sf, device)
    pool = candidate_pool(snaps, sf.bipartite)
    eval_rng = np.random.default_rng([cfg.seed, 1])
    eval_negs = {k: draw_negatives(eval_rng, targets[k], cfg.eval_negatives, snaps.num_nodes, pool, device)
                 for k in ("val", "test")}
    train_rng = np.random.default_rng([cfg.seed, 0])
    streamer = SnapshotStreamer(snaps, device, cfg.transfer)
    eval_stop = max(targets["val"].last, targets["test"].last)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"best_epoch": -1, "val_mrr": -1.0}
    for epoch in range(cfg.epochs):
        meter = machine_load.Interval().start()
        bytes0, start = streamer.bytes_copied, time.perf_counter()
        model.train()
        negs = draw_negatives(train_rng, targets["train"], 1, snaps.num_nodes, pool, device)
        opt.zero_grad()
        loss = train_step(model, list(streamer.stream(0, targets["train"].last)), targets["train"], negs)
        loss.backward()
        opt.step()
        train_seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            z = model.embed(list(streamer.stream(0, eval_stop)))
            val = evaluate(model, z, targets["val"], eval_negs["val"])
            test = evaluate(model, z, targets["test"], eval_negs["test"])
        load = meter.stop()
        row = {"epoch": epoch, "train_loss": loss.item(), "train_events_per_s": targets["train"].events / train_seconds,
               **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
               "transfer_bytes": streamer.bytes_copied - bytes0, "seconds": time.perf_counter() - start,
               **{k: load[k] for k in machine_load.ROW_FIELDS}}
        history.append(row)
        if val["mrr"] > best["val_mrr"]:
            best = {"best_epoch": epoch, **{f"val_{k}": v for k, v in val.items()},
                    **{f"test_{k}": v for k, v in test.items()}}
        write_jsonl(out / "metrics.jsonl", history)
        log.info("epoch %d: loss %.4f val MRR %.4f AP %.4f (%.2fs)", epoch, row["train_loss"], val["mrr"], val["ap"],
                 row["seconds"])
    summary = run_summary(history, best, asdict(cfg)) | {
        "lr": cfg.lr, "best_unit": "epoch", "model": cfg.model, "node_features": model.features.mode,
        "transfer": cfg.transfer, "transfer_bytes": streamer.bytes_copied,
        "transfer_entries": streamer.entries_copied, "transfer_seconds": streamer.seconds,
        "num_snapshots": snaps.num_snapshots, "edge_life": snaps.edge_life, "delta": snaps.delta,
        "target_snapshots": {k: len(v.snapshots) for k, v in targets.items()},
        "target_positives": {k: v.positives for k, v in targets.items()}, "graph_sha256": sf.graph_sha256}
    write_summary(out, summary, "epoch")
    return summary
