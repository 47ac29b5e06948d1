"""The memory version each training batch reads under staleness bound k (docs/design.md,
"Pipeline staleness (MSPipe)").

Version v_i = the last batch whose memory write batch i sees; -1 is the initial memory. A training
run recomputes the sequence from its recorded stage times on resume, so this is pure and
deterministic: the same (num_batches, k, tau, delayed) always gives the same array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from disttgl.pipeline.timing import PipelineInputError, check_count, check_k, check_tau, simulate

__all__ = ["mean_staleness", "memory_versions"]


def memory_versions(num_batches: int, k: int, tau: Sequence[float] | None = None, *,
                    delayed: bool = True) -> np.ndarray:
    """v_i for i = 0..num_batches-1 (int64).

    Without stage times, or with k = 1, the strict bound v_i = i - k (k = 1: i - 1, sequential
    training), floored at -1 (the initial memory: no batch before 0). With stage times, the versions
    of the simulated schedule (delayed or eager memory fetch), clipped to i - k <= v_i <= i - 1 and
    made non-decreasing; the simulation already satisfies both, the clip only guards the contract.

    Args:
        num_batches: batches in the run (>= 0).
        k: staleness bound (>= 1).
        tau: profiled stage times (t1..t5) in seconds, or None.
        delayed: with tau, use MSPipe's delayed memory fetch (True) or the eager one.
    """
    n = check_count(num_batches)
    k = check_k(k)
    if tau is not None:
        tau = check_tau(tau)
    i = np.arange(n, dtype=np.int64)
    strict = np.maximum(i - k, -1)
    if tau is None or k == 1:
        return strict
    v = np.clip(simulate(tau, k, n, delayed=delayed).versions, strict, i - 1)
    return np.maximum.accumulate(v) if n else v


def mean_staleness(versions: Sequence[int] | np.ndarray) -> float:
    """Mean of i - 1 - v_i: how many of the preceding batches' writes a batch misses (0: sequential).

    Args:
        versions: v_i per batch, each in -1..i-1.
    """
    v = np.asarray(versions)
    if v.ndim != 1 or (v.size and not np.issubdtype(v.dtype, np.integer)):
        raise PipelineInputError(f"versions must be a 1-D integer array, got shape {v.shape} {v.dtype}")
    if not v.size:
        return 0.0
    s = np.arange(v.size, dtype=np.int64) - 1 - v.astype(np.int64)
    bad = np.flatnonzero((s < 0) | (v < -1))
    if bad.size:
        i = int(bad[0])
        raise PipelineInputError(f"version of batch {i} is {int(v[i])}, outside -1..{i - 1}")
    return float(s.mean())
