"""Memory bookkeeping against a plain event-by-event simulation."""

from __future__ import annotations

import numpy as np
import pytest

from disttgl.cache.memory_clock import ClockState, groups, plan, split_batches, write_masks


def _events(seed: int, e: int = 257, n: int = 15):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, e)
    dst = rng.integers(0, n, e)
    dst[::17] = src[::17]  # self loops
    t = np.sort(rng.integers(1, 80, e)).astype(np.float64)
    split = np.zeros(e, np.int8)
    split[int(e * 0.7):] = 1
    split[int(e * 0.85):] = 2
    return src, dst, t, split, n


def _simulate(src, dst, t, split, batch_size, i, n):
    """Dict-based reference: walk events one by one; a group's writes land when the group ends."""
    mem_t, mail_t, mail_eid = {}, {}, {}
    before = {}  # (split, batch) -> {node: (mem_t, mail_t, mail_eid)} for every node
    for s in range(3):
        ev = [e for e in range(len(src)) if split[e] == s]
        nb = -(-len(ev) // batch_size)
        g = i if s == 0 else 1  # validation and test are never grouped: one protocol for every i
        for g0 in range(0, nb, g):
            snapshot = {v: (mem_t.get(v, 0.0), mail_t.get(v, 0.0), mail_eid.get(v, len(src)))
                        for v in range(n)}
            pending = {}
            for b in range(g0, min(g0 + g, nb)):
                before[(s, b)] = snapshot
                for e in ev[b * batch_size:(b + 1) * batch_size]:
                    pending[int(src[e])] = e  # later occurrences overwrite earlier ones
                    pending[int(dst[e])] = e
            for v, e in pending.items():
                mem_t[v] = mail_t.get(v, 0.0)
                mail_t[v] = float(t[e])
                mail_eid[v] = e
    return before


@pytest.mark.parametrize("i", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 10, 32])
def test_plan_matches_sequential_simulation(i, batch_size):
    src, dst, t, split, n = _events(i * 100 + batch_size)
    want = _simulate(src, dst, t, split, batch_size, i, n)
    seen = 0
    for grp, state in plan(src, dst, t, split, batch_size, i, n):
        assert len(grp) <= (i if grp[0].split == 0 else 1) and len({b.split for b in grp}) == 1
        for pb in grp:
            got = state.lookup(np.arange(n))
            ref = want[(pb.split, pb.index)]
            for v in range(n):
                assert (got[0][v], got[1][v], got[2][v]) == ref[v], (pb.split, pb.index, v)
            seen += 1
    assert seen == len(want)


@pytest.mark.parametrize("i", [1, 2, 3])
def test_masks_last_occurrence_once_per_group(i):
    src, dst, t, split, n = _events(5, e=300)
    batches = split_batches(split, 16)
    for s in range(3):
        for grp in groups(len(batches[s]), i):
            srcs = [src[batches[s][b]] for b in grp]
            dsts = [dst[batches[s][b]] for b in grp]
            masks = write_masks(srcs, dsts)
            inter = np.concatenate([np.stack([a, b], 1).ravel() for a, b in zip(srcs, dsts)])
            minter = np.concatenate([np.stack([m[:len(a)], m[len(a):]], 1).ravel()
                                     for m, a in zip(masks, srcs)])
            written = inter[minter]
            assert len(written) == len(set(written.tolist())) == len(set(inter.tolist()))
            for p in np.flatnonzero(minter):
                assert inter[p] not in inter[p + 1:]


def test_mask_examples():
    # i = 1: node 1 appears as dst of event 0 and src of event 1 -> only the latter writes;
    # a self loop (2, 2) writes at its dst slot.
    m, = write_masks([np.array([0, 1, 2])], [np.array([1, 3, 2])])
    assert m.tolist() == [True, True, False, False, True, True]
    # i = 2: node 0 occurs in both batches -> only the second batch writes it.
    m1, m2 = write_masks([np.array([0]), np.array([5])], [np.array([4]), np.array([0])])
    assert m1.tolist() == [False, True] and m2.tolist() == [True, True]


def test_split_batches_and_groups():
    split = np.array([0] * 5 + [1] * 3 + [2] * 2, np.int8)
    sb = split_batches(split, 2)
    assert [[b.tolist() for b in s] for s in sb] == [[[0, 1], [2, 3], [4]], [[5, 6], [7]], [[8, 9]]]
    assert groups(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    with pytest.raises(ValueError):
        groups(3, 0)
    st = ClockState.initial(3, 10)
    assert st.mail_eid.tolist() == [10, 10, 10] and st.mem_t.tolist() == [0, 0, 0]
