"""Executors: a transport, the scheduler, and a driver for each run (see ``_driver``)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._cache import Cache
from ._driver import KEY_BITS, Router, drive_blocking
from ._errors import DispatcherError
from ._hooks import Observers
from ._links import LinkCosts
from ._loop import interrupts_calls_in
from ._options import Options
from ._plan import Plan, Result, needs_more_than
from ._plugins import run_observers
from ._scheduler import Run
from ._threads import waiting
from .transport import Capabilities, Transport

__all__ = ["COMMON_OPTIONS", "PLANNED_ASIDE", "Executor", "ExecutorInfo"]

PLANNED_ASIDE = 5_000
"""``arun`` plans a graph of more nodes than this in a thread: planning takes about 1.5 µs
a node, and the loop's other tasks wait for none of it there."""

COMMON_OPTIONS = ("workers", "retries", "retry_on", "timeout")

_open_executors: weakref.WeakSet[Executor] = weakref.WeakSet()

# Run numbers are unique in the process, not per executor: workers may outlive an executor
# (MPI ranks serve every executor of a job), and a late report must never match a new key.
_run_numbers = itertools.count(1)


def _close_open_executors() -> None:
    for executor in list(_open_executors):
        with contextlib.suppress(Exception):
            executor.close()


def _close_at_exit_first() -> None:
    """Close open executors at exit before any exit handler registered so far runs:
    multiprocessing's terminates worker processes, which a closing executor would take for
    lost workers. (Exit handlers run last registered first.)"""
    atexit.unregister(_close_open_executors)
    atexit.register(_close_open_executors)


@dataclass(frozen=True)
class ExecutorInfo:
    """An executor a plugin provides, returned from its ``dispatcher_executors`` hook."""

    name: str
    factory: Callable[..., Executor] = field(repr=False)
    """Called with the options given to :func:`get_executor` (already checked by name)."""
    description: str = ""
    distribution: str = ""
    version: str = ""
    options: tuple[str, ...] = ()
    """Options this executor takes besides ``workers``, ``retries``, ``retry_on``, ``timeout``."""


class Executor:
    """Runs graphs. Use it as a context manager (or call :meth:`close`) to stop its workers.

    ``Executor(name, transport, retries=..., retry_on=..., timeout=...)`` is all a backend
    needs: scheduling is done here, the transport only moves tasks and data. One executor
    may serve several runs at once, from threads or concurrent ``arun`` calls.
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        retries: int = 2,
        retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
        timeout: float | None = None,
    ) -> None:
        self.name = name
        self.options = Options(retries, retry_on, timeout)
        self._transport = transport
        self._closed = False
        self._lock = threading.Lock()
        self._router = Router(transport)
        self._workers = self._router.workers  # kept up to date by the router
        try:
            workers = transport.start(self._router)
        except BaseException:
            transport.close()
            raise
        self._router.started(workers)
        _open_executors.add(self)
        _close_at_exit_first()

    @property
    def capabilities(self) -> Capabilities:
        """What this executor's transport can do."""
        return self._transport.capabilities

    @property
    def link_costs(self) -> LinkCosts:
        """What placement takes a move between workers to cost, per class of link (within
        a host, across hosts): assumed, then measured from the moves this executor's
        workers report (``link_costs.summary()`` gives latency, bandwidth and samples)."""
        return self._router.links

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called: the executor takes no more runs."""
        return self._closed

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    def close(self) -> None:
        """Stop the workers and free everything they hold. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _open_executors.discard(self)
        # Runs still going on (from other threads) end now, with an error saying why,
        # rather than wait forever for workers that are going away.
        self._router.close(self._closed_under_run)
        self._transport.close()

    def _closed_under_run(self) -> DispatcherError:
        return DispatcherError(f"the {self.name!r} executor was closed while the run was going on")

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        targets: Any,
        *,
        inputs: Mapping[Any, Any] | None = None,
        throw: bool = True,
        progress: bool = False,
        report: str | None = None,
        plugins: Iterable[object] = (),
        cache: str | os.PathLike[str] | Cache | None = None,
    ) -> Any:
        """Run ``targets``; return their values in the same shape (see :func:`dispatcher.run`)."""
        values, failure = self._execute(targets, inputs, throw, progress, report, plugins, cache)
        # Raised here, so that the traceback goes from the caller's call to the task's code.
        if failure is not None:
            raise failure
        return values

    async def arun(
        self,
        targets: Any,
        *,
        inputs: Mapping[Any, Any] | None = None,
        throw: bool = True,
        progress: bool = False,
        report: str | None = None,
        plugins: Iterable[object] = (),
        cache: str | os.PathLike[str] | Cache | None = None,
    ) -> Any:
        """Like :meth:`run`, awaited inside a running asyncio or trio program."""
        values, failure = await self._aexecute(
            targets, inputs, throw, progress, report, plugins, cache
        )
        if failure is not None:
            raise failure
        return values

    def _execute(
        self,
        targets: Any,
        inputs: Mapping[Any, Any] | None,
        throw: bool,
        progress: bool,
        report: str | None,
        plugins: Iterable[object],
        cache: str | os.PathLike[str] | Cache | None = None,
    ) -> tuple[Any, BaseException | None]:
        """:meth:`run`, returning the task failure that stopped the run instead of raising
        it, for the public entry point to raise in its own frame: the traceback the user
        sees then goes from their call straight to the task's code."""
        plan, run, observers = self._prepare(
            targets, inputs, throw, progress, report, plugins, cache
        )
        error: BaseException | None = None
        try:
            # waiting: from a task in a pool thread, let the pool grow meanwhile.
            # interrupts_calls_in: run() in a coroutine blocks asyncio's loop, whose runner
            # answers Ctrl-C by cancelling its main task: this call would never notice.
            with waiting(), interrupts_calls_in(_EXECUTE):
                self._drive(run)
                while run.replan:
                    plan, run = self._replan(plan, run, observers)
                    self._drive(run)
            error = run.error
            return (None, error) if error is not None else (self._finish(plan, run), None)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(plan, run, observers, error)

    async def _aexecute(
        self,
        targets: Any,
        inputs: Mapping[Any, Any] | None,
        throw: bool,
        progress: bool,
        report: str | None,
        plugins: Iterable[object],
        cache: str | os.PathLike[str] | Cache | None = None,
    ) -> tuple[Any, BaseException | None]:
        """:meth:`_execute` for :meth:`arun`; a large graph is planned in a thread, which
        lets the loop's other tasks run meanwhile."""
        prepare = functools.partial(
            self._prepare, targets, inputs, throw, progress, report, plugins, cache
        )
        if needs_more_than(targets, PLANNED_ASIDE):
            plan, run, observers = await _in_a_thread(functools.partial(prepare, announce=False))
            if observers.run_started is not None:  # (observers hear from the run's loop)
                observers.run_started(graph=plan.graph, executor=self)
        else:
            plan, run, observers = prepare()
        error: BaseException | None = None
        try:
            from anyio.lowlevel import checkpoint_if_cancelled

            await checkpoint_if_cancelled()  # cancelled while planning: start none of it
            await self._adrive(run)
            while run.replan:
                plan, run = self._replan(plan, run, observers)
                await self._adrive(run)
            error = run.error
            return (None, error) if error is not None else (self._finish(plan, run), None)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(plan, run, observers, error)

    def _prepare(
        self,
        targets: Any,
        inputs: Mapping[Any, Any] | None,
        throw: bool,
        progress: bool,
        report: str | None,
        plugins: Iterable[object],
        cache: str | os.PathLike[str] | Cache | None = None,
        announce: bool = True,
    ) -> tuple[Plan, Run, Observers]:
        """Plan a run and make it; with ``announce``, tell the observers it started."""
        if self._closed:
            raise DispatcherError(f"the {self.name!r} executor is closed")
        plan = Plan(targets, inputs, cache)
        observers = run_observers(plugins, progress=progress, report=report)
        run = self._new_run(plan, observers, throw)
        if announce and observers.run_started is not None:
            observers.run_started(graph=plan.graph, executor=self)
        return plan, run, observers

    def _new_run(self, plan: Plan, observers: Observers, throw: bool) -> Run:
        # Runs that share a transport are told apart by the high bits of their keys.
        base = next(_run_numbers) << KEY_BITS
        return Run(
            plan.graph, plan.targets, plan.inputs, self.options, observers, throw, base, plan.cache
        )

    def _replan(self, plan: Plan, run: Run, observers: Observers) -> tuple[Plan, Run]:
        """A cache entry planned as a hit could not be read: plan again without it (what
        the ended run stored is a hit now) and start a new run."""
        plan = plan.replanned(run.stale_hits)
        new = self._new_run(plan, observers, run.throw)
        new.recovery.carry_over(run.table, plan.graph._index)
        if observers.run_replanned is not None:
            observers.run_replanned(graph=plan.graph, executor=self)
        return plan, new

    def _finish(self, plan: Plan, run: Run) -> Any:
        table = run.table
        nodes, results = table.nodes, table.results
        if run.throw:
            values = {nodes[p]: results[p] for p in table.target_positions}
        else:
            values = {}
            for p in table.target_positions:
                error = table.errors.get(p)
                if error is None:
                    values[nodes[p]] = Result(results[p], None)
                else:
                    values[nodes[p]] = Result(None, error)
        return plan.shape(values)

    def _end(self, plan: Plan, run: Run, observers: Observers, error: BaseException | None) -> None:
        if plan.cache is not None:
            plan.cache.finish()
        if observers.run_finished is not None:
            observers.run_finished(graph=plan.graph, executor=self, error=error)

    # -- driving ------------------------------------------------------------------------

    def _drive(self, run: Run) -> None:
        """Run to the end on this thread, blocking."""
        router = self._router
        router.attach(run)
        try:
            drive_blocking(run, self._transport, dict(self._workers))
        finally:
            router.detach(run)

    async def _adrive(self, run: Run) -> None:
        """Run to the end from inside an event loop: the blocking driver, in a thread."""
        cancelled = threading.Event()

        def drive() -> None:
            router = self._router
            router.attach(run)
            try:
                drive_blocking(run, self._transport, dict(self._workers), cancelled)
            finally:
                router.detach(run)

        import anyio.to_thread  # only runs awaited from a loop need it

        try:
            await anyio.to_thread.run_sync(drive, abandon_on_cancel=True)
        except BaseException:
            cancelled.set()
            run.queue.wake()  # the driver sees the cancellation at once
            raise


async def _in_a_thread(
    prepare: Callable[[], tuple[Plan, Run, Observers]],
) -> tuple[Plan, Run, Observers]:
    """``prepare()`` in a worker thread. Cancelled meanwhile, the caller goes at once
    and the thread plans on to its end (planning cannot be interrupted); the run it
    planned is dropped unstarted, which holds nothing (a cache plan only opens its
    store)."""
    import anyio.to_thread  # only arun comes here, with a loop running

    return await anyio.to_thread.run_sync(prepare, abandon_on_cancel=True)


_EXECUTE = Executor._execute.__code__
"""Under this code, a thread waits for a run that its ``run()`` drives."""
