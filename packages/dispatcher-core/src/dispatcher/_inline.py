"""The ``sync`` executor: every task in the calling thread.

The scheduler calls plain functions itself (see :meth:`InlineTransport.runs_in_caller`);
the rest -- coroutine functions and callables that may return an awaitable -- are
submitted to :class:`InlineTransport`, which runs each inside :meth:`~InlineTransport.submit`
and reports it at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

from ._awaiting import await_blocking, is_awaitable
from ._cache_plan import function_returned, timed_call
from ._errors import TaskTimeoutError
from ._executor import Executor
from ._scheduler import Run
from .transport import Capabilities, EventSink, Key, TaskSpec, Transport, call_task

__all__ = ["InlineTransport", "SyncExecutor", "may_return_awaitable"]


class InlineTransport(Transport):
    """One worker, ``"main"``: the thread that submits. Tasks run one at a time, in
    order, inside :meth:`submit`; results stay in a dict. One serves every run of its
    executor, each in the thread that drives it."""

    capabilities = Capabilities()

    def __init__(self) -> None:
        self.store: dict[Key, Any] = {}
        self._events: EventSink | None = None

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        return {"main": 1}

    def runs_in_caller(self, func: Any) -> bool:
        # Everything but what may need awaiting: the scheduler calling a plain function
        # itself is the same call, minus a spec and a report.
        return not may_return_awaitable(func)

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        events = self._events
        assert events is not None
        store = self.store
        for spec in tasks:
            key = spec.key
            shipped = spec.inline
            if shipped is None:
                values = [store[k] for k in spec.deps]
            else:
                values = [shipped[k] if k in shipped else store[k] for k in spec.deps]
            start = perf_counter()
            # (A cache's call: the timeout bounds the function, not the store after it.)
            clock = None if spec.timeout is None else timed_call(spec, start)
            token = None if clock is None else clock.set()
            try:
                value = call_task(spec.func, spec.args, spec.kwargs, spec.shape, values)
                if is_awaitable(value):
                    value = await_blocking(value)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise  # in the caller's thread it cannot be told from Ctrl-C: stop
                events.task_failed(key, "main", exc, perf_counter() - start)
                continue
            finally:
                if token is not None:
                    function_returned.reset(token)
            duration = perf_counter() - start
            ran = duration if clock is None else clock.ran(duration)
            if spec.timeout is not None and ran > spec.timeout:
                # A call in this thread cannot be interrupted: it fails when it returns.
                events.task_failed(
                    key, "main", TaskTimeoutError(spec.label, spec.timeout), duration
                )
                continue
            store[key] = value
            for dropped in spec.last_use:  # read by this task only: the scheduler frees none
                store.pop(dropped, None)
            if spec.want_result:
                events.task_finished(key, "main", duration, None, value)
            else:
                events.task_finished(key, "main", duration, None)

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        store = self.store
        for key in keys:
            store.pop(key, None)

    def close(self) -> None:
        self.store.clear()


def may_return_awaitable(func: Any) -> bool:
    # Checking every result with inspect.isawaitable costs more than the rest of a tiny
    # task; plain Python functions are known not to return awaitables unless async.
    if inspect.isfunction(func) or inspect.isbuiltin(func):
        return inspect.iscoroutinefunction(func)
    return True


class SyncExecutor(Executor):
    """Runs every task in the calling thread, in a deterministic order."""

    def __init__(self, **options: Any) -> None:
        super().__init__("sync", InlineTransport(), **options)

    async def _adrive(self, run: Run) -> None:
        # Synchronous by definition: the awaiting loop waits, as for any blocking call,
        # and the tasks run in its thread like every other run's.
        self._drive(run)
