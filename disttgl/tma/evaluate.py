"""The averaged model with one global memory (docs/design.md §14.4).

The trainers' memories describe their own parts only, so an averaged model is evaluated on the
whole graph: reset one memory, replay the whole training stream without gradients under the
averaged weights (the memory it leaves is what one process's training epoch would leave), then
validate with the memory carried on, and test right after when validation improves, exactly as
the one-process loop does (:func:`disttgl.train.epoch.evaluate` on the whole graph's batch cache).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from disttgl.train.config import TrainConfig
from disttgl.train.epoch import evaluate
from disttgl.train.fit import improves
from disttgl.train.single import SingleProcess

log = logging.getLogger(__name__)


class GlobalEvaluation:
    """Validation (and test on improvement) of averaged weights on the whole graph.

    Args:
        cfg: the whole graph, its batch cache and the model settings the trainers use.
    """

    def __init__(self, cfg: TrainConfig):
        self.s = SingleProcess(cfg, desc="tma eval")
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"best_epoch": 0, "val_mrr": -math.inf}

    def __call__(self, weights: dict[str, torch.Tensor], round_no: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Evaluate ``weights`` (the round's average); append and return the row.

        Args:
            weights: the averaged floating-point entries of the model's state dict.
            round_no: the round they come from (the row's ``epoch``: report tools read that key).
            fields: the row's other fields (wall time, events trained, ...).
        """
        t0 = time.perf_counter()
        s = self.s
        with torch.no_grad():
            own = s.model.state_dict()
            for k, v in weights.items():
                own[k].copy_(v)
        if s.memory is not None:
            s.memory.reset()
        replay = evaluate(s.model, s.memory, s.loader("train"), s.feats, split="train", epoch=round_no)
        val = evaluate(s.model, s.memory, s.loader("val"), s.feats, split="val", epoch=round_no)
        row = {"epoch": round_no, "round": round_no, **fields, "val_ap": val["ap"], "val_mrr": val["mrr"],
               "val_ap_1neg": val["ap_1neg"], "replay_mrr": replay["mrr"]}
        if improves(val["mrr"], self.best.get("val_mrr")):
            test = evaluate(s.model, s.memory, s.loader("test"), s.feats, split="test", epoch=round_no)
            self.best = {"best_epoch": round_no, "val_mrr": val["mrr"], "val_ap": val["ap"], "test_ap": test["ap"],
                         "test_mrr": test["mrr"], "test_ap_1neg": test["ap_1neg"], "best_wall_s": fields.get("wall_s")}
        row["eval_seconds"] = time.perf_counter() - t0
        self.history.append(row)
        log.info("round %d (%.0f s): val AP %.4f MRR %.4f (best round %d)", round_no, fields.get("wall_s", 0.0),
                 val["ap"], val["mrr"], self.best["best_epoch"])
        return row
