"""From ``--staleness 1|K|auto [--stage-times stages.json]`` to the memory versions an epoch reads
(docs/design.md "Pipeline staleness (MSPipe)").

``auto`` takes k from the profiled stage times (``disttgl profile``): MSPipe's minimal bound when
training is the bottleneck; otherwise no k stops the slowest stage from setting the pace, so auto
takes the smallest k whose simulated schedule is as fast as any k up to ``MAX_K`` (usually 1: no
staleness is paid for nothing), and the run logs which stage bounds it. With stage times the
versions are the simulated delayed-fetch schedule's (often fresher than i - k); without, the strict
i - k. Everything is recomputed from the recorded times, so a resumed run reads the same versions.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from disttgl.errors import DataError
from disttgl.pipeline.timing import STAGES, min_staleness, simulate
from disttgl.pipeline.versions import memory_versions

log = logging.getLogger(__name__)

MAX_K = 8
STAGE_TIMES_KIND = "disttgl-stage-times"


@dataclass(frozen=True)
class StalenessPlan:
    """The staleness a run trains with."""

    k: int
    tau: tuple[float, ...] | None  # profiled stage times, or None (strict i - k)
    requested: str  # the --staleness value
    reason: str

    def versions(self, num_batches: int) -> np.ndarray:
        return memory_versions(num_batches, self.k, self.tau, delayed=True)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "tau": None if self.tau is None else list(self.tau)}


def parse_staleness(value: str) -> int | None:
    """``auto`` -> None, else the integer bound >= 1 (DataError otherwise)."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        k = int(str(value))
    except ValueError:
        raise DataError(None, f"--staleness must be a whole number >= 1 or auto, got {value!r}") from None
    if k < 1:
        raise DataError(None, f"--staleness must be >= 1 (1: sequential training), got {k}")
    return k


def load_stage_times(path: str | Path) -> tuple[float, ...]:
    """τ1..τ5 from a ``disttgl profile`` file, checked."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "stage-times file does not exist (write one with `disttgl profile`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a stage-times JSON file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != STAGE_TIMES_KIND:
        raise DataError(path, f"not a stage-times file (kind {STAGE_TIMES_KIND!r} missing; `disttgl profile` "
                              f"writes them)")
    stages = doc.get("tau")
    if not isinstance(stages, dict) or set(stages) != set(STAGES):
        raise DataError(path, f"'tau' must map the five stages {list(STAGES)} to seconds")
    tau = []
    for name in STAGES:
        v = stages[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DataError(path, f"stage time of {name!r} is {v!r}: a finite number of seconds >= 0")
        tau.append(float(v))
    return tuple(tau)


def _fastest_k(tau: tuple[float, ...], batches: int = 64) -> int:
    """The smallest k whose simulated run is as short as any k <= MAX_K."""
    ends = [float(simulate(tau, k, batches).end[-1, 3]) for k in range(1, MAX_K + 1)]
    best = min(ends)
    return 1 + next(i for i, e in enumerate(ends) if e <= best * (1 + 1e-9))


def plan_staleness(staleness: str, stage_times: str | None) -> StalenessPlan:
    """The run's :class:`StalenessPlan` (DataError on a bad value or file)."""
    k = parse_staleness(staleness)
    tau = load_stage_times(stage_times) if stage_times else None
    if k is not None:
        return StalenessPlan(k, tau, str(staleness), "given" + (" (versions from the stage times)" if tau else ""))
    if tau is None:
        raise DataError(None, "--staleness auto needs --stage-times (from `disttgl profile GRAPH CACHE --out ...`)")
    bound = min_staleness(tau)
    if bound.k is not None:
        return StalenessPlan(bound.k, tau, "auto", bound.reason)
    k = _fastest_k(tau)
    log.warning("staleness auto: %s; k = %d is the smallest as fast as any k <= %d", bound.reason, k, MAX_K)
    return StalenessPlan(k, tau, "auto", f"{bound.reason}; k = {k}: the smallest as fast as any k <= {MAX_K}")
