"""Deadlines of running tasks, kept by the caller: dask cannot stop a running task, so a
task past its timeout is failed where dispatcher waits for it, at its deadline.

A task's worker says when it starts it (a worker event, sent only by timed tasks), and its
deadline counts from when the caller hears that: a task queued on its worker behind others
is not timed while it waits. A thread of our own sleeps until the earliest deadline and
hands each task past its own to ``expired``, which decides, under the transport's lock,
whether it still runs. A deadline may be moved while it runs (:meth:`Deadlines.move`): a
cached task's function returned in time and its result is being stored, and the store is
bounded on its own (see :mod:`._task`).

A deadline seen much later than it passed (the caller was stopped, or starved) means that
the client's own thread did not run either: completions may wait unread on its connection.
Deadlines are then judged only after a grace (:data:`RESUMED_GRACE`), once those are read.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from dispatcher.remote import start_thread

__all__ = ["Deadlines"]

T = TypeVar("T")

_LONGEST_WAIT = 86400.0
"""The longest single wait for a deadline: a timeout of years (``1e10`` s) is valid, but
``Condition.wait`` refuses one past ``threading.TIMEOUT_MAX``."""

_STARVED = 1.0
"""Seconds a deadline may be seen late before the process is taken not to have run."""
RESUMED_GRACE = 0.5
"""Seconds after the caller comes back from not running before a deadline is judged."""


class Deadlines(Generic[T]):
    """Calls ``expired(item)`` on a thread of its own once ``item``'s deadline passes,
    unless it was discarded first. Items are told apart by identity: a task sent again
    (a retry, under the same key) is a new item, untouched by the old one's deadline."""

    def __init__(self, expired: Callable[[T], None], died: Callable[[BaseException], None]) -> None:
        self._expired = expired
        self._died = died
        self._heap: list[tuple[float, int, T]] = []
        self._live: dict[int, float] = {}  # id(item) -> its deadline, for those not discarded
        self._order = itertools.count()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, item: T, seconds: float) -> None:
        """``item`` started now: expire it ``seconds`` from now."""
        deadline = time.monotonic() + seconds
        with self._wake:
            if not self._closed:
                self._set(item, deadline)

    def move(self, item: T, seconds: float) -> None:
        """Expire ``item`` ``seconds`` from now instead, if it still has a deadline (one
        that expired, or was discarded, stays so)."""
        deadline = time.monotonic() + seconds
        with self._wake:
            if not self._closed and id(item) in self._live:
                self._set(item, deadline)

    def _set(self, item: T, deadline: float) -> None:
        """``item`` expires at ``deadline``; the caller holds the lock."""
        self._live[id(item)] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), item))
        if len(self._heap) > 2 * len(self._live) + 64:  # mostly discarded: compact
            self._heap = [e for e in self._heap if self._live.get(id(e[2])) == e[0]]
            heapq.heapify(self._heap)
        if self._thread is None:
            self._thread = start_thread("dispatcher-dask-deadlines", self._run, self._death)
        elif self._heap[0][2] is item:
            self._wake.notify()

    def discard(self, item: T) -> None:
        """``item`` is over (reported, cancelled, lost): forget its deadline."""
        if self._live:
            with self._wake:
                self._live.pop(id(item), None)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._heap.clear()
            self._live.clear()
            self._wake.notify()

    def _death(self, exc: BaseException) -> None:
        """Whatever escaped the thread: the deadlines it kept are lost (``died`` deals
        with their tasks); the next one added starts another thread."""
        with self._wake:
            self._thread = None
            self._heap.clear()
            self._live.clear()
        self._died(exc)

    def _run(self) -> None:
        resumed = -math.inf  # when this thread last came back from not running
        while True:
            with self._wake:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    heap = self._heap
                    if heap and heap[0][0] <= now:
                        if now - heap[0][0] > _STARVED and resumed < heap[0][0]:
                            resumed = now  # this late, the client's thread did not run either
                        if now - resumed < RESUMED_GRACE:
                            self._wake.wait(resumed + RESUMED_GRACE - now)
                            continue
                        deadline, _, item = heapq.heappop(heap)
                        if self._live.get(id(item)) != deadline:
                            continue  # discarded, or its id reused by a later item
                        del self._live[id(item)]
                        break
                    self._wake.wait(min(heap[0][0] - now, _LONGEST_WAIT) if heap else None)
            self._expired(item)
