"""A worker rank: its main thread runs the hub (all MPI traffic), a second thread runs
tasks in order. Results stay here until freed; another rank that needs one asks for it
and gets it straight from here."""

from __future__ import annotations

import asyncio
import inspect
import threading
from queue import SimpleQueue
from time import perf_counter
from typing import Any

from dispatcher.transport import (
    call_task,
    capture_error,
    serialization_error,
    size_of,
    unpickling_error,
)

from ._channel import Hub, encode

_STOP = object()
_REPORT_NOW = 1e-3  # seconds: a task this long is reported without waiting for others
ROOT = 0


def _dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


class _InputError(Exception):
    """An input could not be sent from the rank that holds it."""


class _Unloadable:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class WorkerRank:
    def __init__(self, comm: Any) -> None:
        self.rank = comm.Get_rank()
        self.hub = Hub(comm, self.deliver)
        self.store: dict[int, Any] = {}
        self.functions: dict[int, Any] = {}
        self.cancelled: set[int] = set()
        self.queued: set[int] = set()
        self.queue: SimpleQueue[Any] = SimpleQueue()
        self.replies: dict[int, tuple[threading.Event, list[Any]]] = {}
        self.done: list[tuple[Any, ...]] = []
        self.current: int | None = None  # the task running now

    def serve(self) -> None:
        """Until rank 0 says stop. Returns on the main thread, so MPI can finalise even if
        a task that ran past its timeout is still running."""
        threading.Thread(
            target=self._execute_loop, name="dispatcher-mpi-tasks", daemon=True
        ).start()
        self.hub.loop()
        self.hub.flush()

    # -- on the hub thread -----------------------------------------------------------------

    def deliver(self, source: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "run":
            for task in message[1]:
                self.queued.add(task[0])
                self.queue.put(task)
        elif kind == "fn":
            try:
                self.functions[message[1]] = _loads(message[2])
            except BaseException as exc:
                self.functions[message[1]] = _Unloadable(exc)
        elif kind == "free":
            for key in message[1]:
                self.store.pop(key, None)
        elif kind == "fetch":
            key = message[1]
            if key not in self.store:
                self.hub.post(source, ("data", key, False, None))
                return
            value = self.store[key]
            try:
                self.hub.post(source, ("data", key, True, value))
            except Exception as exc:
                culprit = f"{type(value).__module__}.{type(value).__qualname__}: {exc}"
                self.hub.post(source, ("data", key, False, culprit))
        elif kind == "data":
            waiter = self.replies.get(message[1])
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()
        elif kind == "cancel":
            self.cancelled.update(message[1])
            current = self.current
            if current is not None and current in message[1]:
                self.hub.post(source, ("busy", current))
        elif kind == "reset":
            # Rank 0 gave up on what it sent here: drop queued tasks and held results.
            self.cancelled.update(self.queued)
            self.store.clear()
            current = self.current
            if current is not None:
                self.hub.post(source, ("busy", current))
        elif kind == "stop":
            self.hub.running = False

    # -- on the task thread ----------------------------------------------------------------

    def _execute_loop(self) -> None:
        queue = self.queue
        while True:
            task = queue.get()
            self.current = task[0]
            self._execute(task)
            self.current = None
            if self.done and queue.empty():
                self._flush()

    def _flush(self) -> None:
        done, self.done = self.done, []
        if done:
            self.hub.post(ROOT, ("done", done))

    def _fail(self, key: int, error: BaseException, duration: float) -> None:
        self._flush()
        self.hub.post(ROOT, ("fail", key, duration, capture_error(error, _dumps)))

    def _execute(self, task: tuple[Any, ...]) -> None:
        key, token, args, kwargs, inline, shape, deps, sources, want, timed, last_use = task
        self.queued.discard(key)
        if key in self.cancelled:
            self.cancelled.discard(key)
            return
        func = self.functions[token]  # sent before the first task that uses it
        if isinstance(func, _Unloadable):
            self._fail(key, unpickling_error(key, "function", func.error), 0.0)
            return
        try:
            values, missing = self._inputs(deps, sources, inline)
        except _InputError as exc:
            self._fail(key, serialization_error(key, "input", None, exc), 0.0)
            return
        if missing:
            self._flush()
            self.hub.post(ROOT, ("lost", key, missing))
            return
        for used in last_use:  # nothing else reads them: do not wait to be told
            self.store.pop(used, None)
        if timed:
            self._flush()
            self.hub.post(ROOT, ("started", key))
        start = perf_counter()
        try:
            value = call_task(func, args, kwargs, shape, values)
            if inspect.isawaitable(value):
                value = asyncio.run(_wait(value))
        except Exception as exc:
            self._fail(key, exc, perf_counter() - start)
            return
        duration = perf_counter() - start
        self.store[key] = value
        if want:
            try:
                # Fail here, naming the node, rather than in the hub. Buffers are left
                # out of band, as the hub will send them: checking copies nothing big.
                encode(value)
            except Exception as exc:
                del self.store[key]
                self._fail(key, serialization_error(key, "result", value, exc), duration)
                return
            self.done.append((key, duration, size_of(value), value))
        else:
            self.done.append((key, duration, size_of(value)))
        # Completions of tiny tasks travel together; after a long one the caller hears
        # at once, so the next task arrives before this worker's queue runs dry.
        if len(self.done) >= 64 or duration >= _REPORT_NOW:
            self._flush()

    def _inputs(
        self, deps: tuple[int, ...], sources: tuple[int, ...] | None, inline: dict[int, Any] | None
    ) -> tuple[list[Any], list[int]]:
        """Input values; those held by other ranks are fetched from them directly."""
        remote: dict[int, tuple[threading.Event, list[Any]]] = {}
        if sources is not None:
            for key, source in zip(deps, sources, strict=True):
                if source > 0 and source != self.rank and key not in remote:
                    waiter: tuple[threading.Event, list[Any]] = (threading.Event(), [])
                    remote[key] = self.replies[key] = waiter
                    self.hub.expecting += 1
                    self.hub.post(source, ("fetch", key))
        # Wait for every reply before looking at any, so none is left behind.
        replies: dict[int, tuple[Any, ...]] = {}
        for key, (event, reply) in remote.items():
            event.wait()
            self.hub.expecting -= 1
            self.replies.pop(key, None)
            replies[key] = reply[0]
        values: list[Any] = []
        missing: list[int] = []
        for key in deps:
            if inline is not None and key in inline:
                values.append(inline[key])
            elif key in replies:
                _, _, ok, value = replies[key]
                if ok:
                    values.append(value)
                elif value is not None:
                    raise _InputError(f"cannot pickle '{value}'")
                else:
                    missing.append(key)
            elif key in self.store:
                values.append(self.store[key])
            else:
                missing.append(key)
        return values, missing


def _loads(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


async def _wait(awaitable: Any) -> Any:
    return await awaitable
