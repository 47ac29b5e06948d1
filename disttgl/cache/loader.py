"""``BatchLoader``: batches of one split read ahead on a background thread."""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import torch

from disttgl.cache import cuda_events
from disttgl.cache.ahead import read_ahead
from disttgl.cache.batch import Batch
from disttgl.cache.reader import BatchCache, open_cache


class BatchLoader:
    """Iterate ``items`` = (batch index, negative set) of one split as :class:`Batch`es.

    A background thread reads ahead up to ``prefetch`` batches (optionally moved to ``device``), so
    reading overlaps compute. ``negatives=False`` reads each batch's positive part only. The HDF5 file is opened lazily by the process that iterates (never
    inherited across fork/spawn); an error in the thread is re-raised to the caller.

    With ``copy_stream`` (a CUDA stream on ``device``: ``--pipeline streams``) the thread issues each
    batch's copies on that stream; the iterating thread's current stream waits for them on the
    device, not on the host (``disttgl.cache.cuda_events``). Without it the copies go to the default
    stream, ordered with everything else there.
    """

    def __init__(self, cache_path: str | os.PathLike, split: str, items: Sequence[tuple[int, int]], *,
                 prefetch: int = 4, device: torch.device | str | None = None,
                 graph_path: str | os.PathLike | None = None, minibatch_parallelism: int | None = None,
                 negatives: bool = True, copy_stream: "torch.cuda.Stream | None" = None):
        self.cache_path, self.split, self.items = cache_path, split, list(items)
        self.copy_stream = copy_stream
        self.negatives = negatives
        self.prefetch, self.device = max(1, prefetch), device
        self.graph_path, self.minibatch_parallelism = graph_path, minibatch_parallelism
        self._cache: BatchCache | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _open(self) -> BatchCache:
        if self._cache is None or self._pid != os.getpid():
            self._cache = open_cache(self.cache_path, graph_path=self.graph_path,
                                     minibatch_parallelism=self.minibatch_parallelism)
            self._pid = os.getpid()
        return self._cache

    def __iter__(self) -> Iterator[Batch]:
        cache = self._open()
        device = None if self.device is None else torch.device(self.device)

        on_stream = self.copy_stream is not None and device is not None and device.type == "cuda"

        def produce() -> Iterator[tuple[Batch, Any]]:
            for b, s in self.items:
                batch = cache.batch(self.split, int(b), int(s), self.negatives)
                copied = None  # the event the copies are done at (copy_stream only)
                if on_stream:
                    with torch.cuda.stream(self.copy_stream):
                        batch = batch.pin_memory().to(device, non_blocking=True)
                        copied = cuda_events.mark(device)
                elif device is not None and device.type != "cpu":
                    batch = batch.pin_memory().to(device, non_blocking=True)
                yield batch, copied

        for batch, copied in read_ahead(produce(), self.prefetch, "disttgl-batch-loader"):
            if copied is not None:
                cuda_events.wait(device, copied, batch)
            yield batch

    def __getstate__(self) -> dict[str, Any]:
        # Sent to another process (spawn, torchrun workers): never ship an open file mapping.
        return {**self.__dict__, "_cache": None, "_pid": None, "copy_stream": None}

    def close(self) -> None:
        if self._cache is not None and self._pid == os.getpid():
            self._cache.close()
        self._cache = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
