"""Ordering work between CUDA streams with events, and keeping a tensor alive for the stream that
uses it (docs/design.md §10.6). Shared by the batch loader's copy stream and the pipeline's stages.

A stage never blocks the host on the device: it records an event after its work (:func:`mark`),
and the stream that needs the result waits on that event on the device (:func:`wait`). A tensor
made on one stream and used on another is registered with the user stream (``record_stream``), so
the caching allocator does not hand its block out again before that stream is done with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch


def tensors_in(x: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``x``: a tensor, or tuples, lists, dicts and dataclasses of them."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from tensors_in(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from tensors_in(item)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            yield from tensors_in(getattr(x, f.name))


def mark(device: torch.device) -> torch.cuda.Event:
    """An event recorded on ``device``'s current stream: done when the work issued so far is done."""
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def wait(device: torch.device, event: torch.cuda.Event | None, *used: Any) -> None:
    """Make ``device``'s current stream wait for ``event`` (on the device: the host goes on) and
    register every tensor in ``used`` with that stream."""
    stream = torch.cuda.current_stream(device)
    if event is not None:
        stream.wait_event(event)
    for t in tensors_in(used):
        if t.device.type == "cuda":
            t.record_stream(stream)
