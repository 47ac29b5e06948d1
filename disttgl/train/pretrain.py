"""Static-memory pretraining: the TGN with a learnable per-node table in place of the GRU memory,
trained on the same task and batches with early stopping on validation MRR; the best epoch's table
is saved (:mod:`disttgl.train.static_table`) with zero rows for nodes without a training event."""

from __future__ import annotations

import logging
import math
from typing import Any

from disttgl.train.config import PretrainConfig
from disttgl.train.epoch import evaluate
from disttgl.train.fit import improves
from disttgl.train.single import SingleProcess
from disttgl.train.static_table import save_static

log = logging.getLogger(__name__)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Learn a per-node table with the same model and task; early stop on val MRR; save the best table."""
    run = SingleProcess(cfg, memory="table", desc="pretrain")
    best_mrr, best_epoch, best_table, stale = -math.inf, 0, None, 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        stats = run.train_unit(epoch).stats
        val = evaluate(run.model, None, run.loader("val"), run.feats, split="val", epoch=epoch,
                       precision=cfg.precision)
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
