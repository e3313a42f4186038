"""BackgroundCalls: order, the worker thread, bounded queue, errors both ways."""

from __future__ import annotations

import threading
import time

import pytest

from pdmtrack.io.background import BackgroundCalls


def test_calls_run_in_order_off_the_calling_thread() -> None:
    seen: list[tuple[int, str]] = []
    with BackgroundCalls(lambda i: seen.append((i, threading.current_thread().name)), 2, "writer") as calls:
        for i in range(20):
            calls.submit(i)
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"writer"} != {threading.current_thread().name}
    assert calls.busy_seconds >= 0 and calls.wait_seconds >= 0


def test_the_queue_bounds_how_far_the_producer_runs_ahead() -> None:
    started = threading.Event()
    release = threading.Event()
    done: list[int] = []

    def slow(i: int) -> None:
        started.set()
        release.wait(5)
        done.append(i)

    calls = BackgroundCalls(slow, 2, "writer")
    calls.submit(0)
    started.wait(5)  # the worker holds item 0; two more fit in the queue
    calls.submit(1)
    calls.submit(2)
    blocked = threading.Thread(target=calls.submit, args=(3,))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive()  # a fourth call waits for room
    release.set()
    blocked.join(5)
    calls.close()
    assert done == [0, 1, 2, 3]


def test_a_worker_error_reaches_the_producer() -> None:
    def failing(i: int) -> None:
        if i == 1:
            raise OSError("disk full")

    calls = BackgroundCalls(failing, 4, "writer")
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            calls.submit(i)
            time.sleep(0.01)
        calls.close()


def test_a_producer_error_drops_what_is_left() -> None:
    done: list[int] = []
    with pytest.raises(RuntimeError, match="tracking failed"):
        with BackgroundCalls(lambda i: (time.sleep(0.05), done.append(i)), 8, "writer") as calls:
            for i in range(8):
                calls.submit(i)
            raise RuntimeError("tracking failed")
    assert len(done) < 8
