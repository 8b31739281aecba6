"""The ``async`` executor: tasks on an anyio event loop (asyncio or trio).

Coroutine functions are awaited concurrently on the loop; plain functions run in daemon
worker threads (``threads=N``) or on the loop (``threads=0``: the scheduler calls them
itself). One :class:`AsyncTransport` serves every run of an executor, each run on the
loop that drives it, through the same scheduler and driver as every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._driver import drive_async
from ._errors import TaskTimeoutError
from ._executor import Executor
from ._inline import may_return_awaitable
from ._scheduler import Run
from ._threads import DaemonThreadPool, Job
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


class _LoopScope:
    """The event loop a run is driven on, and the task group its tasks live in."""

    __slots__ = ("call_soon", "group")

    def __init__(self, group: TaskGroup) -> None:
        self.group = group
        native: Any = anyio.lowlevel.current_token().native_token
        # How a worker thread gets a callback run on this loop, without blocking.
        self.call_soon: Callable[..., Any] = (
            getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon
        )


_loop_scope: ContextVar[_LoopScope | None] = ContextVar("dispatcher_loop_scope", default=None)


def _stops_the_loop(error: BaseException) -> bool:
    """Is ``error``, raised by a task on the loop, not the task's own failure? Cancellation
    belongs to the loop, and a KeyboardInterrupt there cannot be told from Ctrl-C: both
    end the run. Anything else a task raises, SystemExit included, fails its node."""
    return isinstance(error, (KeyboardInterrupt, anyio.get_cancelled_exc_class()))


class _Handle:
    """A submitted task while it runs as a coroutine, in a thread, or waits for the loop."""

    __slots__ = ("cancel_scope", "cancelled", "done", "job", "spec", "start")

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.cancel_scope: anyio.CancelScope | None = None
        self.cancelled = False  # by the scheduler, or abandoned at its deadline
        self.done = False
        self.start: float | None = None  # when its call began
        self.job: Job | None = None  # its place in the thread pool, for plain functions


class AsyncTransport(Transport):
    """One worker, ``"main"``, with room for every task: coroutine functions run as tasks
    of the event loop that drives the run, plain functions in daemon threads
    (``threads`` of them) or, with ``threads=0``, on that loop. One serves every run of
    its executor; each run is driven inside :meth:`serving` on its own loop."""

    capabilities = Capabilities(interrupts_running_tasks=True)

    def __init__(self, threads: int) -> None:
        self.pool = DaemonThreadPool(threads) if threads else None
        self.store: dict[Key, Any] = {}
        self.tasks: dict[Key, _Handle] = {}  # what cancel() can still reach
        self._events: EventSink | None = None
        self._is_coroutine: dict[Any, bool] = {}
        self._plain: dict[Any, bool] = {}  # known never to return an awaitable

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        return {"main": UNLIMITED}

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Run the tasks submitted inside this block on the current loop; whatever still
        runs when it ends is abandoned."""
        async with anyio.create_task_group() as group:
            token = _loop_scope.set(_LoopScope(group))
            try:
                yield
            finally:
                _loop_scope.reset(token)
                group.cancel_scope.cancel()

    def runs_in_caller(self, func: Any) -> bool:
        # With threads=0 a plain function runs on the loop anyway; the scheduler may as
        # well call it itself.
        return self.pool is None and not may_return_awaitable(func)

    def _values(self, spec: TaskSpec) -> list[Any]:
        store, shipped = self.store, spec.inline
        if shipped is None:
            return [store[k] for k in spec.deps]
        return [shipped[k] if k in shipped else store[k] for k in spec.deps]

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        scope = _loop_scope.get()
        if scope is None:
            raise RuntimeError("AsyncTransport.submit outside AsyncTransport.serving()")
        is_coroutine = self._is_coroutine
        failed = False
        for spec in tasks:
            func = spec.func
            coro = is_coroutine.get(func)
            if coro is None:
                coro = is_coroutine[func] = inspect.iscoroutinefunction(func)
                self._plain[func] = not may_return_awaitable(func)
            if coro:
                handle = self.tasks[spec.key] = _Handle(spec)
                scope.group.start_soon(self._await, scope, handle, self._values(spec))
            elif self.pool is not None:
                self._to_thread(scope, spec)
            elif failed:
                # The run may be about to stop: the rest of the batch waits for the loop's
                # next turn, by when the scheduler can have cancelled it.
                handle = self.tasks[spec.key] = _Handle(spec)
                scope.group.start_soon(self._call_later, scope, handle)
            else:
                failed = not self._call_on_loop(scope, spec)

    # -- plain functions on the loop ---------------------------------------------------------

    def _call_on_loop(self, scope: _LoopScope, spec: TaskSpec) -> bool:
        """Call ``spec`` now, on the loop; False if it raised."""
        events = self._events
        assert events is not None
        start = perf_counter()
        try:
            value = call_task(spec.func, spec.args, spec.kwargs, spec.shape, self._values(spec))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise  # on the loop, in the caller's thread, it cannot be told from Ctrl-C
            events.task_failed(spec.key, "main", exc, perf_counter() - start)
            return False
        if not self._plain[spec.func] and inspect.isawaitable(value):
            handle = self.tasks[spec.key] = _Handle(spec)
            scope.group.start_soon(self._await_value, handle, value, start)
        else:
            self._done(spec, value, perf_counter() - start)
        return True

    async def _call_later(self, scope: _LoopScope, handle: _Handle) -> None:
        if self.tasks.pop(handle.spec.key, None) is not None:  # not cancelled meanwhile
            self._call_on_loop(scope, handle.spec)

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

    def _failed(self, spec: TaskSpec, error: BaseException, duration: float) -> None:
        assert self._events is not None
        self._events.task_failed(spec.key, "main", error, duration)

    # -- coroutines --------------------------------------------------------------------------

    async def _await(self, scope: _LoopScope, handle: _Handle, values: list[Any]) -> None:
        spec = handle.spec
        if handle.cancelled:
            return
        start = perf_counter()
        try:
            awaitable = call_task(spec.func, spec.args, spec.kwargs, spec.shape, values)
        except BaseException as exc:
            if _stops_the_loop(exc):
                raise
            self.tasks.pop(spec.key, None)
            self._failed(spec, exc, perf_counter() - start)
            return
        await self._await_value(handle, awaitable, start)

    async def _await_value(self, handle: _Handle, awaitable: Awaitable[Any], start: float) -> None:
        spec = handle.spec
        with anyio.CancelScope() as cancel_scope:
            handle.cancel_scope = cancel_scope
            if handle.cancelled:
                cancel_scope.cancel()
            if spec.timeout is not None:
                cancel_scope.deadline = anyio.current_time() + spec.timeout
            try:
                value = await awaitable
            except BaseException as exc:
                if _stops_the_loop(exc):
                    raise
                self.tasks.pop(spec.key, None)
                self._failed(spec, exc, perf_counter() - start)
                return
        self.tasks.pop(spec.key, None)
        if handle.cancelled:
            return
        duration = perf_counter() - start
        if cancel_scope.cancelled_caught:
            self._failed(spec, TaskTimeoutError(spec.label, spec.timeout or 0.0), duration)
            return
        self._done(spec, value, duration)

    # -- plain functions in threads ----------------------------------------------------------

    def _to_thread(self, scope: _LoopScope, spec: TaskSpec) -> None:
        assert self.pool is not None
        handle = self.tasks[spec.key] = _Handle(spec)
        values = self._values(spec)
        call_soon = scope.call_soon

        def job() -> None:
            if handle.cancelled:
                return
            handle.start = perf_counter()
            try:
                outcome = (True, call_task(spec.func, spec.args, spec.kwargs, spec.shape, values))
            except BaseException as exc:  # SystemExit and the like fail the node too
                outcome = (False, exc)
            try:
                call_soon(self._thread_done, scope, handle, outcome)
            except RuntimeError:
                pass  # the loop is gone: the run ended and this result is not wanted

        handle.job = self.pool.submit(job)
        if spec.timeout is not None:
            scope.group.start_soon(self._watch, handle)

    def _thread_done(self, scope: _LoopScope, handle: _Handle, outcome: tuple[bool, Any]) -> None:
        if handle.cancelled:
            return  # cancelled, or abandoned at its deadline
        handle.done = True
        spec = handle.spec
        ok, value = outcome
        assert handle.start is not None
        duration = perf_counter() - handle.start
        if ok and inspect.isawaitable(value):
            scope.group.start_soon(self._await_value, handle, value, handle.start)
            return
        self.tasks.pop(spec.key, None)
        if not ok:
            self._failed(spec, value, duration)
        else:
            self._done(
                spec, value, duration if spec.timeout is None else min(duration, spec.timeout)
            )

    async def _watch(self, handle: _Handle) -> None:
        """Abandon a thread task at its deadline, counted from when it started."""
        spec = handle.spec
        assert spec.timeout is not None
        while handle.start is None:
            if handle.done or handle.cancelled:
                return
            await anyio.sleep(0.01)
        remaining = handle.start + spec.timeout - perf_counter()
        if remaining > 0:
            await anyio.sleep(remaining)
        if not handle.done and not handle.cancelled:
            handle.cancelled = True
            if handle.job is not None:
                handle.job.abandon()  # its thread no longer counts toward the pool's size
            self.tasks.pop(spec.key, None)
            duration = perf_counter() - handle.start
            self._failed(spec, TaskTimeoutError(spec.label, spec.timeout), duration)

    # -- the rest of the SPI -----------------------------------------------------------------

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        store = self.store
        for key in keys:
            store.pop(key, None)

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        for spec in tasks:
            handle = self.tasks.pop(spec.key, None)
            if handle is not None:
                handle.cancelled = True
                if handle.cancel_scope is not None:
                    handle.cancel_scope.cancel()
                if handle.job is not None:
                    handle.job.abandon()  # queued: it never runs; running: its thread is freed

    def close(self) -> None:
        for handle in self.tasks.values():
            handle.cancelled = True
            if handle.cancel_scope is not None:
                handle.cancel_scope.cancel()
        self.tasks.clear()
        self.store.clear()
        if self.pool is not None:
            self.pool.close()


@contextlib.contextmanager
def _interruptible(on_loop: bool) -> Iterator[None]:
    """Make Ctrl-C raise KeyboardInterrupt even while a task called on the loop blocks it.

    asyncio's runner answers the first SIGINT by cancelling its main task, which a plain
    function running on the loop never notices.
    """
    if not (
        on_loop
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
        self._loop_transport = AsyncTransport(threads)
        super().__init__("async", self._loop_transport, **options)
        self.threads = threads
        self.backend = backend

    @property
    def capabilities(self) -> Capabilities:
        # A plain function running on the loop cannot be stopped at its deadline.
        return Capabilities(interrupts_running_tasks=self.threads > 0)

    def _drive(self, run: Run) -> None:
        """Run to the end on a loop of its own: here, or on another thread when this one
        already runs a loop (a notebook, or a task calling run()) that is busy with us."""
        if not in_event_loop():
            with _interruptible(self.threads == 0):
                anyio.run(self._adrive, run, backend=self.backend)
            return
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
        """Run to the end on the current loop, its tasks with it."""
        transport = self._loop_transport
        self._router.attach(run)
        try:
            async with transport.serving():
                await drive_async(run, transport, dict(self._workers))
        except BaseExceptionGroup as group:
            # A task group wraps what escapes it; callers get the exception itself.
            raise _first_leaf(group) from None
        finally:
            self._router.detach(run)


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
