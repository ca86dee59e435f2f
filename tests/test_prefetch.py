"""pipeline/prefetch.prefetched: order kept, bounded look-ahead, errors where they happened."""

from __future__ import annotations

import threading
import time

import pytest

from prism4m.pipeline.prefetch import prefetched


def test_items_come_in_order_and_at_most_depth_ahead():
    produced = []
    lock = threading.Lock()

    def items():
        for i in range(50):
            with lock:
                produced.append(i)
            yield i

    seen = []
    for item in prefetched(items(), depth=3):
        time.sleep(0.002)  # a slow consumer: the producer runs ahead, but only so far
        with lock:
            ahead = len(produced) - len(seen) - 1
        assert ahead <= 3 + 1  # the queue's depth plus the item the producer holds
        seen.append(item)
    assert seen == list(range(50))


def test_a_producer_error_reaches_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("label 3 is broken")

    got = []
    with pytest.raises(ValueError, match="label 3 is broken"):
        for item in prefetched(items(), depth=2):
            got.append(item)
    assert got == [1, 2]


def test_depth_zero_runs_in_the_caller():
    assert list(prefetched(iter(range(5)), depth=0)) == [0, 1, 2, 3, 4]
