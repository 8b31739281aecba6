"""How deep a queue each dask worker is given beyond its threads: following the tasks' run
times unless the user fixed it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dispatcher_dask._prefetch import (
    FIRST_PREFETCH,
    MOST_PREFETCH,
    QUEUED_SECONDS,
    QueueDepth,
    depth_for,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("mean_run", "depth"),
    [
        (0.0, MOST_PREFETCH),  # (no time measured: tiny)
        (1e-5, MOST_PREFETCH),
        (QUEUED_SECONDS / 10, 10),
        (QUEUED_SECONDS, 1),
        (60.0, 1),  # at least one queued, whatever the tasks
    ],
)
def test_the_depth_is_about_a_tenth_of_a_second_of_work(mean_run: float, depth: int) -> None:
    assert depth_for(mean_run) == depth


def test_the_depth_moves_only_when_it_would_halve_or_double() -> None:
    depth = QueueDepth(None)
    assert depth.depth == FIRST_PREFETCH
    assert not depth.retuned(QUEUED_SECONDS / 20)  # 20 wanted, 16 kept
    assert depth.retuned(QUEUED_SECONDS / 40)
    assert depth.depth == 40
    assert not depth.retuned(QUEUED_SECONDS / 21)
    assert depth.retuned(QUEUED_SECONDS / 20)
    assert depth.depth == 20
    assert depth.retuned(2.0)
    assert depth.depth == 1


def test_a_depth_the_user_gave_is_kept() -> None:
    depth = QueueDepth(0)
    assert not depth.retuned(2.0)
    assert not depth.retuned(1e-6)
    assert depth.depth == 0


class Slots:
    """An event sink recording the slots said for each worker."""

    def __init__(self) -> None:
        self.said: dict[str, int] = {}
        self.event = threading.Event()

    def worker_added(self, worker: str, slots: int) -> None:
        self.said[worker] = slots
        self.event.set()


def transport_of(workers: dict[str, int], prefetch: int | None = None) -> Any:
    """A dask transport not started (no cluster), with ``workers`` (address -> threads)
    as it would know them, and an event sink that records slots."""
    from dispatcher_dask._transport import DaskTransport

    transport = DaskTransport(len(workers), prefetch=prefetch)
    transport._events = Slots()
    for address, threads in workers.items():
        transport._nthreads[address] = threads
        transport._names.add(address, "node1")
        transport._workers[address] = transport._slots(address)
    return transport


def test_long_tasks_leave_each_worker_one_queued_beyond_its_threads() -> None:
    # Before, every worker kept sixteen tasks queued whatever they lasted: pinned there,
    # as dask cannot move them, while another worker might idle.
    transport = transport_of({"tcp://10.0.0.1:1": 1, "tcp://10.0.0.1:2": 2})
    try:
        assert sorted(transport._workers.values()) == [1 + FIRST_PREFETCH, 2 + FIRST_PREFETCH]
        transport._learn(1, 1.5, 8)
        assert transport._events.event.wait(10)
        assert transport._events.said == {"dask-1@node1": 2, "dask-2@node1": 3}
    finally:
        transport.close()


def test_tiny_tasks_fill_deeper_queues_unless_the_user_fixed_the_depth() -> None:
    for prefetch, slots in ((None, 1 + MOST_PREFETCH), (4, None)):
        transport = transport_of({"tcp://10.0.0.1:1": 1}, prefetch)
        try:
            for _ in range(3):
                transport._learn(1, 1e-4, 8)
            transport._control.submit(lambda: None).result(10)  # what it had to say, said
            assert transport._events.said.get("dask-1@node1") == slots
        finally:
            transport.close()


def test_a_worker_paused_keeps_its_pause_when_the_depth_moves() -> None:
    transport = transport_of({"tcp://10.0.0.1:1": 1, "tcp://10.0.0.1:2": 1})
    transport._workers["tcp://10.0.0.1:2"] = 0  # every thread taken by a task given up on
    try:
        transport._learn(1, 1.5, 8)
        assert transport._events.event.wait(10)
        transport._control.submit(lambda: None).result(10)
        assert transport._events.said == {"dask-1@node1": 2}
    finally:
        transport.close()
