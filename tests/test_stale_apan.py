"""MSPipe's staleness with APAN (--memory apan): batch i reads the memory *and the mailbox* (mails,
their times, events and counts, the clock too) holding exactly the writes of batches 0..v_i, against
a replay of a log of every write into a fresh plain mailbox; the mails a batch delivers to sampled
neighbours are part of its write. Then whole runs: k = 1 is plain APAN training bit for bit, the
background fetch changes nothing, the CLI trains with --staleness 2 and resumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.cli import main
from disttgl.data.graph_store import load_graph
from disttgl.data.synth import SynthConfig
from disttgl.models.mailbox import MailboxMemory, deliveries
from disttgl.pipeline.stale_memory import Mitigation, StaleMemory, mailbox_kind
from disttgl.pipeline.strategy import StalePipeline
from disttgl.train.config import TrainConfig
from disttgl.train.fit import fit
from disttgl.train.machine_load import ROW_FIELDS
from disttgl.train.single import SingleProcess
from stores import synthetic_store

DIM, SLOTS = 8, 3  # three slots: rings wrap within the run
BOX_KEYS = ("memory", "mail", "mail_eid", "mail_t", "count")
SMALL = dict(epochs=2, dim=16, time_dim=16, lr=3e-3, threads=1, progress=False, prefetch=2, memory="apan",
             mailbox_size=SLOTS)
FLAGS = ["--epochs", "2", "--dim", "16", "--time-dim", "16", "--lr", "3e-3", "--threads", "1", "--no-progress",
         "--memory", "apan", "--mailbox-size", str(SLOTS)]
# fields of a metrics row that measure speed or the machine's load, not what was learned
MEASURED = {"train_events_per_s", "time_split", "seconds", *ROW_FIELDS}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stale_apan")
    graph, cache = synthetic_store(d, SynthConfig(events=1500, nodes=60, edge_dim=2, seed=3),
                                   BatchParams(batch_size=40, neg_sets=2, eval_negatives=9, seed=0))
    g = load_graph(graph)
    with open_cache(cache, graph_path=graph) as c:
        n = c.num_batches("train")
    batches = list(BatchLoader(cache, "train", [(i, 0) for i in range(n)], prefetch=1))
    edge_feat = torch.from_numpy(g.edge_feat).float()
    return d, graph, cache, g, batches, edge_feat


# ------------------------------------------------------------------ the versioned mailbox, unit level

def replay(log, v, g, edge_feat):
    """The state after writes 0..v: a fresh plain mailbox takes them in order (its own write, tested
    against a per-event loop in tests/test_memories.py), and the clock is rebuilt by a per-row loop."""
    box = MailboxMemory.zeros(g.num_nodes, DIM, edge_feat, SLOTS)
    mem_t = torch.zeros(g.num_nodes, dtype=torch.float64)
    mail_t = torch.zeros(g.num_nodes, dtype=torch.float64)
    mail_eid = torch.full((g.num_nodes,), g.num_events, dtype=torch.int64)
    for view, new in log[: v + 1]:
        box.write(view, new)
        written = view.write_mask.nonzero().squeeze(1).tolist()
        for r in written:
            node = int(view.nodes[view.root_idx[r]])
            mem_t[node] = view.mail_t[view.root_idx[r]]  # the mail time the written memory absorbed
            mail_t[node] = view.t[r % view.num_events]
            mail_eid[node] = view.eid[r % view.num_events]
    return box, mem_t, mail_t, mail_eid


def stale_mailbox(g, edge_feat, mitigation=None):
    return StaleMemory(g.num_nodes, DIM, g.num_events, mitigation=mitigation,
                       kind=mailbox_kind(g.num_nodes, DIM, edge_feat, SLOTS))


def neighbour_only_receivers(batch):
    """Nodes that get a mail from ``batch`` only as a sampled neighbour (their memory is not written)."""
    recv, _ = deliveries(batch)
    written = batch.nodes[batch.root_idx[batch.write_mask.nonzero().squeeze(1)]]
    got = batch.nodes[recv]
    return set(got[~torch.isin(got, written)].tolist())


def run_schedule(g, batches, edge_feat, versions, seed=0):
    """Random "model outputs" through a versioned mailbox; every read against the replay at v_i.

    Returns the memory, the log and how many reads the schedule made genuinely stale: the mailbox
    read at v_i differs from the one at i - 1, and a root of batch i got a neighbour-only mail in a
    batch it cannot see yet."""
    gen = torch.Generator().manual_seed(seed)
    m = stale_mailbox(g, edge_feat)
    m.start_epoch(versions)
    log, stale_box, hidden_neighbour_mail = [], 0, 0
    for i, batch in enumerate(batches):
        v = int(versions[i])
        view, mem, packed = m.read(batch)
        box, mem_t, mail_t, mail_eid = replay(log, v, g, edge_feat)
        ref_mem, ref_packed = box.gather(batch)
        assert torch.equal(mem, ref_mem) and torch.equal(packed, ref_packed), f"batch {i} at version {v}"
        nodes = batch.nodes
        assert torch.equal(view.mem_t, mem_t[nodes]) and torch.equal(view.mail_t, mail_t[nodes])
        assert torch.equal(view.mail_eid, mail_eid[nodes])
        if v < i - 1:
            fresh, _, _, _ = replay(log, i - 1, g, edge_feat)
            stale_box += not torch.equal(fresh.gather(batch)[1], ref_packed)
            roots = set(nodes[batch.root_idx].tolist())
            unseen = set().union(*(neighbour_only_receivers(log[j][0]) for j in range(v + 1, i)))
            hidden_neighbour_mail += bool(roots & unseen)
        new = torch.randn(int(nodes.shape[0]), DIM, generator=gen)
        m.write(view, new)
        log.append((view, new))
    assert m.read_versions == [int(v) for v in versions]
    # live holds every write, in every field of the mailbox
    box, mem_t, _, _ = replay(log, len(batches) - 1, g, edge_feat)
    live = m.live.state_dict()
    assert all(torch.equal(live[k], box.state_dict()[k]) for k in BOX_KEYS)
    assert torch.equal(m.live_clock.mem_t, mem_t)
    return m, stale_box, hidden_neighbour_mail


def test_sequential_reads_equal_the_replay_and_the_caches_clock(data):
    _, _, _, g, batches, edge_feat = data
    versions = np.arange(len(batches)) - 1
    m, stale_box, _ = run_schedule(g, batches, edge_feat, versions)
    assert stale_box == 0
    probe = stale_mailbox(g, edge_feat)
    probe.start_epoch(versions)
    for batch in batches:  # v_i = i - 1: the cache's precomputed clock is the clock read
        view, _, _ = probe.read(batch)
        assert torch.equal(view.mem_t, batch.mem_t) and torch.equal(view.mail_t, batch.mail_t)
        assert torch.equal(view.mail_eid, batch.mail_eid)
        probe.write(view, torch.randn(int(batch.nodes.shape[0]), DIM))


@pytest.mark.parametrize("k", [2, 3])
def test_bounded_reads_see_exactly_the_writes_up_to_their_version(data, k):
    _, _, _, g, batches, edge_feat = data
    versions = np.maximum(np.arange(len(batches)) - k, -1)
    _, stale_box, hidden_neighbour_mail = run_schedule(g, batches, edge_feat, versions, seed=k)
    assert stale_box > 0 and hidden_neighbour_mail > 0  # the schedule tests what it claims to


def test_random_non_decreasing_versions(data):
    _, _, _, g, batches, edge_feat = data
    n = len(batches)
    rng = np.random.default_rng(11)
    for trial in range(3):
        lo = np.maximum(np.arange(n) - 4, -1)
        v = np.maximum.accumulate(rng.integers(lo, np.arange(n)))  # in [i - 4, i - 1], non-decreasing
        run_schedule(g, batches, edge_feat, v, seed=trial)


def test_checkpoint_keeps_the_mailbox_and_its_clock_apart(data):
    _, _, _, g, batches, edge_feat = data
    m = stale_mailbox(g, edge_feat)
    m.start_epoch(np.maximum(np.arange(len(batches)) - 2, -1))
    for batch in batches:
        view, _, _ = m.read(batch)
        m.write(view, torch.randn(int(batch.nodes.shape[0]), DIM))
    state = m.state_dict()
    assert state["mail_t"].shape == (g.num_nodes, SLOTS) and state["clock_mail_t"].shape == (g.num_nodes,)
    back = stale_mailbox(g, edge_feat)
    back.load_state_dict(state)
    assert all(torch.equal(back.live.state_dict()[k], state[k]) for k in BOX_KEYS)
    assert torch.equal(back.live_clock.mail_t, m.live_clock.mail_t)
    assert torch.equal(back.live_clock.mail_eid, m.live_clock.mail_eid)
    assert torch.equal(back.live_clock.mem_t, m.live_clock.mem_t)


def test_mitigation_mixes_the_memory_and_never_the_mailbox(data):
    _, _, _, g, batches, edge_feat = data
    versions = np.maximum(np.arange(len(batches)) - 3, -1)
    similar = torch.randint(0, g.num_nodes, (g.num_nodes, 4), generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, mit in (("none", None), ("lam1", Mitigation(similar, lam=1.0, top_fraction=0.2)),
                      ("on", Mitigation(similar, lam=0.5, top_fraction=0.2))):
        m = stale_mailbox(g, edge_feat, mit)
        m.start_epoch(versions)
        gen = torch.Generator().manual_seed(0)
        reads = []
        for batch in batches:  # the same outputs every run, so the states stay equal
            view, mem, packed = m.read(batch)
            reads.append((mem.clone(), packed.clone()))
            m.write(view, torch.randn(int(batch.nodes.shape[0]), DIM, generator=gen))
        runs[name] = reads
    assert all(torch.equal(a[0], b[0]) for a, b in zip(runs["none"], runs["lam1"]))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(runs["none"], runs["on"]))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(runs["none"], runs["on"]))


# ------------------------------------------------------------------ whole runs

def cfg(data, out, **kw):
    _, graph, cache = data[:3]
    return TrainConfig(graph=str(graph), cache=str(cache), out=str(out), **{**SMALL, **kw})


def rows(run):
    """metrics.jsonl without the fields that measure speed or load."""
    return [{k: v for k, v in r.items() if k not in MEASURED}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_staleness_one_through_the_versioned_mailbox_is_plain_apan_training(data, tmp_path):
    plain = SingleProcess(cfg(data, tmp_path / "plain"))
    p = fit(plain)
    stale = StalePipeline(cfg(data, tmp_path / "stale"))  # k = 1, on the versioned mailbox
    s = fit(stale)
    plain_rows, stale_rows = rows(tmp_path / "plain"), rows(tmp_path / "stale")
    assert len(plain_rows) == len(stale_rows) == 2  # the stale rows add staleness_k and mean_staleness
    assert [{k: r[k] for k in ref} for ref, r in zip(plain_rows, stale_rows)] == plain_rows
    assert (p["test_mrr"], p["test_ap"]) == (s["test_mrr"], s["test_ap"])
    final_plain, final_stale = plain.memory.state_dict(), stale.memory.live.state_dict()
    assert all(torch.equal(final_plain[k], final_stale[k]) for k in BOX_KEYS)
    assert int(final_plain["count"].sum()) > 0 and s["staleness"]["mean_staleness"] == 0.0


def test_background_fetch_changes_nothing_and_staleness_changes_the_numbers(data, tmp_path):
    off = fit(StalePipeline(cfg(data, tmp_path / "off", staleness="2")))
    threads = fit(StalePipeline(cfg(data, tmp_path / "threads", staleness="2", pipeline="threads")))
    assert rows(tmp_path / "off") == rows(tmp_path / "threads") and len(rows(tmp_path / "off")) == 2
    assert off["test_mrr"] == threads["test_mrr"]
    fit(StalePipeline(cfg(data, tmp_path / "seq")))
    assert [r["train_loss"] for r in rows(tmp_path / "seq")] != [r["train_loss"] for r in rows(tmp_path / "off")]
    assert rows(tmp_path / "off")[0]["staleness_k"] == 2 and rows(tmp_path / "off")[0]["mean_staleness"] > 0.9


def test_cli_trains_apan_with_staleness_and_resumes(data, tmp_path):
    _, graph, cache = data[:3]
    args = ["train", str(graph), str(cache), "--staleness", "2", *FLAGS]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert math.isfinite(summary["test_mrr"]) and 0 < summary["test_mrr"] <= 1
    assert summary["staleness"]["k"] == 2 and summary["config"]["memory"] == "apan"
    one = [a if a != "2" or args[i - 1] != "--epochs" else "1" for i, a in enumerate(args)]
    assert main([*one, "--out", str(tmp_path / "part")]) == 0
    assert main([*args, "--out", str(tmp_path / "part"), "--resume"]) == 0  # the mailbox and its clock reload
    assert rows(tmp_path / "part") == rows(tmp_path / "full")


def test_cli_mitigation_with_apan(data, tmp_path):
    _, graph, cache = data[:3]
    sim = tmp_path / "similar.h5"
    assert main(["similar", str(graph), "--method", "jaccard", "--k", "5", "--out", str(sim)]) == 0
    base = ["train", str(graph), str(cache), "--staleness", "2", *FLAGS, "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "none")]) == 0
    assert main([*base, "--out", str(tmp_path / "mit"), "--mitigation", "similar", "--similar", str(sim),
                 "--mitigation-top", "0.2", "--mitigation-lambda", "0.5"]) == 0
    assert rows(tmp_path / "none") != rows(tmp_path / "mit")
    assert json.loads((tmp_path / "mit" / "summary.json").read_text())["staleness"]["mitigation"] == "similar"
