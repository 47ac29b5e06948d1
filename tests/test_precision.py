"""``--precision bf16``: autocast for the matmuls, float32 state; fp32 untouched (disttgl.train.precision)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.data.synth import SynthConfig
from disttgl.errors import DataError
from disttgl.models import kernels as kernels_module
from disttgl.models import native
from disttgl.models.kernels import slot_attention, slot_layout
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN, ModelConfig
from disttgl.train.config import PretrainConfig, TrainConfig
from disttgl.train.epoch import adam, evaluate, load_features, train_epoch
from disttgl.train.precision import autocast
from disttgl.train.pretrain import pretrain
from disttgl.train.run_files import load_checkpoint
from disttgl.train.single import train
from stores import synthetic_store

SMALL = dict(epochs=2, dim=16, time_dim=16, lr=3e-3, threads=1, progress=False, prefetch=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16")
    graph, cache = synthetic_store(d, SynthConfig(events=3000, nodes=120, edge_dim=4, seed=0),
                                   BatchParams(batch_size=100, neg_sets=2, eval_negatives=9, seed=0))
    return graph, cache


def _cfg(data, out, config=TrainConfig, **kw):
    return config(graph=str(data[0]), cache=str(data[1]), out=str(out), **{**SMALL, **kw})


def test_unknown_precision_is_refused(data, tmp_path):
    with pytest.raises(DataError, match="--precision must be fp32 or bf16"):
        _cfg(data, tmp_path / "r", precision="fp16").check()
    with pytest.raises(ValueError):
        autocast("fp16", "cpu")


def test_bf16_training_is_finite_near_fp32_and_recorded(data, tmp_path):
    """Same seed, same batches: bf16 ends within a sane distance of fp32, and says it ran bf16."""
    runs = {p: train(_cfg(data, tmp_path / p, precision=p)) for p in ("fp32", "bf16")}
    for p, s in runs.items():
        assert s["precision"] == p and s["config"]["precision"] == p
        assert load_checkpoint(tmp_path / p / "checkpoint.pt")["config"]["precision"] == p
        for key in ("test_mrr", "test_ap", "test_ap_1neg", "val_mrr"):
            assert math.isfinite(s[key]), (p, key, s[key])
    # a random scorer with 9 negatives has MRR 0.293; on this set both precisions learn something and
    # land within 0.08 of each other (seeds differ by about as much at 2 epochs)
    a, b = runs["fp32"], runs["bf16"]
    assert abs(a["test_mrr"] - b["test_mrr"]) < 0.08 and abs(a["test_ap_1neg"] - b["test_ap_1neg"]) < 0.08, (a, b)
    # the training loss of every epoch within 2% (seeds 0-2 measured: within 0.6%)
    losses = {p: [json.loads(x)["train_loss"] for x in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
              for p in runs}
    assert all(abs(x - y) < 0.02 * x for x, y in zip(losses["fp32"], losses["bf16"])), losses


@pytest.mark.parametrize("memory", ["rnn", "apan"])
def test_bf16_trains_the_other_memories(data, tmp_path, memory):
    s = train(_cfg(data, tmp_path / memory, precision="bf16", memory=memory, epochs=1))
    assert all(math.isfinite(s[k]) for k in ("test_mrr", "test_ap", "val_mrr")), s


def test_bf16_pretraining(data, tmp_path):
    got = pretrain(_cfg(data, tmp_path / "static.h5", PretrainConfig, precision="bf16", epochs=1))
    assert math.isfinite(got["val_mrr"])


def _model_and_batches(data, fused=True):
    feats, graph = load_features(str(data[0]), torch.device("cpu"))
    torch.manual_seed(0)
    model = TGN(ModelConfig(dim=16, time_dim=16, edge_dim=graph.edge_dim))
    model.attn.fused = model.predict.fused = fused
    return model, feats, graph


@pytest.mark.parametrize("fused", [True, False])
def test_matmuls_run_in_bf16_and_the_state_stays_fp32(data, fused):
    """Under bf16 the projections give bf16, the scores, the loss, the new memory, the weights, their
    gradients and Adam's moments are float32."""
    model, feats, graph = _model_and_batches(data, fused)
    seen = {}
    for name in ("src", "dst"):
        getattr(model.predict, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    model.attn.q_time.register_forward_hook(lambda m, i, o: seen.__setitem__("q_time", o.dtype))
    memory = NodeMemory.zeros(graph.num_nodes, 16)
    opt = adam(model.parameters(), 1e-3)
    batches = BatchLoader(data[1], "train", [(b, 0) for b in range(4)])
    stats = train_epoch(model, memory, batches, opt, feats, loss="bce", precision="bf16")
    assert math.isfinite(stats.loss) and stats.events == 400
    assert seen == {"src": torch.bfloat16, "dst": torch.bfloat16, "q_time": torch.bfloat16}
    assert memory.memory.dtype == memory.mail.dtype == torch.float32 and bool(memory.memory.abs().sum() > 0)
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    for state in opt.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    # evaluation scores come out float32 (bf16 scores would tie a positive with its negatives)
    model.eval()
    batch = next(iter(BatchLoader(data[1], "val", [(0, 0)])))
    mem, mail = memory.gather(batch)
    with torch.inference_mode(), autocast("bf16", "cpu"):
        pos, neg, new_mem = model(batch, feats, mem, mail)
    assert pos.dtype == neg.dtype == new_mem.dtype == torch.float32
    assert neg.shape == (batch.num_events, 9)
    metrics = evaluate(model, memory, BatchLoader(data[1], "val", [(0, 0), (1, 0)]), feats, precision="bf16")
    assert all(math.isfinite(v) for v in metrics.values())


def _reference(c, pad, keep, *parts):
    """The slot attention with plain autograd ops (float64)."""
    xs, qs = parts[0::2], parts[1::2]
    score = c + sum(torch.bmm(x, q.transpose(1, 2)) for x, q in zip(xs, qs))
    score = torch.nn.functional.leaky_relu(score, 0.2).masked_fill(pad, -1e30)
    att = torch.softmax(score, 1).masked_fill(pad, 0.0) * keep
    return (*(torch.bmm(att.transpose(1, 2), x) for x in xs), att.sum(1))


@pytest.mark.parametrize("use_native", [True, False])
def test_slot_attention_under_autocast_is_the_fp32_function_of_its_bf16_inputs(use_native, monkeypatch):
    """bf16 query projections (what autocast's bmm gives) go through the per-slot core in float32:
    the C kernels (float32 only) and the torch path both equal the float64 formula on the same
    values, and the gradients reach the bf16 inputs as bf16."""
    k = native.kernels() if use_native else None
    if use_native and k is None:
        pytest.skip("the fused kernels did not build here")
    fused_calls = []
    real = kernels_module._FusedSlotAttention.apply
    monkeypatch.setattr(kernels_module._FusedSlotAttention, "apply",
                        lambda *a: fused_calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(0)
    r, s, h, d_s, d_t = 60, 30, 2, 8, 6
    counts = torch.randint(0, 5, (r,), generator=g)
    nbr_root = torch.repeat_interleave(torch.arange(r), counts)
    layout = slot_layout(nbr_root, torch.randint(0, s, (len(nbr_root),), generator=g), r)
    kk = layout.shape[1]
    c = torch.randn(r, 1, h, generator=g).requires_grad_()
    src = torch.randn(s, d_s, generator=g).requires_grad_()
    q_src = torch.randn(r, h, d_s, generator=g).bfloat16().requires_grad_()
    q_time = torch.randn(r, h, d_t, generator=g).bfloat16().requires_grad_()
    w, b = (10.0 ** -torch.linspace(0, 3, d_t)).requires_grad_(), torch.zeros(d_t, requires_grad=True)
    dt = layout.padded(torch.rand(len(nbr_root), generator=g) * 3)
    keep = (torch.rand(r, kk, h, generator=g) > 0.2).float() / 0.8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sums, total = slot_attention(layout, c, keep, (src, q_src), (dt, w, b, q_time), native=k)
    out = (*sums, total)
    assert all(t.dtype == torch.float32 for t in out)
    assert len(fused_calls) == (1 if use_native else 0)
    g_out = [torch.randn(t.shape, generator=g) for t in out]
    got = torch.autograd.grad(out, (c, src, q_src, q_time), g_out)
    assert got[2].dtype == got[3].dtype == torch.bfloat16 and got[0].dtype == torch.float32

    d = {n: t.detach().double().requires_grad_() for n, t in
         dict(c=c, src=src, q_src=q_src, q_time=q_time).items()}
    x_src = d["src"].index_select(0, layout.gather_index).view(r, kk, -1)
    x_time = torch.cos(dt.double().unsqueeze(1) * w.detach().double() + b.detach().double()).view(r, kk, -1)
    want = _reference(d["c"], ~layout.mask.unsqueeze(2), keep.double(), x_src, d["q_src"], x_time, d["q_time"])
    want_grads = torch.autograd.grad(want, tuple(d.values()), [t.double() for t in g_out])
    for a, e in zip(out, want):
        assert torch.allclose(a.double(), e, rtol=1e-4, atol=1e-4), (a.double() - e).abs().max()
    for a, e in zip(got, want_grads):
        # bf16 gradients carry bf16's rounding (8 bits): compare at that precision
        tol = 2e-2 if a.dtype == torch.bfloat16 else 1e-4
        assert torch.allclose(a.double(), e, rtol=tol, atol=tol), (a.double() - e).abs().max()


def _updaters():
    from disttgl.models.apan import MailAttention
    from disttgl.models.jodie import RNNMemory
    from disttgl.models.tgn import GRUMemory

    g = torch.Generator().manual_seed(0)
    u, d, e, t, s = 50, 16, 4, 8, 5
    mem = torch.randn(u, d, generator=g)
    dt = torch.rand(u, generator=g) * 1e5
    mail, feat = torch.randn(u, 2 * d, generator=g), torch.randn(u, e, generator=g)
    mails, age = torch.randn(u, s, 2 * d + e, generator=g), torch.rand(u, s, generator=g) * 1e5
    valid = torch.rand(u, s, generator=g) > 0.3
    torch.manual_seed(0)
    return [(GRUMemory(d, e, t), (mem, mail, feat, dt)), (RNNMemory(d, e, t), (mem, mail, feat, dt)),
            (MailAttention(d, 2 * d + e, t, 2, 0.0).eval(), (mem, mails, age, valid))]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["gru", "rnn", "apan"])
def test_memory_updaters_run_in_float32_under_bf16(which):
    """Their output is the next batch's memory, so a bf16 rounding there would compound over the
    stream (docs/design.md §4.8): under bf16 autocast an updater gives exactly its fp32 result, with
    float32 gradients, while a plain Linear beside it still runs in bf16."""
    module, inputs = _updaters()[which]
    want = module(*inputs)
    inputs = tuple(x.clone().requires_grad_() if x.is_floating_point() else x for x in inputs)
    with autocast("bf16", "cpu"):
        got = module(*inputs)
        beside = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert beside.dtype == torch.bfloat16
    got.sum().backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads) and inputs[0].grad.dtype == torch.float32


@pytest.mark.parametrize("memory", ["gru", "rnn"])
def test_precision_drift_benchmark_finds_the_memory_exactly_fp32(data, tmp_path, memory):
    """benchmarks/precision_drift.py on a trained run: with float32 updaters the bf16 replay's memory
    is the fp32 replay's, bit for bit (TGN's and JODIE's memory read only memory and mails)."""
    import subprocess
    import sys
    from pathlib import Path

    train(_cfg(data, tmp_path / "run", epochs=1, memory=memory))
    out = tmp_path / "drift.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_drift.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run" / "checkpoint.pt"), str(data[0]),
                           str(data[1]), "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["memory_rel_error_after_train"] == 0.0 and got["memory"] == memory
    for p in ("fp32", "bf16"):
        assert 0.0 < got["metrics"][p]["val"]["mrr"] <= 1.0
