"""``--pipeline streams``: the batch copies and the memory fetch on their own CUDA streams, ordered by
events (docs/design.md §10.6). The CUDA tests run where a GPU is (benchmarks/gpu_check.sh); the rest
checks, everywhere, what is pure or refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from disttgl.cache.cuda_events import tensors_in
from disttgl.cache.loader import BatchLoader
from disttgl.models.mailbox import MailWrite
from disttgl.pipeline.executor import MemoryPrefetch
from disttgl.pipeline.stale_memory import StaleMemory, Write
from disttgl.pipeline.streams import StageStreams
from disttgl.pipeline.strategy import StalePipeline
from disttgl.pipeline.versions import memory_versions
from disttgl.train.config import TrainConfig
from disttgl.train.fit import fit
from stores import pipeline_store

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("streams")
    graph, cache = pipeline_store(d)
    return d, graph, cache


def test_tensors_in_finds_every_tensor_of_a_write():
    t = [torch.zeros(i + 1) for i in range(9)]
    mail = MailWrite(nodes=t[4], memory=t[5], receivers=t[6], content=t[7], eid=t[8], t=torch.ones(1))
    w = Write(0, t[0], t[1], t[2], t[3], record=(mail, {"x": t[8]}), ready=object())
    found = list(tensors_in([w, "not a tensor", 3]))
    assert len(found) == 11 and all(any(f is x for f in found) for x in t)


def test_streams_need_a_cuda_device():
    with pytest.raises(ValueError, match="CUDA device"):
        StageStreams(torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA device"):
        StaleMemory(10, 4, 20, "cpu", stream_events=True)
    with pytest.raises(ValueError, match="stream_events=True"):  # the fetch stream would not wait for writes
        MemoryPrefetch([], StaleMemory(10, 4, 20, "cpu"), streams=object())


def _reads(cache: str, graph_nodes: int, num_events: int, k: int, streams: StageStreams | None) -> list:
    """Every batch's read (memory, mail, clock) over one epoch at staleness k, each write a fixed
    function of what the batch read, with the trainer's stream kept busy before it computes the
    write: a fetch that did not wait for the write's event would read rows not yet written."""
    device = torch.device("cuda")
    n = 40
    batches = BatchLoader(cache, "train", [(i, 0) for i in range(n)], prefetch=4, device=device,
                          copy_stream=None if streams is None else streams.copy)
    memory = StaleMemory(graph_nodes, 8, num_events, device, stream_events=streams is not None)
    memory.start_epoch(memory_versions(n, k))
    if streams is not None:
        batches = MemoryPrefetch(batches, memory, streams=streams)
    out = []
    for i, batch in enumerate(batches):
        view, mem, mail = memory.read(batch)
        torch.cuda._sleep(2_000_000)  # a few ms of device time on the trainer's stream
        new = torch.tanh(0.9 * mem + 1e-6 * view.mail_t.float().unsqueeze(1) + 0.01 * (i + 1))
        out.append([x.cpu() for x in (mem, mail, view.mem_t, view.mail_t, view.mail_eid)])
        memory.write(view, new)
    torch.cuda.synchronize()
    return out, memory.read_versions


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_fetch_on_its_stream_reads_exactly_what_an_inline_fetch_reads(data, k):
    _, graph, cache = data
    from disttgl.data.graph_store import graph_info

    info = graph_info(graph)
    inline, v_inline = _reads(str(cache), info["num_nodes"], info["num_events"], k, None)
    streamed, v_streamed = _reads(str(cache), info["num_nodes"], info["num_events"], k,
                                  StageStreams(torch.device("cuda")))
    assert v_inline == v_streamed == memory_versions(40, k).tolist()
    for a, b in zip(inline, streamed):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.cuda
@cuda
def test_streams_training_agrees_with_off(data, tmp_path):
    """Same schedule, same numbers up to CUDA's run-to-run rounding, and the run says it ran streams."""
    _, graph, cache = data
    runs = {}
    for mode in ("off", "streams"):
        cfg = TrainConfig(graph=str(graph), cache=str(cache), out=str(tmp_path / mode), epochs=2, dim=16,
                          time_dim=16, lr=3e-3, threads=1, progress=False, prefetch=2, device="cuda",
                          staleness="3", pipeline=mode)
        runs[mode] = fit(StalePipeline(cfg))
    assert runs["streams"]["staleness"]["pipeline"] == "streams"
    assert runs["off"]["staleness"]["mean_staleness"] == runs["streams"]["staleness"]["mean_staleness"]
    for a, b in zip(_rows(tmp_path / "off"), _rows(tmp_path / "streams")):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_mrr"] == pytest.approx(b["val_mrr"], abs=0.01)
        assert np.isfinite(b["val_ap"])


class _Log:
    """Stand-ins for torch.cuda's streams and events on a CPU-only machine: they order nothing, they
    record who waited for which event, so the host-side bookkeeping of the streams executor runs."""

    def __init__(self):
        self.events, self.waits, self.entered = [], [], []

    def event(self):
        log = self

        class Event:
            def __init__(self):
                self.tag = None

            def record(self, stream):
                self.tag = (stream.name, len(log.events))
                log.events.append(self.tag)
        return Event

    def stream(self, name):
        log = self

        class Stream:
            def wait_event(self, event):
                log.waits.append((self.name, event.tag))

            def wait_stream(self, other):
                log.waits.append((self.name, ("stream", other.name)))
        s = Stream()
        s.name = name
        return s


def test_the_streams_bookkeeping_on_cpu_stand_ins(data, monkeypatch):
    """With stand-in streams the streams executor trains exactly as ``off`` (it changes no host-side
    order), every fetch that replays writes waits first for the newest one's event on the fetch
    stream, the first fetch of an epoch waits for the reset, and the trainer waits for each fetch."""
    import contextlib
    import threading

    from disttgl.data.graph_store import graph_info
    from disttgl.models.tgn import TGN, ModelConfig
    from disttgl.train.epoch import adam, load_features, train_epoch

    _, graph, cache = data
    info = graph_info(graph)
    n, k = 30, 3
    log = _Log()
    trainer, fetch = log.stream("trainer"), log.stream("fetch")

    results = {}
    for mode in ("off", "streams"):
        torch.manual_seed(0)
        feats, g = load_features(str(graph), "cpu")
        model = TGN(ModelConfig(dim=16, time_dim=16, edge_dim=g.edge_dim))
        opt = adam(model.parameters(), 3e-3)
        batches = BatchLoader(str(cache), "train", [(i, 0) for i in range(n)], prefetch=2)
        memory = StaleMemory(info["num_nodes"], 16, info["num_events"], "cpu")
        if mode == "streams":
            # threads are real here, so the stand-in "current stream" is per thread, as CUDA's
            local = threading.local()
            monkeypatch.setattr(torch.cuda, "Event", log.event())
            monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: getattr(local, "s", trainer))

            @contextlib.contextmanager
            def on_thread(stream):
                before = getattr(local, "s", trainer)
                local.s = stream
                try:
                    yield
                finally:
                    local.s = before
            monkeypatch.setattr(torch.cuda, "stream", on_thread)
            memory._events_on = torch.device("cpu")  # the stand-ins take the place of a CUDA device
            streams = object.__new__(StageStreams)
            streams.device, streams.copy, streams.fetch = torch.device("cpu"), log.stream("copy"), fetch
        memory.start_epoch(memory_versions(n, k))
        if mode == "streams":
            batches = MemoryPrefetch(batches, memory, streams=streams)
        stats = train_epoch(model, memory, batches, opt, feats, loss="bce")
        results[mode] = (stats.loss, memory.live.memory.clone(), list(memory.read_versions))
    assert results["off"][0] == results["streams"][0]
    assert torch.equal(results["off"][1], results["streams"][1])
    assert results["off"][2] == results["streams"][2] == memory_versions(n, k).tolist()
    # events: the reset's and every write's on the trainer's stream, every fetch's on the fetch stream
    recorded = [e[0] for e in log.events]
    assert recorded.count("trainer") == 1 + n and recorded.count("fetch") == n
    writes = [e for e in log.events if e[0] == "trainer"][1:]  # write j's event: writes[j]
    fetch_waits = [tag for who, tag in log.waits if who == "fetch"]
    assert fetch_waits[0] == log.events[0]  # the first fetch waits for the reset
    versions = memory_versions(n, k)
    due = [writes[v] for i, v in enumerate(versions) if v >= 0 and (i == 0 or v > versions[i - 1])]
    assert fetch_waits[1:] == due  # each fetch that replays writes waits for the newest of them
    trainer_waits = [tag for who, tag in log.waits if who == "trainer" and tag[0] == "fetch"]
    assert trainer_waits == [e for e in log.events if e[0] == "fetch"]  # the trainer waits for every fetch
    assert ("trainer", ("stream", "fetch")) in log.waits  # and for the fetch stream at the end
