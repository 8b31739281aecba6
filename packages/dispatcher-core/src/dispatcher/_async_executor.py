"""The ``async`` executor: how a run is driven (see :mod:`._async` for its transport).

A run that needs no loop at all -- no coroutine function, nothing that may return an
awaitable, no timeout to enforce -- is driven from the calling thread without starting
one; any other run on a loop of its own (or on another thread, when the calling thread
already runs a loop). Either way, with threads, the driving thread calls a plain function
itself where a thread would cost more than the call:

* a function proven tiny (:mod:`._tiny`: its last 3 calls in threads each returned
  within 20 µs; while it is being learned, a run sends as many calls of it as there are
  threads and holds the others back), unless the task has a timeout; one such call taking
  over 1 ms (that blocked or computed: :class:`._tiny.CallClock`) sends that function
  back to threads for the executor's life;
* without a loop, also the one task ready while nothing else of the run is out on a
  thread (:meth:`Run.call_when_idle`): the thread would only wait for it otherwise, so a
  chain or a one-node run costs no hand-off per task.

Such a call is reported on the worker ``"main"``, like every task of the executor.
"""

from __future__ import annotations

import os
import threading
from operator import attrgetter
from typing import Any

import anyio

from ._async import AsyncTransport
from ._driver import drive_async, step
from ._executor import Executor
from ._hooks import Observers
from ._loop import first_leaf, in_event_loop, interruptible, interrupts_calls_in, loop_scope
from ._options import check_count
from ._plan import Plan
from ._scheduler import Run
from .transport import Capabilities

__all__ = ["AsyncExecutor"]

_timeout_of = attrgetter("_timeout")
_func_of = attrgetter("_func")


def _default_threads() -> int:
    # The same default as concurrent.futures.ThreadPoolExecutor.
    return min(32, (os.cpu_count() or 1) + 4)


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
        if threads is None and workers is not None:
            check_count("workers", workers, 0)  # (named as given: it sets the threads)
            threads = workers
        elif threads is None:
            threads = _default_threads()
        check_count("threads", threads, 0)
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
        self._loop_transport = AsyncTransport(threads)
        super().__init__("async", self._loop_transport, **options)
        self.threads = threads
        self.backend = backend

    @property
    def capabilities(self) -> Capabilities:
        # A plain function running on the loop cannot be stopped at its deadline.
        return Capabilities(interrupts_running_tasks=self.threads > 0, accepts_pending_inputs=True)

    def _needs_loop(self, run: Run) -> bool:
        """Does ``run`` need an event loop: a coroutine function (or a callable that may
        return an awaitable) to await, or a timeout to enforce? Without one, its tasks run
        in threads (or in the caller, with ``threads=0``) and no loop is started."""
        table = run.table
        nodes = table.nodes
        # (A node's timeout is a positive number, or None.)
        if table.timeout is not None or any(map(_timeout_of, nodes)):
            return True
        funcs = set(map(_func_of, nodes))
        if run._cache_calls:  # what the cache calls instead of those nodes' functions
            funcs.update(call[0] for call in run._cache_calls.values())
        return not all(map(self._loop_transport.never_awaits, funcs))

    def _new_run(self, plan: Plan, observers: Observers, throw: bool) -> Run:
        run = super()._new_run(plan, observers, throw)
        # The hot loop reads the inputs that threads made where the transport keeps them.
        run.table.kept_here = self._loop_transport.store
        return run

    def _drive(self, run: Run) -> None:
        """Run to the end: from this thread when the run needs no loop; otherwise on a
        loop of its own, here, or on another thread when this one already runs a loop (a
        notebook, or a task calling run()) that is busy with us."""
        if not self._needs_loop(run):
            if self.threads:
                run.call_tiny(self._loop_transport.tiny)
                run.call_when_idle(self._loop_transport.never_awaits)
            token = loop_scope.set(None)  # not the loop of a run this one is nested in
            try:
                super()._drive(run)
            finally:
                loop_scope.reset(token)
            return
        if not in_event_loop():
            # A plain function called on the loop (threads=0, or one proven tiny) may
            # block it: Ctrl-C must interrupt that call.
            with interruptible(True):
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
        if self.threads:
            run.call_tiny(transport.tiny)
        self._router.attach(run)
        try:
            async with transport.serving() as scope:
                with interrupts_calls_in(step.__code__):
                    await drive_async(run, transport, dict(self._workers), scope.call_soon)
        except BaseExceptionGroup as group:
            # A task group wraps what escapes it; callers get the exception itself.
            raise first_leaf(group) from None
        finally:
            self._router.detach(run)
