"""Snapshot models against literal dense references (dense Â, M built entry by entry, explicit
loops over t, the LSTM cell written out), and the stage split a distributed step will use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disttgl.snapshot.adjacency import DeviceAdjacency, m_matrix, normalized_adjacency
from disttgl.snapshot.build import SnapshotParams, build_snapshots
from disttgl.snapshot.features import NodeFeatures, one_hot_degrees, resolve_mode
from disttgl.snapshot.models import GCNLSTM, TMGCN, LinkPredictor, ModelConfig, SnapshotLinkModel

N = 9


def raw_adjacencies(seed=0, n=N, e=200, life=3, symmetric=False):
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    t = np.sort(rng.integers(0, 100, e)).astype(np.float64)
    snaps = build_snapshots(src, dst, t, np.zeros(e, np.int8), n,
                            SnapshotParams(num_snapshots=8, edge_life=life, symmetric=symmetric))
    out = []
    for s in range(snaps.num_snapshots):
        r, c, v = (torch.from_numpy(a.astype(np.int64)) for a in snaps.adjacency.part(s))
        out.append(DeviceAdjacency(s, r, c, v))
    return out


def dense_normalized(adj, n):
    a = np.zeros((n, n))
    for r, c, v in zip(adj.row.tolist(), adj.col.tolist(), adj.count.tolist()):
        a[r, c] += v
    a += np.eye(n)
    d = a.sum(1)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = a[i, j] / np.sqrt(d[i]) / np.sqrt(d[j])
    return torch.tensor(out)


def literal_m(t_len, window, choice, rownorm):
    m = np.zeros((t_len, t_len))
    for t in range(t_len):
        for d in range(1, window + 1):
            if t - d + 1 >= 0:
                m[t, t - d + 1] = 1.0 if choice == 1 else 1.0 / d
        if rownorm:
            m[t] /= np.abs(m[t]).sum()
    return torch.tensor(m)


def lstm_reference(h, lstm):
    """torch's LSTM written out: gates (i, f, g, o), zero initial state, loop over t."""
    w_ih, w_hh, b_ih, b_hh = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
    n, d = h.shape[1], w_hh.shape[1]
    hx, cx = torch.zeros(n, d, dtype=h.dtype), torch.zeros(n, d, dtype=h.dtype)
    out = []
    for t in range(h.shape[0]):
        gates = h[t] @ w_ih.T + b_ih + hx @ w_hh.T + b_hh
        i, f, g, o = gates.chunk(4, 1)
        cx = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
        hx = torch.sigmoid(o) * torch.tanh(cx)
        out.append(hx)
    return torch.stack(out)


def test_normalisation_matches_dense():
    for adj in raw_adjacencies(1)[:4] + raw_adjacencies(2, symmetric=True)[:2]:
        got = normalized_adjacency(adj, N, torch.float64).to_dense()
        assert torch.allclose(got, dense_normalized(adj, N), atol=1e-14)
    empty = DeviceAdjacency(0, *(torch.zeros(0, dtype=torch.long) for _ in range(3)))
    assert torch.equal(normalized_adjacency(empty, 3, torch.float64).to_dense(), torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("window, choice, rownorm", [(20, 2, False), (3, 1, False), (3, 2, True), (1, 2, False)])
def test_m_matrix_is_banded_lower_triangular(window, choice, rownorm):
    assert torch.equal(m_matrix(7, window, choice, rownorm), literal_m(7, window, choice, rownorm))


def _features(adjs, seed=0, f=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, f, generator=g, dtype=torch.float64) for _ in adjs]


def test_gcn_lstm_matches_the_dense_reference_and_its_gradients():
    torch.manual_seed(0)
    raws = raw_adjacencies(3)
    xs = _features(raws)
    model = GCNLSTM(5, 4).double()
    adjs = [normalized_adjacency(r, N, torch.float64) for r in raws]
    z = model(adjs, xs)
    dense = [dense_normalized(r, N) for r in raws]
    h = torch.stack([torch.relu(a @ x @ model.weight.weight.T) for a, x in zip(dense, xs)])
    ref = lstm_reference(h, model.lstm)
    assert torch.allclose(z, ref, atol=1e-12)
    probe = torch.randn_like(z)
    grads = torch.autograd.grad((z * probe).sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad((ref * probe).sum(), list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-12)


@pytest.mark.parametrize("window, choice, rownorm, inverse", [
    (20, 2, False, False), (3, 2, False, True), (2, 1, True, False), (4, 1, False, True), (1, 2, False, False)])
def test_tmgcn_matches_the_dense_reference(window, choice, rownorm, inverse):
    torch.manual_seed(1)
    raws = raw_adjacencies(4)
    xs = _features(raws, seed=1)
    model = TMGCN(5, 3, window, choice, rownorm, inverse).double()
    y = model([normalized_adjacency(r, N, torch.float64) for r in raws], xs)
    dense = [dense_normalized(r, N) for r in raws]
    m = literal_m(len(raws), window, choice, rownorm)
    w = model.weight.weight
    ref = []
    for t in range(len(raws)):
        c_hat = sum(m[t, k] * dense[k] for k in range(len(raws)))
        x_hat = sum(m[t, k] * xs[k] for k in range(len(raws)))
        ref.append(c_hat @ x_hat @ w.T)
    ref = torch.stack(ref)
    if inverse:
        minv = torch.linalg.inv(m)
        ref = torch.stack([sum(minv[t, k] * ref[k] for k in range(len(raws))) for t in range(len(raws))])
    assert torch.allclose(y, ref, atol=1e-11)
    probe = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * probe).sum(), [w])
    (r,) = torch.autograd.grad((ref * probe).sum(), [w])
    assert torch.allclose(g, r, atol=1e-11)


@pytest.mark.parametrize("model", [GCNLSTM(5, 4), TMGCN(5, 4, window=3, inverse=True)])
def test_stages_split_by_snapshot_and_by_vertex(model):
    """A block of snapshots (with its halo of history) and a block of vertices give the whole
    model's values: what a snapshot-partitioned then vertex-partitioned step relies on."""
    model = model.double()
    raws = raw_adjacencies(5)
    adjs, xs = [normalized_adjacency(r, N, torch.float64) for r in raws], _features(raws, seed=2)
    full_h = model.snapshot_stage(adjs, xs)
    blocks = []
    for a, b in [(0, 3), (3, 5), (5, 8)]:
        lo = max(0, a - model.halo)
        blocks.append(model.snapshot_stage(adjs[lo:b], xs[lo:b], first=a - lo, offset=lo))
    assert torch.allclose(torch.cat(blocks), full_h, atol=1e-13)
    full_z = model.temporal_stage(full_h)
    parts = [model.temporal_stage(full_h[:, v]) for v in (slice(0, 4), slice(4, N))]
    assert torch.allclose(torch.cat(parts, 1), full_z, atol=1e-13)
    if model.halo:
        with pytest.raises(ValueError, match="before the given window"):
            model.snapshot_stage(adjs[4:8], xs[4:8], first=0, offset=4)


def test_one_hot_degrees_and_feature_modes():
    raw = raw_adjacencies(6)[3]
    x = one_hot_degrees(raw, N, 2, torch.float64)
    for v in range(N):
        out_deg = sum(1 for r in raw.row.tolist() if r == v)
        in_deg = sum(1 for c in raw.col.tolist() if c == v)
        expect = torch.zeros(6, dtype=torch.float64)
        expect[min(out_deg, 2)] = 1
        expect[3 + min(in_deg, 2)] = 1
        assert torch.equal(x[v], expect)
    assert resolve_mode("auto", True) == "store" and resolve_mode("auto", False) == "degree"
    with pytest.raises(ValueError, match="no node features"):
        resolve_mode("store", False)
    emb = NodeFeatures("embedding", N, dim=4)
    assert emb(raw).shape == (N, 4) and emb(raw).requires_grad
    table = torch.arange(N * 2, dtype=torch.float32).reshape(N, 2)
    assert torch.equal(NodeFeatures("store", N, table=table)(raw), table)


def test_link_model_scores_pairs_and_candidates():
    torch.manual_seed(2)
    feats = NodeFeatures("degree", N, degree_cap=3)
    for cfg in (ModelConfig(model="gcn-lstm", hidden=6), ModelConfig(model="tmgcn", hidden=6, m_window=3)):
        model = SnapshotLinkModel(feats, cfg)
        z = model.embed(raw_adjacencies(7))
        assert z.shape == (8, N, 6)
        src, dst = torch.tensor([0, 3]), torch.tensor([[1, 2, 4], [5, 6, 7]])
        s = model.score(z[2], src, dst)
        for i in range(2):
            for j in range(3):
                one = model.predictor(z[2, src[i]], z[2, dst[i, j]])
                assert torch.allclose(s[i, j], one, atol=1e-6)
        assert torch.allclose(model.score(z[2], src, dst[:, 0]), s[:, 0], atol=1e-6)
    pred = LinkPredictor(2)
    assert pred(torch.zeros(3, 2), torch.zeros(3, 2)).shape == (3,)
