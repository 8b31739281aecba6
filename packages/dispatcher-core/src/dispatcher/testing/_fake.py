"""An in-memory transport with several pretend workers, for testing schedulers and hooks.

Each worker is a dict of results. Tasks run inside :meth:`FakeTransport.submit`, in the
order given, on the worker the scheduler chose; inputs held by another worker are copied
over and the copy is recorded in :attr:`FakeTransport.moves` (and kept there, by a
subclass that declares ``keeps_fetched_inputs``). Faults are injected with
:meth:`FakeTransport.kill_on`: the worker dies as that task starts, losing everything it
held, and comes back empty under the same name. ``in_caller`` names the functions the
scheduler may call itself (see :meth:`~dispatcher.transport.Transport.runs_in_caller`).
``move_seconds(source, worker, nbytes)``, when given, is what copying an input is taken to
have cost: each task's copies are then reported as one timed move
(:meth:`~dispatcher.transport.EventSink.inputs_moved`); without it none is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import Any

from .._executor import Executor
from ..transport import Capabilities, EventSink, Key, TaskSpec, Transport, call_task

__all__ = ["FakeTransport", "fake_executor"]


class FakeTransport(Transport):
    """``workers`` pretend workers named ``fake-0``, ``fake-1``..., each with ``slots``."""

    capabilities = Capabilities(survives_worker_loss=True, runs_tasks_in_order=True)

    def __init__(
        self,
        workers: int = 2,
        slots: int = 1,
        in_caller: Callable[[Callable[..., Any]], bool] | None = None,
        move_seconds: Callable[[str, str, int], float] | None = None,
    ) -> None:
        self.in_caller = in_caller
        self.move_seconds = move_seconds
        self.names = [f"fake-{i}" for i in range(workers)]
        self.slots = slots
        self.stores: dict[str, dict[Key, Any]] = {name: {} for name in self.names}
        self.ran: list[tuple[str, str]] = []
        """(label, worker) of every task run, in order."""
        self.batches: list[list[str]] = []
        """The labels of each :meth:`submit` call's tasks."""
        self.moves: list[tuple[Key, str, str]] = []
        """(key, from worker, to worker) of every input copied between workers."""
        self.freed: list[tuple[str, Key]] = []
        self.cancelled: list[Key] = []
        self.closed = False
        self._kill: dict[str, int] = {}
        self._events: EventSink | None = None

    def kill_on(self, label: str, times: int = 1) -> None:
        """The worker that starts the task labelled ``label`` dies, the next ``times`` times."""
        self._kill[label] = times

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        return {name: self.slots for name in self.names}

    def runs_in_caller(self, func: Callable[..., Any]) -> bool:
        return self.in_caller is not None and self.in_caller(func)

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        self.batches.append([spec.label for spec in tasks])
        for spec in tasks:
            self._run(spec)

    def _run(self, spec: TaskSpec) -> None:
        events = self._events
        assert events is not None
        worker = spec.worker
        store = self.stores[worker]
        if self._kill.get(spec.label, 0) > 0:
            self._kill[spec.label] -= 1
            store.clear()
            events.worker_lost(worker, "killed by the test", running=[spec.key])
            events.worker_added(worker, self.slots)
            return
        values = []
        missing = []
        copies: dict[Key, Any] = {}  # inputs taken from other workers
        for i, key in enumerate(spec.deps):
            source = spec.source_of(i)
            if source is None:
                assert spec.inline is not None
                values.append(spec.inline[key])
            elif key in self.stores[source]:
                value = self.stores[source][key]
                if source != worker:
                    self.moves.append((key, source, worker))
                    copies[key] = value
                values.append(value)
            else:
                missing.append(key)
        if missing:
            events.task_inputs_lost(spec.key, worker, missing)
            return
        if copies and self.move_seconds is not None:
            self._report_move(spec, copies)
        if self.capabilities.keeps_fetched_inputs:
            store.update(copies)
        for key in spec.last_use:
            store.pop(key, None)
        self.ran.append((spec.label, worker))
        start = perf_counter()
        try:
            value = call_task(spec.func, spec.args, spec.kwargs, spec.shape, values)
        except Exception as exc:
            events.task_failed(spec.key, worker, exc, perf_counter() - start)
            return
        store[spec.key] = value
        nbytes = len(value) if isinstance(value, (bytes, bytearray)) else None
        if spec.want_result:
            events.task_finished(spec.key, worker, perf_counter() - start, nbytes, value)
        else:
            events.task_finished(spec.key, worker, perf_counter() - start, nbytes)

    def _report_move(self, spec: TaskSpec, copies: dict[Key, Any]) -> None:
        """The copies ``spec``'s task took, as one move costed by :attr:`move_seconds`."""
        assert self.move_seconds is not None
        assert self._events is not None
        sources: dict[str, None] = {}
        nbytes, seconds = 0, 0.0
        counted: set[Key] = set()
        for i, key in enumerate(spec.deps):
            if key in copies and key not in counted:
                counted.add(key)
                source = spec.source_of(i)
                assert source is not None
                size = len(copies[key]) if isinstance(copies[key], (bytes, bytearray)) else 0
                sources[source] = None
                nbytes += size
                seconds += self.move_seconds(source, spec.worker, size)
        self._events.inputs_moved(spec.worker, [(tuple(sources), nbytes, seconds)])

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        store = self.stores[worker]
        for key in keys:
            self.freed.append((worker, key))
            store.pop(key, None)

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        self.cancelled.extend(spec.key for spec in tasks)

    def held(self) -> int:
        """How many results the workers hold right now."""
        return sum(len(store) for store in self.stores.values())

    def close(self) -> None:
        self.closed = True
        for store in self.stores.values():
            store.clear()


def fake_executor(transport: FakeTransport | None = None, **options: Any) -> Executor:
    """An executor on a :class:`FakeTransport` (a new two-worker one by default)."""
    return Executor("fake", transport or FakeTransport(), **options)
