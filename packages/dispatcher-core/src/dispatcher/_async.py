"""The ``async`` executor's transport: tasks on an anyio event loop (asyncio or trio).

Coroutine functions are awaited concurrently on the loop; plain functions run in daemon
worker threads (``threads=N``) or on the loop (``threads=0``: the scheduler calls them
itself). One :class:`AsyncTransport` serves every run of an executor, each run on the
loop that drives it, through the same scheduler and driver as every backend (the executor,
and when the driving thread calls a plain function itself: :mod:`._async_executor`).

A worker thread reports its task itself, straight to the run's event queue: the driver
wakes once for every report that arrived while it worked, not once per task. It times each
call for :class:`._tiny.TinyCalls`, which learns the functions too cheap for a thread.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._async_coroutines import await_value
from ._async_deadlines import abandon_at_deadline, claim, store_deadline
from ._awaiting import await_blocking, is_awaitable
from ._cache_plan import timed_call
from ._errors import TaskTimeoutError
from ._inline import may_return_awaitable
from ._loop import LoopScope, loop_scope, stops_the_loop
from ._threads import DaemonThreadPool, Job
from ._tiny import ByFunction, TinyCalls
from .transport import (
    KEY_BITS,
    Capabilities,
    EventSink,
    Key,
    TaskSpec,
    Transport,
    call_task,
)

if TYPE_CHECKING:
    from ._cache_plan import FunctionClock

__all__ = ["AsyncTransport"]

UNLIMITED = 1 << 30


class _Handle:
    """A submitted task while it runs as a coroutine, in a thread, or waits for the loop."""

    __slots__ = (
        "cancel_scope",
        "cancelled",
        "done",
        "job",
        "loop",
        "missing",
        "spec",
        "start",
        "storing_until",
    )

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.cancel_scope: anyio.CancelScope | None = None
        self.loop: LoopScope | None = None  # where cancel_scope lives
        self.cancelled = False  # by the scheduler, or abandoned at its deadline
        self.done = False
        self.start: float | None = None  # when its call began
        self.job: Job | None = None  # its place in the thread pool, for plain functions
        self.missing = 0  # inputs it waits for, sent ahead of them
        # A cache's call whose function returned in time: when its store is given up on.
        self.storing_until: float | None = None


class _Waiting(dict[Key, list[_Handle]]):
    """Tasks sent ahead of their inputs, under the key of each input they wait for. Used
    with the transport's lock held."""

    def park(self, handle: _Handle, missing: list[Key]) -> None:
        handle.missing = len(missing)
        for key in missing:
            self.setdefault(key, []).append(handle)

    def made(self, key: Key) -> list[_Handle]:
        """``key``'s result is there: the tasks it was the last missing input of."""
        ready = []
        for handle in self.pop(key, ()):
            handle.missing -= 1
            if handle.missing == 0 and not handle.cancelled:
                ready.append(handle)
        return ready

    def unmake(self, key: Key, tasks: dict[Key, _Handle], unmade: set[Key]) -> list[_Handle]:
        """``key``'s result will not be made here (added to ``unmade``): the tasks that
        waited for it, or for one of those, which never run now (taken out of ``tasks``;
        those someone else took out, cancelled, are left out)."""
        lost: list[_Handle] = []
        keys = [key]
        while keys:
            key = keys.pop()
            unmade.add(key)
            for handle in self.pop(key, None) or ():
                self.unwait(handle)
                if tasks.get(handle.spec.key) is handle and not handle.cancelled:
                    del tasks[handle.spec.key]
                    lost.append(handle)
                    keys.append(handle.spec.key)
                handle.cancelled = True
        return lost

    def unwait(self, handle: _Handle) -> None:
        """``handle`` no longer waits for its inputs."""
        for key in handle.spec.deps:
            waiters = self.get(key)
            if waiters is not None and handle in waiters:
                waiters.remove(handle)
                if not waiters:
                    del self[key]


class AsyncTransport(Transport):
    """One worker, ``"main"``, with room for every task: coroutine functions run as tasks
    of the event loop that drives the run, plain functions in daemon threads
    (``threads`` of them) or, with ``threads=0``, on that loop. One serves every run of
    its executor; each run is driven inside :meth:`serving` on its own loop, or, when it
    needs no loop, from the thread that drives it.

    A task may arrive before its inputs are made (it accepts pending inputs: a chain, or
    a small reduction, sent ahead of them): it waits for them, and the thread that makes
    its last input runs it next, with no round trip through the driver per link; if an
    input fails, the task is reported as having lost its inputs, and never runs."""

    capabilities = Capabilities(interrupts_running_tasks=True, accepts_pending_inputs=True)

    def __init__(self, threads: int) -> None:
        self.pool = DaemonThreadPool(threads) if threads else None
        self.tiny = TinyCalls(self.never_awaits, threads)
        """Which plain functions cost less than a thread hand-off (learned in threads)."""
        self.store: dict[Key, Any] = {}
        self.tasks: dict[Key, _Handle] = {}  # what cancel() can still reach
        self._waiting = _Waiting()
        # Keys whose results will not be made here unless sent again (they failed, or
        # waited for one that did; a retry may run on the driving thread): _sent_ahead.
        self._unmade: set[Key] = set()
        # Worker threads report on their own: whoever takes a handle out of ``tasks``
        # under this lock (its thread, its deadline, cancel()) is the one that reports.
        # It also orders storing a result against a task that arrives to wait for it.
        self._lock = threading.Lock()
        self._events: EventSink | None = None
        # What is known of each function, without keeping closures made afresh alive.
        self._is_coroutine: ByFunction[bool] = ByFunction()
        self._plain: ByFunction[bool] = ByFunction()  # known never to return an awaitable

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        return {"main": UNLIMITED}

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[LoopScope]:
        """Run the tasks submitted inside this block on the current loop; whatever still
        runs when it ends is abandoned."""
        async with anyio.create_task_group() as group:
            scope = LoopScope(group)
            token = loop_scope.set(scope)
            scope.context = scope.capture_context()  # with the scope in it
            try:
                yield scope
            finally:
                scope.open = False
                loop_scope.reset(token)
                group.cancel_scope.cancel()
        if scope.interrupted is not None:
            raise scope.interrupted

    def runs_in_caller(self, func: Any) -> bool:
        # With threads=0 a plain function runs on the loop anyway; the scheduler may as
        # well call it itself. With threads, a function proven tiny: a hand-off to a
        # thread would cost more than the call (the run watches it: Run.call_tiny).
        if self.pool is None:
            return not may_return_awaitable(func)
        return self.tiny.allows(func) and self.never_awaits(func)

    def _values(self, spec: TaskSpec) -> list[Any]:
        store, shipped = self.store, spec.inline
        if shipped is None:
            return [store[k] for k in spec.deps]
        return [shipped[k] if k in shipped else store[k] for k in spec.deps]

    def never_awaits(self, func: Any) -> bool:
        """Is ``func`` known never to return an awaitable (so it needs no loop)?"""
        plain: bool | None = self._plain.get(func)
        if plain is None:
            plain = self._plain[func] = not may_return_awaitable(func)
        return plain

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        # None when the run is driven without a loop: then every task is a plain function
        # without a timeout, run in a thread (see AsyncExecutor._needs_loop).
        scope = loop_scope.get()
        is_coroutine = self._is_coroutine
        failed = False
        if self._unmade:  # (sent again: made here after all)
            with self._lock:
                self._unmade.difference_update([spec.key for spec in tasks])
        for spec in tasks:
            func = spec.func
            coro = is_coroutine.get(func)
            if coro is None:
                coro = is_coroutine[func] = inspect.iscoroutinefunction(func)
            if spec.deps and self._sent_ahead(spec):
                continue
            if self.pool is not None and not coro:
                self._to_thread(scope, _Handle(spec))
                continue
            if scope is None:
                raise RuntimeError("AsyncTransport: a task that needs a loop, run without one")
            if coro:
                self._start_coroutine(scope, _Handle(spec))
            elif failed:
                # The run may be about to stop: the rest of the batch waits for the loop's
                # next turn, by when the scheduler can have cancelled it.
                handle = self.tasks[spec.key] = _Handle(spec)
                scope.group.start_soon(self._call_later, scope, handle)
            else:
                failed = not self._call_on_loop(scope, spec)

    # -- plain functions on the loop ---------------------------------------------------------

    def _call_on_loop(self, scope: LoopScope, spec: TaskSpec) -> bool:
        """Call ``spec`` now, on the loop; False if it raised."""
        events = self._events
        assert events is not None
        start = perf_counter()
        clock = None if spec.timeout is None else timed_call(spec, start)  # (see _done)
        call = call_task if clock is None else clock.call
        try:
            value = call(spec.func, spec.args, spec.kwargs, spec.shape, self._values(spec))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise  # on the loop, in the caller's thread, it cannot be told from Ctrl-C
            events.task_failed(spec.key, "main", exc, perf_counter() - start)
            return False
        if is_awaitable(value):
            handle = self.tasks[spec.key] = _Handle(spec)
            scope.group.start_soon(await_value, self, handle, value, start)
        else:
            ready = self._done(spec, value, perf_counter() - start, clock)
            if ready:
                self._start_ready(scope, ready)
        return True

    async def _call_later(self, scope: LoopScope, handle: _Handle) -> None:
        # Not cancelled meanwhile, and the run not interrupted:
        if self.tasks.pop(handle.spec.key, None) is not None and scope.interrupted is None:
            try:
                self._call_on_loop(scope, handle.spec)
            except KeyboardInterrupt as interrupt:
                scope.interrupt(interrupt)

    def _done(
        self, spec: TaskSpec, value: Any, duration: float, clock: FunctionClock | None = None
    ) -> list[_Handle]:
        """Keep and report a result; the tasks sent ahead that can start now."""
        events = self._events
        assert events is not None
        ran = duration if clock is None else clock.ran(duration)  # (a store is not timed)
        if spec.timeout is not None and ran > spec.timeout:
            events.task_failed(
                spec.key, "main", TaskTimeoutError(spec.label, spec.timeout), duration
            )
            return []
        return self._keep(spec, value, duration)

    def _keep(self, spec: TaskSpec, value: Any, duration: float) -> list[_Handle]:
        """Keep and report the result of a task within its time."""
        events = self._events
        assert events is not None
        ready = self._stored(spec.key, value)
        if spec.last_use:
            # Inputs only this task needed: a chain running ahead of the driver's frees
            # keeps one link alive, not all it ran.
            store = self.store
            for key in spec.last_use:
                store.pop(key, None)
        if spec.want_result:
            events.task_finished(spec.key, "main", duration, None, value)
        else:
            events.task_finished(spec.key, "main", duration, None)
        return ready

    def _failed(self, spec: TaskSpec, error: BaseException, duration: float) -> None:
        events = self._events
        assert events is not None
        events.task_failed(spec.key, "main", error, duration)
        # What waited for it, or for those, never runs: the scheduler sends it again or skips it.
        with self._lock:
            lost = self._waiting.unmake(spec.key, self.tasks, self._unmade)
        for handle in lost:
            events.task_inputs_lost(handle.spec.key, "main", [])

    # -- coroutines --------------------------------------------------------------------------

    async def _await(self, scope: LoopScope, handle: _Handle, values: list[Any]) -> None:
        spec = handle.spec
        if handle.cancelled or scope.interrupted is not None:
            return
        start = perf_counter()
        try:
            awaitable = call_task(spec.func, spec.args, spec.kwargs, spec.shape, values)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                scope.interrupt(exc)
                return
            if stops_the_loop(exc):
                raise
            self.tasks.pop(spec.key, None)
            self._failed(spec, exc, perf_counter() - start)
            return
        await await_value(self, handle, awaitable, start)

    # -- tasks sent ahead of their inputs ------------------------------------------------------

    def _sent_ahead(self, spec: TaskSpec) -> bool:
        """If an input of ``spec`` is still being computed, make it wait (True); if one
        will not be made here (``_unmade``), report ``spec``'s inputs lost (True too)."""
        store, shipped = self.store, spec.inline
        with self._lock:
            missing = [
                k for k in spec.deps if k not in store and (shipped is None or k not in shipped)
            ]
            if not missing:
                return False
            if not (self._unmade and self._unmade.intersection(missing)):
                handle = self.tasks[spec.key] = _Handle(spec)
                self._waiting.park(handle, missing)
                return True
            self._unmade.add(spec.key)  # (what is sent ahead of it in turn is lost too)
        assert self._events is not None
        self._events.task_inputs_lost(spec.key, "main", [])
        return True

    def _stored(self, key: Key, value: Any) -> list[_Handle]:
        """Keep a result; the tasks sent ahead that it was the last input of."""
        self.store[key] = value
        if not self._waiting:
            return []
        with self._lock:
            return self._waiting.made(key)

    def _start_ready(self, scope: LoopScope | None, ready: list[_Handle]) -> None:
        """Start tasks whose inputs just arrived, from the loop or a worker thread."""
        for handle in ready:
            if self._is_coroutine[handle.spec.func]:
                assert scope is not None  # a coroutine function makes the run need a loop
                self.tasks[handle.spec.key] = handle
                try:
                    scope.start_soon(self._await_ahead, scope, handle)
                except RuntimeError:
                    pass  # the loop is gone: the run ended
            elif self.pool is not None:
                self._to_thread(scope, handle)
            else:  # a callable that may return an awaitable, with threads=0
                assert scope is not None
                self.tasks[handle.spec.key] = handle
                scope.start_soon(self._call_later, scope, handle)

    def _start_coroutine(self, scope: LoopScope, handle: _Handle) -> None:
        self.tasks[handle.spec.key] = handle
        scope.group.start_soon(self._await, scope, handle, self._values(handle.spec))

    async def _await_ahead(self, scope: LoopScope, handle: _Handle) -> None:
        values = _inputs_of(self, handle)
        if values is not None:
            await self._await(scope, handle, values)

    # -- plain functions in threads ----------------------------------------------------------

    def _to_thread(self, scope: LoopScope | None, handle: _Handle) -> None:
        assert self.pool is not None
        values = _inputs_of(self, handle)
        if values is None:
            return
        spec = handle.spec
        self.tasks[spec.key] = handle
        handle.job = self.pool.submit(functools.partial(self._in_thread, scope, handle, values))
        if spec.timeout is not None:
            if scope is None:
                raise RuntimeError("AsyncTransport: a timeout to enforce without a loop")
            scope.start_soon(abandon_at_deadline, self, handle)

    def _in_thread(self, scope: LoopScope | None, handle: _Handle, values: list[Any]) -> None:
        """Run a plain function in a worker thread and report it from there; then the
        task it was the last input of, if that is a plain function without a deadline
        (one with a deadline gets a thread of its own, which may be abandoned)."""
        while True:
            ready = self._run_in_thread(scope, handle, values)
            if not ready:
                return
            follow = ready[0]
            spec = follow.spec
            if self._is_coroutine[spec.func] or spec.timeout is not None:
                self._start_ready(scope, ready)
                return
            self._start_ready(scope, ready[1:])
            # This thread's job goes on with it: abandoning it frees the thread.
            follow.job = handle.job
            inputs = _inputs_of(self, follow)
            if inputs is None:
                return
            handle, values = follow, inputs

    def _run_in_thread(
        self, scope: LoopScope | None, handle: _Handle, values: list[Any]
    ) -> list[_Handle]:
        if handle.cancelled:
            return []
        spec = handle.spec
        # (A cache's call: its store has a deadline of its own, see StoreDeadline.)
        call = call_task if spec.timeout is None else store_deadline(self, handle)
        handle.start = start = perf_counter()
        try:
            value = call(spec.func, spec.args, spec.kwargs, spec.shape, values)
            ok = True
        except BaseException as exc:  # SystemExit and the like fail the node too
            value, ok = exc, False
        del values
        if ok and is_awaitable(value):
            if scope is not None:
                try:
                    scope.call_soon(scope.context.run, _await_on_loop, self, scope, handle, value)
                except RuntimeError:
                    pass  # the loop is gone: the run ended and this result is not wanted
                return []
            try:
                value = await_blocking(value)
            except BaseException as exc:
                value, ok = exc, False
        duration = perf_counter() - start
        key, tasks = spec.key, self.tasks
        with self._lock:  # claim(), written out: once per task
            if tasks.get(key) is not handle:
                return []  # cancelled, or abandoned at its deadline
            del tasks[key]
        handle.done = True
        if getattr(spec._named, "_func", None) is spec.func:  # not a cache's call
            self.tiny.observe(spec.func, duration if ok else math.inf)
        if not ok:
            self._failed(spec, value, duration)
            return []
        if spec.timeout is None or handle.storing_until is not None:
            return self._keep(spec, value, duration)  # (a store's time is not the timeout's)
        return self._done(spec, value, min(duration, spec.timeout))

    # -- the rest of the SPI -----------------------------------------------------------------

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        store = self.store
        for key in keys:
            store.pop(key, None)

    def run_finished(self, run: int) -> None:
        with self._lock:  # (a run over sends nothing again)
            self._unmade = {k for k in self._unmade if k >> KEY_BITS != run}

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        for spec in tasks:
            with self._lock:
                handle = self.tasks.pop(spec.key, None)
                if handle is not None and handle.missing:
                    self._waiting.unwait(handle)
            if handle is not None:
                handle.cancelled = True
                if handle.cancel_scope is not None:
                    handle.cancel_scope.cancel()
                if handle.job is not None:
                    handle.job.abandon()  # queued: it never runs; running: its thread is freed

    def close(self) -> None:
        with self._lock:
            handles = list(self.tasks.values())
            self.tasks.clear()
            self._waiting.clear()
            self._unmade.clear()
        for handle in handles:
            handle.cancelled = True
            scope, loop = handle.cancel_scope, handle.loop
            if scope is None:
                continue
            if loop is None or threading.get_ident() == loop.thread:
                scope.cancel()
            else:  # closed from another thread: a scope is only cancelled on its loop
                try:
                    loop.call_soon(scope.cancel)
                except RuntimeError:
                    pass  # that loop is closed: its run is over
        self.store.clear()
        if self.pool is not None:
            self.pool.close()


def _inputs_of(transport: AsyncTransport, handle: _Handle) -> list[Any] | None:
    """The input values of a task sent ahead of them, read as it starts; ``None`` if it
    was cancelled: its run stopped, and may have freed them meanwhile (on the loop, while
    a worker thread starts the task)."""
    try:
        return transport._values(handle.spec)
    except KeyError:
        if handle.cancelled:
            return None
        raise


def _await_on_loop(
    transport: AsyncTransport, scope: LoopScope, handle: _Handle, awaitable: Any
) -> None:
    """A plain function returned an awaitable in a worker thread: await it on the loop
    (a callback there, posted by that thread)."""
    if handle.cancelled:
        return
    handle.done = True  # its own deadline now applies on the loop
    assert handle.start is not None
    try:
        scope.group.start_soon(await_value, transport, handle, awaitable, handle.start)
    except BaseException as exc:  # a callback's error reaches nobody: end the task with it
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        if claim(transport, handle):
            transport._failed(handle.spec, exc, perf_counter() - handle.start)
