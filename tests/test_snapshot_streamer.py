"""Graph-difference transfer: both modes stream the same adjacency (hence the same loss and
gradients), the byte counter counts what was copied, and whole / diff tends to L / 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disttgl.snapshot.build import SnapshotParams, build_snapshots
from disttgl.snapshot.features import NodeFeatures
from disttgl.snapshot.models import ModelConfig, SnapshotLinkModel
from disttgl.snapshot.streamer import SnapshotStreamer, apply_difference
from disttgl.snapshot.task import draw_negatives, split_targets, train_step


def random_snapshots(seed, n=25, e=1500, life=4, symmetric=False, num=40):
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    t = np.sort(rng.integers(0, 10_000, e)).astype(np.float64)
    split = np.zeros(e, np.int8)
    split[int(0.7 * e):] = 1
    split[int(0.85 * e):] = 2
    return build_snapshots(src, dst, t, split, n, SnapshotParams(num_snapshots=num, edge_life=life,
                                                                  symmetric=symmetric))


@pytest.mark.parametrize("life", [1, 3, 10])
@pytest.mark.parametrize("symmetric", [False, True])
def test_both_modes_stream_the_stored_adjacency(life, symmetric):
    snaps = random_snapshots(life, life=life, symmetric=symmetric)
    whole = list(SnapshotStreamer(snaps, "cpu", "whole").stream())
    diff = list(SnapshotStreamer(snaps, "cpu", "diff").stream())
    assert len(whole) == len(diff) == snaps.num_snapshots
    for s, (a, b) in enumerate(zip(whole, diff)):
        assert a.equal(b) and a.index == s
        row, col, count = snaps.adjacency.part(s)
        assert a.row.tolist() == row.tolist() and a.col.tolist() == col.tolist() and a.count.tolist() == count.tolist()
        assert a.row.dtype == b.row.dtype == torch.int64


def test_a_stream_can_start_anywhere():
    snaps = random_snapshots(1)
    full = list(SnapshotStreamer(snaps, "cpu", "diff").stream())
    part = list(SnapshotStreamer(snaps, "cpu", "diff").stream(17, 30))
    assert [p.index for p in part] == list(range(17, 30))
    assert all(p.equal(full[p.index]) for p in part)
    with pytest.raises(ValueError):
        next(SnapshotStreamer(snaps, "cpu").stream(5, 99))


def test_the_byte_counter_counts_the_entries_copied():
    snaps = random_snapshots(2, life=5)
    per_entry = sum(a.itemsize for a in (snaps.adjacency.row, snaps.adjacency.col, snaps.adjacency.value))
    assert per_entry == 12  # int32 ids and counts
    nnz = [len(snaps.adjacency.part(s)[0]) for s in range(snaps.num_snapshots)]
    changes = [len(snaps.diff.part(s)[0]) for s in range(snaps.num_snapshots)]
    whole, diff = SnapshotStreamer(snaps, "cpu", "whole"), SnapshotStreamer(snaps, "cpu", "diff")
    for stream in (whole, diff):
        for _ in stream.stream():
            pass
    assert whole.bytes_copied == 12 * sum(nnz) and whole.entries_copied == sum(nnz)
    assert diff.bytes_copied == 12 * (nnz[0] + sum(changes[1:]))
    # snapshot 0 whole: its difference against the empty graph has the same entries
    assert nnz[0] == changes[0]


def test_apply_difference_drops_pairs_that_reach_zero():
    key, count = apply_difference(torch.tensor([1, 5, 9]), torch.tensor([2, 1, 3]),
                                  torch.tensor([0, 5, 9]), torch.tensor([4, -1, 2]))
    assert key.tolist() == [0, 1, 9] and count.tolist() == [4, 2, 5]
    key, count = apply_difference(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                  torch.tensor([3, 4]), torch.tensor([1, 2]))
    assert key.tolist() == [3, 4] and count.tolist() == [1, 2]
    rng = np.random.default_rng(0)
    for _ in range(50):  # against a dict
        old = dict(zip(rng.choice(60, 20, replace=False).tolist(), rng.integers(1, 4, 20).tolist()))
        change = dict(zip(rng.choice(60, 15, replace=False).tolist(), rng.integers(-3, 4, 15).tolist()))
        change = {k: (v or 1) if k not in old else (v or -old[k]) for k, v in change.items()}
        expect = {k: old.get(k, 0) + change.get(k, 0) for k in set(old) | set(change)}
        expect = {k: v for k, v in expect.items() if v}
        if any(v < 0 for v in expect.values()):
            continue
        ks, kd = sorted(old), sorted(change)
        key, count = apply_difference(torch.tensor(ks, dtype=torch.long), torch.tensor([old[k] for k in ks]),
                                      torch.tensor(kd, dtype=torch.long), torch.tensor([change[k] for k in kd]))
        assert dict(zip(key.tolist(), count.tolist())) == expect and key.tolist() == sorted(expect)


def _model(snaps, cfg, seed=0):
    torch.manual_seed(seed)
    return SnapshotLinkModel(NodeFeatures("degree", snaps.num_nodes, degree_cap=4), cfg)


@pytest.mark.parametrize("cfg", [ModelConfig(model="gcn-lstm", hidden=8),
                                 ModelConfig(model="tmgcn", hidden=8, m_window=5, m_inverse=True)])
def test_identical_loss_and_gradients_in_both_modes(cfg):
    snaps = random_snapshots(3, life=6, symmetric=True)
    targets = split_targets(snaps, 0)
    negatives = draw_negatives(np.random.default_rng(0), targets, 1, snaps.num_nodes, None)
    results = []
    for mode in ("whole", "diff"):
        model = _model(snaps, cfg)
        raws = list(SnapshotStreamer(snaps, "cpu", mode).stream(0, targets.last))
        loss = train_step(model, raws, targets, negatives)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l2, g2) = results
    assert torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert any(g.abs().sum() > 0 for g in g1)


def _ratio(snaps):
    whole, diff = SnapshotStreamer(snaps, "cpu", "whole"), SnapshotStreamer(snaps, "cpu", "diff")
    for stream in (whole, diff):
        for _ in stream.stream():
            pass
    return whole.bytes_copied / diff.bytes_copied


@pytest.mark.parametrize("life", [2, 5, 10])
def test_ratio_on_a_stream_of_distinct_pairs_is_exact(life):
    """k distinct pairs per snapshot, T snapshots: a pair is in min(L, T - s) snapshots and
    changes twice (once if its end is past T), so whole / diff = (L/2)(2T - L + 1) / (2T - L)."""
    num, k, n = 200, 30, 1000
    pair = np.arange(num * k)
    snaps = build_snapshots(pair // n, pair % n, np.repeat(np.arange(num, dtype=np.float64), k),
                            np.zeros(num * k, np.int8), n, SnapshotParams(delta=1.0, edge_life=life))
    assert _ratio(snaps) == pytest.approx(life / 2 * (2 * num - life + 1) / (2 * num - life), rel=1e-12)


@pytest.mark.parametrize("life", [4, 10, 20])
def test_ratio_approaches_half_the_edge_life_on_a_random_stream(life):
    """Random pairs over N = 3000 nodes, 100 events per snapshot, T = 300. The ratio deviates from
    L/2 by the stream's ends, a factor 1 + 1/(2T - L) (< 0.2 %), and by pairs recurring while
    alive (a changed count instead of an enter and a leave), at most 2L·100/N² ≈ 2e-4 of events:
    a 2 % tolerance covers both with room and still fails for a wrong count (L or L - 1)."""
    rng = np.random.default_rng(life)
    num, k, n = 300, 100, 3000
    e = num * k
    snaps = build_snapshots(rng.integers(0, n, e), rng.integers(0, n, e),
                            np.repeat(np.arange(num, dtype=np.float64), k), np.zeros(e, np.int8), n,
                            SnapshotParams(delta=1.0, edge_life=life))
    assert _ratio(snaps) == pytest.approx(life / 2, rel=0.02)
