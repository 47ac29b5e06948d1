"""Items produced on a background thread, read ahead a bounded number at a time.

One thread takes the items in order; an exception in it is re-raised to the consumer, and a consumer
that stops early (``break``, an error) stops the thread without leaving it blocked on a full queue.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def read_ahead(items: Iterable[T], depth: int, name: str,
               release: Callable[[], None] | None = None) -> Iterator[T]:
    """Iterate ``items``, produced up to ``depth`` ahead on a thread called ``name``.

    Args:
        items: iterated on the background thread (a generator's body runs there).
        depth: how many produced items may wait for the consumer (>= 1).
        name: the thread's name (shows in stack dumps).
        release: called when the consumer stops, before the thread is joined: wakes a producer that
            waits on something other than the queue (e.g. a write that will not come).
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(x: object) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set() or not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)
        finally:
            close = getattr(items, "close", None)  # a generator left early: run its cleanup here, now
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        if release is not None:
            release()
        thread.join()
