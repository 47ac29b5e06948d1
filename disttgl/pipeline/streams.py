"""``--pipeline streams`` (CUDA): the pipeline's stages on their own CUDA streams, ordered by events
(docs/design.md §10.6).

``threads`` overlaps the stages on the host only: on a GPU every thread issues its kernels and copies
to the same default stream, so the device still runs them one after another. Here each stage that
moves data has its own stream:

- *copy* (stages 1-2): the batch loader's thread copies each batch from pinned host memory with
  non-blocking copies (``BatchLoader(copy_stream=...)``);
- *fetch* (stage 3): :class:`~disttgl.pipeline.executor.MemoryPrefetch`'s thread replays the pending
  writes into the read state and gathers the batch's rows;
- training (stage 4) and the memory write (stage 5) stay on the trainer's current stream.

A stage never blocks the host on the device: it records an event after its work and the stream
that needs the result waits on it (``disttgl.cache.cuda_events``). Events on one stream complete in
order, so waiting on the newest write's event covers every earlier write.

The host side is the ``threads`` executor's, so the versions read, and therefore the numbers, do not
depend on the executor; on CUDA the floating-point reductions of the backward pass are not
bit-reproducible between runs, so ``streams`` and ``off`` agree to rounding (tests/test_pipeline_streams.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from disttgl.cache import cuda_events


@dataclasses.dataclass
class StageStreams:
    """The copy and fetch streams of one training run on ``device`` (a CUDA device).

    Args:
        device: the training device.
    """

    device: torch.device
    copy: torch.cuda.Stream = dataclasses.field(init=False)
    fetch: torch.cuda.Stream = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDA streams need a CUDA device, got {self.device}")
        self.copy = torch.cuda.Stream(self.device)
        self.fetch = torch.cuda.Stream(self.device)

    def mark(self) -> torch.cuda.Event:
        return cuda_events.mark(self.device)

    def wait(self, event: torch.cuda.Event | None, *used: Any) -> None:
        cuda_events.wait(self.device, event, *used)
