"""The one training loop: resume, epochs, validation, test on improvement, the run's files.

:func:`fit` runs any :class:`Strategy`: one process (:class:`disttgl.train.single.SingleProcess`)
or DistTGL's scheduled i x j x k ranks (:class:`disttgl.parallel.strategy.ScheduledRanks`). A
strategy supplies the model and optimizer, trains one unit (an epoch, or a pass of j·k epochs'
worth of batches), gives the memory to evaluate with and says whether this rank evaluates and
writes the run directory; everything a run records is decided here, once.

Per unit (docs/design.md §4): train; validate with the memory carried on from training; when
validation MRR (edge classification: F1-micro, the task's ``select``) improves, test right away with
the memory carried on from validation; append the row to ``metrics.jsonl`` and write
``checkpoint.pt``. At the end, ``summary.json``. The strategy's ``task``
(:mod:`disttgl.train.task`) names the metrics: rows hold ``val_<metric>``, the summary ``test_<metric>``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from disttgl.cache.loader import BatchLoader
from disttgl.errors import DataError
from disttgl.models.memory import Memory
from disttgl.models.tgn import TGN, Features
from disttgl.train.config import TrainConfig
from disttgl.train.epoch import EpochStats, evaluate
from disttgl.train.run_files import resumable_checkpoint, run_summary, save_checkpoint, write_jsonl, write_summary
from disttgl.train.task import LinkTask

log = logging.getLogger(__name__)


@dataclass
class UnitResult:
    """What a strategy reports of one trained unit."""

    stats: EpochStats  # this rank's pass over its batches (time split, loss)
    row: dict[str, Any]  # the row's training fields: train_loss, train_events_per_s (+ the strategy's own)
    load: dict[str, Any] = field(default_factory=dict)  # machine-load fields (disttgl.train.machine_load)


class Strategy(Protocol):
    """How one rank trains; :func:`fit` does the rest.

    Attributes: ``cfg``, ``model``, ``optimizer``, ``feats``, ``lr`` (the lr in use), ``units``
    (epochs or passes to run), ``unit`` ("epoch" or "pass"), ``evaluates`` (this rank validates,
    tests and writes the run directory), ``config_record`` (the configuration summary.json records),
    ``task`` (:class:`~disttgl.train.task.LinkTask` or ``EdgeClassTask``; absent: link prediction).
    """

    cfg: TrainConfig
    model: TGN
    optimizer: Any
    feats: Features
    lr: float
    units: int
    unit: str
    evaluates: bool
    config_record: dict[str, Any]

    def checkpoint_changes(self, ckpt: dict[str, Any]) -> list[str]:
        """Settings of the strategy's own that differ from the checkpoint's (it is then not resumed)."""

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore the strategy's own state (memory, RNGs, ...) from a checkpoint after ``ckpt['epoch']`` units."""

    def begin(self, done: int) -> None:
        """Get ready to train units ``done + 1 ...`` (servers, loaders)."""

    def train_unit(self, n: int) -> UnitResult:
        """Train unit ``n`` (1-based)."""

    def eval_memory(self) -> Memory | None:
        """The memory validation starts from (this rank evaluates only)."""

    def loader(self, split: str) -> BatchLoader:
        """The ``val``/``test`` batches, in order, with the evaluation negatives."""

    def sync(self) -> None:
        """Wait for the other ranks: everything of this unit is on disk before the checkpoint names it."""

    def state(self) -> dict[str, Any]:
        """The strategy's own checkpoint entries."""

    def unit_saved(self, n: int) -> None:
        """The checkpoint of unit ``n`` is written."""

    def finish(self) -> None:
        """After the last unit: check what :meth:`begin` started ended cleanly; wait for every rank."""

    def close(self) -> None:
        """Release what :meth:`begin` started (also after an error)."""

    def summary_fields(self, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        """``summary.json`` fields of the strategy's own."""


def improves(score: float, best: float | None) -> bool:
    """Whether a validation score is a new best. ``score > best`` alone keeps no NaN epoch but is
    beaten by nothing once a NaN best is stored (a corrupted checkpoint); a non-finite score never
    improves and any finite one beats a non-finite best."""
    if not math.isfinite(score):
        return False
    return best is None or not math.isfinite(best) or score > best


def fit(strategy: Strategy) -> dict[str, Any] | None:
    """Train ``strategy.units`` units, continuing from ``checkpoint.pt`` with ``cfg.resume``.

    Returns the summary on the rank that evaluates, None on the others."""
    cfg, s = strategy.cfg, strategy
    task = task_of(s)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"best_epoch": 0, f"val_{task.select}": -math.inf}
    done = 0
    # TGB's protocol needs the best epoch's weights and memory at the end (checked before training)
    tgb = _tgb_final(cfg) if cfg.eval == "tgb" and s.evaluates else None
    ckpt = resumable_checkpoint(ckpt_path, cfg, s.checkpoint_changes, quiet=not s.evaluates)
    if ckpt is not None:
        try:
            s.model.load_state_dict(ckpt["model"])
            s.optimizer.load_state_dict(ckpt["optimizer"])
            s.load_state(ckpt)
            if tgb is not None:
                tgb.load(ckpt)
            history, best, done = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise DataError(ckpt_path, f"checkpoint does not fit this run ({type(exc).__name__}: {exc}); "
                                       "delete it or run without --resume") from None
        if s.evaluates:
            log.info("resuming %s after %s %d", out, s.unit, done)
    elif cfg.resume and s.evaluates:
        log.info("no checkpoint in %s; starting from scratch", out)

    try:
        s.begin(done)  # inside: close() also releases what a failed begin started
        for n in range(done + 1, s.units + 1):
            t0 = time.perf_counter()
            result = s.train_unit(n)
            if s.evaluates:
                best = _validate(s, n, result, history, best, t0, tgb)
            s.sync()
            if s.evaluates:
                write_jsonl(out / "metrics.jsonl", history)
                save_checkpoint(ckpt_path, {
                    "epoch": n, "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                    "history": history, "best": best, "config": asdict(cfg), **s.state(),
                    **(tgb.state() if tgb is not None else {})})
            s.unit_saved(n)
        s.finish()
    finally:
        s.close()
    if not s.evaluates:
        return None
    summary = run_summary(history, best, s.config_record, task.summary_keys) | task.summary_fields() \
        | s.summary_fields(history, best) | {"lr": s.lr, "precision": cfg.precision}
    if tgb is not None:
        summary |= tgb.run(s.model, s.feats)
    write_summary(out, summary, s.unit, task.describe(summary, "test"))
    return summary


def task_of(s: Strategy) -> Any:
    """The strategy's task (a strategy that names none predicts links)."""
    return getattr(s, "task", None) or LinkTask(s.cfg.loss)


def _tgb_final(cfg: TrainConfig) -> Any:
    from disttgl.tgb.final_eval import TGBFinalEvaluation  # only --eval tgb loads the TGB code

    return TGBFinalEvaluation(cfg)


def _validate(s: Strategy, n: int, result: UnitResult, history: list[dict[str, Any]], best: dict[str, Any],
              t0: float, tgb: Any = None) -> dict[str, Any]:
    """Validate unit ``n`` (and test it when validation improves), append its row; the new best.
    With ``tgb`` (--eval tgb), the best unit's weights and memory as validation starts are kept."""
    task = task_of(s)
    memory = s.eval_memory()
    start = tgb.snapshot(memory) if tgb is not None else None
    val = evaluate(s.model, memory, s.loader("val"), s.feats, split="val", epoch=n, task=task,
                   precision=s.cfg.precision)
    stats = result.stats
    row = {"epoch": n, **result.row, **{f"val_{k}": val[k] for k in task.keys},
           "time_split": {k: v / max(stats.seconds, 1e-9) for k, v in stats.timing.items()}}
    key = f"val_{task.select}"
    if improves(val[task.select], best.get(key)):
        test = evaluate(s.model, memory, s.loader("test"), s.feats, split="test", epoch=n, task=task,  # memory runs on
                        precision=s.cfg.precision)
        best = {"best_epoch": n, **{f"val_{k}": val[k] for k in task.keys}, **{f"test_{k}": test[k] for k in task.keys}}
        if tgb is not None:
            tgb.keep(s.model, start, n)
    row["seconds"] = time.perf_counter() - t0
    row.update(result.load)
    history.append(row)
    log.info("%s %d: loss %.4f, %.0f train events/s, %s (best %s %d)", s.unit, n, row["train_loss"],
             row["train_events_per_s"], task.describe(row, "val"), s.unit, best["best_epoch"])
    return best

