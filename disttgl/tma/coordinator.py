"""The coordinator of a TMA run: start the Lighthouse and the trainers, give them a common start,
log every round, evaluate the averaged model, write the run's files (docs/design.md §14.5).

Run directory: ``plan.json`` and ``start.json`` (what the trainers read), ``rounds/`` (each round's
average, published by its lowest trainer), ``rounds.jsonl`` (one line per round: participants,
contributors, missing and dead trainers; one per event: a trainer died or was restarted, the
Lighthouse died or was restarted; one per round that failed on a trainer, with its stall),
``metrics.jsonl`` (one row per evaluated round),
``summary.json`` (last, as every run's), ``trainer-P/`` (logs, ``final.pt``). Every file is written
atomically. A rerun on the same directory starts over: it first removes what a previous run left,
``summary.json`` first, so a killed rerun never leaves a complete-looking run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from disttgl.errors import DataError
from disttgl.tma.evaluate import GlobalEvaluation
from disttgl.tma.launcher import Launcher
from disttgl.tma.plan import PLAN_FILE, START_FILE, TMAPlan, write_start
from disttgl.tma.supervisor import Supervisor
from disttgl.tma.worker import ROUNDS_DIR
from disttgl.train.config import TrainConfig
from disttgl.train.run_files import run_summary, write_jsonl, write_summary
from disttgl.train.run_lock import run_dir_lock

log = logging.getLogger(__name__)

RUN_FILES = ("summary.json", "metrics.jsonl", "rounds.jsonl", START_FILE, PLAN_FILE, "lighthouse.log", "lighthouse.pid")


@dataclass
class TMAOptions:
    """The coordinator's own settings."""

    eval_every: int = 1  # evaluate every N-th round (and the last)
    restart_dead: bool = False
    max_restarts: int = 3
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the trainers (tests)
    launcher: Launcher = field(default_factory=lambda: Launcher("local"))  # how trainers start


def clean_run_dir(run_dir: Path) -> None:
    """Remove what an earlier run left (``summary.json`` first)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for d in [run_dir / ROUNDS_DIR, *run_dir.glob("trainer-*")]:
        if d.is_dir():
            shutil.rmtree(d)


class Rounds:
    """The published rounds, read as they appear, and the ``rounds.jsonl`` they make."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.dir = run_dir, run_dir / ROUNDS_DIR
        self.seen: set[str] = set()
        self.lines: list[dict[str, Any]] = []
        self.by_round: dict[int, list[str]] = {}

    def ingest(self, sup: Supervisor, plan: TMAPlan) -> list[tuple[dict[str, Any], Path]]:
        """New rounds and events, logged; returns the new rounds (record, file) in order."""
        new = []
        for path in sorted(self.dir.glob("round-*.pt")) if self.dir.exists() else []:
            if path.name in self.seen:
                continue
            self.seen.add(path.name)
            rec = json.loads(torch.load(path, map_location="cpu", weights_only=True)["record"])
            present = rec.pop("present")
            dead = sup.dead_at(rec["time"])  # when the round was made, not when it is read
            rec.update(kind="round", participants=present, dead=dead, file=path.name,
                       missing=[p for p in plan.trainers if p not in dead and p not in present])
            self.by_round.setdefault(rec["round"], []).append(path.name)
            rec["split"] = len(self.by_round[rec["round"]]) > 1  # two quorums took the same round number
            new.append((rec, path))
        events = sup.take_events()
        for e in events:
            self.lines.append({"kind": "event", **e})
        for rec, _ in new:
            self.lines.append(rec)
        if new or events:
            write_jsonl(self.run_dir / "rounds.jsonl", self.lines)
        return new

    def add_failures(self) -> list[dict[str, Any]]:
        """The trainers' failed rounds (``trainer-P/failed-A.jsonl``) into ``rounds.jsonl``, every line
        in time order; returns them."""
        failed = [json.loads(x) for path in sorted(self.run_dir.glob("trainer-*/failed-*.jsonl"))
                  for x in path.read_text().splitlines() if x.strip()]
        self.lines = sorted(self.lines + failed, key=lambda x: x["time"])
        write_jsonl(self.run_dir / "rounds.jsonl", self.lines)
        return failed


def run_tma(plan: TMAPlan, eval_cfg: TrainConfig, opts: TMAOptions, record: dict[str, Any]) -> dict[str, Any]:
    """Train ``plan`` to its time limit (or its rounds); the summary.

    Args:
        plan: the run (its trainers, partition, period, timeouts).
        eval_cfg: the whole graph and its batch cache, with the trainers' model settings.
        opts: evaluation period, restarts.
        record: ``summary.json``'s ``config`` entry.
    """
    run_dir = Path(plan.run_dir)
    with run_dir_lock(run_dir):
        clean_run_dir(run_dir)
        evaluator = GlobalEvaluation(eval_cfg)  # loads the whole graph before the trainers start
        sup = Supervisor(plan, opts.restart_dead, opts.max_restarts, opts.env, opts.launcher)
        rounds = Rounds(run_dir)
        t = plan.timeouts
        last: tuple[dict[str, Any], Path] | None = None
        evaluated: set[str] = set()
        queue: list[tuple[dict[str, Any], Path]] = []  # rounds due for evaluation
        prev: dict[str, Any] = {"wall_s": 0.0, "events": 0, "file": ""}
        total_events = 0
        t0, t_done = time.time(), None
        try:
            sup.start()
            end = time.time() + t.startup
            while not sup.ready() and not sup.finished() and time.time() < end:
                time.sleep(0.1)
            t0 = time.time() + 0.2
            write_start(run_dir, t0)
            sup.deadline = t0 + plan.time_limit
            hard_end = sup.deadline + 2 * (t.quorum + t.collective) + t.heartbeat + 30.0
            log.info("%d trainers started (%s); training until %.0f s", len(plan.trainers),
                     ", ".join(map(str, plan.trainers)), plan.time_limit)
            while True:
                done = sup.finished()
                if done and t_done is None:
                    t_done = time.time()
                for rec, path in rounds.ingest(sup, plan):
                    total_events += sum(rec["events"].values())
                    rec["events_total"] = total_events
                    last = (rec, path)
                    if rec["round"] % opts.eval_every == 0 or rec["stop"]:
                        queue.append(last)
                if queue:  # one at a time, oldest first: the watch goes on between evaluations
                    prev = _evaluate(evaluator, queue.pop(0), prev)
                    evaluated.add(prev["file"])
                    write_jsonl(run_dir / "metrics.jsonl", evaluator.history)
                if done and not queue:
                    break
                if not done and time.time() > hard_end:
                    log.warning("trainers still running %.0f s after the deadline: stopping them",
                                time.time() - sup.deadline)
                    break
                time.sleep(0.2)
        finally:
            sup.stop()
        rounds.ingest(sup, plan)
        failed = rounds.add_failures()
        if last is None:
            raise DataError(run_dir, "no averaging round completed; see the trainers' logs (trainer-*/log-*.txt)"
                                     + _first_log_tail(run_dir))
        if last[1].name not in evaluated:
            _evaluate(evaluator, last, prev)
            write_jsonl(run_dir / "metrics.jsonl", evaluator.history)
        died = sup.ever_died()
        restarts = sum(max(0, tp.attempt) for tp in sup.trainers.values())
        summary = run_summary(evaluator.history, evaluator.best, record) | {
            "lr": evaluator.s.lr, "unit": "round", "rounds": last[0]["round"],
            "rounds_published": sum(1 for x in rounds.lines if x["kind"] == "round"),
            "trainers": plan.trainers, "parts": plan.parts, "dead_trainers": died, "restarts": restarts,
            "lighthouse_restarts": sup.lighthouse_restarts, "degraded": bool(died),
            "launcher": opts.launcher.kind, "placements": sup.placements(), "failed_rounds": len(failed),
            "longest_failed_round_s": max((f["stall_s"] for f in failed), default=None),
            "best_round": evaluator.best["best_epoch"], "time_to_best_s": evaluator.best.get("best_wall_s"),
            "wall_seconds": (t_done or time.time()) - t0,  # start to the last trainer's exit
            "training_seconds": last[0]["wall_s"], "train_events": total_events}
        write_summary(run_dir, summary, "round")
        return summary


def _evaluate(evaluator: GlobalEvaluation, last: tuple[dict[str, Any], Path], prev: dict[str, Any]) -> dict[str, Any]:
    rec, path = last
    weights = torch.load(path, map_location="cpu", weights_only=True)["weights"]
    seconds = max(rec["wall_s"] - prev["wall_s"], 1e-9)
    events = rec["events_total"] - prev["events"]
    evaluator(weights, rec["round"], {"wall_s": rec["wall_s"], "seconds": seconds, "train_events": events,
                                      "train_events_per_s": events / seconds, "participants": rec["participants"],
                                      "contributors": rec["contributors"]})
    return {"wall_s": rec["wall_s"], "events": rec["events_total"], "file": path.name}


def _first_log_tail(run_dir: Path, lines: int = 15) -> str:
    logs = sorted(run_dir.glob("trainer-*/log-*.txt"))
    if not logs:
        return ""
    tail = logs[0].read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- {logs[0]} (last lines) ---\n" + "\n".join(tail)
