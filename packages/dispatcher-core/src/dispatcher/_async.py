"""The ``async`` executor: tasks on an anyio event loop (asyncio or trio).

Coroutine functions are awaited concurrently on the loop; plain functions run in daemon
worker threads (``threads=N``) or inline on the loop (``threads=0``). The transport is
made per run, on the run's own loop, and goes through the same scheduler as every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._errors import TaskTimeoutError
from ._executor import Executor
from ._inline import may_return_awaitable
from ._scheduler import DirectSink, Run
from ._threads import DaemonThreadPool
from .transport import Capabilities, EventSink, Key, TaskSpec, Transport, call_task

__all__ = ["AsyncExecutor", "AsyncTransport"]

UNLIMITED = 1 << 30


def _default_threads() -> int:
    # The same default as concurrent.futures.ThreadPoolExecutor.
    return min(32, (os.cpu_count() or 1) + 4)


def in_event_loop() -> bool:
    """Is an asyncio or trio loop running in this thread?"""
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            return True
        except RuntimeError:
            pass
    return False


class AsyncTransport(Transport):
    """One worker, ``"main"``, on the current event loop, with room for every task."""

    capabilities = Capabilities(interrupts_running_tasks=True)

    def __init__(self, run: Run, group: TaskGroup, pool: DaemonThreadPool | None) -> None:
        self.run = run
        self.group = group
        self.pool = pool
        self.store: dict[Key, Any] = {}
        self.scopes: dict[Key, anyio.CancelScope] = {}
        self.cancelled: set[Key] = set()
        self.failed_inline = False  # a task of this batch failed: the run is about to stop
        self._events: EventSink | None = None
        self._is_coroutine: dict[Any, bool] = {}
        self._plain: dict[Any, bool] = {}  # known never to return an awaitable
        native: Any = anyio.lowlevel.current_token().native_token
        # How a worker thread gets a callback run on this loop, without blocking.
        self.call_soon: Callable[..., Any] = (
            getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon
        )

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        return {"main": UNLIMITED}

    def runs_in_caller(self, func: Any) -> bool:
        # With threads=0 a plain function runs inline on the loop anyway; the scheduler
        # may as well call it itself.
        return self.pool is None and not may_return_awaitable(func)

    def _values(self, spec: TaskSpec) -> list[Any]:
        store, inline = self.store, spec.inline
        if inline is None:
            return [store[k] for k in spec.deps]
        return [inline[k] if k in inline else store[k] for k in spec.deps]

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        is_coroutine = self._is_coroutine
        run = self.run
        self.failed_inline = False
        for spec in tasks:
            if run.aborted or (run.throw and self.failed_inline):
                return  # fail-fast: what is still queued is dropped
            func = spec.func
            coro = is_coroutine.get(func)
            if coro is None:
                coro = is_coroutine[func] = inspect.iscoroutinefunction(func)
                self._plain[func] = not may_return_awaitable(func)
            if coro:
                self.group.start_soon(self._await, spec, self._values(spec))
            elif self.pool is None:
                self._inline(spec)
            else:
                self._to_thread(spec)

    def _inline(self, spec: TaskSpec) -> None:
        events = self._events
        assert events is not None
        start = perf_counter()
        try:
            value = call_task(spec.func, spec.args, spec.kwargs, spec.shape, self._values(spec))
        except Exception as exc:
            self.failed_inline = True
            events.task_failed(spec.key, "main", exc, perf_counter() - start)
            return
        if not self._plain[spec.func] and inspect.isawaitable(value):
            self.group.start_soon(self._await_value, spec, value, start)
            return
        self._done(spec, value, perf_counter() - start)

    def _done(self, spec: TaskSpec, value: Any, duration: float) -> None:
        events = self._events
        assert events is not None
        if spec.timeout is not None and duration > spec.timeout:
            events.task_failed(
                spec.key, "main", TaskTimeoutError(spec.label, spec.timeout), duration
            )
            return
        self.store[spec.key] = value
        if spec.want_result:
            events.task_finished(spec.key, "main", duration, None, value)
        else:
            events.task_finished(spec.key, "main", duration, None)

    async def _await(self, spec: TaskSpec, values: list[Any]) -> None:
        start = perf_counter()
        try:
            awaitable = call_task(spec.func, spec.args, spec.kwargs, spec.shape, values)
        except Exception as exc:
            self._failed(spec, exc, perf_counter() - start)
            return
        await self._await_value(spec, awaitable, start)

    async def _await_value(self, spec: TaskSpec, awaitable: Awaitable[Any], start: float) -> None:
        key = spec.key
        with anyio.CancelScope() as scope:
            self.scopes[key] = scope
            if spec.timeout is not None:
                scope.deadline = anyio.current_time() + spec.timeout
            try:
                value = await awaitable
            except Exception as exc:
                self.scopes.pop(key, None)
                self._failed(spec, exc, perf_counter() - start)
                return
        self.scopes.pop(key, None)
        duration = perf_counter() - start
        if scope.cancelled_caught:
            if key not in self.cancelled:
                self._failed(spec, TaskTimeoutError(spec.label, spec.timeout or 0.0), duration)
            return
        self._done(spec, value, duration)  # fails it if it blocked the loop past its deadline

    def _failed(self, spec: TaskSpec, error: BaseException, duration: float) -> None:
        assert self._events is not None
        self._events.task_failed(spec.key, "main", error, duration)

    def _to_thread(self, spec: TaskSpec) -> None:
        assert self.pool is not None
        values = self._values(spec)
        call_soon = self.call_soon
        state: dict[str, Any] = {}

        def job() -> None:
            if spec.key in self.cancelled:
                return
            state["start"] = perf_counter()
            try:
                outcome = (True, call_task(spec.func, spec.args, spec.kwargs, spec.shape, values))
            except BaseException as exc:  # SystemExit and the like fail the node too
                outcome = (False, exc)
            try:
                call_soon(self._thread_done, spec, outcome, state)
            except RuntimeError:
                pass  # the loop is gone: the run ended and this result is not wanted

        state["job"] = self.pool.submit(job, lambda: spec.key in self.cancelled)
        if spec.timeout is not None:
            self.group.start_soon(self._watch, spec, state)

    def _thread_done(
        self, spec: TaskSpec, outcome: tuple[bool, Any], state: dict[str, Any]
    ) -> None:
        if state.get("over") or spec.key in self.cancelled:
            return  # abandoned at its deadline, or cancelled
        state["done"] = True
        ok, value = outcome
        duration = perf_counter() - state["start"]
        if not ok:
            self._failed(spec, value, duration)
        elif inspect.isawaitable(value):
            self.group.start_soon(self._await_value, spec, value, state["start"])
        else:
            self._done(
                spec, value, duration if spec.timeout is None else min(duration, spec.timeout)
            )

    async def _watch(self, spec: TaskSpec, state: dict[str, Any]) -> None:
        """Abandon a thread task at its deadline, counted from when it started."""
        assert spec.timeout is not None
        while "start" not in state:
            if state.get("done") or spec.key in self.cancelled:
                return
            await anyio.sleep(0.01)
        remaining = state["start"] + spec.timeout - perf_counter()
        if remaining > 0:
            await anyio.sleep(remaining)
        if not state.get("done") and spec.key not in self.cancelled:
            state["over"] = True
            state["job"].abandon()  # its thread no longer counts toward the pool's size
            self._failed(
                spec, TaskTimeoutError(spec.label, spec.timeout), perf_counter() - state["start"]
            )

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        store = self.store
        for key in keys:
            store.pop(key, None)

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        for spec in tasks:
            self.cancelled.add(spec.key)
            scope = self.scopes.pop(spec.key, None)
            if scope is not None:
                scope.cancel()

    def close(self) -> None:
        for scope in self.scopes.values():
            scope.cancel()
        self.scopes.clear()
        self.store.clear()


@contextlib.contextmanager
def _interruptible(inline: bool) -> Iterator[None]:
    """Make Ctrl-C raise KeyboardInterrupt even while an inline task blocks the loop.

    asyncio's runner answers the first SIGINT by cancelling its main task, which a plain
    function running inline on the loop never notices.
    """
    if not (
        inline
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class AsyncExecutor(Executor):
    """Tasks on an anyio event loop; see the module docstring."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        threads: int | None = None,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        if threads is None:
            threads = workers if workers is not None else _default_threads()
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be a non-negative int, got {threads!r}")
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
        super().__init__("async", None, **options)
        self.threads = threads
        self.backend = backend
        self._pool = DaemonThreadPool(threads) if threads else None

    @property
    def capabilities(self) -> Capabilities:
        # A plain function running inline on the loop cannot be stopped at its deadline.
        return Capabilities(interrupts_running_tasks=self.threads > 0)

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.close()

    def _drive(self, run: Run) -> None:
        if not in_event_loop():
            with _interruptible(self.threads == 0):
                anyio.run(self._adrive, run, backend=self.backend)
            return
        # Called from inside a running loop (a notebook, or a task calling run()): that
        # loop is busy with us, so this run gets a loop of its own on another thread.
        box: list[BaseException] = []

        def target() -> None:
            try:
                anyio.run(self._adrive, run, backend=self.backend)
            except BaseException as exc:
                box.append(exc)

        thread = threading.Thread(target=target, name="dispatcher-run", daemon=True)
        thread.start()
        try:
            thread.join()
        except BaseException as exc:
            run.abort(run.error or exc)
            thread.join(5)
            raise
        if box:
            raise box[0]

    async def _adrive(self, run: Run) -> None:
        try:
            await self._drive_on_loop(run)
        except BaseExceptionGroup as group:
            # A task group wraps what escapes it; callers get the exception itself.
            raise _first_leaf(group) from None

    async def _drive_on_loop(self, run: Run) -> None:
        inbox = run.inbox
        async with anyio.create_task_group() as group:
            transport = AsyncTransport(run, group, self._pool)
            # Every report comes on this loop's thread: apply it at once.
            run.start(transport, transport.start(DirectSink(run)))
            try:
                while True:
                    progressed = run.dispatch()
                    if run.finished:
                        break
                    if progressed:
                        continue  # inline tasks finished inside dispatch()
                    # Nothing to do until a coroutine or a thread reports.
                    wake = anyio.Event()
                    inbox._waker = wake.set
                    try:
                        await wake.wait()
                    finally:
                        inbox._waker = None
                    run.process()
                    if run.finished:
                        break
            except BaseException as exc:
                run.abort(run.error or exc)
                raise
            finally:
                run.release_all()
                transport.close()
                group.cancel_scope.cancel()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group`` that is not a cancellation, else the first one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = exc.exceptions
        else:
            leaves.append(exc)
    cancelled = anyio.get_cancelled_exc_class()
    for exc in leaves:
        if not isinstance(exc, cancelled):
            return exc
    return leaves[0]
