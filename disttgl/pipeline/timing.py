"""MSPipe's five-stage pipeline timing model (docs/design.md, "Pipeline staleness (MSPipe)").

Stages of mini-batch i, with profiled durations tau = (t1..t5) in seconds:
1 sample, 2 feature fetch, 3 memory fetch, 4 train, 5 memory write. Columns 0..4 of the arrays
below are stages 1..5. Batches are 0-based; ``b[i, j]`` / ``e[i, j]`` are start / end times.

Rules (every batch is ready to be sampled at time 0; buffers between stages are unbounded):

- a stage of batch i starts after the previous stage of batch i ends, and after the same stage of
  batch i - 1 ends (each stage serves batches in order, one at a time);
- stages 2 and 3 share one transfer resource (host -> device copies) that serves the fetches in the
  fixed order F0, M0, F1, M1, ...: the feature fetch of i starts after the memory fetch of i - 1
  ends, even when that memory fetch was delayed. One fixed order keeps the schedule deterministic
  and never lets fetches overlap;
- the memory fetch of i starts after the write of batch i - k ends (staleness bound k >= 1).

Eager: every stage starts as early as the rules allow. Delayed (MSPipe's): the memory fetch of i
starts as late as possible without delaying any train start beyond eager's, which is: it ends
exactly when eager's training of i starts (T_i), or later if the rules force it (``max``). That
delays nothing downstream either: eager's train starts satisfy T_{i+1} >= T_i + t2 + t3 (if
t2 + t3 >= t4 the copy resource is saturated and T_i is the memory fetch's end, else training
alone spaces them by t4 > t2 + t3), so the feature and memory fetch of i + 1 still fit after T_i.
Train and write times therefore equal eager's (up to float rounding) and only the fetches move.

The memory version v_i that batch i reads is the largest j < i whose write ended at or before the
memory fetch of i starts, -1 if none (j >= i is impossible: write i follows fetch i).
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from disttgl.errors import DataError

__all__ = ["STAGES", "PipelineInputError", "Schedule", "StalenessBound", "check_count", "check_k", "check_tau",
           "min_staleness", "simulate", "stalls_training", "train_stalls"]

STAGES = ("sample", "feature", "memory", "train", "write")

# Relative tolerance for ties: a ratio this close to an integer counts as that integer, a stage this
# close to t4 does not out-pace training, and a train start later than the previous train's end by
# less than this share of the run's length is no stall. Float sums of decimal times land an ulp off
# exact ties (0.1 + 0.2 > 0.3), which must not change k or the bottleneck.
REL_EPS = 1e-9


class PipelineInputError(DataError, ValueError):
    """Bad stage times, staleness bound or batch count (a ValueError the CLI also reports as a DataError)."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


def check_tau(tau: Sequence[float]) -> tuple[float, float, float, float, float]:
    """The five stage times as floats, or PipelineInputError naming the bad one.

    Args:
        tau: (t1..t5) seconds for sample, feature fetch, memory fetch, train, memory write.
    """
    if isinstance(tau, (str, bytes)) or not isinstance(tau, Sequence | np.ndarray):
        raise PipelineInputError(f"stage times must be a sequence of 5 numbers, got {tau!r}")
    if len(tau) != 5:
        raise PipelineInputError(f"stage times need exactly 5 values {STAGES}, got {len(tau)}")
    out = []
    for name, t in zip(STAGES, tau):
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise PipelineInputError(f"stage time of {name!r} is not a number: {t!r}")
        t = float(t)
        if math.isnan(t):
            raise PipelineInputError(f"stage time of {name!r} is NaN")
        if math.isinf(t):
            raise PipelineInputError(f"stage time of {name!r} is infinite")
        if t < 0:
            raise PipelineInputError(f"stage time of {name!r} is negative: {t}")
        out.append(t)
    return tuple(out)  # type: ignore[return-value]


def check_k(k: int) -> int:
    """The staleness bound as an int >= 1, or PipelineInputError.

    Args:
        k: staleness bound; batch i may read the writes of batches <= i - k only (1: sequential).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise PipelineInputError(f"staleness bound k must be an integer, got {k!r}")
    if k < 1:
        raise PipelineInputError(f"staleness bound k must be >= 1, got {k}")
    return int(k)


def check_count(num_batches: int) -> int:
    """The number of batches as an int >= 0, or PipelineInputError.

    Args:
        num_batches: how many mini-batches to schedule.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral):
        raise PipelineInputError(f"num_batches must be an integer, got {num_batches!r}")
    if num_batches < 0:
        raise PipelineInputError(f"num_batches must be >= 0, got {num_batches}")
    return int(num_batches)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A simulated pipeline: per batch and stage, start and end times, and the memory version read."""

    tau: tuple[float, float, float, float, float]
    k: int
    delayed: bool
    start: np.ndarray  # float64 [n, 5]: column j - 1 is stage j
    end: np.ndarray  # float64 [n, 5]
    versions: np.ndarray  # int64 [n]: v_i, the last write batch i's memory fetch sees (-1: none)

    @property
    def num_batches(self) -> int:
        return int(self.start.shape[0])


def _forward(tau: tuple[float, ...], k: int, n: int,
             latest_end: list[float] | None) -> tuple[list[list[float]], list[list[float]]]:
    """Start and end times under the rules; ``latest_end[i]`` (delayed) is where the memory fetch of
    i should end, honoured only where the rules allow it (they win: ``max``)."""
    t1, t2, t3, t4, t5 = tau
    b = [[0.0] * 5 for _ in range(n)]
    e = [[0.0] * 5 for _ in range(n)]
    for i in range(n):
        s, f = b[i], e[i]
        prev = e[i - 1] if i else None
        s[0] = prev[0] if prev else 0.0
        f[0] = s[0] + t1
        # the transfer resource serves F_i after M_{i-1}, which itself ended after F_{i-1}
        s[1] = max(f[0], prev[2]) if prev else f[0]
        f[1] = s[1] + t2
        s[2] = max(f[1], e[i - k][4]) if i >= k else f[1]
        if latest_end is not None:
            s[2] = max(s[2], latest_end[i] - t3)
        f[2] = s[2] + t3
        s[3] = max(f[2], prev[3]) if prev else f[2]
        f[3] = s[3] + t4
        s[4] = max(f[3], prev[4]) if prev else f[3]
        f[4] = s[4] + t5
    return b, e


def _versions(b: list[list[float]], e: list[list[float]]) -> list[int]:
    """v_i = largest j < i with e[j, write] <= b[i, memory fetch]; writes end in order (a prefix)."""
    write_end = [row[4] for row in e]
    return [bisect.bisect_right(write_end, b[i][2], 0, i) - 1 for i in range(len(b))]


def simulate(tau: Sequence[float], k: int, num_batches: int, *, delayed: bool = True) -> Schedule:
    """Simulate the pipeline for ``num_batches`` batches (pure; Python floats, so bitwise reproducible).

    Args:
        tau: profiled stage times (t1..t5) in seconds, each finite and >= 0.
        k: staleness bound >= 1: the memory fetch of i waits for the write of i - k.
        num_batches: number of mini-batches (>= 0).
        delayed: MSPipe's delayed memory fetch (as late as possible without delaying any train
            start beyond the eager schedule's); False: eager (as early as the rules allow).
    """
    tau = check_tau(tau)
    k = check_k(k)
    n = check_count(num_batches)
    b, e = _forward(tau, k, n, None)
    if delayed:
        # where memory fetch i should end: when eager's training of i starts
        b, e = _forward(tau, k, n, [row[3] for row in b])
    start = np.array(b, dtype=np.float64).reshape(n, 5)
    end = np.array(e, dtype=np.float64).reshape(n, 5)
    versions = np.array(_versions(b, e), dtype=np.int64)
    for a in (start, end, versions):
        a.setflags(write=False)
    return Schedule(tau, k, bool(delayed), start, end, versions)


def train_stalls(schedule: Schedule, *, skip: int = 0) -> np.ndarray:
    """Batches i > skip whose training starts later than the end of training i - 1 (+ a tolerance of
    REL_EPS times the run's length).

    Args:
        schedule: a simulated pipeline.
        skip: ignore batches <= skip (the warm-up); 0 checks every batch from 1 on.
    """
    n = schedule.num_batches
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    eps = REL_EPS * float(schedule.end.max())
    lo = max(int(skip), 0) + 1
    gap = schedule.start[lo:, 3] - schedule.end[lo - 1:-1, 3]
    return np.flatnonzero(gap > eps).astype(np.int64) + lo


def stalls_training(schedule: Schedule, *, skip: int | None = None) -> bool:
    """Whether training ever waits in steady state (by default the second half of the run).

    Under the rules a training-bound pipeline with k >= k_min never stalls at all, and with
    k < k_min every k consecutive train gaps after batch k hold a stall, so a run of at least
    2k + 2 batches decides it (docs/design.md, "Pipeline staleness (MSPipe)").

    Args:
        schedule: a simulated pipeline.
        skip: batches treated as warm-up; None: the first half.
    """
    skip = schedule.num_batches // 2 if skip is None else skip
    return bool(train_stalls(schedule, skip=skip).size)


@dataclass(frozen=True)
class StalenessBound:
    """The smallest staleness bound that never stalls training, or the stage that bounds the pipeline."""

    k: int | None  # None: not training-bound, no k helps
    bottleneck: str  # "train" (then k is set), "sample", "fetch" (t2 + t3) or "write"
    reason: str

    @property
    def training_bound(self) -> bool:
        return self.k is not None


def min_staleness(tau: Sequence[float]) -> StalenessBound:
    """k_min = 1 + ceil((t3 + t5) / t4) when training is the bottleneck (t4 >= max(t1, t2 + t3, t5)).

    Otherwise the slowest other stage sets the pace whatever k is, so no k is returned; ties go to
    training, then in the order sample, fetch, write. Comparisons within a relative REL_EPS count as
    ties (profiled times are not that precise, and the simulation's stall test uses that tolerance).
    Training-bound implies t3 <= t4 and t5 <= t4, so k_min is 1 (t3 = t5 = 0), 2 or 3.

    Args:
        tau: profiled stage times (t1..t5) in seconds.
    """
    t1, t2, t3, t4, t5 = check_tau(tau)
    others = {"sample": t1, "fetch": t2 + t3, "write": t5}
    slowest = max(others, key=others.__getitem__)  # first of the maxima: deterministic
    if t4 < others[slowest] * (1 - REL_EPS):  # an ulp-level excess (0.1 + 0.2 > 0.3) is a tie
        what = {"sample": "t1", "fetch": "t2 + t3", "write": "t5"}[slowest]
        return StalenessBound(None, slowest, f"{what} = {others[slowest]:g} > t4 = {t4:g}: "
                                             f"{slowest} bounds the pipeline, staleness cannot help")
    if t4 == 0.0:  # training-bound with t4 = 0: every stage takes no time
        return StalenessBound(1, "train", "all stage times are 0")
    q = (t3 + t5) / t4
    k = 1 + math.ceil(q - REL_EPS * q)
    return StalenessBound(k, "train", f"k = 1 + ceil((t3 + t5) / t4) = 1 + ceil({q:.6g})")


def speedup_bound(tau: Sequence[float]) -> float:
    """The most a pipeline can gain over running the stages one after another: sum(t) over the
    period of its slowest resource, max(t1, t2 + t3, t4, t5) (feature and memory fetch share the
    transfer resource). With k >= k_min training never stalls, so a long run's time per batch tends
    to that period (tests/test_pipeline_timing.py checks it against :func:`simulate`).

    Args:
        tau: profiled stage times (t1..t5) in seconds.
    """
    t1, t2, t3, t4, t5 = check_tau(tau)
    period = max(t1, t2 + t3, t4, t5)
    return 1.0 if period == 0.0 else (t1 + t2 + t3 + t4 + t5) / period
