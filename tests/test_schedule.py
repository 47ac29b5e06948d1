"""The i x j x k schedule: hand-worked tables (T = 8) and invariants over many (T, i, j, k)."""

from __future__ import annotations

import itertools

import pytest

from disttgl.parallel.schedule import Layout, choose_parallelism, passes, schedule, step


def row(steps, n=None):
    """'0w 0 0 0 4w ...' like the issue's tables; '.' is idle."""
    out = []
    for s in steps[:n]:
        out.append("." if s is None else f"{s.batch}{'w' if s.writes else ''}")
    return " ".join(out)


def test_j4_table():
    s = schedule(8, 1, 4, 1, epochs=4)
    assert len(s) == 4 and len(s[0]) == 8
    assert row(s[0]) == "0w 0 0 0 4w 4 4 4"
    assert row(s[1]) == ". 1w 1 1 1 5w 5 5"
    assert row(s[2]) == ". . 2w 2 2 2 6w 6"
    assert row(s[3]) == ". . . 3w 3 3 3 7w"


def test_j2_k2_table():
    s = schedule(8, 1, 2, 2, epochs=4)  # one pass of 8 iterations
    writes = [[x.batch for x in r if x is not None and x.writes] for r in s]
    assert writes == [[0, 2, 4, 6], [1, 3, 5, 7], [4, 6, 0, 2], [5, 7, 1, 3]]
    assert row(s[2]) == "4w 4 6w 6 0w 0 2w 2"
    resets = [(rank, t) for rank, r in enumerate(s) for t, x in enumerate(r) if x is not None and x.reset]
    assert resets == [(0, 0), (2, 4)]  # copy 0 at its start, copy 1 at its wrap to batch 0


def test_i2_j2_table():
    s = schedule(8, 2, 2, 1, epochs=2)
    subs = [[None if x is None else x.sub for x in r] for r in s]
    assert subs[0][:4] == [0, 0, 4, 4] and subs[1][:4] == [1, 1, 5, 5]
    assert subs[2][:4] == [None, 2, 2, 6] and subs[3][:4] == [None, 3, 3, 7]
    assert [x.writes for x in s[0][:4]] == [True, False, True, False]


def test_repeats_use_different_negative_sets():
    s = schedule(8, 1, 4, 1, epochs=4, num_sets=32, seed=3)
    hold = [x.neg_set for x in s[1][1:5]]
    assert len(set(hold)) == 4
    assert schedule(8, 1, 4, 1, epochs=4, num_sets=32, seed=3) == s  # pure
    assert schedule(8, 1, 4, 1, epochs=4, num_sets=32, seed=4) != s


def test_epochs_and_layout():
    assert passes(10, 2, 2) == 3 and passes(10, 1, 1) == 10 and passes(1, 4, 2) == 1
    lay = Layout.parse("2x3x2")
    assert lay.world == 12 and str(lay) == "2x3x2"
    assert [lay.copy(r) for r in (0, 5, 6, 11)] == [0, 0, 1, 1]
    assert [lay.slot(r) for r in (0, 1, 2, 5, 6)] == [0, 0, 1, 2, 0]
    assert lay.ranks_of(1, 2) == [10, 11]
    assert Layout.parse("4") == Layout(4, 1, 1)
    for bad in ("2x0x1", "axb", "1x1x1x1", ""):
        with pytest.raises(ValueError):
            Layout.parse(bad)


@pytest.mark.parametrize("T,i,j,k", [(T, i, j, k) for T, i, j, k in itertools.product(
    (1, 2, 5, 8, 13), (1, 2, 3), (1, 2, 3, 4), (1, 2, 3))])
def test_invariants(T, i, j, k):
    epochs = 2 * j * k
    nb = T * i - (1 if i > 1 else 0)  # a short last memory batch when i > 1
    s = schedule(T, i, j, k, epochs, num_batches=nb, num_sets=5, seed=1)
    lay = Layout(i, j, k)
    n = passes(epochs, j, k) * T
    assert all(len(r) == n for r in s)
    for g in range(k):
        ranks = range(g * i * j, (g + 1) * i * j)
        # per stream step u: the iteration it is read/written, the memory batch, which sub-batches
        reads: dict[int, set] = {}
        batch_of: dict[int, int] = {}
        for rank in ranks:
            for t, x in enumerate(s[rank]):
                if x is None or not x.writes:
                    continue
                assert t == x.stream  # read at iteration u, written at its end
                reads.setdefault(x.stream, set()).add((x.sub, rank))
                assert batch_of.setdefault(x.stream, x.batch) == x.batch
                assert x.sub // i == x.batch and x.sub < nb
        # every memory batch exactly once per pass, in timeline order from the copy's phase
        order = [batch_of[u] for u in sorted(batch_of)]
        assert sorted(batch_of) == list(range(n))
        start = g * T // k
        assert order == [(start + u) % T for u in range(n)]
        for p in range(n // T):
            assert sorted(order[p * T:(p + 1) * T]) == list(range(T))
        # writes of one memory batch never collide: distinct sub-batches, all of the memory batch
        for u, subs in reads.items():
            b = batch_of[u]
            want = {b * i + m for m in range(i) if b * i + m < nb}
            assert {sb for sb, _ in subs} == want and len(subs) == len(want)
        # each read comes after the previous batch's write: one stream step per iteration, in order
        assert all(batch_of[u] == (batch_of[u - 1] + 1) % T for u in range(1, n))
        # resets exactly at the wraps to batch 0
        resets = sorted({x.stream for rank in ranks for x in s[rank] if x is not None and x.reset})
        assert resets == sorted({u for u in range(n) if batch_of[u] == 0})
        # holds: j iterations of the same sub-batch, distinct negative sets, repeats never write
        for rank in ranks:
            for t, x in enumerate(s[rank]):
                if x is not None and x.repeat:
                    prev = s[rank][t - 1]
                    assert prev is not None and (prev.stream, prev.sub) == (x.stream, x.sub)
                    assert prev.repeat == x.repeat - 1
                    if j <= 5:
                        firsts = [s[rank][x.stream + q].neg_set for q in range(x.repeat + 1)]
                        assert len(set(firsts)) == len(firsts)
        # warm-up: slot r idles exactly during iterations 0..r-1
        for rank in ranks:
            r = lay.slot(rank)
            assert all(x is None for x in s[rank][:r])


def test_step_rejects_bad_rank():
    with pytest.raises(ValueError):
        step(8, Layout(1, 1, 1), 1, 0)


def test_choose_parallelism():
    lay, why = choose_parallelism(1, 2, 10)
    assert lay == Layout(1, 2, 1) and "j = 2" in why
    lay, _ = choose_parallelism(2, 8, 4)  # j·k <= 4 -> j = 2, i = 4
    assert lay == Layout(4, 2, 2)
    lay, _ = choose_parallelism(4, 4, 1)  # one epoch: no epoch parallelism
    assert lay == Layout(4, 1, 4)
    lay, why = choose_parallelism(1, 4, 10, cache_i=2)
    assert lay == Layout(2, 2, 1) and "cache" in why
    with pytest.raises(ValueError):
        choose_parallelism(1, 3, 10, cache_i=2)
