"""TGB's ``hist_rnd`` evaluation negatives, re-implemented (spec §4.2).

TGB's generator (``tgb/linkproppred/negative_generator.py``, ``generate_negative_samples_hist_rnd``,
py-tgb 2.3.0) walks the positives of a split in order and, for positive ``(s, d, t)`` with
``q = num_neg`` and ``P`` = the destinations ``s`` has at ``t`` in that split:

1. historical: ``f = setdiff1d(train destinations of s, P)``, ``k = min(int(q * 0.5), len(f))``,
   ``np.random.choice(f, k, replace=False)`` (only when ``s`` has train events);
2. random: ``r = setdiff1d(arange(min_dst, max_dst + 1), P ∪ train destinations of s)``; all of
   ``r`` when ``q - k > len(r)``, else ``np.random.choice(r, q - k, replace=False)``;
3. the negatives are the concatenation; a later positive with the same ``(s, d, t)`` overwrites the
   earlier one's entry (its draws still consumed the random stream).

The global generator is seeded once (``np.random.seed(42)``) before the validation split and the
test split continues the same stream. This module makes the same ``choice`` calls on a
``np.random.RandomState(seed)`` (the legacy generator ``np.random.seed`` seeds), with the same
population arrays (sorted, as ``setdiff1d`` returns them), so its output equals TGB's for the same
events; the set arithmetic is done with a boolean mask instead of ``setdiff1d``.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

import numpy as np

from disttgl.tgb.negatives_file import SPLITS, SplitNegatives

log = logging.getLogger(__name__)

HIST_RATIO = 0.5
DEFAULT_SEED = 42


def historical_destinations(src: np.ndarray, dst: np.ndarray) -> dict[int, np.ndarray]:
    """Distinct destinations per source (sorted), from the train events."""
    if len(src) == 0:
        return {}
    order = np.lexsort((dst, src))
    s, d = src[order], dst[order]
    keep = np.ones(len(s), bool)
    keep[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    s, d = s[keep], d[keep]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    return {int(s[a]): d[a:b] for a, b in zip(starts, ends)}


def _same_time_destinations(src: np.ndarray, dst: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per positive, the index of its (s, t) group; per group, its destinations (TGB's ``P``)."""
    keys = np.stack([src, t.view(np.int64) if t.dtype == np.float64 else t.astype(np.int64)], axis=1)
    _, group, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    bounds = np.r_[0, np.cumsum(counts)]
    ds = dst[order]
    return group, [ds[bounds[g]:bounds[g + 1]] for g in range(len(counts))]


def hist_rnd_split(src: np.ndarray, dst: np.ndarray, t: np.ndarray, *, history: dict[int, np.ndarray],
                   min_dst: int, max_dst: int, num_neg: int, rng: np.random.RandomState) -> SplitNegatives:
    """One split's negatives, in the split's event order (``rng`` advances as TGB's global one would)."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    t = np.asarray(t)
    n = len(src)
    max_hist = int(num_neg * HIST_RATIO)
    span = max_dst - min_dst + 1
    group, same_time = _same_time_destinations(src, dst, t)
    valid = np.ones(span, dtype=bool)  # scratch mask over [min_dst, max_dst]
    empty = np.zeros(0, dtype=np.int64)
    last: dict[tuple[int, int, float], int] = {}
    rows: list[np.ndarray | None] = [None] * n
    choice = rng.choice
    src_l, dst_l, t_l = src.tolist(), dst.tolist(), t.tolist()
    for i in range(n):
        s = src_l[i]
        pos = same_time[group[i]]
        seen = history.get(s)
        k = 0
        hist = empty
        if seen is not None and len(seen):
            f = seen[~np.isin(seen, pos, assume_unique=False)] if len(pos) else seen
            k = max_hist if max_hist <= len(f) else len(f)
            hist = choice(f, k, replace=False)
        valid[pos - min_dst] = False
        if seen is not None:
            valid[seen - min_dst] = False
        r = np.flatnonzero(valid)
        r += min_dst
        valid[pos - min_dst] = True
        if seen is not None:
            valid[seen - min_dst] = True
        need = num_neg - k
        rnd = r if need > len(r) else choice(r, need, replace=False)
        rows[i] = np.concatenate((hist, rnd))
        key = (s, dst_l[i], t_l[i])
        prev = last.get(key)
        if prev is not None:
            rows[prev] = None  # overwritten in TGB's dict: every occurrence gets the last draw
        last[key] = i
    out_rows = [rows[last[(src_l[i], dst_l[i], t_l[i])]] for i in range(n)]
    lengths = np.fromiter((len(a) for a in out_rows), dtype=np.int64, count=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    flat = np.concatenate(out_rows).astype(np.int64, copy=False) if n else empty
    return SplitNegatives(ptr, flat)


def hist_rnd(src: np.ndarray, dst: np.ndarray, t: np.ndarray, split: np.ndarray, *,
             num_neg: int | None = None, seed: int = DEFAULT_SEED,
             splits: Iterable[str] = SPLITS) -> dict[str, SplitNegatives]:
    """TGB's hist_rnd negatives for the val and test events of a store's event arrays.

    ``num_neg=None`` takes every possible destination (``max_dst - min_dst + 1``, which is what
    tgbl-wiki v2's q = 12,000 amounts to: more than its destinations, so each row holds them all).
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    t = np.asarray(t)
    split = np.asarray(split)
    if len(dst) == 0:
        raise ValueError("no events")
    min_dst, max_dst = int(dst.min()), int(dst.max())
    if num_neg is None:
        num_neg = max_dst - min_dst + 1
    if num_neg < 1:
        raise ValueError(f"num_neg must be >= 1, got {num_neg}")
    train = split == 0
    history = historical_destinations(src[train], dst[train])
    rng = np.random.RandomState(seed)
    out = {}
    for name in splits:
        m = split == SPLITS.index(name) + 1
        start = time.perf_counter()
        out[name] = hist_rnd_split(src[m], dst[m], t[m], history=history, min_dst=min_dst, max_dst=max_dst,
                                   num_neg=num_neg, rng=rng)
        log.info("hist_rnd %s: %d positives, %d negatives, %.1f s", name, out[name].rows, len(out[name].dst),
                 time.perf_counter() - start)
    return out
