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

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..transport import Key, TaskSpec

__all__ = ["InFlight"]


class InFlight:
    """Tasks submitted and not yet reported, by worker; deadlines of those started."""

    __slots__ = ("_by_worker", "deadlines")

    def __init__(self) -> None:
        self._by_worker: dict[str, dict[Key, TaskSpec]] = {}
        self.deadlines: dict[Key, tuple[float, TaskSpec]] = {}
        """Key -> (monotonic deadline, task), for timed tasks that have started."""

    def on(self, worker: str) -> dict[Key, TaskSpec]:
        """The tasks out on ``worker`` (the live table: do not change it)."""
        tasks = self._by_worker.get(worker)
        if tasks is None:
            tasks = self._by_worker[worker] = {}
        return tasks

    def add(self, spec: TaskSpec) -> None:
        self.on(spec.worker)[spec.key] = spec

    def get(self, key: Key, worker: str) -> TaskSpec | None:
        """The task ``key`` if it is still out on ``worker``."""
        tasks = self._by_worker.get(worker)
        return tasks.get(key) if tasks is not None else None

    def take(self, key: Key, worker: str) -> TaskSpec | None:
        """Remove and return task ``key`` if it is still out on ``worker``; ``None`` for a
        stale report (cancelled, already reported, or from another incarnation)."""
        tasks = self._by_worker.get(worker)
        if tasks is None:
            return None
        spec = tasks.pop(key, None)
        if spec is not None and spec.timeout is not None:
            self.deadlines.pop(key, None)
        return spec

    def started(self, key: Key, worker: str, now: float) -> None:
        """Task ``key`` started on ``worker`` at ``now``: its deadline runs from there."""
        spec = self.get(key, worker)
        if spec is not None and spec.timeout is not None:
            self.deadlines[key] = (now + spec.timeout, spec)

    def is_started(self, key: Key) -> bool:
        return key in self.deadlines

    def next_deadline(self) -> float | None:
        """The earliest deadline, or ``None`` when no timed task runs."""
        if not self.deadlines:
            return None
        return min(deadline for deadline, _ in self.deadlines.values())

    def expired(self, now: float) -> list[TaskSpec]:
        """Remove and return the tasks past their deadline at ``now``."""
        late = [spec for deadline, spec in self.deadlines.values() if deadline <= now]
        for spec in late:
            self.take(spec.key, spec.worker)
        return late

    def cancel(self, specs: Iterable[TaskSpec]) -> tuple[list[TaskSpec], list[TaskSpec]]:
        """Remove these tasks; return those that were out and had not started, and those
        that had (a worker may still skip the first kind)."""
        waiting: list[TaskSpec] = []
        running: list[TaskSpec] = []
        for spec in specs:
            if self.get(spec.key, spec.worker) is not spec:
                continue
            (running if spec.key in self.deadlines else waiting).append(spec)
            self.take(spec.key, spec.worker)
        return waiting, running

    def drop_worker(self, worker: str) -> list[TaskSpec]:
        """``worker`` is gone: remove and return everything that was out on it."""
        tasks = self._by_worker.pop(worker, None)
        if not tasks:
            return []
        for key in tasks:
            self.deadlines.pop(key, None)
        return list(tasks.values())

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._by_worker.values())

    def __bool__(self) -> bool:
        return any(self._by_worker.values())

    def all(self) -> list[TaskSpec]:
        """Every task out, on every worker."""
        return [spec for tasks in list(self._by_worker.values()) for spec in list(tasks.values())]
