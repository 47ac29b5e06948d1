"""MSPipe's pipeline timing model and memory versions (docs/design.md, "Pipeline staleness (MSPipe)").

Hand-worked schedules, a constraint-graph reference for the eager schedule, a bisection reference
for the delayed memory fetch, invariants over random stage times and k = 1..8, and min_staleness
against a brute-force search over k.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from disttgl.errors import DataError
from disttgl.pipeline.timing import min_staleness, simulate, speedup_bound, stalls_training, train_stalls
from disttgl.pipeline.versions import mean_staleness, memory_versions

# --- hand-worked schedules: rows are batches, columns (start of) sample, feature, memory, train, write

# tau = (1, 1, 1, 2, 1), k = 1: memory fetch i waits for write i - 1, so training runs once per
# t3 + t4 + t5 = 4 s and stalls 2 s before every batch from 1 on.
#   i=0: S 0-1, F 1-2, M 2-3, T 3-5, W 5-6
#   i=1: S 1-2, F max(2, M0 end 3) = 3-4, M max(4, W0 end 6) = 6-7, T 7-9, W 9-10
#   i=2: F max(3, 7) = 7-8, M max(8, 10) = 10-11, T 11-13, W 13-14
#   i=3: F 11-12, M max(12, 14) = 14-15, T 15-17, W 17-18
K1 = [[0, 1, 2, 3, 5], [1, 3, 6, 7, 9], [2, 7, 10, 11, 13], [3, 11, 14, 15, 17]]

# tau = (1, 1, 1, 2, 1), k = 2 (= k_min = 1 + ceil(2 / 2)): fetch i waits for write i - 2, which ends
# exactly when fetch i could start anyway (F + M = 2 = t4: the copy resource is saturated).
#   i=1: F 3-4, M 4-5 (no write to wait for), T 5-7, W 7-8
#   i=2: F max(3, 5) = 5-6, M max(6, W0 end 6) = 6-7, T max(7, 7) = 7-9, W 9-10
#   i=3: F 7-8, M max(8, W1 end 8) = 8-9, T 9-11, W 11-12
#   i=4: F 9-10, M max(10, W2 end 10) = 10-11, T 11-13, W 13-14
K2 = [[0, 1, 2, 3, 5], [1, 3, 4, 5, 7], [2, 5, 6, 7, 9], [3, 7, 8, 9, 11], [4, 9, 10, 11, 13]]
# versions: fetch 2 starts at 6 = W0 end (at or before counts), fetch 3 at 8 = W1 end, ...
K2_V = [-1, -1, 0, 1, 2]

# tau = (1, 1, 1, 3, 1), k = 3: training (3 s) is slower than F + M (2 s), so there is slack.
# eager:
#   i=0: F 1-2, M 2-3, T 3-6, W 6-7
#   i=1: F 3-4, M 4-5, T max(5, 6) = 6-9, W 9-10
#   i=2: F 5-6, M 6-7, T 9-12, W 12-13
#   i=3: F 7-8, M max(8, W0 end 7) = 8-9, T 12-15, W 15-16
#   i=4: F 9-10, M max(10, W1 end 10) = 10-11, T 15-18, W 18-19
SLACK_EAGER = [[0, 1, 2, 3, 6], [1, 3, 4, 6, 9], [2, 5, 6, 9, 12], [3, 7, 8, 12, 15], [4, 9, 10, 15, 18]]
SLACK_EAGER_V = [-1, -1, -1, 0, 1]  # fetch 2 at 6 < W0 end 7; fetch 3 at 8 sees W0 only; fetch 4 at 10 sees W1
# delayed: every memory fetch ends exactly when eager's training of its batch starts (T = 3, 6, 9, 12, 15):
#   i=0: M 2-3; i=1: F 3-4, M 5-6; i=2: F max(3, 6) = 6-7, M 8-9; i=3: F 9-10, M 11-12;
#   i=4: F 12-13, M 14-15. Train and write times are eager's.
SLACK_DELAYED = [[0, 1, 2, 3, 6], [1, 3, 5, 6, 9], [2, 6, 8, 9, 12], [3, 9, 11, 12, 15],
                 [4, 12, 14, 15, 18]]
SLACK_DELAYED_V = [-1, -1, 0, 1, 2]  # fetch 2 at 8 sees W0 (7), fetch 3 at 11 sees W1 (10), fetch 4 at 14 sees W2 (13)


@pytest.mark.parametrize("tau, k, table, versions, delayed_table, delayed_versions", [
    ((1, 1, 1, 2, 1), 1, K1, [-1, 0, 1, 2], K1, [-1, 0, 1, 2]),
    ((1, 1, 1, 2, 1), 2, K2, K2_V, K2, K2_V),  # saturated resource: nothing to delay
    # k = 3: the write constraint never binds (W_{i-3} ends 2 s before fetch i could start), so the
    # schedule and the versions are k = 2's: the copy resource, not k, decides
    ((1, 1, 1, 2, 1), 3, K2, K2_V, K2, K2_V),
    ((1, 1, 1, 3, 1), 3, SLACK_EAGER, SLACK_EAGER_V, SLACK_DELAYED, SLACK_DELAYED_V),
])
def test_hand_worked_schedules(tau, k, table, versions, delayed_table, delayed_versions):
    for delayed, want, want_v in ((False, table, versions), (True, delayed_table, delayed_versions)):
        s = simulate(tau, k, len(want), delayed=delayed)
        assert s.start.tolist() == want, delayed
        assert s.end.tolist() == (np.array(want, dtype=float) + np.array(tau, dtype=float)).tolist()
        assert s.versions.tolist() == want_v, delayed
        assert s.versions.dtype == np.int64


def test_hand_worked_stalls():
    assert train_stalls(simulate((1, 1, 1, 2, 1), 1, 4)).tolist() == [1, 2, 3]  # 2 s wait each
    assert train_stalls(simulate((1, 1, 1, 2, 1), 2, 5)).size == 0
    assert train_stalls(simulate((1, 1, 1, 3, 1), 3, 5)).size == 0
    assert train_stalls(simulate((1, 1, 1, 2, 1), 1, 4), skip=2).tolist() == [3]


@pytest.mark.parametrize("tau, k, bottleneck", [
    ((1, 1, 1, 3, 1), 2, "train"),  # 1 + ceil(2 / 3)
    ((1, 0.5, 1, 2, 2), 3, "train"),  # 1 + ceil(3 / 2)
    ((1, 1, 1, 2, 1), 2, "train"),  # 1 + ceil(2 / 2): equality needs no extra batch
    ((1, 1, 0, 2, 0), 1, "train"),  # no memory fetch or write time: sequential is free
    ((0, 0, 0, 0, 0), 1, "train"),  # t4 = 0 guard
    ((1, 1, 2, 2, 2), None, "fetch"),  # t2 + t3 = 3 > t4 = 2: the copy resource bounds it
    ((3, 1, 1, 2, 1), None, "sample"),
    ((1, 0, 1, 2, 2.5), None, "write"),
    ((3, 1, 2, 2, 3), None, "sample"),  # ties among the others: sample, then fetch, then write
])
def test_min_staleness_hand(tau, k, bottleneck):
    b = min_staleness(tau)
    assert (b.k, b.bottleneck, b.training_bound) == (k, bottleneck, k is not None)
    assert b.reason


# --- references

def ref_schedule(tau, k, n, floor=None):
    """Least start times satisfying the rules, written as a constraint graph (node = (batch, stage),
    start >= end of every predecessor) and relaxed until nothing changes. ``floor[i]``: a lower
    bound on the start of the memory fetch of i (used to delay it)."""
    floor = floor or {}
    preds = {}
    for i in range(n):
        for j in range(5):
            p = []
            if j:
                p.append((i, j - 1))  # own previous stage
            if i:
                p.append((i - 1, j))  # same stage, previous batch
            if j == 1 and i:
                p.append((i - 1, 2))  # copy resource order: F_i after M_{i-1}
            if j == 2 and i >= k:
                p.append((i - k, 4))  # staleness bound: after write i - k
            preds[i, j] = p
    start = {node: 0.0 for node in preds}
    changed = True
    while changed:
        changed = False
        for (i, j), p in preds.items():
            s = max([0.0] + [start[q] + tau[q[1]] for q in p])
            if j == 2 and i in floor:
                s = max(s, floor[i])
            if s != start[i, j]:
                start[i, j], changed = s, True
    b = np.array([[start[i, j] for j in range(5)] for i in range(n)], dtype=float).reshape(n, 5)
    return b, b + np.array(tau, dtype=float)


def ref_versions(b, e, slack=0.0):
    """Literal: the largest j < i whose write ended at or before memory fetch i starts (+ slack)."""
    return [max([j for j in range(i) if e[j, 4] <= b[i, 2] + slack], default=-1) for i in range(len(b))]


def ref_delayed(tau, k, n, steps=40):
    """Greedy, batch by batch: start memory fetch i as late as bisection finds without any train
    start exceeding the eager one (by more than 1e-9), with earlier batches' choices kept."""
    eager_train = ref_schedule(tau, k, n)[0][:, 3]
    floor = {}
    for i in range(n):
        def ok(s):
            return bool(np.all(ref_schedule(tau, k, n, {**floor, i: s})[0][:, 3] <= eager_train + 1e-9))
        lo, hi = ref_schedule(tau, k, n, floor)[0][i, 2], eager_train[i]
        if ok(hi):
            lo = hi
        else:
            for _ in range(steps):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        floor[i] = lo
    return ref_schedule(tau, k, n, floor)


def draw(rng, grid, train_bound=0.7):
    """Stage times: continuous U(0, 1), dyadic multiples of 1/4 (exact sums, exact ties) or
    multiples of 0.1 (ties off by an ulp); often made training-bound, sometimes t3 = t5 = 0."""
    if grid == "continuous":
        t = rng.uniform(0, 1, 5)
    elif grid == "dyadic":
        t = rng.integers(0, 9, 5) * 0.25
    else:
        t = rng.integers(0, 11, 5) / 10
    t = [float(x) for x in t]
    if rng.random() < 0.1:
        t[2] = t[4] = 0.0
    if rng.random() < train_bound:
        t[3] = max(t[3], t[0], t[1] + t[2], t[4])
    return tuple(t)


# --- schedules against the references and the invariants

def check_invariants(s, tau, k):
    n, b, e, v = s.num_batches, s.start, s.end, s.versions
    assert np.array_equal(e, b + np.array(tau))
    assert np.all(b[:, 1:] >= e[:, :-1]), "stage order within a batch"
    assert np.all(b[1:] >= e[:-1]), "each stage serves batches in order, one at a time"
    assert np.all(b[1:, 3] >= e[:-1, 3]), "training never starts before the previous one ends"
    # copy resource: F0, M0, F1, M1, ... back to back in that order, and no two fetches overlap
    seq = np.stack([b[:, 1:3].ravel(), e[:, 1:3].ravel()], axis=1)
    assert np.all(seq[1:, 0] >= seq[:-1, 1]), "fetch order F0 M0 F1 M1 ..."
    by_start = seq[np.lexsort((seq[:, 1], seq[:, 0]))]
    assert np.all(by_start[1:, 0] >= by_start[:-1, 1]), "stages 2 and 3 overlap"
    for i in range(k, n):
        assert b[i, 2] >= e[i - k, 4], f"memory fetch {i} before write {i - k} ended"
    i = np.arange(n)
    assert v.tolist() == ref_versions(b, e)
    assert np.all(v >= i - k) and np.all(v <= i - 1) and np.all(v >= -1)
    assert np.all(np.diff(v) >= 0)


@pytest.mark.parametrize("grid", ["continuous", "dyadic", "decimal"])
def test_invariants_random(grid):
    rng = np.random.default_rng({"continuous": 1, "dyadic": 2, "decimal": 3}[grid])
    for _ in range(120):
        tau = draw(rng, grid, train_bound=0.5)
        for k in range(1, 9):
            eager = simulate(tau, k, 24, delayed=False)
            delayed = simulate(tau, k, 24, delayed=True)
            for s in (eager, delayed):
                check_invariants(s, tau, k)
            assert np.all(delayed.versions >= eager.versions)
            assert np.all(delayed.start[:, 2] >= eager.start[:, 2]), "delayed never fetches earlier"
            assert np.all(delayed.end[:, 2] <= delayed.start[:, 3]), "fetch ends before its training"
            tol = 1e-9 * (1 + eager.end.max())
            np.testing.assert_allclose(delayed.start[:, [0, 3, 4]], eager.start[:, [0, 3, 4]], rtol=0, atol=tol)
            # the lemma behind the delayed rule: every memory fetch can end right when its training starts
            np.testing.assert_allclose(delayed.end[:, 2], delayed.start[:, 3], rtol=0, atol=tol)


@pytest.mark.parametrize("grid", ["continuous", "dyadic", "decimal"])
def test_eager_equals_constraint_graph(grid):
    rng = np.random.default_rng(10 + len(grid))
    for _ in range(40):
        tau = draw(rng, grid, train_bound=0.5)
        for k in (1, 2, 3, 5, 8):
            s = simulate(tau, k, 14, delayed=False)
            b, e = ref_schedule(tau, k, 14)
            assert np.array_equal(s.start, b) and np.array_equal(s.end, e), (tau, k)
            assert s.versions.tolist() == ref_versions(b, e)


@pytest.mark.parametrize("grid", ["continuous", "dyadic"])
def test_delayed_equals_bisection(grid):
    rng = np.random.default_rng(20 + len(grid))
    for _ in range(12):
        tau = draw(rng, grid, train_bound=0.5)
        for k in (1, 2, 3, 6):
            s = simulate(tau, k, 8, delayed=True)
            b, e = ref_delayed(tau, k, 8)
            np.testing.assert_allclose(s.start, b, rtol=0, atol=1e-7, err_msg=str((tau, k)))
            # the bisection lands a hair below the exact latest start: count writes within 1e-7
            assert s.versions.tolist() == ref_versions(b, e, slack=1e-7), (tau, k)


# --- min_staleness against brute force

def brute_k(tau, n=40, delayed=False):
    """Smallest k in 1..8 whose simulated steady state (second half) never stalls training."""
    return next((k for k in range(1, 9) if not stalls_training(simulate(tau, k, n, delayed=delayed))), None)


@pytest.mark.parametrize("grid", ["continuous", "dyadic", "decimal"])
def test_min_staleness_equals_brute_force(grid):
    rng = np.random.default_rng({"continuous": 31, "dyadic": 32, "decimal": 33}[grid])
    seen = set()
    for _ in range(300):
        tau = draw(rng, grid)
        t1, t2, t3, t4, t5 = tau
        bound = min_staleness(tau)
        if not bound.training_bound:
            continue
        assert bound.bottleneck == "train"
        # training-bound implies t3 <= t4 and t5 <= t4, so k_min <= 3 always fits in 1..8
        assert 1 <= bound.k <= 3
        assert brute_k(tau) == bound.k, tau
        assert brute_k(tau, delayed=True) == bound.k, tau  # delaying fetches never stalls training
        seen.add(bound.k)
        # stronger, exact statement (see docs): k >= k_min never stalls, not even while warming up;
        # k < k_min: any k consecutive train gaps after batch k add up to >= t3 + t4 + t5 > k * t4
        for k in range(1, 9):
            s = simulate(tau, k, 30, delayed=False)
            if k >= bound.k:
                assert train_stalls(s).size == 0, (tau, k)
            else:
                gaps = s.start[k:, 3] - s.start[:-k, 3]
                assert np.all(gaps >= t3 + t4 + t5 - 1e-9 * s.end.max()), (tau, k)
                assert t3 + t4 + t5 > k * t4
    assert seen == {1, 2, 3}, seen  # the draws reach every possible k_min


@pytest.mark.parametrize("tau, k", [
    ((0.1, 0.0, 0.1, 0.3, 0.2), 2),  # t3 + t5 = 0.30000000000000004 > t4 = 0.3 in binary
    ((0.2, 0.0, 0.2, 0.3, 0.1), 2),
    ((0.0, 0.1, 0.2, 0.3, 0.1), 2),  # and t2 + t3 = 0.30000000000000004 > t4: fetch-bound by one ulp
])
def test_min_staleness_ulp_ties(tau, k):
    """The one place formula and simulation disagreed: decimal stage times whose float sums exceed
    an exact tie by an ulp. Read literally, 1 + ceil(1.0000000000000002) = 3 and "fetch-bound", but
    the simulated k = 2 schedule then waits ~1e-17 s per batch, which is no stall; both sides treat
    relative differences below 1e-9 as ties, and agree."""
    t1, t2, t3, t4, t5 = tau
    assert (t3 + t5) / t4 > 1  # the literal formula would say 3
    assert min_staleness(tau).k == k == brute_k(tau) == brute_k(tau, delayed=True)


@pytest.mark.parametrize("grid", ["continuous", "dyadic", "decimal"])
def test_not_training_bound_names_the_slowest_stage(grid):
    rng = np.random.default_rng({"continuous": 41, "dyadic": 42, "decimal": 43}[grid])
    checked = 0
    for _ in range(200):
        tau = draw(rng, grid, train_bound=0.0)
        t1, t2, t3, t4, t5 = tau
        others = [("sample", t1), ("fetch", t2 + t3), ("write", t5)]
        slowest = max(v for _, v in others)
        bound = min_staleness(tau)
        if t4 >= slowest * (1 - 1e-9):  # ties within 1e-9 count as training-bound (see ulp ties)
            continue
        assert bound.k is None and bound.bottleneck == next(name for name, v in others if v == slowest)
        # no k helps: the slowest stage sets the pace, so the train period settles above t4. A stage
        # only a little slower than training may not stall it within a finite run (a write backlog
        # needs many batches to use up k batches of slack), so this is checked where the stage is
        # at least 25% slower, over 400 batches.
        if slowest >= 1.25 * t4:
            checked += 1
            for k in (1, 2, 4, 8):
                s = simulate(tau, k, 400, delayed=False)
                assert stalls_training(s), (tau, k)
    assert checked > 50


# --- memory versions

def test_memory_versions_strict_and_sequential():
    assert memory_versions(5, 1).tolist() == [-1, 0, 1, 2, 3]
    assert memory_versions(5, 1, (1, 1, 1, 2, 1)).tolist() == [-1, 0, 1, 2, 3]  # k = 1 ignores tau
    assert memory_versions(6, 3).tolist() == [-1, -1, -1, 0, 1, 2]  # i - 3, floored at -1
    assert memory_versions(0, 2).tolist() == []
    assert memory_versions(5, 1).dtype == np.int64


def test_memory_versions_from_stage_times():
    assert memory_versions(5, 3, (1, 1, 1, 3, 1)).tolist() == SLACK_DELAYED_V
    assert memory_versions(5, 3, (1, 1, 1, 3, 1), delayed=False).tolist() == SLACK_EAGER_V
    assert memory_versions(5, 2, (1, 1, 1, 2, 1)).tolist() == K2_V
    rng = np.random.default_rng(7)
    for _ in range(60):
        tau = draw(rng, "continuous", train_bound=0.5)
        k, n = int(rng.integers(1, 9)), int(rng.integers(0, 30))
        v = memory_versions(n, k, tau)
        i = np.arange(n)
        assert np.all(v >= i - k) and np.all(v <= i - 1) and np.all(np.diff(v) >= 0)
        if k > 1:
            assert v.tolist() == simulate(tau, k, n).versions.tolist()
        again = memory_versions(n, k, list(tau))  # recomputed on resume: bitwise the same
        assert np.array_equal(v, again) and v.dtype == again.dtype == np.int64


def test_mean_staleness():
    assert mean_staleness(memory_versions(10, 1)) == 0.0
    assert mean_staleness(SLACK_DELAYED_V) == pytest.approx(4 / 5)  # 0, 1, 1, 1, 1
    assert mean_staleness(memory_versions(5, 3)) == pytest.approx(7 / 5)  # 0, 1, 2, 2, 2
    assert mean_staleness([]) == 0.0
    for bad in ([0], [-1, 1], [-2], [[-1]], [-1.0, 0.0]):
        with pytest.raises(ValueError):
            mean_staleness(bad)


# --- input validation

@pytest.mark.parametrize("tau, words", [
    ((1, 1, -1, 1, 1), "'memory' is negative"),
    ((1, math.nan, 1, 1, 1), "'feature' is NaN"),
    ((1, 1, 1, math.inf, 1), "'train' is infinite"),
    ((1, 1, 1, 1), "exactly 5"),
    ((1, 1, 1, 1, True), "'write' is not a number"),
    ("11111", "sequence of 5 numbers"),
    ({1, 2, 3, 4, 5}, "sequence of 5 numbers"),
])
def test_bad_stage_times(tau, words):
    for call in (lambda: simulate(tau, 1, 3), lambda: min_staleness(tau),
                 lambda: memory_versions(3, 2, tau)):
        with pytest.raises(ValueError, match=words) as err:
            call()
        assert isinstance(err.value, DataError)
    with pytest.raises(ValueError, match="sequence of 5 numbers"):
        simulate(None, 1, 3)  # optional only for memory_versions


@pytest.mark.parametrize("k, words", [(0, ">= 1"), (-2, ">= 1"), (1.5, "integer"), (True, "integer")])
def test_bad_k(k, words):
    with pytest.raises(ValueError, match=words):
        simulate((1, 1, 1, 1, 1), k, 3)
    with pytest.raises(ValueError, match=words):
        memory_versions(3, k)


def test_bad_num_batches_and_tiny_runs():
    with pytest.raises(ValueError, match="num_batches"):
        simulate((1, 1, 1, 1, 1), 1, -1)
    assert simulate((1, 1, 1, 1, 1), 2, 0).start.shape == (0, 5)
    s = simulate(np.array([1, 1, 1, 1, 1.0]), 2, 1)
    assert s.versions.tolist() == [-1] and train_stalls(s).size == 0 and not stalls_training(s)



def test_speedup_bound_is_what_a_long_simulated_run_gains():
    """Sequential time over the simulated pipeline's (k = k_min, delayed fetch) tends to the bound as
    the run grows: the first batch's fill is paid once."""
    rng = np.random.default_rng(7)
    assert speedup_bound((0.64, 0.04, 0.30, 46.6, 0.52)) == pytest.approx(48.1 / 46.6)
    assert speedup_bound((1, 1, 1, 1, 1)) == 2.5 and speedup_bound((0, 0, 0, 0, 0)) == 1.0  # t2 + t3 share one resource
    for _ in range(50):
        tau = tuple(rng.uniform(0.01, 1.0, 5))
        k = min_staleness(tau).k or 8  # not training-bound: no k helps, any large one will do
        n = 2000
        gained = n * sum(tau) / simulate(tau, k, n).end.max()
        assert gained <= speedup_bound(tau) * (1 + 1e-9)
        assert gained == pytest.approx(speedup_bound(tau), rel=5 / n * speedup_bound(tau))
