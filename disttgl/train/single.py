"""One process trains (the 1x1x1 strategy of :func:`disttgl.train.fit.fit`).

An epoch: draw the negative set of every training batch with the run's seeded RNG, reset the
memory, train over the cached batches in order. Validation and test read the same memory, carried
on. The checkpoint holds the memory and every RNG's state, so a resumed run continues bitwise.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.memory import Memory
from disttgl.models.variants import build_memory, build_model
from disttgl.runtime import keep_freed_memory
from disttgl.train import machine_load
from disttgl.train.config import TrainConfig, resolve_lr
from disttgl.train.epoch import adam, load_features, model_config, train_epoch
from disttgl.train.fit import UnitResult, fit
from disttgl.train.precision import log_precision
from disttgl.train.rng import rng_state, seed_everything, set_rng_state
from disttgl.train.run_lock import run_dir_lock
from disttgl.train.static_table import nodes_with_training_events
from disttgl.train.task import make_task

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.epochs`` epochs in this process (continuing from ``checkpoint.pt`` with ``cfg.resume``).

    The run directory is locked for the run: a second run on it waits for this one, then resumes."""
    cfg.check()  # a bad setting leaves no run directory behind
    strategy = SingleProcess(cfg)  # before the lock, so does bad data (edge classification without labels)
    with run_dir_lock(cfg.out):
        return fit(strategy)


class SingleProcess:
    """The data, model, optimizer and memory of a run in one process.

    Args:
        cfg: the run's settings.
        memory: None: ``cfg.memory`` (gru: TGN, rnn: JODIE, both with a :class:`NodeMemory`; apan:
            APAN, with a :class:`~disttgl.models.mailbox.MailboxMemory`), or ``"table"`` (a learnable
            per-node table feeding ``cfg.memory``'s embedding, and no memory: static-memory pretraining).
        desc: the progress bar's label.
    """

    unit = "epoch"
    evaluates = True

    def __init__(self, cfg: TrainConfig, memory: str | None = None, desc: str = "train"):
        cfg.check()
        memory = cfg.memory if memory is None else memory
        keep_freed_memory()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.desc = cfg, desc
        self.units = cfg.epochs
        self.device = torch.device(cfg.device)
        self.rng = seed_everything(cfg.seed)
        self.feats, graph = load_features(cfg.graph, self.device, cfg.static if memory != "table" else None)
        # pretraining saves zero rows for the others; keeping this mask, not the graph, frees the T-CSR
        self.trained_nodes = nodes_with_training_events(graph) if memory == "table" else None
        with open_cache(cfg.cache, graph_path=cfg.graph) as cache:
            self.meta = cache.meta
            self.num_batches = {s: cache.num_batches(s) for s in ("train", "val", "test")}
            self.neg_sets = cache.num_neg_sets("train")
        # the task before the model: edge classification sizes its head by the train split's classes
        self.task = make_task(cfg.task, cfg.loss, graph.label, graph.split, self.device, cfg.graph)
        model_cfg = model_config(cfg, graph, self.feats, memory, classes=self.task.num_classes)
        self.model = build_model(model_cfg).to(self.device)
        self.memory = build_memory(model_cfg, self.feats.edge_feat, self.device)
        self.lr = resolve_lr(cfg, self.num_batches["train"])
        log_precision(cfg.precision, self.device)
        self.optimizer = adam(self.model.parameters(), self.lr)
        self.config_record = asdict(cfg)

    def loader(self, split: str, neg_sets: np.ndarray | None = None, copy_stream=None) -> BatchLoader:
        n = self.num_batches[split]
        sets = np.zeros(n, dtype=np.int64) if neg_sets is None else neg_sets
        return BatchLoader(self.cfg.cache, split, list(zip(range(n), sets.tolist())), prefetch=self.cfg.prefetch,
                           device=self.device, negatives=self.task.negatives, copy_stream=copy_stream)

    def train_unit(self, n: int) -> UnitResult:
        load = machine_load.Interval().start()  # what else ran on our cores meanwhile (see machine_load)
        sets = self.rng.integers(0, self.neg_sets, size=self.num_batches["train"])
        if self.memory is not None:
            self.memory.reset()
        with tqdm(total=self.meta.split_events.get("train") or None, unit="ev", unit_scale=True,
                  desc=f"{self.desc} epoch {n}", disable=not self.cfg.progress, mininterval=2.0) as bar:
            stats = train_epoch(self.model, self.memory, self.loader("train", sets), self.optimizer,
                                self.feats, loss=self.cfg.loss, task=self.task, progress=bar, epoch=n,
                                precision=self.cfg.precision)
        fields = load.stop()
        return UnitResult(stats, {"train_loss": stats.loss, "train_events_per_s": stats.events_per_s},
                          {k: v for k, v in fields.items() if k in machine_load.ROW_FIELDS})

    def eval_memory(self) -> Memory | None:
        return self.memory  # carried on from training

    # --- the checkpoint: the memory and every RNG, so a resumed run continues bitwise
    def checkpoint_changes(self, ckpt: dict[str, Any]) -> list[str]:
        return []

    def state(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "rng": rng_state(self.rng)}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.memory.load_state_dict(ckpt["memory"])
        set_rng_state(self.rng, ckpt["rng"])

    # --- nothing else runs beside one process
    def begin(self, done: int) -> None:
        pass

    def sync(self) -> None:
        pass

    def unit_saved(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass

    def summary_fields(self, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        return {"batch_size": int(self.meta.batch_size)}
