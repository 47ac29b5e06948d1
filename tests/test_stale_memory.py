"""The staleness-bounded memory: reads see exactly the writes of batches <= v_i (against a replay
of a log of every write from zeros), the clock it reads equals the cache's when v_i = i - 1, and
staleness-1 training equals plain training bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.data.graph_store import load_graph
from disttgl.data.synth import SynthConfig
from disttgl.models.memory import NodeMemory, write_rows
from disttgl.pipeline.stale_memory import Mitigation, StaleMemory
from disttgl.pipeline.versions import mean_staleness
from stores import synthetic_store

DIM = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stale")
    graph, cache = synthetic_store(d, SynthConfig(events=1500, nodes=60, edge_dim=2, seed=3),
                                   BatchParams(batch_size=40, neg_sets=2, eval_negatives=3, seed=0))
    g = load_graph(graph)
    with open_cache(cache, graph_path=graph) as c:
        n = c.num_batches("train")
    batches = list(BatchLoader(cache, "train", [(i, 0) for i in range(n)], prefetch=1))
    return g, batches


def replay(log, v, num_nodes, num_events):
    """The state after writes 0..v, rebuilt from zeros by a literal per-row loop."""
    mem = torch.zeros(num_nodes, DIM)
    mail = torch.zeros(num_nodes, 2 * DIM)
    mem_t = torch.zeros(num_nodes, dtype=torch.float64)
    mail_t = torch.zeros(num_nodes, dtype=torch.float64)
    mail_eid = torch.full((num_nodes,), num_events, dtype=torch.int64)
    for entry in log[: v + 1]:
        for r, node in enumerate(entry["nodes"].tolist()):
            mem_t[node] = entry["mem_t"][r]  # the time of the mail the written memory absorbed
            mail_t[node] = entry["t"][r]
            mail_eid[node] = entry["eid"][r]
            mem[node] = entry["mem"][r]
            mail[node] = entry["mail"][r]
    return mem, mail, mem_t, mail_t, mail_eid


def run_schedule(g, batches, versions, seed=0):
    """Feed random "model outputs" through a StaleMemory; check every read against the replay."""
    gen = torch.Generator().manual_seed(seed)
    m = StaleMemory(g.num_nodes, DIM, g.num_events)
    m.start_epoch(versions)
    log = []
    for i, batch in enumerate(batches):
        view, mem, mail = m.read(batch)
        ref = replay(log, int(versions[i]), g.num_nodes, g.num_events)
        nodes = batch.nodes
        torch.testing.assert_close(mem, ref[0][nodes], rtol=0, atol=0)
        torch.testing.assert_close(mail, ref[1][nodes], rtol=0, atol=0)
        assert torch.equal(view.mem_t, ref[2][nodes]) and torch.equal(view.mail_t, ref[3][nodes])
        assert torch.equal(view.mail_eid, ref[4][nodes])
        new = torch.randn(int(nodes.shape[0]), DIM, generator=gen)
        m.write(view, new)
        w_nodes, w_mem, w_mail = write_rows(view, new)
        written = view.write_mask.nonzero().squeeze(1)
        roots = written % view.num_events
        log.append(dict(nodes=w_nodes, mem=w_mem, mail=w_mail, t=view.t[roots], eid=view.eid[roots],
                        mem_t=view.mail_t[view.root_idx[written]]))
    assert m.read_versions == [int(v) for v in versions]
    return m, log


def test_sequential_reads_equal_the_caches_clock_and_a_plain_node_memory(data):
    g, batches = data
    n = len(batches)
    m, _ = run_schedule(g, batches, np.arange(n) - 1)
    # the same outputs through a NodeMemory (the plain path) leave the same state; the cache's
    # precomputed clock equals the clock the stale memory carries
    plain = NodeMemory.zeros(g.num_nodes, DIM)
    gen = torch.Generator().manual_seed(0)
    probe = StaleMemory(g.num_nodes, DIM, g.num_events)
    probe.start_epoch(np.arange(n) - 1)
    for batch in batches:
        view, mem, mail = probe.read(batch)
        assert torch.equal(view.mem_t, batch.mem_t) and torch.equal(view.mail_t, batch.mail_t)
        assert torch.equal(view.mail_eid, batch.mail_eid)
        pm, pmail = plain.gather(batch)
        assert torch.equal(pm, mem) and torch.equal(pmail, mail)
        new = torch.randn(int(batch.nodes.shape[0]), DIM, generator=gen)
        probe.write(view, new)
        plain.write(batch, new)
    assert torch.equal(probe.live.memory, plain.memory) and torch.equal(probe.live.mail, plain.mail)
    assert mean_staleness(m.read_versions) == 0.0


@pytest.mark.parametrize("k", [2, 3])
def test_bounded_reads_see_exactly_the_writes_up_to_their_version(data, k):
    g, batches = data
    n = len(batches)
    versions = np.maximum(np.arange(n) - k, -1)
    m, log = run_schedule(g, batches, versions, seed=k)
    assert mean_staleness(m.read_versions) > 0
    # live holds every write
    ref = replay(log, n - 1, g.num_nodes, g.num_events)
    assert torch.equal(m.live.memory, ref[0]) and torch.equal(m.live_clock.mem_t, ref[2])


def test_random_non_decreasing_versions(data):
    g, batches = data
    n = len(batches)
    rng = np.random.default_rng(7)
    for trial in range(3):
        lo = np.maximum(np.arange(n) - 4, -1)
        v = np.maximum.accumulate(rng.integers(lo, np.arange(n)))  # in [i - 4, i - 1], non-decreasing
        run_schedule(g, batches, v, seed=trial)


def test_schedule_is_checked(data):
    g, _ = data
    m = StaleMemory(g.num_nodes, DIM, g.num_events)
    with pytest.raises(ValueError, match="batch 1 cannot read version 1"):
        m.start_epoch(np.array([-1, 1]))
    with pytest.raises(ValueError, match="must not decrease"):
        m.start_epoch(np.array([-1, 0, 1, 0]))


def test_mitigation_changes_only_the_memory_read_and_lambda_one_is_a_no_op(data):
    g, batches = data
    n = len(batches)
    versions = np.maximum(np.arange(n) - 3, -1)
    similar = torch.randint(0, g.num_nodes, (g.num_nodes, 4), generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, mit in (("none", None), ("lam1", Mitigation(similar, lam=1.0, top_fraction=0.2)),
                      ("on", Mitigation(similar, lam=0.5, top_fraction=0.2))):
        m = StaleMemory(g.num_nodes, DIM, g.num_events, mitigation=mit)
        m.start_epoch(versions)
        gen = torch.Generator().manual_seed(0)
        reads = []
        for batch in batches:
            view, mem, mail = m.read(batch)
            reads.append(mem.clone())
            m.write(view, torch.randn(int(batch.nodes.shape[0]), DIM, generator=gen))
        runs[name] = reads
    assert all(torch.equal(a, b) for a, b in zip(runs["none"], runs["lam1"]))
    assert any(not torch.equal(a, b) for a, b in zip(runs["none"], runs["on"]))
