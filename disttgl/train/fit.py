"""Single-process training, evaluation, static-memory pretraining, checkpoints and resume.

One epoch (docs/design.md §4): reset memory; train over the cached batches in order, each with a
negative set drawn by a seeded RNG; predict first, then write the batch's memory (detached);
validate with memory carried on from training; when validation MRR improves, test right away with
memory carried on from validation. The run directory holds ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (written after every epoch, atomically) and ``summary.json``.

A non-finite training loss or evaluation score stops the run with a :class:`NonFiniteError` naming
the step and what holds non-finite values, rather than training on or reporting NaN as a metric.
Checkpoints hold only tensors and plain values and are loaded with ``weights_only=True``, so a
planted ``checkpoint.pt`` cannot run code on ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import h5py
import numpy as np
import torch
from tqdm import tqdm

from disttgl.train import machine_load
from disttgl.atomic import atomic_path
from disttgl.cache.batch import Batch
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.errors import DataError
from disttgl.data.graph_store import load_graph, read_attrs
from disttgl.models.memory import MemoryState
from disttgl.train.metrics import RankingMetrics
from disttgl.models.tgn import TGN, Features, ModelConfig, link_loss
from disttgl.train.run_lock import run_dir_lock
from disttgl.runtime import keep_freed_memory

log = logging.getLogger(__name__)

STATIC_KIND = "disttgl-static-memory"


@dataclass
class TrainConfig:
    graph: str
    cache: str
    out: str  # run directory (train) or static memory file (pretrain)
    static: str | None = None  # frozen static memory (.h5 from pretrain)
    static_dropout: float = 0.8  # training: chance that a node's static row is left out (0: DistTGL)
    epochs: int = 10
    device: str = "cpu"
    seed: int = 0
    lr: float | None = None  # None: derived from the training batches per epoch (derive_lr)
    dim: int = 100
    time_dim: int = 100
    heads: int = 2
    dropout: float = 0.2
    loss: str = "bce"  # TGN's binary CE: best measured AP (1 neg); DistTGL's softmax CE: preset "disttgl"
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    prefetch: int = 4
    resume: bool = False
    patience: int = 3  # pretraining: epochs without val MRR gain before stopping
    parallelism: str = "1x1x1"  # i x j x k; only 1x1x1 here
    progress: bool = True

    def check(self) -> None:
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise DataError(None, f"--lr must be a finite number >= 0, got {self.lr}")
        if self.loss not in ("ce", "bce"):
            raise DataError(None, f"--loss must be ce or bce, got {self.loss!r}")
        if self.epochs < 1:
            raise DataError(None, f"--epochs must be >= 1, got {self.epochs}")
        for name in ("dropout", "static_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise DataError(None, f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.dim % self.heads:
            raise DataError(None, f"--dim {self.dim} must be divisible by --heads {self.heads}")
        if self.parallelism.replace(" ", "") not in ("1x1x1", "1"):
            raise DataError(None, f"--parallelism {self.parallelism}: this command trains one process "
                                  "(1x1x1) only")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise DataError(None, f"--device {self.device}: CUDA is not available on this machine")


# Named settings of published systems, applied under explicit flags (``--preset``).
PRESETS: dict[str, dict[str, Any]] = {
    "disttgl": {"lr": 1e-4, "loss": "ce"},  # DistTGL (SC'23): Adam 1e-4, softmax CE over [pos, negs]
}

# The derived learning rate: 5e-4 is the best measured on Wikipedia (184 training batches of 600 an
# epoch) and the base. A small stream takes few steps an epoch: below LR_FEW_BATCHES batches the lr
# grows as LR_FEW_BATCHES / batches, up to twice the base (the 24-batch embedded set learns within
# its 8 epochs at 1e-3). Mid-sized streams keep the base: CollegeMsg (70 batches) was worse and
# noisier at 8e-4 than at 3e-4 (docs/results.md).
LR_BASE, LR_FEW_BATCHES, LR_MAX_FACTOR = 5e-4, 60, 2.0


def derive_lr(train_batches: int) -> float:
    """Adam's lr for a stream of ``train_batches`` batches an epoch: LR_BASE, times
    LR_FEW_BATCHES / batches (at most LR_MAX_FACTOR) on streams of fewer batches."""
    factor = LR_FEW_BATCHES / max(train_batches, 1)
    return LR_BASE * min(LR_MAX_FACTOR, max(1.0, factor))


def resolve_lr(cfg: "TrainConfig", train_batches: int, *, quiet: bool = False) -> float:
    """``cfg.lr``, or the derived one (logged, so a run says which it used)."""
    if cfg.lr is not None:
        return cfg.lr
    lr = derive_lr(train_batches)
    if not quiet:
        log.info("lr %.2g, derived from %d training batches an epoch (--lr sets it)", lr, train_batches)
    return lr


@dataclass
class EpochStats:
    loss: float = 0.0
    events: int = 0
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=lambda: dict(load=0.0, forward=0.0, backward=0.0,
                                                                   memory=0.0))

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------ building blocks

class NonFiniteError(DataError):
    """A NaN or inf training loss or evaluation score: the step and the likely source are named."""


def non_finite_error(what: str, *, split: str | None, epoch: int | None, batch: int, model: torch.nn.Module,
                     feats: Features, mem: torch.Tensor | None = None,
                     mail: torch.Tensor | None = None) -> NonFiniteError:
    """The error for a non-finite ``what`` at ``batch``, listing every input that is non-finite.

    Raised before the optimizer step and the memory write, so what is listed was non-finite when
    the value was computed (inputs first: they are the likelier source).
    """
    found = []

    def rows(name: str, t: torch.Tensor | None) -> None:
        if t is not None and t.numel():
            bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).sum())
            if bad:
                found.append(f"{name} ({bad} of {len(t)} rows)")

    rows("the static memory table (--static)", feats.static)
    rows("edge features", feats.edge_feat)
    rows("node features", feats.node_feat)
    rows("this batch's memory rows", mem)
    rows("this batch's mailbox rows", mail)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    params = [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if params:
        found.append(f"model parameters ({len(params)} of {len(tensors)}: {', '.join(params[:4])}"
                     f"{', ...' if len(params) > 4 else ''}; a corrupted checkpoint?)")
    where = ", ".join([*([f"epoch {epoch}"] if epoch is not None else []), f"batch {batch}",
                       *([f"{split} split"] if split else [])])
    source = ("non-finite values in " + "; ".join(found) if found else
              "no input, memory row or parameter is non-finite: training diverged (try a lower --lr)")
    return NonFiniteError(None, f"non-finite {what} at {where}: {source}; stopping")


def improves(score: float, best: float | None) -> bool:
    """Whether a validation score is a new best. ``score > best`` alone keeps no NaN epoch but is
    beaten by nothing once a NaN best is stored (a corrupted checkpoint); a non-finite score never
    improves and any finite one beats a non-finite best."""
    if not math.isfinite(score):
        return False
    return best is None or not math.isfinite(best) or score > best


def load_features(graph_path: str, device: torch.device, static: str | None = None) -> tuple[Features, Any]:
    graph = load_graph(graph_path)
    feats = Features(
        edge_feat=torch.from_numpy(graph.edge_feat).float().to(device),
        node_feat=None if graph.node_feat is None else torch.from_numpy(graph.node_feat).float().to(device),
        static=None if static is None else load_static(static, graph.num_nodes,
                                                       graph_sha256=str(graph.attrs.get("sha256", ""))).to(device))
    return feats, graph


def model_config(cfg: TrainConfig, graph: Any, feats: Features, memory: str = "gru") -> ModelConfig:
    return ModelConfig(dim=cfg.dim, time_dim=cfg.time_dim, heads=cfg.heads, dropout=cfg.dropout,
                       edge_dim=graph.edge_dim, node_dim=graph.node_dim,
                       static_dim=0 if feats.static is None else int(feats.static.shape[1]),
                       static_dropout=cfg.static_dropout,
                       memory=memory, num_nodes=graph.num_nodes)


def train_epoch(model: TGN, memory: MemoryState | None, batches: Iterable[Batch],
                optimizer: torch.optim.Optimizer, feats: Features, *, loss: str = "ce",
                progress: tqdm | None = None, sync: bool = False, epoch: int | None = None) -> EpochStats:
    """One pass over ``batches``: predict, step, then write memory (GRU model only).

    A non-finite loss raises :class:`NonFiniteError` (``epoch`` only names the step in it)."""
    model.train()
    stats = EpochStats()
    total_loss, steps = 0.0, 0
    cuda = sync and feats.edge_feat.is_cuda
    clock = time.perf_counter
    start = t0 = clock()
    it: Iterator[Batch] = iter(batches)
    while True:
        batch = next(it, None)
        t1 = clock()
        if batch is None:
            break
        mem, mail = memory.gather(batch) if memory is not None else (None, None)
        pos, neg, new_mem = model(batch, feats, mem, mail)
        step_loss = link_loss(pos, neg, loss)
        # checked before the step: a NaN would spread to every parameter and memory row. The float()
        # is the one sync per step that used to come after the step.
        value = float(step_loss.detach())
        if not math.isfinite(value):
            raise non_finite_error(f"training loss ({value})", split="train", epoch=epoch, batch=steps,
                                   model=model, feats=feats, mem=mem, mail=mail)
        if cuda:
            torch.cuda.synchronize()
        t2 = clock()
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        t3 = clock()
        if memory is not None:
            memory.write(batch, new_mem)
        total_loss += value
        t4 = clock()
        for k, dt in zip(stats.timing, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stats.timing[k] += dt
        steps += 1
        stats.events += batch.num_events
        t0 = t4
        if progress is not None:
            progress.update(batch.num_events)
            progress.set_postfix(loss=f"{total_loss / steps:.4f}", ev_s=f"{stats.events / (t4 - start):,.0f}",
                                 refresh=False)
    stats.seconds = clock() - start
    stats.loss = total_loss / max(steps, 1)
    return stats


@torch.inference_mode()
def evaluate(model: TGN, memory: MemoryState | None, batches: Iterable[Batch], feats: Features, *,
             split: str | None = None, epoch: int | None = None) -> dict[str, float]:
    """Metrics over ``batches`` (ap, mrr, ap_1neg); memory is updated as in training.

    Non-finite scores raise :class:`NonFiniteError` (``split`` and ``epoch`` only name the step)."""
    model.eval()
    acc = RankingMetrics()
    for b, batch in enumerate(batches):
        mem, mail = memory.gather(batch) if memory is not None else (None, None)
        pos, neg, new_mem = model(batch, feats, mem, mail)
        if not bool(torch.isfinite(pos).all() & torch.isfinite(neg).all()):  # one sync per batch
            raise non_finite_error("scores", split=split or "evaluation", epoch=epoch, batch=b, model=model,
                                   feats=feats, mem=mem, mail=mail)
        if memory is not None:
            memory.write(batch, new_mem)
        acc.update(pos, neg)
    return acc.compute()


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA): one pass per parameter instead of a dozen ops."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every RNG's state as tensors and plain values, which ``torch.load(weights_only=True)`` reads."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"numpy_generator": rng.bit_generator.state, "torch": torch.get_rng_state(),
             "python": [version, list(internal), gauss],
             "numpy_global": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                              "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state["numpy_generator"]
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    g = state["numpy_global"]
    np.random.set_state((g["name"], g["keys"].numpy().astype(np.uint32), g["pos"], g["has_gauss"],
                         g["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


class _Run:
    """What one training or pretraining run holds: data, model, optimizer, loaders."""

    def __init__(self, cfg: TrainConfig, memory_kind: str):
        cfg.check()
        keep_freed_memory()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.rng = seed_everything(cfg.seed)
        self.feats, graph = load_features(cfg.graph, self.device, cfg.static if memory_kind == "gru" else None)
        # pretraining saves zero rows for the others; keeping this mask, not the graph, frees the T-CSR
        self.trained_nodes = nodes_with_training_events(graph) if memory_kind == "table" else None
        with open_cache(cfg.cache, graph_path=cfg.graph, minibatch_parallelism=1) as cache:
            self.meta = cache.meta
            self.num_batches = {s: cache.num_batches(s) for s in ("train", "val", "test")}
            self.neg_sets = cache.num_neg_sets("train")
        self.model = TGN(model_config(cfg, graph, self.feats, memory_kind)).to(self.device)
        self.memory = MemoryState.zeros(graph.num_nodes, cfg.dim, self.device) if memory_kind == "gru" else None
        self.lr = resolve_lr(cfg, self.num_batches["train"])
        self.optimizer = adam(self.model.parameters(), self.lr)

    def loader(self, split: str, neg_sets: np.ndarray | None = None) -> BatchLoader:
        n = self.num_batches[split]
        sets = np.zeros(n, dtype=np.int64) if neg_sets is None else neg_sets
        return BatchLoader(self.cfg.cache, split, list(zip(range(n), sets.tolist())), prefetch=self.cfg.prefetch,
                           device=self.device)

    def epoch(self, epoch: int, desc: str) -> EpochStats:
        sets = self.rng.integers(0, self.neg_sets, size=self.num_batches["train"])
        if self.memory is not None:
            self.memory.reset()
        with tqdm(total=self.meta.split_events.get("train") or None, unit="ev", unit_scale=True,
                  desc=f"{desc} epoch {epoch}", disable=not self.cfg.progress, mininterval=2.0) as bar:
            stats = train_epoch(self.model, self.memory, self.loader("train", sets), self.optimizer,
                                self.feats, loss=self.cfg.loss, progress=bar, epoch=epoch)
        return stats

    def eval(self, split: str, epoch: int | None = None) -> dict[str, float]:
        return evaluate(self.model, self.memory, self.loader(split), self.feats, split=split, epoch=epoch)


# ------------------------------------------------------------------------------------- training

def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.epochs`` epochs (continuing from ``checkpoint.pt`` with ``cfg.resume``).

    The run directory is locked for the run: a second run on it waits for this one, then resumes."""
    cfg.check()  # a bad setting leaves no run directory behind
    with run_dir_lock(cfg.out):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    run = _Run(cfg, "gru")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"best_epoch": 0, "val_mrr": -math.inf}
    start = 1
    ckpt = resumable_checkpoint(ckpt_path, cfg)
    if ckpt is not None:
        try:
            run.model.load_state_dict(ckpt["model"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.memory.load_state_dict(ckpt["memory"])
            set_rng_state(run.rng, ckpt["rng"])
            history, best, start = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"]) + 1
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise DataError(ckpt_path, f"checkpoint does not fit this run ({type(exc).__name__}: {exc}); "
                                       "delete it or run without --resume") from None
        log.info("resuming %s after epoch %d", out, ckpt["epoch"])
    elif cfg.resume:
        log.info("no checkpoint in %s; starting from scratch", out)

    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        load = machine_load.Interval().start()  # what else ran on our cores meanwhile (see machine_load)
        stats = run.epoch(epoch, "train")
        val = run.eval("val", epoch)
        row = {"epoch": epoch, "train_loss": stats.loss, "train_events_per_s": stats.events_per_s,
               "val_ap": val["ap"], "val_mrr": val["mrr"], "val_ap_1neg": val["ap_1neg"],
               "time_split": {k: v / max(stats.seconds, 1e-9) for k, v in stats.timing.items()}}
        if improves(val["mrr"], best.get("val_mrr")):
            test = run.eval("test", epoch)  # memory runs on from validation into test
            best = {"best_epoch": epoch, "val_mrr": val["mrr"], "val_ap": val["ap"],
                    "test_ap": test["ap"], "test_mrr": test["mrr"], "test_ap_1neg": test["ap_1neg"]}
        row["seconds"] = time.perf_counter() - t0
        row.update({k: v for k, v in load.stop().items() if k in machine_load.ROW_FIELDS})
        history.append(row)
        log.info("epoch %d: loss %.4f, %.0f train events/s, val AP %.4f MRR %.4f (best epoch %d)",
                 epoch, stats.loss, stats.events_per_s, val["ap"], val["mrr"], best["best_epoch"])
        write_jsonl(out / "metrics.jsonl", history)
        save_checkpoint(ckpt_path, {
            "epoch": epoch, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "memory": run.memory.state_dict(), "rng": rng_state(run.rng), "history": history, "best": best,
            "config": asdict(cfg)})

    summary = run_summary(history, best, asdict(cfg)) | {"lr": run.lr}  # the lr used (config.lr None: derived)
    write_summary(out, summary, "epoch")
    return summary


def run_summary(history: list[dict[str, Any]], best: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` fields shared by the single-process and distributed trainers.

    ``machine``: :func:`disttgl.train.machine_load.summarize` of the rows' load fields, so a speed measured
    while other processes used our cores is flagged (``contended``)."""
    rates = [r["train_events_per_s"] for r in history]
    return {"best_epoch": best["best_epoch"], "test_ap": best.get("test_ap"), "test_mrr": best.get("test_mrr"),
            "test_ap_1neg": best.get("test_ap_1neg"), "val_mrr": best.get("val_mrr"),
            "val_ap": best.get("val_ap"), "epochs": len(history),
            "train_events_per_s": float(np.mean(rates)) if rates else 0.0,
            "total_seconds": float(sum(r["seconds"] for r in history)),
            "machine": machine_load.summarize(history), "config": config}


def write_summary(out: Path, summary: dict[str, Any], unit: str) -> None:
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("best %s %d: test AP %.4f MRR %.4f AP(1 neg) %.4f", unit, summary["best_epoch"],
             summary["test_ap"], summary["test_mrr"], summary["test_ap_1neg"])


def resumable_checkpoint(path: Path, cfg: TrainConfig,
                         extra_changes: Callable[[dict[str, Any]], list[str]] | None = None,
                         quiet: bool = False) -> dict[str, Any] | None:
    """The checkpoint to continue from with ``cfg.resume``; None (start afresh) when there is none or
    it was made with settings that change the run (``extra_changes`` names the caller's own)."""
    ckpt = load_checkpoint(path) if cfg.resume and path.exists() else None
    if ckpt is None:
        return None
    saved = ckpt.get("config")
    changed = _config_changes(saved if isinstance(saved, dict) else {}, cfg) + (extra_changes(ckpt) if extra_changes else [])
    if changed:
        if not quiet:
            log.warning("checkpoint in %s was made with different settings (%s): starting from scratch",
                        path.parent, ", ".join(changed))
        return None
    return ckpt


# settings that may change between a run and its resumption
_RESUMABLE = {"epochs", "resume", "progress", "threads", "prefetch", "device", "out", "graph", "cache"}


def _config_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    now = asdict(cfg)
    ignored = _RESUMABLE | ({"static_dropout"} if cfg.static is None else set())  # no table: no effect
    return [k for k in now if k not in ignored and saved.get(k) != now[k]]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True``: tensors and plain values only, so a
    planted file cannot run code (the workflow always passes --resume)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message says how to load it unsafely; name only what was refused
        why = next((ln.strip() for ln in str(exc).splitlines() if "unsupported" in ln.lower()),
                   str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise DataError(path, f"refused checkpoint: it holds more than tensors and plain values ({why}), and "
                              "loading it could run code. A checkpoint of an older disttgl looks like this too: "
                              "delete it or run without --resume") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(path, f"unreadable checkpoint ({type(exc).__name__}: {exc}); delete it or run "
                              "without --resume") from None
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        raise DataError(path, "not a disttgl checkpoint (no epoch); delete it or run without --resume")
    return ckpt


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------ static memory

def pretrain(cfg: TrainConfig) -> dict[str, Any]:
    """Learn a per-node table with the same model and task; early stop on val MRR; save the best table."""
    run = _Run(cfg, "table")
    best_mrr, best_epoch, best_table, stale = -math.inf, 0, None, 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        stats = run.epoch(epoch, "pretrain")
        val = run.eval("val", epoch)
        history.append({"epoch": epoch, "train_loss": stats.loss, "val_mrr": val["mrr"], "val_ap": val["ap"]})
        log.info("pretrain epoch %d: loss %.4f, val AP %.4f MRR %.4f", epoch, stats.loss, val["ap"], val["mrr"])
        if improves(val["mrr"], best_mrr):
            best_mrr, best_epoch, stale = val["mrr"], epoch, 0
            best_table = run.model.table.weight.detach().cpu().clone()
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("no val MRR gain for %d epochs: stopping", stale)
                break
    trained = run.trained_nodes
    table = best_table.numpy()
    table[~trained] = 0.0
    save_static(cfg.out, table, graph_path=cfg.graph,
                attrs={"lr": run.lr, "loss": cfg.loss, "best_epoch": best_epoch, "val_mrr": best_mrr, "epochs": len(history),
                       "nodes_with_training_events": int(trained.sum())})
    log.info("wrote %s: static memory %s from epoch %d (val MRR %.4f); %d nodes without a training event "
             "get zero rows", cfg.out, tuple(table.shape), best_epoch, best_mrr, int((~trained).sum()))
    return {"best_epoch": best_epoch, "val_mrr": best_mrr, "history": history}


def nodes_with_training_events(graph: Any) -> np.ndarray:
    """bool [N]: nodes that are the source or destination of a training event.

    Only their table rows learn anything beyond being drawn as negatives; the others keep their random
    initialisation, which would be noise added to the memory of every new node in val and test.
    """
    mask = np.zeros(graph.num_nodes, dtype=bool)
    train = graph.split == 0
    mask[graph.src[train]] = True
    mask[graph.dst[train]] = True
    return mask


def table_sha256(table: np.ndarray) -> str:
    """SHA-256 of the table's float32 bytes (C order): what ``load_static`` checks the data against."""
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.float32).tobytes()).hexdigest()


def save_static(path: str | Path, table: np.ndarray, *, graph_path: str | None = None,
                attrs: dict[str, Any] | None = None) -> None:
    """Write the table with the graph's ``sha256`` and the table's own checksum (``table_sha256``)."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("static_memory", data=table)
        f.attrs["kind"] = STATIC_KIND
        f.attrs["table_sha256"] = table_sha256(table)
        f.attrs["num_nodes"] = int(table.shape[0])
        f.attrs["dim"] = int(table.shape[1])
        if graph_path is not None:
            f.attrs["graph_sha256"] = str(read_attrs(graph_path).get("sha256", ""))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def load_static(path: str | Path, num_nodes: int, *, graph_sha256: str | None = None) -> torch.Tensor:
    """The frozen static memory [N, d], checked: ``num_nodes`` rows, pretrained on the graph whose
    store records ``graph_sha256`` (None skips only that check), bytes matching the checksum saved
    with them, and every value finite. A node count alone let a table of another graph, or one with
    flipped bytes, through."""
    pretrain_again = "re-run `disttgl pretrain` for this graph"
    if not Path(path).exists():
        raise DataError(path, "static memory file does not exist (run `disttgl pretrain` first)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != STATIC_KIND or "static_memory" not in f:
                raise DataError(path, "not a disttgl static memory file")
            attrs = {k: str(f.attrs.get(k, "")) for k in ("graph_sha256", "table_sha256")}
            shape = f["static_memory"].shape
            if len(shape) != 2 or shape[0] != num_nodes:
                raise DataError(path, f"static memory has shape {shape}, the graph has {num_nodes} nodes")
            if graph_sha256 is not None and attrs["graph_sha256"] != graph_sha256:
                raise DataError(path, f"static memory was pretrained on the graph with sha256 "
                                      f"{attrs['graph_sha256'] or '(none recorded)'}, not this one "
                                      f"({graph_sha256 or '(none recorded)'}); {pretrain_again}")
            if not attrs["table_sha256"]:
                raise DataError(path, f"static memory file has no checksum (written by an older disttgl); "
                                      f"{pretrain_again}")
            table = np.ascontiguousarray(f["static_memory"][()], dtype=np.float32)
    except OSError as exc:
        raise DataError(path, f"unreadable static memory file ({exc})") from None
    if table_sha256(table) != attrs["table_sha256"]:
        raise DataError(path, f"static memory does not match its checksum: the file is corrupted; {pretrain_again}")
    bad = int((~np.isfinite(table)).any(1).sum())
    if bad:
        raise DataError(path, f"static memory has non-finite values (NaN or inf) in {bad} of {num_nodes} rows; "
                              f"{pretrain_again}")
    return torch.from_numpy(table)
