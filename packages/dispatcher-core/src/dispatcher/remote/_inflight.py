"""The caller's record of the tasks it has handed to workers and not heard back about.

It is the transport's one stale filter: a report counts only if its task is still here, on
the worker that reports it (the scheduler may have cancelled it, or the worker may be a
replacement under the same name). It also keeps deadlines: a task with a timeout gets one
when its worker says it started.

Every method is one or two dictionary operations: the owner may call them from its reader
thread and its scheduler thread without a lock, as long as it serialises what it composes
from several.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..transport import Key, TaskSpec

__all__ = ["InFlight"]


class InFlight:
    """Tasks submitted and not yet reported; deadlines of those started."""

    __slots__ = ("deadlines", "tasks")

    def __init__(self) -> None:
        self.tasks: dict[Key, TaskSpec] = {}
        """Every task out, by key (read it, do not change it)."""
        self.deadlines: dict[Key, tuple[float, TaskSpec]] = {}
        """Key -> (monotonic deadline, task), for timed tasks that have started."""

    def add(self, spec: TaskSpec) -> None:
        """Record ``spec`` as out on its worker, until it is taken or forgotten."""
        self.tasks[spec.key] = spec

    def get(self, key: Key, worker: str) -> TaskSpec | None:
        """The task ``key`` if it is still out on ``worker``."""
        spec = self.tasks.get(key)
        return spec if spec is not None and spec.worker == worker else None

    def take(self, key: Key, worker: str) -> TaskSpec | None:
        """Remove and return task ``key`` if it is still out on ``worker``; ``None`` for a
        stale report (cancelled, already reported, or from another incarnation)."""
        tasks = self.tasks
        spec = tasks.get(key)
        if spec is None or spec.worker != worker:
            return None
        taken = tasks.pop(key, None)
        if taken is not spec:  # another thread took it meanwhile
            if taken is not None:
                tasks[key] = taken  # and even sent it again: that one stays out
            return None
        if spec.timeout is not None:
            self.deadlines.pop(key, None)
        return spec

    def started(self, key: Key, worker: str, now: float) -> None:
        """Task ``key`` started on ``worker`` at ``now``: its deadline runs from there."""
        spec = self.get(key, worker)
        # ``inf`` is no limit: a deadline at infinity would only overflow a wait.
        if spec is not None and spec.timeout is not None and spec.timeout < math.inf:
            self.deadlines[key] = (now + spec.timeout, spec)

    def storing(self, key: Key, worker: str, now: float, seconds: float) -> None:
        """Task ``key``'s function returned on ``worker`` and its result is being
        stored: its deadline is now ``seconds`` from ``now``, however long its timeout."""
        spec = self.get(key, worker)
        if spec is not None and key in self.deadlines:
            self.deadlines[key] = (now + seconds, spec)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or ``None`` when no timed task runs."""
        if not self.deadlines:
            return None
        return min(deadline for deadline, _ in self.deadlines.values())

    def expired(self, now: float) -> list[TaskSpec]:
        """Remove and return the tasks past their deadline at ``now``."""
        late = [spec for deadline, spec in list(self.deadlines.values()) if deadline <= now]
        for spec in late:
            self.take(spec.key, spec.worker)
        return late

    def cancel(self, specs: Iterable[TaskSpec]) -> tuple[list[TaskSpec], list[TaskSpec]]:
        """Remove these tasks; return those that were out and not known to have started,
        and those known to have (a worker may still skip the first kind)."""
        waiting: list[TaskSpec] = []
        running: list[TaskSpec] = []
        for spec in specs:
            if self.tasks.get(spec.key) is not spec:
                continue
            (running if spec.key in self.deadlines else waiting).append(spec)
            self.take(spec.key, spec.worker)
        return waiting, running

    def drop_worker(self, worker: str) -> list[TaskSpec]:
        """``worker`` is gone: remove and return everything that was out on it."""
        gone = [spec for spec in list(self.tasks.values()) if spec.worker == worker]
        for spec in gone:
            self.take(spec.key, worker)
        return gone

    def all(self) -> list[TaskSpec]:
        """Every task out, on every worker."""
        return list(self.tasks.values())
