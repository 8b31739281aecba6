"""Tasks given up on that may still run: the worker threads they take, until they return.

dask cannot stop a running task: released by the caller (fail-fast, a cancelled run, a
timeout), it runs its call to the end in its worker thread, which takes no other task
meanwhile. The
scheduler must not queue new work behind it, so the transport reports such a worker with
fewer slots (none, when every thread is taken) until the task returns.

A task given up on is presumed running at once (when its inputs were all there, it may
be); a thread of our own then asks its worker, a few times a second, which of them it
still runs, and gives back each thread as soon as its task is gone. When it finds every
thread of a worker taken, it says so (``full``): the transport restarts the worker if it
started the cluster, or else hands back the tasks queued there meanwhile (sent before the
worker was known to be busy) to be placed elsewhere. Tasks known to run (past their
timeout: their worker said they started, and they have not returned) count at once,
without waiting for a check.

A worker that does not answer within :data:`ASK_TIMEOUT` while it holds a task given up
on is taken whole: its event loop is starved (a task holding the GIL in C code) or it is
frozen, so none of its threads would take work, and only its nanny (another process) can
end it. The others are then asked one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dispatcher.remote import start_thread

from ._task import still_running

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Abandoned"]

CHECK_INTERVAL = 0.2
"""Seconds between asking the workers about tasks given up on."""

ASK_TIMEOUT = 2.0
"""Seconds a worker has to answer: a frozen one never does, nor one whose event loop a
task holding the GIL starves."""

SILENT: Any = object()
"""A worker's answer when it gave none within :data:`ASK_TIMEOUT`."""

MISSES = 2
"""Checks a task must be unknown to its worker in before it counts as gone: the release
and the check travel different ways, and the worker may not have seen the task yet."""


class Abandoned:
    """Per worker, the tasks given up on that may still run there, and how many threads
    they take. ``changed(worker, labels)`` is called (under this object's lock, so in
    order) whenever that count changes, with the labels of the tasks that take them; and
    ``full(worker)`` when a check found every thread of ``worker`` taken. ``client`` gives
    the client to ask workers through, ``threads`` the threads of a worker."""

    def __init__(
        self,
        client: Callable[[], Client],
        changed: Callable[[str, list[str]], None],
        full: Callable[[str], None],
        threads: Callable[[str], int],
    ) -> None:
        self._client = client
        self._changed = changed
        self._full = full
        self._threads = threads
        self._lock = threading.Condition(threading.Lock())
        self._keys: dict[str, dict[str, int]] = {}  # worker -> dask key -> checks missed
        self._busy: dict[str, int] = {}  # worker -> threads taken
        self._labels: dict[str, str] = {}  # dask key -> its node's label
        self._running: dict[str, list[str]] = {}  # worker -> keys it ran at the last check
        self._thread: threading.Thread | None = None
        self._closed = False

    def busy(self, worker: str) -> int:
        """Threads of ``worker`` still running tasks given up on."""
        return self._busy.get(worker, 0)

    def add(self, worker: str, labels: Mapping[str, str], running: bool = False) -> None:
        """These tasks of ``worker`` (dask key -> the node's label) were given up on, and
        may be running; ``running``: they are known to run (they said they started and
        have not returned), so a worker they take whole is ``full`` at once."""
        with self._lock:
            known = self._keys.setdefault(worker, {})
            for key, label in labels.items():
                known[key] = 0
                self._labels[key] = label
            threads = self._threads(worker)
            self._set_busy(worker, min(threads, len(known)))
            if running:
                runs = self._running.setdefault(worker, [])
                runs += [key for key in labels if key not in runs]
                if len(runs) >= threads:
                    self._full(worker)
            if self._thread is None and not self._closed:
                self._thread = start_thread("dispatcher-dask-abandoned", self._run, self._died)
            self._lock.notify()

    def running(self, worker: str) -> list[str]:
        """The labels of the tasks given up on that ``worker`` runs, as far as known."""
        with self._lock:
            return self._running_labels(worker)

    def _running_labels(self, worker: str) -> list[str]:
        keys = self._running.get(worker) or list(self._keys.get(worker, ()))
        return [self._labels.get(key, key) for key in keys]

    def forget_worker(self, worker: str) -> None:
        """``worker`` is gone, and whatever it was running with it."""
        with self._lock:
            for key in self._keys.pop(worker, {}):
                self._labels.pop(key, None)
            self._running.pop(worker, None)
            self._busy.pop(worker, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _set_busy(self, worker: str, busy: int) -> None:
        if self._busy.get(worker, 0) != busy:
            if busy:
                self._busy[worker] = busy
            else:
                self._busy.pop(worker, None)
            self._changed(worker, self._running_labels(worker))

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._keys and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                self._lock.wait(CHECK_INTERVAL)  # the release first, usually
                if self._closed:
                    return
                asked = {worker: list(keys) for worker, keys in self._keys.items()}
            answers = self._ask(asked)
            with self._lock:
                for worker, found in answers.items():
                    self._update(worker, found)

    def _ask(self, asked: dict[str, list[str]]) -> dict[str, Any]:
        """Each worker's answer: for each of its keys it still knows, whether it runs it;
        None when the worker could not be asked (it is gone: its loss is reported apart);
        :data:`SILENT` when it does not answer within :data:`ASK_TIMEOUT` (frozen, or its
        event loop starved), while the others are then asked one by one."""
        client = self._client()
        replies: dict[str, Any]
        try:
            replies = self._ask_workers(client, asked)
        except TimeoutError:
            replies = {}
            for worker, keys in asked.items():
                try:
                    replies.update(self._ask_workers(client, {worker: keys}))
                except TimeoutError:
                    replies[worker] = SILENT
        return {
            worker: reply if isinstance(reply, dict) or reply is SILENT else None
            for worker, reply in ((w, replies.get(w)) for w in asked)
        }

    @staticmethod
    def _ask_workers(client: Client, asked: dict[str, list[str]]) -> dict[str, Any]:
        keys = [key for worker_keys in asked.values() for key in worker_keys]
        replies: dict[str, Any] = client.run(
            still_running,
            keys,
            workers=list(asked),
            on_error="return",
            callback_timeout=ASK_TIMEOUT,
        )
        return replies

    def _update(self, worker: str, found: Any) -> None:
        known = self._keys.get(worker)
        if known is None:
            return  # forgotten meanwhile
        if found is None:
            return  # could not be asked: asked again next time, or its loss clears it
        if found is SILENT:
            # Starved or frozen with a task given up on: no thread of it takes work.
            self._set_busy(worker, self._threads(worker))
            self._full(worker)
            return
        running: list[str] = []
        for key in list(known):
            if key in found:
                known[key] = 0
                if found[key]:
                    running.append(key)
            else:
                known[key] += 1
                if known[key] >= MISSES:
                    del known[key]
                    self._labels.pop(key, None)
        self._running[worker] = running
        if not known:
            del self._keys[worker]
            self._running.pop(worker, None)
        threads = self._threads(worker)
        self._set_busy(worker, min(threads, len(running)))
        if len(running) >= threads:
            self._full(worker)

    def _died(self, exc: BaseException) -> None:
        """Nobody watches any more: give every thread back rather than keep a worker out
        for good (new work may then queue behind a task given up on)."""
        with self._lock:
            self._keys.clear()
            self._labels.clear()
            self._running.clear()
            self._thread = None
            for worker in list(self._busy):
                self._set_busy(worker, 0)
