"""Tasks waiting to be sent to dask, sent in batches by a thread of their own.

dask's scheduler pays for each graph it is sent (materializing, ordering, a hop to a
thread and back) many times what it pays per task in it, and dispatcher submits a task or
two per completion: the outbox holds a batch back until ``interval()`` seconds after the
last one was sent, so that one graph carries the tasks of many completions while the
workers have work queued; ``interval()`` says 0 when they may run short (a batch then goes
at once, as after a pause).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from dispatcher.remote import start_thread
from dispatcher.transport import TaskSpec

__all__ = ["Outbox"]


class Outbox:
    """Queues tasks for ``send``, called with each batch on the outbox's thread, at most
    one batch every ``interval`` seconds (or as often as ``interval()`` says, asked before
    each batch); ``failed`` is called with a batch whose ``send`` raised, and the
    exception."""

    def __init__(
        self,
        send: Callable[[Sequence[TaskSpec]], None],
        failed: Callable[[Sequence[TaskSpec], BaseException], None],
        interval: Callable[[], float] | float,
    ) -> None:
        self._send = send
        self._failed = failed
        self._interval = interval if callable(interval) else lambda: interval
        self._queued: list[TaskSpec] = []
        self._ready = threading.Condition(threading.Lock())
        self.sending = threading.Lock()
        """Held while a batch is being sent: whoever takes it sees every batch sent so far
        registered by ``send``."""
        self._closed = False
        self._died: BaseException | None = None  # what ended the sending thread, if anything

    def start(self) -> None:
        start_thread("dispatcher-dask-send", self._run, self._on_death)

    def put(self, tasks: Iterable[TaskSpec]) -> None:
        with self._ready:
            died = self._died
            if died is None:
                self._queued.extend(tasks)
                self._ready.notify()
                return
        self._failed(list(tasks), died)  # nobody would ever send them

    def _on_death(self, exc: BaseException) -> None:
        """The sending thread died: fail what waits, and all that is put from now on."""
        with self._ready:
            self._died = exc
            queued, self._queued = self._queued, []
        self._failed(queued, exc)

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
            wait = last + self._interval() - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.sending:
                with self._ready:
                    if self._closed:
                        return
                    batch, self._queued = self._queued, []
                try:
                    self._send(batch)
                except BaseException as exc:  # this batch fails; the thread goes on
                    self._failed(batch, exc)
            last = time.monotonic()
