"""The run directory's files: ``metrics.jsonl`` (one row per epoch or pass), ``checkpoint.pt``
(after every epoch or pass, atomically) and ``summary.json``; and which checkpoint a run resumes.

Checkpoints hold only tensors and plain values and are loaded with ``weights_only=True``, so a
planted ``checkpoint.pt`` cannot run code on ``--resume``.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from disttgl.atomic import atomic_path
from disttgl.errors import DataError
from disttgl.train import machine_load
from disttgl.train.config import TrainConfig

log = logging.getLogger(__name__)


LINK_KEYS = ("test_ap", "test_mrr", "test_ap_1neg", "val_mrr", "val_ap")  # link prediction's metrics


def run_summary(history: list[dict[str, Any]], best: dict[str, Any], config: dict[str, Any],
                keys: tuple[str, ...] = LINK_KEYS) -> dict[str, Any]:
    """``summary.json`` fields shared by the single-process and distributed trainers.

    ``keys``: the best epoch's metrics it records (the task's ``summary_keys``; link prediction's by
    default). ``machine``: :func:`disttgl.train.machine_load.summarize` of the rows' load fields, so a
    speed measured while other processes used our cores is flagged (``contended``)."""
    rates = [r["train_events_per_s"] for r in history]
    return {"best_epoch": best["best_epoch"], **{k: best.get(k) for k in keys}, "epochs": len(history),
            "train_events_per_s": float(np.mean(rates)) if rates else 0.0,
            "total_seconds": float(sum(r["seconds"] for r in history)),
            "machine": machine_load.summarize(history), "config": config}


def write_summary(out: Path, summary: dict[str, Any], unit: str, scores: str | None = None) -> None:
    """Write ``summary.json``; log the best unit with ``scores`` (default: link prediction's test metrics)."""
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    if scores is None:
        scores = "test AP {test_ap:.4f} MRR {test_mrr:.4f} AP(1 neg) {test_ap_1neg:.4f}".format(**summary)
    log.info("best %s %d: %s", unit, summary["best_epoch"], scores)


def resumable_checkpoint(path: Path, cfg: TrainConfig | Any,
                         extra_changes: Callable[[dict[str, Any]], list[str]] | None = None,
                         quiet: bool = False) -> dict[str, Any] | None:
    """The checkpoint to continue from with ``cfg.resume``; None (start afresh) when there is none or
    it was made with settings that change the run (``extra_changes`` names the caller's own).

    Args:
        path: the run's ``checkpoint.pt``.
        cfg: the run's settings, a dataclass with a ``resume`` field (``TrainConfig``, or another
            trainer's, e.g. ``disttgl.snapshot.train.SnapshotTrainConfig``).
        extra_changes: the caller's own differences between the checkpoint and this run.
        quiet: no warning when the checkpoint is not used (ranks other than the writer).
    """
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
_RESUMABLE = {"epochs", "resume", "progress", "threads", "prefetch", "device", "out", "graph", "cache", "timeout"}


def _config_changes(saved: dict[str, Any], cfg: TrainConfig | Any) -> list[str]:
    """Settings that differ from the checkpoint's. A setting the checkpoint does not name (it was
    written before the setting existed) counts as its default, so adding a setting does not make
    every earlier run start afresh."""
    now = asdict(cfg)
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    # no static table: its dropout has no effect (a config without `static` has neither)
    ignored = _RESUMABLE | ({"static_dropout"} if getattr(cfg, "static", None) is None else set())
    return [k for k in now if k not in ignored and saved.get(k, defaults.get(k)) != now[k]]


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
