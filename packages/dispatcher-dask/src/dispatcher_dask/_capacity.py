"""No capacity left on a user's cluster: every thread of every worker runs a task given up
on, which dask cannot stop, and the transport may not restart workers it did not start.

Once that has lasted :data:`CAPACITY_WAIT` (a task given up on may still return on its
own), :class:`Shortage` puts one worker back in scheduling as a stand-in with one slot,
which fails every task it is given with an error naming the tasks that hold the threads
and what to do: so a run ends with that error instead of waiting for ever. As soon as a
thread comes back, or a worker arrives, the stand-in goes back to its real slots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from dispatcher import DispatcherError
from dispatcher.transport import EventSink, TaskSpec

__all__ = ["CAPACITY_WAIT", "Shortage"]

CAPACITY_WAIT = 5.0
"""Seconds runs wait, once no worker has a thread free, before they fail with "no capacity
left"."""


class Shortage:
    """Watches for the moment no worker has a free thread. ``holding(name)`` gives the
    labels of the tasks given up on that hold ``name``'s threads; ``slots(name)`` its real
    slots now."""

    def __init__(
        self,
        events: Callable[[], EventSink],
        holding: Callable[[str], list[str]],
        slots: Callable[[str], int],
    ) -> None:
        self._events = events
        self._holding = holding
        self._slots = slots
        self._lock = threading.Lock()
        self._since: float | None = None  # since when no worker has had a free thread
        self.stand_in: str | None = None
        """The worker standing in, failing what it is given, while none has capacity."""

    def check(self, workers: Mapping[str, int]) -> None:
        """Look again at every worker's slots (worker name -> slots)."""
        with self._lock:
            if not workers or any(workers.values()):
                self._since = None
                stand_in, self.stand_in = self.stand_in, None
                if stand_in is not None and stand_in in workers:
                    self._events().worker_added(stand_in, workers[stand_in])
                return
            if self.stand_in not in workers:
                self.stand_in = None  # lost meanwhile: another stands in
            now = time.monotonic()
            if self._since is None:
                self._since = now
            elif self.stand_in is None and now - self._since >= CAPACITY_WAIT:
                self.stand_in = next(iter(workers))
                self._events().worker_added(self.stand_in, 1)

    def refuse(self, tasks: Sequence[TaskSpec], workers: Sequence[str]) -> list[TaskSpec]:
        """Fail the tasks placed on the stand-in; return the others."""
        stand_in = self.stand_in
        if stand_in is None:
            return list(tasks)
        kept = [spec for spec in tasks if spec.worker != stand_in]
        if len(kept) < len(tasks):
            error = self.error(workers)
            events = self._events()
            for spec in tasks:
                if spec.worker == stand_in:
                    events.task_failed(spec.key, spec.worker, error, 0.0)
        return kept

    def error(self, workers: Sequence[str]) -> DispatcherError:
        """The error for a task that no worker has a thread for."""
        lines = []
        for name in workers:
            labels = self._holding(name)
            held = ", ".join(repr(label) for label in labels) if labels else "tasks unknown"
            lines.append(f"  {name}: {held}")
        return DispatcherError(
            "no capacity left: every thread of every dask worker still runs a task that "
            "was given up on (past its timeout, or left by a failed or cancelled run), "
            "and dask cannot stop a running task:\n"
            + "\n".join(lines)
            + "\nthe threads come back when those tasks return. Make them return (a "
            "timeout= on those nodes fails them at their deadline, but their threads stay "
            "taken until they do), restart the workers (client.restart_workers(...) or "
            "client.restart()), or add workers; a cluster the dask executor starts "
            "itself restarts such workers on its own"
        )
