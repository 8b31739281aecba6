"""A pool of daemon threads for plain functions under the ``async`` executor.

anyio's worker threads are not daemons, so a task abandoned at its timeout would keep the
interpreter from exiting; these threads never do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue

__all__ = ["DaemonThreadPool"]


class DaemonThreadPool:
    """At most ``size`` threads, started on demand, kept while the pool lives."""

    def __init__(self, size: int, name: str = "dispatcher-thread") -> None:
        self.size = size
        self._name = name
        self._queue: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job()`` on some thread of the pool (it must not raise)."""
        self._queue.put(job)
        with self._lock:
            if self._idle == 0 and self._threads < self.size and not self._closed:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._threads}", daemon=True
                ).start()

    def _work(self) -> None:
        get = self._queue.get
        while True:
            with self._lock:
                self._idle += 1
            job = get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            job()

    def close(self) -> None:
        """Let idle threads go; a thread stuck in an abandoned task ends with it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = self._threads
        for _ in range(count):
            self._queue.put(None)
