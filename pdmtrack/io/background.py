"""Work in background threads through bounded queues.

``prefetched``: an iterator produced in a worker thread (decoding, feature extraction), a few
items ahead of its consumer. ``BackgroundCalls``: one function called in a worker thread, in
submission order, so a producer (the tracking loop) never waits on slow consumers (PNG
encoding, H.264, RLE) unless it runs a whole queue ahead of them.

Either way an exception in the worker reaches the other side. An exception in a
``BackgroundCalls`` worker stops it and is re-raised in the producer at its next ``submit`` or
at ``close``; leaving its ``with`` block waits for every submitted call, leaving it by an
exception stops the worker after the call in progress and drops the rest.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

_STOP = object()


class BackgroundCalls:
    """Calls ``function(*args)`` for each ``submit(*args)`` in a worker thread named ``name``.

    ``busy_seconds``: time the worker spent in ``function``; ``wait_seconds``: time ``submit``
    and ``close`` blocked the producer (a full queue, the final drain)."""

    def __init__(self, function: Callable[..., None], maxsize: int, name: str) -> None:
        self.function = function
        self.busy_seconds = 0.0
        self.wait_seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._abandon.is_set() or self._error is not None:
                if item is _STOP:
                    return
                continue  # drain without calling, so the producer's put never blocks forever
            began = time.perf_counter()
            try:
                self.function(*item)
            except BaseException as err:  # handed to the producer
                self._error = err
            self.busy_seconds += time.perf_counter() - began

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, *args: object) -> None:
        """Queue one call (blocks while the queue is full); raises the worker's error, if any."""
        self._raise_error()
        began = time.perf_counter()
        self._queue.put(args)
        self.wait_seconds += time.perf_counter() - began

    def close(self) -> None:
        """Wait for every queued call to finish; raise the worker's error, if any."""
        began = time.perf_counter()
        self._queue.put(_STOP)
        self._thread.join()
        self.wait_seconds += time.perf_counter() - began
        self._raise_error()

    def __enter__(self) -> BackgroundCalls:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        if kind is None:
            self.close()
            return
        self._abandon.set()  # the producer failed: finish the call in progress, drop the rest
        self._queue.put(_STOP)
        self._thread.join()


_DONE = object()


def prefetched(make_source: Callable[[], Iterator], prefetch: int, name: str) -> Iterator:
    """Run ``make_source()`` in a daemon thread named ``name``, handing items over through a bounded queue.

    The thread starts on the first ``next()``. The source is created, iterated and closed
    inside the worker (decoders are not shared between threads). Exceptions in the worker are re-raised in the consumer; when the
    consumer stops early (break, exception, garbage collection) the worker is told to
    stop and joined.
    """
    items: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            source = make_source()
            try:
                for item in source:
                    if not hand_over(item):
                        return
            finally:
                source.close()
        except BaseException as err:  # handed to the consumer, which re-raises it
            hand_over(err)
            return
        hand_over(_DONE)

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
