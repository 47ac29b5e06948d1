"""read_ahead: order kept, errors re-raised, an early stop ends the producer and runs its cleanup."""

import threading

import pytest

from disttgl.cache.ahead import read_ahead


def test_order_and_errors():
    assert list(read_ahead(iter(range(50)), 3, "t")) == list(range(50))

    def failing():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(read_ahead(failing(), 2, "t"))


def test_early_stop_closes_the_producer_and_releases_a_waiter():
    closed, blocker = threading.Event(), threading.Event()

    def producer():
        try:
            yield 0
            yield 1
            blocker.wait(10)  # a producer waiting on something else than the queue
            yield 2
        finally:
            closed.set()

    it = read_ahead(producer(), 1, "t", release=blocker.set)
    assert next(it) == 0
    it.close()  # the consumer stops
    assert blocker.is_set()  # release ran
    assert closed.wait(5)
