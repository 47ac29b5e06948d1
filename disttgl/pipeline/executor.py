"""``--pipeline threads``: the memory fetch of later batches overlaps the training of earlier ones.

Sampling and feature reads already run ahead on the batch loader's thread
(:class:`disttgl.cache.loader.BatchLoader`). This adds MSPipe's third stage: one background thread
fetches batch i's memory as soon as its version v_i is written (:meth:`StaleMemory.fetch` waits for
it), while the trainer trains and writes. One thread takes the batches strictly in order (MSPipe's
thread pool with plain locks does not guarantee that), and a read sees exactly the writes <= v_i
whatever the timing, so the executor changes speed only: for a fixed schedule of versions,
``threads`` and ``off`` give the same numbers (tests/test_pipeline_train.py).

With ``streams`` (``--pipeline streams``, CUDA) the thread issues the fetch on its own CUDA stream and
the trainer's stream waits for it on the device (``disttgl.pipeline.streams``).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from disttgl.cache.ahead import read_ahead
from disttgl.cache.batch import Batch
from disttgl.pipeline.stale_memory import StaleMemory
from disttgl.pipeline.streams import StageStreams


class MemoryPrefetch:
    """Iterate ``batches`` with each one's memory fetched ahead into ``memory`` (``depth`` at most).

    Args:
        batches: the epoch's training batches, in order.
        memory: the run's :class:`StaleMemory` (its :meth:`~StaleMemory.start_epoch` already called).
        depth: how many fetched batches may wait for the trainer.
        streams: ``--pipeline streams``: fetch on ``streams.fetch``; None: on the default stream.
    """

    def __init__(self, batches: Iterable[Batch], memory: StaleMemory, depth: int = 2,
                 streams: StageStreams | None = None):
        if streams is not None and not memory.stream_events:  # the fetch stream would not wait for the writes
            raise ValueError("a fetch on its own stream needs a StaleMemory(stream_events=True)")
        self.batches, self.memory, self.depth, self.streams = batches, memory, max(1, depth), streams

    def __iter__(self) -> Iterator[Batch]:
        streams = self.streams

        def fetch_in_order() -> Iterator[tuple[Batch, tuple, object]]:
            # the batches are iterated here too, so their copies are awaited on the fetch stream
            with torch.cuda.stream(streams.fetch) if streams is not None else contextlib.nullcontext():
                for i, batch in enumerate(self.batches):
                    fetched = self.memory.fetch(batch, i)
                    if fetched is None:  # the trainer stopped: abort_fetch ended the wait
                        return
                    yield batch, fetched, None if streams is None else streams.mark()

        try:
            for batch, fetched, ready in read_ahead(fetch_in_order(), self.depth, "disttgl-memory-fetch",
                                                    release=self.memory.abort_fetch):
                if streams is not None:
                    streams.wait(ready, batch, fetched)
                self.memory.hand_over(batch, fetched)
                yield batch
        finally:
            self.memory.resume_fetch()
            if streams is not None:  # a fetch left behind by an early stop ends before the next epoch's reset
                torch.cuda.current_stream(streams.device).wait_stream(streams.fetch)
