"""MSPipe's staleness mitigation against a literal per-node loop (the reference's rule, written plainly)."""

from __future__ import annotations

from fractions import Fraction
import math

import pytest
import torch

from disttgl.pipeline.mitigation import mitigate, num_stale, root_row_times, stale_rows


def _literal(memory, mem_t, nodes, batch_time, live, live_t, similar, lam, fraction, eligible=None):
    """One stale row at a time, in plain Python."""
    u = len(nodes)
    times = [float(batch_time)] * u if not torch.is_tensor(batch_time) else batch_time.tolist()
    rows = [r for r in range(u) if eligible is None or bool(eligible[r])]
    count = 0 if fraction == 0 or not rows else max(1, math.ceil(Fraction(str(fraction)) * len(rows)))
    rows.sort(key=lambda r: (-(times[r] - float(mem_t[r])), int(nodes[r])))
    out = memory.clone()
    for r in rows[:count]:
        v = int(nodes[r])
        fresh = [int(w) for w in similar[v] if int(w) >= 0 and float(live_t[int(w)]) > float(mem_t[r])]
        if fresh:
            mean = sum(live[w].double() for w in fresh) / len(fresh)
            out[r] = (lam * memory[r].double() + (1 - lam) * mean).to(memory.dtype)
    return out


def _case(seed, n=60, u=25, d=4, k=5):
    g = torch.Generator().manual_seed(seed)
    nodes = torch.randperm(n, generator=g)[:u]
    mem_t = torch.randint(0, 8, (u,), generator=g).double()  # small integers: ties in staleness
    live = torch.randn(n, d, generator=g)
    live_t = torch.randint(0, 10, (n,), generator=g).double()
    similar = torch.randint(0, n, (n, k), generator=g)
    similar[torch.rand(n, k, generator=g) < 0.2] = -1
    memory = torch.randn(u, d, generator=g)
    return memory, mem_t, nodes, live, live_t, similar


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 1.0])
def test_matches_literal_loop(seed, fraction):
    memory, mem_t, nodes, live, live_t, similar = _case(seed)
    g = torch.Generator().manual_seed(100 + seed)
    per_row = 8 + torch.randint(0, 4, (len(nodes),), generator=g).double()
    eligible = torch.rand(len(nodes), generator=g) < 0.7
    for batch_time, mask in ((10.0, None), (per_row, None), (per_row, eligible)):
        got = mitigate(memory, mem_t, nodes, batch_time, live, live_t, similar, lam=0.9, top_fraction=fraction,
                       eligible=mask)
        want = _literal(memory, mem_t, nodes, batch_time, live, live_t, similar, 0.9, fraction, mask)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        changed = (got != memory).any(1)
        assert int(changed.sum()) <= num_stale(len(nodes) if mask is None else int(mask.sum()), fraction)
        if mask is not None:
            assert not changed[~mask].any()
    assert changed.any()  # the case does exercise the mix


def test_order_of_rows_does_not_matter():
    memory, mem_t, nodes, live, live_t, similar = _case(3)
    perm = torch.randperm(len(nodes), generator=torch.Generator().manual_seed(1))
    a = mitigate(memory, mem_t, nodes, 10.0, live, live_t, similar, top_fraction=0.3)
    b = mitigate(memory[perm], mem_t[perm], nodes[perm], 10.0, live, live_t, similar, top_fraction=0.3)
    assert torch.equal(a[perm], b)


def test_hand_worked():
    # nodes 5, 6, 7 read at times 1, 1, 4; batch at 10: staleness 9, 9, 6. top 2/3 -> 2 rows: the tie
    # at 9 keeps both 5 and 6 (7 is fresher). Node 5's similar: 0 (live t 3 > 1), 1 (t 1, not fresher),
    # -1 padding; node 6's: 2 (t 0.5, not fresher) only -> unchanged.
    memory = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    mem_t = torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64)
    nodes = torch.tensor([5, 6, 7])
    live = torch.zeros(8, 2)
    live[0], live[1] = torch.tensor([11.0, -9.0]), torch.tensor([100.0, 100.0])
    live_t = torch.tensor([3.0, 1.0, 0.5, 0, 0, 0, 0, 9.0], dtype=torch.float64)
    similar = torch.full((8, 3), -1)
    similar[5] = torch.tensor([0, 1, -1])
    similar[6] = torch.tensor([2, -1, -1])
    similar[7] = torch.tensor([0, 1, 2])
    out = mitigate(memory, mem_t, nodes, 10.0, live, live_t, similar, lam=0.5, top_fraction=2 / 3)
    assert out.tolist() == [[6.0, -4.0], [2.0, 2.0], [3.0, 3.0]]
    # one stale row only: the tie between 5 and 6 goes to the lower id, 5
    assert stale_rows(10.0 - mem_t, nodes, 1 / 3).tolist() == [0]
    assert stale_rows(10.0 - mem_t, torch.tensor([6, 5, 7]), 1 / 3).tolist() == [1]


def test_lam_one_is_a_bitwise_no_op():
    memory, mem_t, nodes, live, live_t, similar = _case(0)
    out = mitigate(memory, mem_t, nodes, 10.0, live, live_t, similar, lam=1.0, top_fraction=1.0)
    assert torch.equal(out, memory) and out is not memory
    assert torch.equal(mitigate(memory, mem_t, nodes, 10.0, live, live_t, similar, top_fraction=0.0), memory)


def test_no_fresher_neighbour_keeps_memory():
    memory, mem_t, nodes, live, live_t, similar = _case(1)
    stale_live_t = torch.zeros_like(live_t)  # every similar node last updated before any row was read
    out = mitigate(memory, mem_t, nodes, 10.0, live, stale_live_t, similar, top_fraction=1.0)
    assert torch.equal(out, memory)
    only_padding = torch.full_like(similar, -1)
    assert torch.equal(mitigate(memory, mem_t, nodes, 10.0, live, live_t, only_padding, top_fraction=1.0), memory)
    # (a similar node updated at exactly the row's memory time is not fresher: test_hand_worked, node 1)


def test_num_stale():
    assert [num_stale(600, 0.01), num_stale(100, 0.07), num_stale(10, 0.01), num_stale(1, 0.01)] == [6, 7, 1, 1]
    assert [num_stale(0, 0.5), num_stale(5, 0.0), num_stale(3, 1.0), num_stale(601, 0.01)] == [0, 0, 3, 7]
    with pytest.raises(ValueError):
        num_stale(5, 1.5)
    with pytest.raises(ValueError):
        mitigate(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, dtype=torch.long), 0.0, torch.zeros(1, 1),
                 torch.zeros(1), torch.full((1, 1), -1), lam=1.5)


def test_root_row_times():
    # roots -> rows [0, 2, 0, 1]; row 3 is a neighbour only
    t, is_root = root_row_times(torch.tensor([0, 2, 0, 1]), torch.tensor([5.0, 6.0, 7.0, 2.0],
                                                                         dtype=torch.float64), 4)
    assert t.tolist() == [7.0, 2.0, 6.0, -math.inf] and is_root.tolist() == [True, True, True, False]
