"""Tasks waiting to be sent to dask, sent in batches by a thread of their own.

dask's scheduler pays for each graph it is sent about as much as for each task in it, and
dispatcher submits a task or two per completion: the outbox sends at most one batch every
``interval`` while tasks keep coming, and at once otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from dispatcher.transport import TaskSpec

__all__ = ["Outbox"]


class Outbox:
    """Queues tasks for ``send``, called with each batch on the outbox's thread;
    ``failed`` is called with a batch whose ``send`` raised, and the exception."""

    def __init__(
        self,
        send: Callable[[Sequence[TaskSpec]], None],
        failed: Callable[[Sequence[TaskSpec], Exception], None],
        interval: float,
    ) -> None:
        self._send = send
        self._failed = failed
        self._interval = interval
        self._queued: list[TaskSpec] = []
        self._ready = threading.Condition(threading.Lock())
        self.sending = threading.Lock()
        """Held while a batch is being sent: whoever takes it sees every batch sent so far
        registered by ``send``."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dispatcher-dask-send", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, tasks: Iterable[TaskSpec]) -> None:
        with self._ready:
            self._queued.extend(tasks)
            self._ready.notify()

    def drop(self, tasks: Iterable[TaskSpec]) -> None:
        """Never send these, if they are still waiting."""
        gone = {id(spec) for spec in tasks}
        with self._ready:
            self._queued = [spec for spec in self._queued if id(spec) not in gone]

    def close(self) -> None:
        """Send nothing more; a batch being sent finishes."""
        with self._ready:
            self._closed = True
            self._queued.clear()
            self._ready.notify()

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._ready:
                while not self._queued and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
            wait = last + self._interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.sending:
                with self._ready:
                    if self._closed:
                        return
                    batch, self._queued = self._queued, []
                try:
                    self._send(batch)
                except Exception as exc:
                    self._failed(batch, exc)
            last = time.monotonic()
