"""``--pipeline threads``: the memory fetch of later batches overlaps the training of earlier ones.

Sampling and feature reads already run ahead on the batch loader's thread
(:class:`disttgl.cache.loader.BatchLoader`). This adds MSPipe's third stage: one background thread
fetches batch i's memory as soon as its version v_i is written (:meth:`StaleMemory.fetch` waits for
it), while the trainer trains and writes. One thread takes the batches strictly in order (MSPipe's
thread pool with plain locks does not guarantee that), and a read sees exactly the writes <= v_i
whatever the timing, so the executor changes speed only: for a fixed schedule of versions,
``threads`` and ``off`` give the same numbers (tests/test_pipeline_train.py).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from disttgl.cache.ahead import read_ahead
from disttgl.cache.batch import Batch
from disttgl.pipeline.stale_memory import StaleMemory


class MemoryPrefetch:
    """Iterate ``batches`` with each one's memory fetched ahead into ``memory`` (``depth`` at most).

    Args:
        batches: the epoch's training batches, in order.
        memory: the run's :class:`StaleMemory` (its :meth:`~StaleMemory.start_epoch` already called).
        depth: how many fetched batches may wait for the trainer.
    """

    def __init__(self, batches: Iterable[Batch], memory: StaleMemory, depth: int = 2):
        self.batches, self.memory, self.depth = batches, memory, max(1, depth)

    def __iter__(self) -> Iterator[Batch]:
        def fetch_in_order() -> Iterator[tuple[Batch, tuple]]:
            for i, batch in enumerate(self.batches):
                fetched = self.memory.fetch(batch, i)
                if fetched is None:  # the trainer stopped: abort_fetch ended the wait
                    return
                yield batch, fetched

        try:
            for batch, fetched in read_ahead(fetch_in_order(), self.depth, "disttgl-memory-fetch",
                                             release=self.memory.abort_fetch):
                self.memory.hand_over(batch, fetched)
                yield batch
        finally:
            self.memory.resume_fetch()
