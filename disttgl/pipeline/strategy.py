"""MSPipe's strategy for :func:`disttgl.train.fit.fit`: one process, staleness-bounded memory reads,
optional staleness mitigation, optional background memory fetch (docs/design.md "Pipeline staleness").

It is the one-process strategy (:class:`disttgl.train.single.SingleProcess`) with its memory
swapped for a :class:`StaleMemory`: epoch n trains batch i on memory version v_i of the run's
:class:`StalenessPlan`; validation and test read the live memory (every write) in order, as
in every other run, so their numbers compare. ``--staleness 1`` without mitigation is today's
training exactly (tests/test_pipeline_train.py; APAN's mailbox: tests/test_stale_apan.py).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tqdm import tqdm

from disttgl.data.graph_store import read_attrs
from disttgl.models.mailbox import MailboxMemory
from disttgl.models.memory import Memory
from disttgl.pipeline.executor import MemoryPrefetch
from disttgl.pipeline.plan import plan_staleness
from disttgl.pipeline.similar_file import load_similar
from disttgl.pipeline.stale_memory import Mitigation, StaleMemory, mailbox_kind
from disttgl.pipeline.streams import StageStreams
from disttgl.pipeline.versions import mean_staleness
from disttgl.train import machine_load
from disttgl.train.config import TrainConfig
from disttgl.train.epoch import train_epoch
from disttgl.train.fit import UnitResult, fit
from disttgl.train.run_lock import run_dir_lock
from disttgl.train.single import SingleProcess

log = logging.getLogger(__name__)


def train_pipelined(cfg: TrainConfig) -> dict[str, Any]:
    """``disttgl train`` with ``--staleness``/``--mitigation``/``--pipeline`` (one process)."""
    cfg.check()
    strategy = StalePipeline(cfg)  # before the lock: a bad stage-times or similar file leaves no run directory
    with run_dir_lock(cfg.out):
        return fit(strategy)


class StalePipeline(SingleProcess):
    """One process training on staleness-bounded memory.

    Args:
        cfg: the run's settings (``staleness``, ``stage_times``, ``mitigation``, ``similar``,
            ``mitigation_lambda``, ``mitigation_top``, ``pipeline``).
    """

    def __init__(self, cfg: TrainConfig):
        self.plan = plan_staleness(cfg.staleness, cfg.stage_times)  # a bad value fails before any loading
        super().__init__(cfg)
        graph_nodes, dim = self.memory.memory.shape
        mitigation = None
        if cfg.mitigation == "similar":
            sha = str(read_attrs(cfg.graph).get("sha256", ""))
            idx, _ = load_similar(cfg.similar, int(graph_nodes), graph_sha256=sha)
            mitigation = Mitigation(torch.as_tensor(idx).to(self.device), lam=cfg.mitigation_lambda,
                                    top_fraction=cfg.mitigation_top)
        kind = None  # gru, rnn: a NodeMemory
        if isinstance(self.memory, MailboxMemory):  # apan: the mailbox is versioned with the memory
            kind = mailbox_kind(int(graph_nodes), int(dim), self.feats.edge_feat, self.memory.size, self.device)
        # --pipeline streams: the batch copies and the memory fetch on their own CUDA streams (§10.6)
        self.streams = StageStreams(self.device) if cfg.pipeline == "streams" else None
        self.memory = StaleMemory(int(graph_nodes), int(dim), self._num_events(), self.device, mitigation, kind,
                                  stream_events=self.streams is not None)
        self.versions = self.plan.versions(self.num_batches["train"])
        self.config_record["staleness_plan"] = self.plan.record()
        log.info("staleness k = %d (%s): mean staleness %.3f batches an epoch, %s memory fetch",
                 self.plan.k, self.plan.reason, mean_staleness(self.versions),
                 {"threads": "background", "streams": "background, on CUDA streams"}.get(cfg.pipeline, "in-line"))

    def _num_events(self) -> int:
        return int(self.feats.edge_feat.shape[0]) - 1  # edge_feat has a zero row E for "no mail"

    def train_unit(self, n: int) -> UnitResult:
        load = machine_load.Interval().start()
        sets = self.rng.integers(0, self.neg_sets, size=self.num_batches["train"])
        self.memory.start_epoch(self.versions)
        batches = self.loader("train", sets, copy_stream=None if self.streams is None else self.streams.copy)
        if self.cfg.pipeline in ("threads", "streams"):
            batches = MemoryPrefetch(batches, self.memory, streams=self.streams)
        with tqdm(total=self.meta.split_events.get("train") or None, unit="ev", unit_scale=True,
                  desc=f"{self.desc} epoch {n}", disable=not self.cfg.progress, mininterval=2.0) as bar:
            stats = train_epoch(self.model, self.memory, batches, self.optimizer, self.feats, loss=self.cfg.loss,
                                progress=bar, epoch=n, precision=self.cfg.precision)
        fields = load.stop()
        row = {"train_loss": stats.loss, "train_events_per_s": stats.events_per_s,
               "staleness_k": self.plan.k, "mean_staleness": mean_staleness(self.memory.read_versions)}
        return UnitResult(stats, row, {k: v for k, v in fields.items() if k in machine_load.ROW_FIELDS})

    def eval_memory(self) -> Memory:
        return self.memory.live  # every write; evaluation reads it in order

    def checkpoint_changes(self, ckpt: dict[str, Any]) -> list[str]:
        saved = ckpt.get("staleness_plan")
        if saved != self.plan.record():
            return [f"staleness plan {saved} -> {self.plan.record()}"]
        return []

    def state(self) -> dict[str, Any]:
        return {**super().state(), "staleness_plan": self.plan.record()}

    def summary_fields(self, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        staleness = {**self.plan.record(), "mitigation": self.cfg.mitigation, "pipeline": self.cfg.pipeline,
                     "mean_staleness": mean_staleness(self.versions)}
        return {**super().summary_fields(history, best), "staleness": staleness}

