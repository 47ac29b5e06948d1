"""JODIE (--memory rnn) and APAN (--memory apan) beside TGN's GRU: every piece against a reference
written out literally (per row, per node, per event), then short runs of the CLI."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from disttgl.cache.batch import Batch
from disttgl.cache.format import BatchParams
from disttgl.cli import main
from disttgl.data.synth import SynthConfig
from disttgl.models.apan import MailAttention
from disttgl.models.jodie import RNNMemory
from disttgl.models.mailbox import MailboxMemory, deliveries
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN, Features, ModelConfig
from disttgl.models.variants import MemoryModel, build_memory, build_model
from stores import synthetic_store

N, E, D, DE, DT = 14, 30, 8, 3, 5


# ------------------------------------------------------------------------------------------ helpers

def make_batch(events, nbrs, negs, *, seed=0):
    """A Batch from python lists: ``events`` [(src, dst, t, eid)], ``negs`` [B][Q] nodes, ``nbrs[r]``
    the neighbour nodes of root r of [src | dst | neg]."""
    g = torch.Generator().manual_seed(seed)
    b = len(events)
    src = torch.tensor([e[0] for e in events])
    dst = torch.tensor([e[1] for e in events])
    neg = torch.tensor(negs).view(b, -1)
    roots = torch.cat([src, dst, neg.reshape(-1)])
    nbr_root = torch.tensor([r for r, lst in enumerate(nbrs) for _ in lst], dtype=torch.long)
    nbr_node = torch.tensor([n for lst in nbrs for n in lst], dtype=torch.long)
    nodes, inv = torch.unique(torch.cat([roots, nbr_node]), return_inverse=True)
    u, m = len(nodes), len(nbr_node)
    # write mask: each positive node's last occurrence in interleaved (src, dst) order
    seq = [n for e in events for n in e[:2]]
    last = {n: i for i, n in enumerate(seq)}
    inter = [last[n] == i for i, n in enumerate(seq)]
    mask = torch.tensor(inter[0::2] + inter[1::2])
    return Batch(eid=torch.tensor([e[3] for e in events]), t=torch.tensor([float(e[2]) for e in events],
                 dtype=torch.float64), src=src, dst=dst, neg=neg, nodes=nodes, root_idx=inv[:len(roots)],
                 nbr_root=nbr_root, nbr_idx=inv[len(roots):], nbr_eid=torch.randint(0, E, (m,), generator=g),
                 nbr_dt=torch.rand(m, generator=g), mem_t=torch.rand(u, generator=g, dtype=torch.float64),
                 mail_t=1 + torch.rand(u, generator=g, dtype=torch.float64) * 5,
                 mail_eid=torch.randint(0, E + 1, (u,), generator=g), write_mask=mask)


def small_batch():
    # events 0->5 (t 10), 1->6 (t 11); negatives 7, 8; root 3 (dst 6) and root 5 (neg 8) have no neighbour
    return make_batch([(0, 5, 10, 3), (1, 6, 11, 4)], [[2, 3], [4], [0, 9, 10], [], [11], []], [[7], [8]])


def feats(seed=0):
    g = torch.Generator().manual_seed(seed)
    ef = torch.randn(E + 1, DE, generator=g)
    ef[E] = 0
    return Features(edge_feat=ef)


def cfg(memory, **kw):
    return ModelConfig(**{**dict(dim=D, time_dim=DT, heads=2, dropout=0.0, edge_dim=DE, memory=memory,
                                 num_nodes=N, mailbox_size=3), **kw})


def seeded_model(memory, **kw):
    torch.manual_seed(0)
    model = build_model(cfg(memory, **kw))
    with torch.no_grad():  # LayerNorm starts at (1, 0): move it so the test sees its weights used
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def vec(x):
    return [float(v) for v in x.detach()]


def phi(time_enc, dt):
    return [math.cos(dt * w + b) for w, b in zip(vec(time_enc.w), vec(time_enc.b))]


def matvec(w, x, bias=None):
    w, bias = w.detach(), None if bias is None else bias.detach()
    return [sum(float(w[i, j]) * x[j] for j in range(len(x))) + (float(bias[i]) if bias is not None else 0.0)
            for i in range(w.shape[0])]


def layer_norm(ln, x):
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return [(v - mean) / math.sqrt(var + ln.eps) * w + b for v, w, b in zip(x, vec(ln.weight), vec(ln.bias))]


def link_score(pred, zs, zd):
    hid = [max(0.0, a + b) for a, b in zip(matvec(pred.src.weight, zs, pred.src.bias),
                                           matvec(pred.dst.weight, zd, pred.dst.bias))]
    return sum(w * h for w, h in zip(vec(pred.out.weight[0]), hid)) + float(pred.out.bias.detach()[0])


# ------------------------------------------------------------------------------------ JODIE (rnn)

def rnn_reference(upd: RNNMemory, memory, mail, mail_feat, dt):
    """tanh(W_ih x + b_ih + W_hh h + b_hh), x = [mail ‖ feat ‖ cos(w dt + b)], row by row."""
    cell = upd.rnn
    out = []
    for i in range(memory.shape[0]):
        x = vec(mail[i]) + vec(mail_feat[i]) + phi(upd.time, float(dt[i]))
        a = matvec(cell.weight_ih, x, cell.bias_ih)
        c = matvec(cell.weight_hh, vec(memory[i]), cell.bias_hh)
        out.append([math.tanh(p + q) for p, q in zip(a, c)])
    return torch.tensor(out)


def test_rnn_updater_matches_a_literal_rnn_cell_per_row():
    torch.manual_seed(1)
    upd = RNNMemory(D, DE, DT)
    memory, mail, feat, dt = torch.randn(5, D), torch.randn(5, 2 * D), torch.randn(5, DE), torch.rand(5) * 3
    torch.testing.assert_close(upd(memory, mail, feat, dt), rnn_reference(upd, memory, mail, feat, dt),
                               atol=1e-5, rtol=1e-5)


def test_jodie_scores_and_new_memory_match_a_per_root_reference():
    model, f, batch = seeded_model("rnn"), feats(), small_batch()
    g = torch.Generator().manual_seed(2)
    mem = NodeMemory(torch.randn(N, D, generator=g), torch.randn(N, 2 * D, generator=g))
    memory, mail = mem.gather(batch)
    pos, neg, new = model(batch, f, memory, mail)
    nodes = batch.nodes
    # every unique node's update, literally; only the roots' are used
    upd = rnn_reference(model.memory, memory, mail, f.edge_feat[batch.mail_eid],
                        (batch.mail_t - batch.mem_t).float())
    roots = sorted(set(batch.root_idx.tolist()))
    for u in range(len(nodes)):
        want = upd[u] if u in roots else memory[u]  # non-roots: their stored memory, untouched
        torch.testing.assert_close(new[u], want, atol=1e-5, rtol=1e-5)
    w, b = model.project.w, model.project.b
    t = batch.root_t.tolist()
    z = []
    for r, u in enumerate(batch.root_idx.tolist()):
        delta = (t[r] - float(batch.mail_t[u])) / (t[r] + 1)  # root time - the memory's time (its mail's)
        ln = layer_norm(model.norm, vec(upd[u]))
        z.append([x * (1 + wi * delta + bi) for x, wi, bi in zip(ln, vec(w), vec(b))])
    nb = batch.num_events
    want_pos = [link_score(model.predict, z[i], z[nb + i]) for i in range(nb)]
    want_neg = [[link_score(model.predict, z[i], z[2 * nb + i])] for i in range(nb)]
    torch.testing.assert_close(pos, torch.tensor(want_pos), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(neg, torch.tensor(want_neg), atol=1e-4, rtol=1e-4)


def test_jodie_time_projection_is_initialised_as_tgl():
    torch.manual_seed(0)
    w = torch.cat([MemoryModel(cfg("rnn", dim=400)).project.w.detach() for _ in range(5)])
    # TGL's NormalLinear(1, d): N(0, 1/sqrt(fan_in = 1)), not zeros
    assert abs(float(w.mean())) < 0.05 and abs(float(w.std()) - 1) < 0.05


# ------------------------------------------------------------------------------------ APAN

def apan_reference(upd: MailAttention, memory, boxes, t_ref):
    """New memory per node; ``boxes[i]`` = list of (mail vector, mail time) of node i's valid mails."""
    d, nh = memory.shape[1], upd.heads
    dh = d // nh
    out = []
    for i in range(memory.shape[0]):
        m = vec(memory[i])
        q = matvec(upd.q.weight, m, upd.q.bias)
        keys, values = [], []
        for mail, t in boxes[i]:
            x = vec(mail) + phi(upd.time, t_ref - t)
            keys.append(matvec(upd.k.weight, x, upd.k.bias))
            values.append(matvec(upd.v.weight, x, upd.v.bias))
        agg = [0.0] * d
        for h in range(nh):
            sl = slice(h * dh, (h + 1) * dh)
            scores = []
            for k in keys:
                s = sum(a * c for a, c in zip(q[sl], k[sl]))
                scores.append(s if s > 0 else 0.2 * s)
            if not scores:
                continue  # no mail: nothing to attend, agg stays 0
            top = max(scores)
            ex = [math.exp(s - top) for s in scores]
            att = [e / sum(ex) for e in ex]
            for j in range(dh):
                agg[h * dh + j] = sum(a * v[sl][j] for a, v in zip(att, values))
        y = matvec(upd.mlp.weight, layer_norm(upd.norm, [a + b for a, b in zip(agg, m)]), upd.mlp.bias)
        out.append([max(0.0, v) for v in y])
    return torch.tensor(out)


def test_apan_updater_matches_a_per_node_loop_and_ignores_empty_slots():
    torch.manual_seed(3)
    upd = MailAttention(D, 2 * D + DE, DT, heads=2, dropout=0.0)
    u, s = 4, 3
    memory, mails, age = torch.randn(u, D), torch.randn(u, s, 2 * D + DE), torch.rand(u, s) * 4
    valid = torch.tensor([[True, True, True], [True, False, True], [False, False, False], [False, True, False]])
    got = upd(memory, mails, age, valid)
    boxes = [[(mails[i, k], -float(age[i, k])) for k in range(s) if valid[i, k]] for i in range(u)]
    torch.testing.assert_close(got, apan_reference(upd, memory, boxes, 0.0), atol=1e-5, rtol=1e-5)
    # whatever an empty slot holds changes nothing, and gets no gradient
    junk = mails.clone().requires_grad_(True)
    with torch.no_grad():
        junk[~valid] = 1e6
    out = upd(memory, junk, age.masked_fill(~valid, 1e9), valid)
    torch.testing.assert_close(out, got, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(junk.grad).all() and float(junk.grad[~valid].abs().sum()) == 0.0


def mailbox_state(mb: MailboxMemory, node: int) -> list[tuple[int, float, list[float]]]:
    """Node's stored mails as (eid, t, [h_own ‖ h_partner]) sorted by eid."""
    k = min(int(mb.count[node]), mb.size)
    return sorted((int(mb.mail_eid[node, s]), float(mb.mail_t[node, s]), vec(mb.mail[node, s])) for s in range(k))


def test_apan_model_embeds_the_layer_norm_of_the_updated_memory():
    model, f, batch = seeded_model("apan"), feats(), small_batch()
    mb = build_memory(model.cfg, f.edge_feat)
    g = torch.Generator().manual_seed(4)
    # a filled state: node memory, and per node 0..3 mails of earlier events (times below 10)
    mb.memory.copy_(torch.randn(N, D, generator=g))
    for n in range(N):
        for j in range(n % 4):
            mb.mail[n, j] = torch.randn(2 * D, generator=g)
            mb.mail_eid[n, j] = (n + 7 * j) % E
            mb.mail_t[n, j] = float(j + n % 3)
        mb.count[n] = n % 4
    memory, mail = mb.gather(batch)
    pos, neg, new = model(batch, f, memory, mail)
    nodes, t_ref = batch.nodes.tolist(), 10.0  # the batch's first event time
    boxes = [[(torch.cat([torch.tensor(h), f.edge_feat[e]]), t) for e, t, h in mailbox_state(mb, n)] for n in nodes]
    upd = apan_reference(model.memory, mb.memory[batch.nodes], boxes, t_ref)
    roots = set(batch.root_idx.tolist())
    for u in range(len(nodes)):
        torch.testing.assert_close(new[u], upd[u] if u in roots else mb.memory[nodes[u]], atol=1e-5, rtol=1e-5)
    z = [layer_norm(model.norm, vec(upd[u])) for u in batch.root_idx.tolist()]
    nb = batch.num_events
    torch.testing.assert_close(pos, torch.tensor([link_score(model.predict, z[i], z[nb + i]) for i in range(nb)]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(neg, torch.tensor([[link_score(model.predict, z[i], z[2 * nb + i])]
                                                  for i in range(nb)]), atol=1e-4, rtol=1e-4)


def random_batches(rng: random.Random, num_batches=4, b=4, num_nodes=N):
    """Batches of random events in time order, with random (repeating) sampled neighbours."""
    out, t, eid = [], 1.0, 0
    for _ in range(num_batches):
        events = []
        for _ in range(b):
            s, d = rng.sample(range(num_nodes), 2)
            events.append((s, d, t, eid))
            t, eid = t + rng.choice([0.0, 1.0, 2.5]), eid + 1
        negs = [[rng.randrange(num_nodes)] for _ in range(b)]
        nbrs = [[rng.randrange(num_nodes) for _ in range(rng.randrange(4))] for _ in range(3 * b)]
        out.append((events, nbrs, negs))
    return out


def test_mailbox_delivery_matches_a_per_event_loop():
    """After each batch, every node's mailbox holds what this literal loop says: per event in order,
    src's mail to src's neighbours, dst's to dst's, then src's to src, dst's to dst, the last one a
    node gets in the batch kept; the S most recent of those per node; memory of masked roots."""
    rng, s = random.Random(0), 2
    f = feats()
    mb = MailboxMemory.zeros(N, D, f.edge_feat, mailbox_size=s)
    ref_boxes = {n: [] for n in range(N)}
    ref_memory = {n: [0.0] * D for n in range(N)}
    g = torch.Generator().manual_seed(5)
    for k, (events, nbrs, negs) in enumerate(random_batches(rng)):
        batch = make_batch(events, nbrs, negs, seed=k)
        nodes, b = batch.nodes.tolist(), len(events)
        new = torch.randn(len(nodes), D, generator=g)  # stands for the model's new memory
        h = {nodes[u]: vec(new[u]) for u in range(len(nodes))}
        # the mailbox as gathered before the batch: root nodes' mails, ages from the first event
        _, packed = mb.gather(batch)
        roots = sorted(set(batch.root_idx.tolist()))
        for row, u in enumerate(roots):
            n = nodes[u]
            got = sorted((round(float(x[-2]), 4), vec(x[:2 * D])) for x in packed[row] if x[-1] > 0.5)
            want = sorted((round(events[0][2] - t, 4), m) for _, t, m in ref_boxes[n])
            assert got == want, (k, n)
        mb.write(batch, new)
        received = {}
        for i, (src, dst, t, eid) in enumerate(events):
            mail_src, mail_dst = (eid, t, h[src] + h[dst]), (eid, t, h[dst] + h[src])
            for n in nbrs[i]:
                received[n] = mail_src
            for n in nbrs[b + i]:
                received[n] = mail_dst
            received[src] = mail_src
            received[dst] = mail_dst
        for n, mail in received.items():
            ref_boxes[n] = (ref_boxes[n] + [mail])[-s:]
        for r in range(2 * b):
            if batch.write_mask[r]:
                n = int(torch.cat([batch.src, batch.dst])[r])
                ref_memory[n] = h[n]
        for n in range(N):
            assert mailbox_state(mb, n) == sorted(ref_boxes[n]), (k, n)
            assert vec(mb.memory[n]) == ref_memory[n], (k, n)
    assert any(int(c) > s for c in mb.count)  # some ring wrapped round


def test_deliveries_keep_one_mail_per_receiver_own_mail_first():
    batch = small_batch()  # node 0 is src of event 0 and a sampled neighbour of dst 5: it keeps its own
    recv, src = deliveries(batch)
    got = {int(batch.nodes[r]): int(s) for r, s in zip(recv, src)}
    assert got == {0: 0, 1: 1, 5: 2, 6: 3, 2: 0, 3: 0, 4: 1, 9: 2, 10: 2}  # 11: a negative's neighbour


def test_every_parameter_gets_a_gradient_and_gru_is_still_tgn():
    f = feats()
    for kind in ("rnn", "apan"):
        model, batch = seeded_model(kind), small_batch()
        memory, mail = build_memory(model.cfg, f.edge_feat).gather(batch)
        pos, neg, _ = model(batch, f, memory, mail)
        (pos.sum() + neg.sum()).backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == [], kind
    torch.manual_seed(0)
    assert type(build_model(cfg("gru"))) is TGN and type(build_model(cfg("table"))) is TGN
    assert type(build_model(cfg("table", head="jodie"))) is MemoryModel
    with pytest.raises(ValueError, match="bogus"):
        build_model(cfg("bogus"))
    with pytest.raises(ValueError):
        build_model(cfg("rnn", head="apan"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["rnn", "apan"])
def test_cuda_matches_cpu(kind):
    f, batch = feats(), small_batch()
    outs = []
    for device in ("cpu", "cuda"):
        model = seeded_model(kind).to(device)
        fd, bd = Features(edge_feat=f.edge_feat.to(device)), batch.to(device)
        mem = build_memory(model.cfg, fd.edge_feat, device)
        for _ in range(3):  # the third step reads what the first two wrote
            memory, mail = mem.gather(bd)
            pos, neg, new = model(bd, fd, memory, mail)
            mem.write(bd, new)
        outs.append((pos.detach().cpu(), neg.detach().cpu(), new.detach().cpu()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ the CLI

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("memories")
    graph, cache = synthetic_store(d, SynthConfig(events=1500, nodes=60, edge_dim=4, seed=0),
                                   BatchParams(batch_size=100, neg_sets=2, eval_negatives=4, seed=0))
    return str(graph), str(cache)


def train_args(data, out, *extra):
    return ["train", data[0], data[1], "--out", str(out), "--dim", "16", "--time-dim", "8", "--threads", "1",
            "--prefetch", "2", "--no-progress", "--mailbox-size", "4", *extra]


@pytest.mark.parametrize("kind", ["rnn", "apan"])
def test_train_cli_runs_each_memory_to_finite_metrics_and_records_it(data, tmp_path, kind):
    assert main(train_args(data, tmp_path / "r", "--memory", kind, "--epochs", "2")) == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["config"]["memory"] == kind and s["config"]["mailbox_size"] == 4
    for k in ("test_mrr", "test_ap", "val_mrr", "train_events_per_s"):
        assert math.isfinite(s[k]), (k, s[k])
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["memory"] == kind
    if kind == "apan":
        assert ckpt["memory"]["mail"].shape[1:] == (4, 32) and int(ckpt["memory"]["count"].max()) > 0
    # resuming after epoch 1 ends where the uninterrupted run did (memory and RNGs are checkpointed)
    assert main(train_args(data, tmp_path / "p", "--memory", kind, "--epochs", "1")) == 0
    assert main(train_args(data, tmp_path / "p", "--memory", kind, "--epochs", "2", "--resume")) == 0
    p = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert (p["test_mrr"], p["val_mrr"], p["best_epoch"]) == (s["test_mrr"], s["val_mrr"], s["best_epoch"])


def test_pretrain_memory_feeds_that_models_head(data, tmp_path):
    static = tmp_path / "static.h5"
    assert main(["pretrain", data[0], data[1], "--out", str(static), "--memory", "rnn", "--epochs", "1", "--dim",
                 "16", "--time-dim", "8", "--threads", "1", "--no-progress"]) == 0
    assert main(train_args(data, tmp_path / "r", "--memory", "rnn", "--epochs", "1", "--static", str(static))) == 0
    assert math.isfinite(json.loads((tmp_path / "r" / "summary.json").read_text())["test_mrr"])


def test_bad_memory_settings_exit_2_and_say_why(data, tmp_path, capsys):
    assert main(train_args(data, tmp_path / "r", "--memory", "bogus")) == 2
    assert "--memory must be gru, rnn or apan" in capsys.readouterr().err
    assert main(train_args(data, tmp_path / "r", "--memory", "apan", "--mailbox-size", "0")) == 2
    assert "--mailbox-size" in capsys.readouterr().err
    assert main(train_args(data, tmp_path / "r", "--memory", "apan", "--eval", "tgb")) == 2
    assert "--eval tgb" in capsys.readouterr().err
    for kind in ("rnn", "apan"):  # the i x j x k trainers refuse rather than train a GRU
        assert main(train_args(data, tmp_path / "r", "--memory", kind, "--parallelism", "1x1x2")) == 2
        assert "one process only" in capsys.readouterr().err
    assert main(["pretrain", data[0], data[1], "--out", str(tmp_path / "s.h5"), "--memory", "bogus",
                 "--no-progress"]) == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.h5").exists()


def test_rnn_runs_tgbs_protocol_on_its_node_memory(data, tmp_path):
    negatives = tmp_path / "tgb_negatives.h5"
    assert main(["tgb-negatives", data[0], "--out", str(negatives), "--num-neg", "5"]) == 0
    assert main(train_args(data, tmp_path / "r", "--memory", "rnn", "--epochs", "1", "--eval", "tgb",
                           "--tgb-negatives", str(negatives))) == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert math.isfinite(s["test_tgb_mrr"]) and math.isfinite(s["val_tgb_mrr"])


def test_gru_runs_as_before_with_the_new_fields(data, tmp_path):
    """The default is TGN's GRU with a NodeMemory, and the same seed gives the same run as --memory gru."""
    assert main(train_args(data, tmp_path / "a", "--epochs", "1")) == 0
    assert main(train_args(data, tmp_path / "b", "--epochs", "1", "--memory", "gru")) == 0
    a, b = (json.loads((tmp_path / x / "summary.json").read_text()) for x in "ab")
    assert a["config"]["memory"] == "gru" and (a["test_mrr"], a["val_ap"]) == (b["test_mrr"], b["val_ap"])
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert set(ckpt["memory"]) == {"memory", "mail"} and not any(k.startswith("project") for k in ckpt["model"])
    assert np.isfinite(a["test_mrr"])
