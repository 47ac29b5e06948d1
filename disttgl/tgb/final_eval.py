"""``disttgl train --eval tgb``: TGB's protocol on the best epoch, once training is done.

Scoring a split against ~1,000 negatives per positive costs about twenty 49-negative evaluations, so
it does not run every epoch: the loop selects the best epoch by disttgl's validation MRR as always,
and this keeps that epoch's weights and its memory as validation started (both in the checkpoint,
so a resumed run keeps them). After the last epoch the kept model scores validation, then test,
with the memory carried on, exactly as TGB's examples do.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from disttgl.cache.reader import open_cache
from disttgl.errors import DataError
from disttgl.models.memory import NodeMemory
from disttgl.tgb.evaluate import evaluate_tgb
from disttgl.tgb.negatives_file import load_negatives, negatives_attrs
from disttgl.train.config import TrainConfig

log = logging.getLogger(__name__)

ATTRS_KEPT = ("source", "num_neg", "seed", "tgb_name", "tgb_version")


def negatives_path(cfg: TrainConfig) -> Path:
    """``--tgb-negatives``, or ``tgb_negatives.h5`` beside the graph store (where convert writes it)."""
    return Path(cfg.tgb_negatives) if cfg.tgb_negatives else Path(cfg.graph).with_name("tgb_negatives.h5")


class TGBFinalEvaluation:
    """The best epoch's weights and memory, and TGB's evaluation of them.

    Args:
        cfg: the run's settings (``graph``, ``cache``, ``tgb_negatives``, ``tgb_batch_size``).
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.path = cfg, negatives_path(cfg)
        # checked before training, not after hours of it
        self.val = load_negatives(self.path, "val", graph_path=cfg.graph)
        self.test = load_negatives(self.path, "test", graph_path=cfg.graph)
        self.attrs = {k: v for k, v in negatives_attrs(self.path).items() if k in ATTRS_KEPT}
        with open_cache(cfg.cache, graph_path=cfg.graph) as cache:
            meta = cache.meta
        self.sampling = dict(neighbors=meta.neighbors, strategy=meta.strategy, seed=meta.seed)
        if meta.tgl_compat:
            raise DataError(cfg.cache, "--eval tgb samples neighbours as disttgl does; this cache was built "
                                       "with --tgl-compat")
        self.best: dict[str, Any] | None = None

    @staticmethod
    def snapshot(memory: NodeMemory) -> dict[str, torch.Tensor]:
        """The memory as validation starts (a copy: validation writes on)."""
        return {"memory": memory.memory.detach().cpu().clone(), "mail": memory.mail.detach().cpu().clone()}

    def keep(self, model: torch.nn.Module, memory: dict[str, torch.Tensor], unit: int) -> None:
        self.best = {"unit": unit, "model": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}),
                     "memory": memory}

    def state(self) -> dict[str, Any]:
        return {"tgb_best": self.best} if self.best is not None else {}

    def load(self, ckpt: dict[str, Any]) -> None:
        self.best = ckpt.get("tgb_best")

    def run(self, model: torch.nn.Module, feats: Any) -> dict[str, Any]:
        """The summary's TGB fields: val then test of the kept epoch (memory carried on)."""
        if self.best is None:
            raise DataError(None, "--eval tgb: no epoch was kept (no finite validation MRR)")
        model.load_state_dict(self.best["model"])
        device = feats.edge_feat.device
        memory = NodeMemory(self.best["memory"]["memory"].clone().to(device),
                            self.best["memory"]["mail"].clone().to(device))
        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        for split, neg in (("val", self.val), ("test", self.test)):
            got = evaluate_tgb(model, memory, feats, self.cfg.graph, neg, split, batch_size=self.cfg.tgb_batch_size,
                               **self.sampling)
            out.update({f"{split}_{k}": v for k, v in got.items()})
        seconds = time.perf_counter() - t0
        log.info("TGB protocol (best epoch %d, %s): val tgb_mrr %.4f, test tgb_mrr %.4f (%.0f s)", self.best["unit"],
                 self.attrs.get("source", "?"), out["val_tgb_mrr"], out["test_tgb_mrr"], seconds)
        positives = self.val.rows + self.test.rows
        return out | {"tgb": {**self.attrs, "negatives": str(self.path), "batch_size": self.cfg.tgb_batch_size,
                              "best_epoch": self.best["unit"], "seconds": seconds,
                              "positives_per_s": positives / seconds if seconds > 0 else 0.0}}
