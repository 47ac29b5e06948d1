"""Model pieces on hand-built batches: shapes, gradients, attention, memory writes, losses."""

from __future__ import annotations

import pytest
import torch

from disttgl.cache.batch import Batch
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN, Features, ModelConfig, TimeEncode, link_loss

N, E = 12, 40


def make_batch(src, dst, neg, t, nbrs, *, write_mask=None, seed=0):
    """A Batch from python lists; ``nbrs[r]`` = list of (node, eid, dt) for root r of [src|dst|neg]."""
    g = torch.Generator().manual_seed(seed)
    src, dst, neg = torch.tensor(src), torch.tensor(dst), torch.tensor(neg).view(len(src), -1)
    roots = torch.cat([src, dst, neg.reshape(-1)])
    nbr_root = torch.tensor([r for r, lst in enumerate(nbrs) for _ in lst], dtype=torch.long)
    nbr_node = torch.tensor([n for lst in nbrs for n, _, _ in lst], dtype=torch.long)
    nodes, inv = torch.unique(torch.cat([roots, nbr_node]), return_inverse=True)
    u, b = len(nodes), len(src)
    if write_mask is None:
        write_mask = torch.ones(2 * b, dtype=torch.bool)
    return Batch(eid=torch.arange(b), t=torch.tensor(t, dtype=torch.float64), src=src, dst=dst, neg=neg,
                 nodes=nodes, root_idx=inv[:len(roots)], nbr_root=nbr_root, nbr_idx=inv[len(roots):],
                 nbr_eid=torch.tensor([e for lst in nbrs for _, e, _ in lst], dtype=torch.long),
                 nbr_dt=torch.tensor([d for lst in nbrs for _, _, d in lst], dtype=torch.float32),
                 mem_t=torch.rand(u, generator=g, dtype=torch.float64),
                 mail_t=1 + torch.rand(u, generator=g, dtype=torch.float64),
                 mail_eid=torch.randint(0, E + 1, (u,), generator=g), write_mask=torch.as_tensor(write_mask))


def small_batch(**kw):
    # 2 events (0->5, 1->6), one negative each (7, 8); root 3 (dst 6) and root 5 (neg 8) have no neighbour
    nbrs = [[(2, 3, 1.0), (3, 4, 2.5)], [(4, 5, 0.5)], [(0, 1, 3.0), (9, 2, 1.0), (10, 6, 7.0)], [],
            [(11, 7, 2.0)], []]
    return make_batch([0, 1], [5, 6], [7, 8], [10.0, 11.0], nbrs, **kw)


def features(edge_dim=4, static_dim=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ef = torch.randn(E + 1, edge_dim, generator=g)
    ef[E] = 0
    return Features(edge_feat=ef, static=torch.randn(N, static_dim, generator=g) if static_dim else None)


def model(edge_dim=4, static_dim=0, memory="gru", dropout=0.0, dim=8):
    torch.manual_seed(0)
    return TGN(ModelConfig(dim=dim, time_dim=6, heads=2, dropout=dropout, edge_dim=edge_dim,
                           static_dim=static_dim, memory=memory, num_nodes=N))


def test_time_encoding_init_and_shape():
    enc = TimeEncode(10)
    assert torch.allclose(enc.w, torch.tensor(10.0) ** -torch.linspace(0, 9, 10))
    assert torch.equal(enc.b, torch.zeros(10))
    out = enc(torch.tensor([0.0, 1.0, 100.0]))
    assert out.shape == (3, 10) and torch.allclose(out[0], torch.ones(10))


@pytest.mark.parametrize("edge_dim,static_dim", [(4, 0), (0, 0), (4, 8), (4, 5)])
def test_shapes_and_every_parameter_gets_a_gradient(edge_dim, static_dim):
    m, batch, feats = model(edge_dim, static_dim), small_batch(), features(edge_dim, static_dim)
    mem = NodeMemory.zeros(N, 8)
    mem.memory.normal_()
    mem.mail.normal_()
    pos, neg, new_mem = m(batch, feats, *mem.gather(batch))
    assert pos.shape == (2,) and neg.shape == (2, 1) and new_mem.shape == (len(batch.nodes), 8)
    link_loss(pos, neg, "bce").backward()  # (softmax CE leaves the output bias without gradient)
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_table_variant_learns_its_table():
    m, batch = model(memory="table"), small_batch()
    pos, neg, new_mem = m(batch, features())
    assert new_mem is None
    link_loss(pos, neg, "bce").backward()
    grad_rows = m.table.weight.grad.abs().sum(1).nonzero().squeeze(1)
    assert set(grad_rows.tolist()) == set(batch.nodes.tolist())


def test_root_without_neighbours_aggregates_zeros():
    m = model().eval()
    batch, feats = small_batch(), features()
    h = torch.randn(len(batch.nodes), 8)
    attn = m.attn
    z = attn(h, batch.root_idx, batch.nbr_root, batch.nbr_idx, feats.edge_feat[batch.nbr_eid], batch.nbr_dt)
    d = attn.dim
    own = (h @ attn.node.weight.T + attn.node.bias)[:, 3 * d:]
    for r in (3, 5):  # no neighbours: LayerNorm(ReLU(W_h h_v)) with zero aggregate
        expected = attn.norm(torch.relu(own[batch.root_idx[r]]))
        assert torch.allclose(z[r], expected, atol=1e-6)
    # and its output does not move when other roots' neighbours change
    z2 = attn(h, batch.root_idx, batch.nbr_root, batch.nbr_idx, feats.edge_feat[batch.nbr_eid] * 3,
              batch.nbr_dt * 2)
    assert torch.allclose(z[[3, 5]], z2[[3, 5]]) and not torch.allclose(z[0], z2[0])


def test_attention_matches_per_root_reference():
    """Scatter implementation vs a per-root loop over concatenated inputs."""
    m = model().eval()
    batch, feats = small_batch(), features()
    a = m.attn
    h = torch.randn(len(batch.nodes), 8)
    ef = feats.edge_feat[batch.nbr_eid]
    z = a(h, batch.root_idx, batch.nbr_root, batch.nbr_idx, ef, batch.nbr_dt)
    d, nh = a.dim, a.heads
    w = a.node.weight
    for r in range(len(batch.root_idx)):
        hv = h[batch.root_idx[r]]
        q = w[:d] @ hv + a.node.bias[:d] + a.q_time(a.time(torch.zeros(1)))[0]
        sel = (batch.nbr_root == r).nonzero().squeeze(1)
        agg = torch.zeros(d)
        if len(sel):
            hu = h[batch.nbr_idx[sel]]
            kv = hu @ w[d:3 * d].T + a.node.bias[d:3 * d] + a.kv_time(a.time(batch.nbr_dt[sel])) + a.kv_edge(ef[sel])
            k, v = kv[:, :d].view(-1, nh, d // nh), kv[:, d:].view(-1, nh, d // nh)
            att = torch.softmax(torch.nn.functional.leaky_relu((k * q.view(nh, d // nh)).sum(2), 0.2), 0)
            agg = (att.unsqueeze(2) * v).sum(0).reshape(d)
        out = a.out(agg) + w[3 * d:] @ hv + a.node.bias[3 * d:]
        assert torch.allclose(z[r], a.norm(torch.relu(out)), atol=1e-5), r


def test_memory_written_only_for_masked_roots_with_partner_mail():
    batch = small_batch(write_mask=[True, False, False, True])  # write src 0 (event 0) and dst 6 (event 1)
    mem = NodeMemory.zeros(N, 8)
    new = torch.randn(len(batch.nodes), 8, requires_grad=True)
    mem.write(batch, new)
    idx = {int(n): i for i, n in enumerate(batch.nodes)}
    written = mem.memory.abs().sum(1).nonzero().squeeze(1).tolist()
    assert sorted(written) == [0, 6]
    assert torch.equal(mem.memory[0], new[idx[0]].detach())
    assert torch.equal(mem.mail[0], torch.cat([new[idx[0]], new[idx[5]]]).detach())  # partner of 0 is 5
    assert torch.equal(mem.mail[6], torch.cat([new[idx[6]], new[idx[1]]]).detach())  # partner of 6 is 1
    assert not mem.memory.requires_grad and mem.mail.abs().sum(1).nonzero().squeeze(1).tolist() == [0, 6]


def test_gru_input_uses_mail_edge_feature_and_time_gap():
    m, batch, feats = model(), small_batch(), features()
    mem = NodeMemory.zeros(N, 8)
    _, _, a = m(batch, feats, *mem.gather(batch))
    feats.edge_feat[batch.mail_eid[0]] += 1.0 if batch.mail_eid[0] < E else 0.0
    batch.mail_t[1] += 5.0
    _, _, b = m(batch, feats, *mem.gather(batch))
    changed = (a - b).abs().sum(1) > 0
    assert changed[1] and (changed[0] == bool(batch.mail_eid[0] < E))


def test_losses():
    pos, neg = torch.tensor([5.0, -5.0]), torch.tensor([[-5.0, -5.0], [5.0, 5.0]])
    ce = link_loss(pos, neg, "ce")
    expected = -torch.log_softmax(torch.tensor([[5.0, -5, -5], [-5.0, 5, 5]]), 1)[:, 0].mean()
    assert torch.allclose(ce, expected)
    bce = link_loss(pos, neg, "bce")
    sp = torch.nn.functional.softplus
    assert torch.allclose(bce, sp(-pos).mean() + sp(neg).mean())
    with pytest.raises(ValueError):
        link_loss(pos, neg, "hinge")


def test_static_memory_is_added_frozen():
    m, batch = model(static_dim=8), small_batch()
    assert isinstance(m.static_proj, torch.nn.Identity)  # same dims: added as is
    f1, f2 = features(static_dim=8), features(static_dim=8, seed=1)
    mem = NodeMemory.zeros(N, 8)
    m.eval()
    p1, _, _ = m(batch, f1, *mem.gather(batch))
    p2, _, _ = m(batch, f2, *mem.gather(batch))
    assert not torch.allclose(p1, p2)
    with pytest.raises(ValueError):
        m(batch, features(static_dim=0), *mem.gather(batch))
    # frozen: training steps (train mode, static dropout on, the table added as is and through a
    # projection) leave the table bitwise as it was, give it no gradient, and no parameter is it
    for static_dim in (8, 5):
        torch.manual_seed(0)
        m = TGN(ModelConfig(dim=8, time_dim=6, heads=2, dropout=0.0, edge_dim=4, static_dim=static_dim,
                            static_dropout=0.5, num_nodes=N)).train()
        feats = features(static_dim=static_dim)
        table = feats.static
        before = table.clone()
        params = list(m.parameters())
        assert all(p.untyped_storage().data_ptr() != table.untyped_storage().data_ptr() for p in params)
        start = [p.detach().clone() for p in params]
        opt = torch.optim.SGD(params, lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            pos, neg, _ = m(batch, feats, *mem.gather(batch))
            link_loss(pos, neg, "bce").backward()
            opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(start, params))  # the steps did train the model
        assert feats.static is table and table.grad is None and not table.requires_grad, static_dim
        assert torch.equal(table.view(torch.int32), before.view(torch.int32)), static_dim
        assert all(p.untyped_storage().data_ptr() != table.untyped_storage().data_ptr() for p in m.parameters())


def test_static_dropout_leaves_out_whole_rows_in_training_only():
    torch.manual_seed(0)
    m = TGN(ModelConfig(dim=8, time_dim=6, heads=2, dropout=0.0, edge_dim=4, static_dim=8, static_dropout=0.3))
    batch, feats = small_batch(), features(static_dim=8)
    full = feats.static[batch.nodes]
    m.eval()
    assert torch.equal(m._static_rows(batch.nodes, feats.static), full)
    m.train()
    kept = []
    for _ in range(400):
        rows = m._static_rows(batch.nodes, feats.static)
        zero = (rows == 0).all(1)
        assert torch.equal(rows[~zero], full[~zero])  # a row is kept whole (no rescaling) or left out
        kept.append((~zero).float().mean())
    assert abs(float(torch.stack(kept).mean()) - 0.7) < 0.03
    # without static dropout, training sees the whole table
    m0 = model(static_dim=8).train()
    assert torch.equal(m0._static_rows(batch.nodes, feats.static), full)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m, batch, feats = model().eval(), small_batch(), features()
    mem = NodeMemory.zeros(N, 8)
    cpu = m(batch, feats, *mem.gather(batch))[0]
    mc = m.cuda()
    fc = Features(edge_feat=feats.edge_feat.cuda())
    gpu = mc(batch.to("cuda"), fc, *NodeMemory.zeros(N, 8, "cuda").gather(batch.to("cuda")))[0]
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


def test_attention_gradients_match_finite_differences():
    """The attention's hand-written backward passes (disttgl.models.kernels) against numerical gradients."""
    m = model().double().eval()
    batch, feats = small_batch(), features()
    a = m.attn
    names = [n for n, _ in a.named_parameters()]
    h = torch.randn(len(batch.nodes), 8, dtype=torch.float64, requires_grad=True)
    ef = feats.edge_feat[batch.nbr_eid].double()

    def attend(h, *params):
        return torch.func.functional_call(a, dict(zip(names, params)),
                                          (h, batch.root_idx, batch.nbr_root, batch.nbr_idx, ef, batch.nbr_dt.double()))

    params = [p.detach().clone().requires_grad_(True) for p in a.parameters()]
    assert torch.autograd.gradcheck(attend, (h, *params), atol=1e-6)


def test_attention_without_gradients_in_root_chunks_is_exact(monkeypatch):
    m = model().eval()
    batch, feats = small_batch(), features()
    h = torch.randn(len(batch.nodes), 8)
    args = (h, batch.root_idx, batch.nbr_root, batch.nbr_idx, feats.edge_feat[batch.nbr_eid], batch.nbr_dt)
    with torch.no_grad():
        whole = m.attn(*args)
        monkeypatch.setattr(m.attn, "eval_chunk", 4)  # 6 roots: chunks [0, 4) and [4, 6)
        chunked = m.attn(*args)
    assert torch.allclose(whole, chunked, atol=1e-6)
