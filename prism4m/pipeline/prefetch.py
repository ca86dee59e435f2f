"""Run an iterator ahead in a thread, a bounded number of items in advance.

The tokenize stage reads, decodes and crops the next samples while the encoder works on
the current batch (PIL, OpenCV and numpy release the GIL for most of that). Items come out
in order, so the output is exactly the serial one; an exception in the producer is raised
in the consumer at the item where it happened.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, produced up to ``depth`` ahead in a thread (``depth`` 0: in the caller)."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((_DONE, exc))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()  # a consumer that stops early releases the producer
        worker.join(timeout=5)
