"""The dask transport's sending thread: nothing that escapes a send leaves tasks unsent
and unreported."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dispatcher_dask._outbox import Outbox

pytestmark = pytest.mark.timeout(30)


class Failures:
    def __init__(self) -> None:
        self.seen: list[tuple[list[Any], BaseException]] = []
        self.event = threading.Event()

    def __call__(self, tasks: Any, exc: BaseException) -> None:
        self.seen.append((list(tasks), exc))
        self.event.set()


def test_a_send_raising_a_base_exception_fails_its_batch_and_the_thread_goes_on() -> None:
    sent: list[list[Any]] = []
    done = threading.Event()

    def send(tasks: Any) -> None:
        if "bad" in tasks:
            raise SystemExit("the client went away")
        sent.append(list(tasks))
        done.set()

    failures = Failures()
    outbox = Outbox(send, failures, 0.0)
    outbox.start()
    try:
        outbox.put(["bad"])
        assert failures.event.wait(10)
        assert failures.seen[0][0] == ["bad"]
        assert isinstance(failures.seen[0][1], SystemExit)
        outbox.put(["good"])
        assert done.wait(10)
        assert sent == [["good"]]
    finally:
        outbox.close()


def test_tasks_put_after_the_thread_died_are_failed_at_once() -> None:
    failures = Failures()
    outbox = Outbox(lambda tasks: None, failures, 0.0)
    outbox._on_death(RuntimeError("the sending thread died"))
    outbox.put(["late"])
    assert failures.seen[-1][0] == ["late"]
    assert "died" in str(failures.seen[-1][1])


@pytest.mark.parametrize(
    ("pending", "mean_run", "interval"),
    [
        (3, 0.010, 0.0),  # fewer than two tasks per thread out: sent at once
        (40, 0.0001, 0.01),  # tiny tasks: the shortest interval
        (40, 0.004, 0.02),  # 20 tasks of 4 ms queued per thread: a quarter of 80 ms
        (40, 0.010, 0.05),  # the longest interval, however long the queued work
    ],
)
def test_batches_wait_longer_the_longer_the_queued_work_lasts(
    pending: int, mean_run: float, interval: float
) -> None:
    # One graph went every 10 ms whatever the tasks: with 10 ms tasks, one per two
    # completions, and dask's scheduler pays per graph.
    from dispatcher_dask._transport import DaskTransport

    transport = DaskTransport(2)  # not started: no cluster
    transport._nthreads = {"a": 1, "b": 1}
    transport._pending = dict.fromkeys(range(pending))  # type: ignore[arg-type]
    transport._mean_run = mean_run
    assert transport._send_interval() == pytest.approx(interval)
