"""Training a snapshot DGNN on one device (docs/design.md §11.5).

Each epoch streams snapshots 0 .. (last training target - 1) to the device, embeds them, takes one
full-batch step on the training targets, then streams snapshots up to the last evaluation target
and scores validation and test from that one forward pass (the models are causal: Z_t depends on
snapshots <= t only). The reported test metrics are those of the best validation-MRR epoch, as in
every disttgl run. ``metrics.jsonl`` and ``checkpoint.pt`` are rewritten each epoch and
``summary.json`` at the end, all atomically, in the run directory's format (§3.4) plus the
transfer's bytes and seconds; ``--resume`` continues from the checkpoint (§11.7), and the run
directory is locked while a run writes it.

With ``parallel`` (under torchrun) the same loop runs over P ranks through
:class:`~disttgl.snapshot.distributed.DistributedStep` (§11.6): convolution by snapshot, temporal
step by vertex; rank 0 writes the files, with every rank's communication bytes in the summary.
"""

from __future__ import annotations

import contextlib
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
from disttgl.lifetime import exit_with_parent
from disttgl.snapshot.comm import init_from_env, torchrun_env
from disttgl.snapshot.distributed import DistributedStep
from disttgl.snapshot.features import NodeFeatures, resolve_mode
from disttgl.snapshot.models import ModelConfig, SnapshotLinkModel
from disttgl.snapshot.store import SnapshotFile, load_snapshots
from disttgl.snapshot.streamer import SnapshotStreamer
from disttgl.snapshot.task import Targets, candidate_pool, draw_negatives, evaluate, split_targets, train_step
from disttgl.snapshot.partition import Partition
from disttgl.snapshot.resume import RankCounts, Resumed, gather_counts, resume, save_epoch, snapshots_identity
from disttgl.train import machine_load
from disttgl.train.epoch import NonFiniteError, non_finite_parameters
from disttgl.train.metrics import NonFiniteScores
from disttgl.train.run_files import run_summary, write_jsonl, write_summary
from disttgl.train.run_lock import run_dir_lock

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
    parallel: bool = False
    resume: bool = False

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


class LocalStep:
    """The single-process step (the path every distributed result is checked against)."""

    comm = None

    def __init__(self, model: SnapshotLinkModel, streamer: SnapshotStreamer):
        self.model, self.streamer = model, streamer

    def train_loss(self, targets: Targets, negatives: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        loss = train_step(self.model, list(self.streamer.stream(0, targets.last)), targets, negatives)
        return loss, loss.item()

    def reduce_gradients(self) -> None:
        pass

    def sum_scalars(self, values: list[float], name: str = "scalars") -> list[float]:
        return list(values)

    @torch.no_grad()
    def evaluate(self, stop: int, splits: list[tuple[Targets, list[torch.Tensor]]]) -> list[dict[str, float]]:
        z = self.model.embed(list(self.streamer.stream(0, stop)))
        return [evaluate(self.model, z, tg, negs) for tg, negs in splits]


def _world(cfg: SnapshotTrainConfig) -> tuple[int, torch.device]:
    """(P, this rank's device): checks that ``--parallel`` and torchrun go together."""
    env = torchrun_env()
    device = torch.device(cfg.device)
    if not cfg.parallel:
        if env is not None and env.world > 1:
            raise DataError(None, f"torchrun started {env.world} ranks: pass --parallel to split the work over them")
        return 1, device
    if env is None:
        raise DataError(None, "--parallel needs torchrun: torchrun --nproc-per-node P -m disttgl snapshot-train "
                              "SNAPSHOTS GRAPH --out RUN --parallel")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank)
    return env.world, device


def _parallel_summary(counts: RankCounts, part: Partition, element_bytes: int) -> dict[str, Any]:
    """The summary's ``parallel`` block: the training step's blocks and every rank's bytes."""
    return {"world": len(counts.comm), "snapshot_blocks": list(part.snapshots), "vertex_blocks": list(part.vertices),
            "element_bytes": element_bytes, "comm_bytes": counts.comm, "transfer_bytes_per_rank": counts.transfer}


# rank 0 waits this long for another run holding the run directory; the other ranks wait for rank 0
# in the rendezvous meanwhile, which gives up after COMM_TIMEOUT_S
COMM_TIMEOUT_S = 600.0
LOCK_WAIT_S = 0.8 * COMM_TIMEOUT_S


def train(cfg: SnapshotTrainConfig) -> dict[str, Any]:
    """Train and evaluate; write metrics.jsonl, checkpoint.pt (every epoch) and summary.json (at the
    end) under ``cfg.out``; return the summary. With ``cfg.resume`` continue from checkpoint.pt.

    The run directory is locked for the run (rank 0's lock under ``--parallel``): a second run on it
    waits for this one, then resumes from its checkpoint."""
    cfg.check()
    out = Path(cfg.out)
    check_writable_dir(out / "summary.json")
    world, device = _world(cfg)
    env = torchrun_env()
    rank = env.rank if cfg.parallel and env is not None else 0
    if cfg.parallel:
        exit_with_parent()  # torchrun runs each rank in its own session: when it is killed, so are we
    lock = run_dir_lock(out, wait=LOCK_WAIT_S if cfg.parallel else None) if rank == 0 else contextlib.nullcontext()
    with lock:
        return _train(cfg, out, world, device, rank)


def _train(cfg: SnapshotTrainConfig, out: Path, world: int, device: torch.device, rank: int) -> dict[str, Any]:
    sf = load_snapshots(cfg.snapshots)
    info = _check_graph(cfg, sf)
    snaps = sf.snapshots
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = SnapshotLinkModel(_features(cfg, info, snaps.num_nodes), cfg.model_config()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    targets = _targets(cfg, sf, device)
    eval_stop = max(targets["val"].last, targets["test"].last)
    if cfg.parallel and min(targets["train"].last, snaps.num_nodes) < world:
        raise DataError(cfg.snapshots, f"{world} ranks need at least {world} snapshots before the last training "
                                       f"target and {world} nodes; got {targets['train'].last} and {snaps.num_nodes}")
    pool = candidate_pool(snaps, sf.bipartite)
    eval_rng = np.random.default_rng([cfg.seed, 1])
    eval_negs = {k: draw_negatives(eval_rng, targets[k], cfg.eval_negatives, snaps.num_nodes, pool, device)
                 for k in ("val", "test")}
    train_rng = np.random.default_rng([cfg.seed, 0])
    streamer = SnapshotStreamer(snaps, device, cfg.transfer)
    comm = init_from_env(device, COMM_TIMEOUT_S) if cfg.parallel else None
    try:
        step = DistributedStep(model, streamer, comm) if comm else LocalStep(model, streamer)
        identity = snapshots_identity(sf)
        state = resume(out, cfg, identity, world, rank, model, opt, train_rng, streamer, comm)
        if rank == 0:
            if state.done:
                log.info("resuming %s after epoch %d", out, state.done - 1)
            elif cfg.resume:
                log.info("no checkpoint to resume in %s; starting from scratch", out)
            (out / "summary.json").unlink(missing_ok=True)  # until this run ends, no summary
        run = _Run(cfg, model, opt, step, out, identity, world)
        summary = _fit(run, state, targets, eval_negs, train_rng, pool, eval_stop)
        summary |= {"node_features": model.features.mode, "num_snapshots": snaps.num_snapshots,
                    "edge_life": snaps.edge_life, "delta": snaps.delta,
                    "target_snapshots": {k: len(v.snapshots) for k, v in targets.items()},
                    "target_positives": {k: v.positives for k, v in targets.items()}, "graph_sha256": sf.graph_sha256}
        if comm:
            counts = gather_counts(streamer, comm)
            element_bytes = next(model.parameters()).element_size()
            summary["parallel"] = _parallel_summary(counts, step.partition(targets["train"].last), element_bytes)
            summary["transfer_bytes"] = sum(counts.transfer)
        if rank == 0:
            write_summary(out, summary, "epoch")
    finally:
        if comm:
            torch.distributed.destroy_process_group()
    return summary


@dataclass
class _Run:
    """What the epochs need besides the data: the model, its step, and where the run is written."""

    cfg: SnapshotTrainConfig
    model: SnapshotLinkModel
    opt: torch.optim.Optimizer
    step: LocalStep | DistributedStep
    out: Path
    identity: dict[str, Any]
    world: int


def _diverged(what: str, epoch: int, model: torch.nn.Module) -> NonFiniteError:
    """The error that stops a run at a non-finite loss or score, before this epoch is written: the
    checkpoint and metrics.jsonl keep the last finite epoch, and no NaN becomes a metric."""
    source = non_finite_parameters(model) or "training diverged (try a lower --lr)"
    return NonFiniteError(None, f"non-finite {what} at epoch {epoch}: {source}; stopping")


def _fit(run: _Run, state: Resumed, targets: dict[str, Targets], eval_negs: dict[str, list[torch.Tensor]],
         train_rng: np.random.Generator, pool: np.ndarray | None, eval_stop: int) -> dict[str, Any]:
    """The epochs after ``state.done``; metrics.jsonl and checkpoint.pt (rank 0); the summary's run fields."""
    cfg, model, opt, step, out = run.cfg, run.model, run.opt, run.step, run.out
    streamer, num_nodes, device = step.streamer, model.features.num_nodes, step.streamer.device
    counter = step.comm.counter if step.comm else None
    writer = counter is None or step.comm.rank == 0
    history, best = list(state.history), dict(state.best)
    for epoch in range(state.done, cfg.epochs):
        meter = machine_load.Interval().start()
        bytes0, start = streamer.bytes_copied, time.perf_counter()
        model.train()
        comm0 = counter.total_sent() if counter else 0
        negs = draw_negatives(train_rng, targets["train"], 1, num_nodes, pool, device)
        opt.zero_grad()
        loss, loss_value = step.train_loss(targets["train"], negs)
        if not np.isfinite(loss_value):  # the loss summed over ranks: every rank stops here together
            raise _diverged(f"training loss ({loss_value})", epoch, model)
        loss.backward()
        step.reduce_gradients()
        opt.step()
        train_seconds = time.perf_counter() - start
        model.eval()
        try:
            val, test = step.evaluate(eval_stop, [(targets[k], eval_negs[k]) for k in ("val", "test")])
        except NonFiniteScores:  # raised on every rank (DistributedStep shares rank 0's verdict)
            raise _diverged("validation or test scores", epoch, model) from None
        load = meter.stop()
        comm_sent = counter.total_sent() - comm0 if counter else 0
        # the row's comm_bytes_sent counts every collective of the epoch but this sum itself
        moved, comm_sent = step.sum_scalars([streamer.bytes_copied - bytes0, comm_sent], "epoch_sums")
        row = {"epoch": epoch, "train_loss": loss_value, "train_events_per_s": targets["train"].events / train_seconds,
               **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
               "transfer_bytes": int(moved), "seconds": time.perf_counter() - start,
               **({"comm_bytes_sent": int(comm_sent)} if counter else {}),
               **{k: load[k] for k in machine_load.ROW_FIELDS}}
        history.append(row)
        if val["mrr"] > best["val_mrr"]:
            best = {"best_epoch": epoch, **{f"val_{k}": v for k, v in val.items()},
                    **{f"test_{k}": v for k, v in test.items()}}
        counts = gather_counts(streamer, step.comm)  # every rank: a collective under --parallel
        if writer:
            write_jsonl(out / "metrics.jsonl", history)
            save_epoch(out, epochs_done=epoch + 1, model=model, opt=opt, history=history, best=best, config=cfg,
                       rng=train_rng, identity=run.identity, world=run.world, counts=counts)
            log.info("epoch %d: loss %.4f val MRR %.4f AP %.4f (%.2fs)", epoch, row["train_loss"], val["mrr"],
                     val["ap"], row["seconds"])
    return run_summary(history, best, asdict(cfg)) | {
        "lr": cfg.lr, "best_unit": "epoch", "model": cfg.model, "transfer": cfg.transfer,
        "transfer_bytes": streamer.bytes_copied, "transfer_entries": streamer.entries_copied,
        "transfer_seconds": streamer.seconds}
