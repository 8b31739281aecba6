"""A worker rank: its main thread runs the hub (all MPI traffic), a second thread runs
tasks in order (the kit's :class:`~dispatcher.remote.TaskRunner`). Results stay here until
freed; another rank that needs one asks for it and gets it straight from here."""

from __future__ import annotations

import pickle
import threading
import traceback
from typing import Any

from dispatcher.remote import Cancel, InputError, Run, Stop, TaskRunner, size_of, start_thread

from ._channel import Hub, encode
from ._messages import Busy, Data, Fetch, Reset

ROOT = 0


class WorkerRank(TaskRunner):
    def __init__(self, comm: Any) -> None:
        super().__init__()
        self.rank = comm.Get_rank()
        self.hub = Hub(comm, self.deliver)
        self.replies: dict[int, tuple[threading.Event, list[Data]]] = {}
        self.failure: str | None = None
        """Why the task thread ended, if it did: the job ends with it."""

    def serve(self) -> None:  # type: ignore[override]
        """Until rank 0 says stop. Returns on the main thread, so MPI can finalise even if
        a task that ran past its timeout is still running; raises if the task thread
        failed (the launcher then ends the job, with the reason)."""
        start_thread("dispatcher-mpi-tasks", super().serve, self._tasks_failed)
        self.hub.loop()
        self.hub.flush()
        if self.failure is not None:
            raise RuntimeError(f"rank {self.rank}: the task thread failed:\n{self.failure}")

    def _tasks_failed(self, error: BaseException) -> None:
        self.failure = "".join(traceback.format_exception(error))
        self.hub.running = False
        self.hub.wakeup.set()

    # -- the kit's hooks (on the task thread) ----------------------------------------------

    def send(self, message: Any) -> None:
        self.hub.post(ROOT, message)

    def pack_result(self, key: int, value: Any) -> tuple[Any, int]:
        # Pickled here, so that a value that cannot be fails its own node rather than the
        # hub, and rank 0 unpickles each result on its own. The buffers stay out of band:
        # the hub sends them raw, copying nothing big.
        header, buffers = encode(value)
        return (header, [pickle.PickleBuffer(b) for b in buffers]), size_of(value)

    def remote_inputs(self, deps: tuple[int, ...], sources: tuple[int, ...]) -> dict[int, Any]:
        """Fetched from the ranks that hold them (``sources``, in ``deps`` order; 0 for an
        input sent with the task), all asked at once."""
        remote: dict[int, tuple[threading.Event, list[Data]]] = {}
        for key, source in zip(deps, sources, strict=True):
            if source > 0 and source != self.rank and key not in remote:
                waiter: tuple[threading.Event, list[Data]] = (threading.Event(), [])
                remote[key] = self.replies[key] = waiter
                self.hub.expecting += 1
                self.hub.post(source, Fetch(key))
        # Wait for every reply before looking at any, so none is left behind.
        values: dict[int, Any] = {}
        unsendable: str | None = None
        for key, (event, reply) in remote.items():
            event.wait()
            self.hub.expecting -= 1
            self.replies.pop(key, None)
            data = reply[0]
            if data.found:
                values[key] = data.value
            elif data.value is not None:
                unsendable = data.value
        if unsendable is not None:
            raise InputError(f"cannot pickle '{unsendable}'")
        return values

    # -- on the hub thread -----------------------------------------------------------------

    def deliver(self, source: int, message: Any) -> None:
        kind = type(message)
        if kind is Run:
            self.receive(message)
        elif kind is Fetch:
            self._serve_fetch(source, message.key)
        elif kind is Data:
            waiter = self.replies.get(message.key)
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()
        elif kind is Cancel:
            self.receive(message)
            current = self.current
            if current is not None and current in message.keys:
                self.hub.post(source, Busy(current))
        elif kind is Reset:
            # Rank 0 gave up on what it sent here: drop queued tasks and held results.
            self.drop_queued()
            self.store.clear()
            current = self.current
            if current is not None:
                self.hub.post(source, Busy(current))
        elif kind is Stop:
            self.hub.running = False
        else:
            self.receive(message)

    def _serve_fetch(self, source: int, key: int) -> None:
        if key not in self.store:
            self.hub.post(source, Data(key, False, None))
            return
        value = self.store[key]
        try:
            self.hub.post(source, Data(key, True, value))
        except BaseException as exc:  # pickling runs the value's own code
            culprit = f"{type(value).__module__}.{type(value).__qualname__}: {exc}"
            self.hub.post(source, Data(key, False, culprit))
