"""A TMA run's plan (``RUN/plan.json``): what the coordinator decided and every trainer reads, the
sync period, the time budget and the torchft timeouts (docs/design.md §14.3). Pure: no torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from disttgl.atomic import atomic_path
from disttgl.errors import DataError

PLAN_FILE, START_FILE = "plan.json", "start.json"
RETRY_SLEEP = 2.0  # seconds between two Lighthouse requests of a trainer while the Lighthouse is down
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """Seconds in ``90``, ``90s``, ``2min``, ``1.5h``.

    Args:
        text: the value.
        flag: the flag it came from, for the error message.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise DataError(None, f"{flag} must be a positive duration such as 90s, 30min or 2h, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_sync_every(text: str) -> tuple[str, float]:
    """``("seconds", s)`` for ``60s``/``2min`` (wall clock: the paper's), ``("steps", n)`` for
    ``200steps`` (every trainer averages after n of its own steps: deterministic).

    Args:
        text: the ``--sync-every`` value.
    """
    m = re.fullmatch(r"\s*([0-9]+)\s*steps?\s*", str(text))
    if m:
        if int(m.group(1)) < 1:
            raise DataError(None, f"--sync-every must be at least 1 step, got {text!r}")
        return "steps", float(int(m.group(1)))
    return "seconds", parse_duration(text, "--sync-every")


@dataclass
class Timeouts:
    """torchft's timeouts, in seconds (docs/design.md §14.3 says how each was chosen).

    ``join``: how long the Lighthouse waits for healthy trainers that have not asked for the round
    yet (None: 5 s with a wall-clock period, where trainers arrive within a step of each other;
    ``quorum`` with a step period, so every live trainer is in every round and runs repeat).
    ``heartbeat``: a trainer silent this long is dead to the Lighthouse: the stall the others see
    when one dies. ``collective``: the process group's allreduce and the healing transfer.
    ``quorum``: the longest a trainer waits for a round to form (None: 2 periods + 2 joins with a
    wall-clock period, 600 s with a step period). ``quorum_retries``: torchft's Manager sleeps
    ``quorum / (retries + 1)`` after a failed Lighthouse request before it retries, so with its
    default of 3 a Lighthouse outage in a step-period run cost 150 s (measured); the default here
    retries every RETRY_SLEEP seconds for as long as the quorum timeout lasts.
    """

    heartbeat_interval: float = 0.25
    heartbeat: float = 4.0
    join: float | None = None
    quorum: float | None = None
    collective: float = 15.0
    connect: float = 5.0
    quorum_retries: int | None = None  # None: quorum / RETRY_SLEEP (see resolved)
    startup: float = 300.0  # coordinator: the longest it waits for every trainer to be ready

    def resolved(self, sync_kind: str, sync_value: float) -> "Timeouts":
        """Fill in the defaults that depend on the period."""
        join = self.join if self.join is not None else (5.0 if sync_kind == "seconds" else 600.0)
        quorum = self.quorum if self.quorum is not None else (
            2 * sync_value + 2 * join if sync_kind == "seconds" else 600.0)
        quorum = max(quorum, join + self.heartbeat)
        retries = self.quorum_retries if self.quorum_retries is not None else max(3, math.ceil(quorum / RETRY_SLEEP))
        return Timeouts(**{**asdict(self), "join": join, "quorum": quorum, "quorum_retries": retries})


@dataclass
class TMAPlan:
    """What every trainer of a run reads (written by the coordinator before it starts them)."""

    run_dir: str
    parts_dir: str
    parts: int  # P of the partition
    trainers: list[int]  # the parts that get a trainer (all but --drop-parts)
    stores: list[str]  # per part, its graph store
    caches: list[str]  # per part, its batch cache
    train: dict[str, Any]  # TrainConfig fields shared by every trainer (graph, cache, out set per trainer)
    sync_kind: str  # seconds | steps
    sync_value: float
    time_limit: float  # seconds of training after the start
    max_rounds: int = 0  # 0: until the time limit
    lighthouse: str = ""  # the Lighthouse's address
    launcher: str = "local"  # local | srun (trainers on other nodes: each advertises its host name)
    timeouts: Timeouts = field(default_factory=Timeouts)

    def check(self) -> None:
        if self.sync_kind not in ("seconds", "steps"):
            raise DataError(None, f"unknown sync kind {self.sync_kind!r}")
        if not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise DataError(None, f"--time-limit must be > 0 seconds, got {self.time_limit}")
        if self.max_rounds < 0:
            raise DataError(None, f"--rounds must be >= 0, got {self.max_rounds}")
        if not self.trainers:
            raise DataError(None, "--drop-parts leaves no part to train")

    def trainer_dir(self, p: int) -> Path:
        return Path(self.run_dir) / f"trainer-{p}"


def write_plan(plan: TMAPlan) -> None:
    with atomic_path(Path(plan.run_dir) / PLAN_FILE) as tmp:
        tmp.write_text(json.dumps(asdict(plan), indent=2) + "\n")


def read_plan(run_dir: str | os.PathLike) -> TMAPlan:
    path = Path(run_dir) / PLAN_FILE
    try:
        raw = json.loads(path.read_text())
        raw["timeouts"] = Timeouts(**raw["timeouts"])
        return TMAPlan(**raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(path, f"unreadable TMA plan ({exc})") from None


def write_start(run_dir: str | os.PathLike, t0: float) -> None:
    """The common start (wall clock, seconds since the epoch): periods and the deadline count from it."""
    with atomic_path(Path(run_dir) / START_FILE) as tmp:
        tmp.write_text(json.dumps({"t0": t0}) + "\n")


def read_start(run_dir: str | os.PathLike) -> float | None:
    path = Path(run_dir) / START_FILE
    try:
        return float(json.loads(path.read_text())["t0"])
    except (OSError, ValueError, KeyError):
        return None


def next_tick(t0: float, period: float, now: float) -> float:
    """The first multiple of ``period`` after ``t0`` that is later than ``now``: every trainer
    averages on the same wall-clock ticks, so a late one falls back in step after one round."""
    k = math.floor((now - t0) / period) + 1
    return t0 + max(k, 1) * period
