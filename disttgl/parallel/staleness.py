"""MSPipe's staleness bound k inside DistTGL's i x j x k training (docs/design.md §5.7): which flags a
distributed run takes, the k it trains with, and how its records state both stalenesses.

Two stalenesses compose. Within a memory batch the ``i`` sub-batches read one state, so sub-batch m
misses the writes of the m sub-batches before it (``group_staleness`` = i - 1 at most); across memory
batches the copy's server serves step u the writes of steps <= u - k (``mspipe_k`` = k; k = 1 is
DistTGL's sequential order). Only the strict bound runs here: no delayed fetch from stage times and
no staleness mitigation; ``--stage-times`` only resolves ``--staleness auto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disttgl.errors import DataError
from disttgl.layout import Layout
from disttgl.pipeline.plan import parse_staleness, plan_staleness
from disttgl.pipeline.versions import mean_staleness, memory_versions


def check_served(staleness: str, stage_times: str | None, mitigation: str, pipeline: str, parallelism: str) -> None:
    """Refuse, naming the flag, what only the one-process pipeline runs.

    Args:
        staleness: the --staleness value (1, K or auto).
        stage_times: the --stage-times file, or None.
        mitigation: the --mitigation value.
        pipeline: the --pipeline value.
        parallelism: the --parallelism value (for the message).
    """
    where = f"with --parallelism {parallelism} (i x j x k trainers)"
    if mitigation != "none":
        raise DataError(None, f"--mitigation {mitigation} {where} is not implemented: the memory server serves "
                              f"strict stale versions only; staleness mitigation runs in one process")
    if pipeline != "off":
        raise DataError(None, f"--pipeline {pipeline} {where} is not implemented: the memory server already "
                              f"overlaps reads with earlier writes (--staleness K); --pipeline is one process only")
    if stage_times and parse_staleness(staleness) is not None:
        raise DataError(None, f"--stage-times with --staleness {staleness} {where}: the memory server serves the "
                              f"strict version u - k (no delayed fetch); there --stage-times only resolves "
                              f"--staleness auto")


@dataclass(frozen=True)
class ServedStaleness:
    """The staleness of an i x j x k run."""

    k: int  # MSPipe's bound between memory batches
    requested: str  # the --staleness value
    reason: str
    tau: tuple[float, ...] | None  # stage times auto read k from, or None

    def record(self, layout: Layout, memory_batches: int) -> dict[str, Any]:
        """``summary.json["staleness"]``: both stalenesses beside the layout.

        Args:
            layout: the run's i x j x k.
            memory_batches: T, memory batches per pass (mean staleness counts memory batches).
        """
        return {"k": self.k, "mspipe_k": self.k, "group_staleness": layout.i - 1, "layout": str(layout),
                "requested": self.requested, "reason": self.reason,
                "tau": None if self.tau is None else list(self.tau), "versions": "strict u - k",
                "mitigation": "none", "pipeline": "off",
                "mean_staleness": mean_staleness(memory_versions(memory_batches, self.k)),
                "staleness_unit": "memory batches"}


def served_staleness(staleness: str, stage_times: str | None, mitigation: str = "none", pipeline: str = "off",
                     parallelism: str = "i x j x k") -> ServedStaleness:
    """The run's :class:`ServedStaleness` (DataError on a bad value, file or flag).

    Args:
        staleness: the --staleness value.
        stage_times: the --stage-times file (needed by auto), or None.
        mitigation: the --mitigation value (refused unless none).
        pipeline: the --pipeline value (refused unless off).
        parallelism: the --parallelism value (for messages).
    """
    check_served(staleness, stage_times, mitigation, pipeline, parallelism)
    plan = plan_staleness(staleness, stage_times)
    return ServedStaleness(plan.k, plan.requested, plan.reason, plan.tau)
