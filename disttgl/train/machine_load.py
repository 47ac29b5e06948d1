"""How busy the machine was while we measured, so a speed taken under contention can be flagged.

Two measures per interval (an epoch):

- ``other_cores_busy``: CPU time that *other* processes used on the cores this process may run on
  (its affinity set), per second of wall time = the number of those cores others kept busy. It is
  the busy jiffies of those cores in ``/proc/stat`` minus this process's own CPU time
  (``time.process_time``: all its threads; its child processes count as others). Accurate to the
  kernel's tick (10 ms per core) whatever the interval, but Linux only (None elsewhere). Under torchrun the sibling ranks are other processes: a caller with several
  ranks per machine subtracts their ``own_cpu_s`` too (see :func:`others_busy`).
- ``load_avg``: the 1-minute load average (``/proc/loadavg``, ``os.getloadavg``), the mean of a
  sample at the start and one at the end. It counts our own runnable threads and lags by about a
  minute, so it is only the fallback.

``summarize`` turns the per-epoch rows into the run's ``machine`` entry with ``contended``:
``other_cores_busy`` above 0.5 in any epoch (others kept more than half a core busy on our cores),
or, where it is missing, the highest load average minus this run's own threads above 0.5.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

from disttgl.lifetime import proc_stat

CONTENDED_CORES = 0.5  # other processes busy on more than half a core
# the fields of Interval.stop() that go into a metrics row (the others are raw inputs)
ROW_FIELDS = ("load_avg", "cpu_count", "threads", "own_cores_busy", "other_cores_busy")


def cpu_count() -> int:
    """Cores this process may run on (its affinity set; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def busy_cpu_seconds(cores: Iterable[int] | None = None) -> float | None:
    """CPU seconds the given cores (default: this process's) have been busy since boot; None off Linux.

    Busy = user + nice + system + irq + softirq + steal (guest time is already in user; idle and
    iowait are not busy).
    """
    try:
        cores = set(os.sched_getaffinity(0) if cores is None else cores)
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    jiffies = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        v = [int(x) for x in rest.split()]
        jiffies += v[0] + v[1] + v[2] + sum(v[5:8])
    return jiffies / hz


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``); None if unknown."""
    stat = proc_stat(pid)
    try:
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15
    except (TypeError, ValueError, IndexError, AttributeError):
        return None


def others_busy(busy_cpu_s: float | None, own_cpu_s: float, wall_s: float) -> float | None:
    """Cores kept busy by others: (busy CPU time of our cores - our own) / wall time, at least 0."""
    if busy_cpu_s is None or wall_s <= 0:
        return None
    return max(0.0, (busy_cpu_s - own_cpu_s) / wall_s)


class Interval:
    """One measured interval: ``start()``, then ``stop()`` returns the row fields.

    Also a context manager: ``with Interval() as m: ...`` leaves the fields in ``m.fields``.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.fields: dict[str, Any] = {}

    def start(self) -> "Interval":
        self._cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self._load0 = load_average()
        self._busy0 = busy_cpu_seconds(self._cores)
        self._own0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        """Fields: ``ROW_FIELDS`` plus ``own_cpu_s``, ``busy_cpu_s`` and ``wall_s``."""
        wall = time.perf_counter() - self._t0
        own = time.process_time() - self._own0
        busy1 = busy_cpu_seconds(self._cores) if self._busy0 is not None else None
        busy = None if busy1 is None else busy1 - self._busy0
        loads = [x for x in (self._load0, load_average()) if x is not None]
        if self.threads is None:
            import torch

            threads = torch.get_num_threads()
        else:
            threads = self.threads
        other = others_busy(busy, own, wall)
        self.fields = {
            "load_avg": sum(loads) / len(loads) if loads else None,
            "cpu_count": cpu_count(), "threads": int(threads),
            "own_cores_busy": own / wall if wall > 0 else 0.0,
            "other_cores_busy": other,
            # raw numbers, for callers that subtract sibling processes (torchrun ranks) themselves
            "own_cpu_s": own, "busy_cpu_s": busy, "wall_s": wall,
        }
        return self.fields

    def __enter__(self) -> "Interval":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's ``machine`` entry from its per-epoch rows (rows without the fields are skipped)."""
    loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
    others = [r["other_cores_busy"] for r in rows if r.get("other_cores_busy") is not None]
    threads = max([r["threads"] for r in rows if r.get("threads") is not None], default=None)
    cores = max([r["cpu_count"] for r in rows if r.get("cpu_count") is not None], default=cpu_count())
    if others:
        contended, measure = max(others) > CONTENDED_CORES, "other_cores_busy"
    elif loads and threads is not None:
        # the load average counts our own busy threads: subtract them
        contended, measure = max(loads) - threads > CONTENDED_CORES, "load_avg"
    else:
        contended, measure = None, None
    return {"cpu_count": cores, "threads": threads,
            "load_avg_max": max(loads, default=None), "load_avg_mean": sum(loads) / len(loads) if loads else None,
            "other_cores_busy_max": max(others, default=None),
            "other_cores_busy_mean": sum(others) / len(others) if others else None,
            "contended": contended, "contended_by": measure}
