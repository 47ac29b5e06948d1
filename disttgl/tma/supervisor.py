"""The processes of a TMA run on this machine: the Lighthouse and one process per trainer, watched
on a thread of the coordinator (docs/design.md §14.5).

A trainer that exits non-zero (killed, crashed) is dead; with ``restart_dead`` it is started again
(its next attempt rejoins at the next round and heals to the last average) up to ``max_restarts``
times while the run has time left. A dead Lighthouse is restarted on the same port at once.
Everything that happens is an event for ``rounds.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disttgl.lifetime import child_exits_with_parent
from disttgl.tma import lighthouse
from disttgl.tma.launcher import Launcher
from disttgl.tma.plan import TMAPlan, write_plan

log = logging.getLogger(__name__)


@dataclass
class TrainerProcess:
    part: int
    attempt: int
    proc: subprocess.Popen
    exits: list[int] = field(default_factory=list)  # return codes of ended attempts
    state: str = "running"  # running | done | dead


class Supervisor:
    """Start and watch the Lighthouse and the trainers.

    Args:
        plan: the run's plan (its ``lighthouse`` address is filled in by :meth:`start`).
        restart_dead: start a dead trainer again.
        max_restarts: restarts per trainer at most.
        env: extra environment of the trainers (tests: the fault hook).
        launcher: how a trainer is started (default: a child process here).
    """

    def __init__(self, plan: TMAPlan, restart_dead: bool = False, max_restarts: int = 3,
                 env: dict[str, str] | None = None, launcher: Launcher | None = None):
        self.plan, self.restart_dead, self.max_restarts = plan, restart_dead, max_restarts
        self.launcher = launcher or Launcher("local")
        self.env = {**os.environ, **(env or {}), "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.run_dir = Path(plan.run_dir)
        self.trainers: dict[int, TrainerProcess] = {}
        self.events: list[dict[str, Any]] = []
        self.history: list[tuple[float, int, str]] = []  # (time, part, trainer_died | trainer_restarted)
        self.lock = threading.Lock()
        self.port = lighthouse.free_port()
        self.lighthouse: subprocess.Popen | None = None
        self.lighthouse_restarts = 0
        self.deadline = float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="disttgl-tma-supervisor", daemon=True)

    def _event(self, kind: str, **fields: Any) -> None:
        with self.lock:
            self.events.append({"event": kind, "time": time.time(), **fields})
            if kind in ("trainer_died", "trainer_restarted"):
                self.history.append((self.events[-1]["time"], fields["part"], kind))

    def dead_at(self, t: float) -> list[int]:
        """Trainers dead at wall-clock time ``t`` (died, not restarted yet)."""
        with self.lock:
            state = {p: kind for when, p, kind in self.history if when <= t}
        return sorted(p for p, kind in state.items() if kind == "trainer_died")

    def take_events(self) -> list[dict[str, Any]]:
        with self.lock:
            out, self.events = self.events, []
        return out

    # ---------------------------------------------------------------- processes
    def start_lighthouse(self) -> None:
        t = self.plan.timeouts
        self.lighthouse = lighthouse.start(self.port, t.join, t.heartbeat, self.run_dir / "lighthouse.log")
        (self.run_dir / "lighthouse.pid").write_text(str(self.lighthouse.pid))
        self.plan.lighthouse = f"http://{self.launcher.host()}:{self.port}"

    def start_trainer(self, part: int, attempt: int) -> None:
        out = open(self.plan.trainer_dir(part) / f"log-{attempt}.txt", "ab")
        try:
            argv = [sys.executable, "-m", "disttgl.tma.worker", str(self.run_dir), str(part), str(attempt)]
            proc = subprocess.Popen(self.launcher.trainer_command(part, attempt, argv), stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env, preexec_fn=child_exits_with_parent)
        finally:
            out.close()
        prev = self.trainers.get(part)
        self.trainers[part] = TrainerProcess(part, attempt, proc, exits=prev.exits if prev else [])
        if attempt:
            self._event("trainer_restarted", part=part, attempt=attempt)

    def start(self) -> None:
        """The Lighthouse, then every trainer; the watching thread."""
        self.start_lighthouse()
        for p in self.plan.trainers:
            self.plan.trainer_dir(p).mkdir(parents=True, exist_ok=True)
        self.plan.launcher = self.launcher.kind
        write_plan(self.plan)  # with the Lighthouse's address, before a trainer reads it
        for p in self.plan.trainers:
            self.start_trainer(p, 0)
        self._thread.start()

    # ------------------------------------------------------------------ the watch
    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            if self.lighthouse is not None and self.lighthouse.poll() is not None:
                rc = self.lighthouse.returncode
                self.lighthouse_restarts += 1
                log.warning("the Lighthouse exited (%s): restarting it on port %d", rc, self.port)
                self._event("lighthouse_died", rc=rc)
                self.start_lighthouse()
                self._event("lighthouse_restarted", restarts=self.lighthouse_restarts)
            for tp in list(self.trainers.values()):
                if tp.state != "running" or tp.proc.poll() is None:
                    continue
                rc = tp.proc.returncode
                tp.exits.append(rc)
                if rc == 0:
                    tp.state = "done"
                    self._event("trainer_done", part=tp.part, attempt=tp.attempt)
                    continue
                tp.state = "dead"
                log.warning("trainer %d (attempt %d) died with exit code %s", tp.part, tp.attempt, rc)
                self._event("trainer_died", part=tp.part, attempt=tp.attempt, rc=rc)
                if self.restart_dead and tp.attempt < self.max_restarts and time.time() < self.deadline:
                    self.start_trainer(tp.part, tp.attempt + 1)

    def live(self) -> list[int]:
        return sorted(p for p, tp in self.trainers.items() if tp.state == "running")

    def dead(self) -> list[int]:
        return sorted(p for p, tp in self.trainers.items() if tp.state == "dead")

    def ever_died(self) -> list[int]:
        return sorted(p for p, tp in self.trainers.items() if any(rc != 0 for rc in tp.exits))

    def ready(self) -> bool:
        """Every running trainer has loaded its data and joined (its ``ready`` file)."""
        return all((self.plan.trainer_dir(p) / f"ready-{tp.attempt}").exists()
                   for p, tp in self.trainers.items() if tp.state == "running")

    def placements(self) -> dict[str, list[dict[str, Any]]]:
        """Per trainer, where each of its attempts ran (its ``ready`` file: host, pid, SLURM job/step)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for p, tp in sorted(self.trainers.items()):
            for a in range(tp.attempt + 1):
                try:
                    out.setdefault(str(p), []).append(json.loads((self.plan.trainer_dir(p) / f"ready-{a}").read_text()))
                except (OSError, ValueError):  # died before it was ready
                    out.setdefault(str(p), []).append({})
        return out

    def finished(self) -> bool:
        return not self.live()

    def stop(self, grace: float = 10.0) -> None:
        """End the watch, then every process left: SIGTERM, SIGKILL after ``grace`` seconds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        procs = [tp.proc for tp in self.trainers.values()] + ([self.lighthouse] if self.lighthouse else [])
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.time() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
