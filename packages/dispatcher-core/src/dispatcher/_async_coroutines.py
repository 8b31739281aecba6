"""Coroutine tasks of the ``async`` executor: awaited on the loop in a cancel scope of
their own, which the scheduler's cancellation and the task's deadline cancel.

A coroutine that catches its cancellation and goes on is stopped after a grace (see
:class:`~._awaiting.Stoppable`), and said to have been: else it would keep its run waiting
for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from ._awaiting import CANCEL_GRACE, Stoppable
from ._cache_plan import timed_call
from ._errors import TaskTimeoutError, node_name
from ._loop import loop_scope, stops_the_loop

if TYPE_CHECKING:
    from ._async import AsyncTransport, _Handle
    from .transport import TaskSpec

__all__ = ["await_value"]

log = logging.getLogger("dispatcher.task")


async def await_value(
    transport: AsyncTransport, handle: _Handle, awaitable: Awaitable[Any], start: float
) -> None:
    """Await what the task of ``handle`` returned (at ``start``) and report it."""
    spec = handle.spec
    scope = loop_scope.get()
    if scope is not None and scope.interrupted is not None:
        # The run was interrupted before this task's turn came: not a step of it runs.
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        return
    clock = None if spec.timeout is None else timed_call(spec, start, in_task=True)
    with anyio.CancelScope() as cancel_scope:
        handle.loop = scope
        handle.cancel_scope = cancel_scope
        if handle.cancelled:
            cancel_scope.cancel()
        if spec.timeout is not None:
            cancel_scope.deadline = anyio.current_time() + spec.timeout
        stoppable = Stoppable(awaitable)
        try:
            value = await stoppable
        except BaseException as exc:
            if stops_the_loop(exc):
                if handle.cancelled or not cancel_scope.cancel_called:  # (a timeout: below)
                    _stopped(stoppable, spec, "it was cancelled")
                if isinstance(exc, KeyboardInterrupt) and handle.loop is not None:
                    handle.loop.interrupt(exc)
                    return
                raise
            transport.tasks.pop(spec.key, None)
            transport._failed(spec, exc, perf_counter() - start)
            return
    transport.tasks.pop(spec.key, None)
    if handle.cancelled:
        return
    duration = perf_counter() - start
    if cancel_scope.cancelled_caught:
        error = TaskTimeoutError(spec.label, spec.timeout or 0.0)
        _stopped(stoppable, spec, "it ran past its timeout", error)
        transport._failed(spec, error, duration)
        return
    ready = transport._done(spec, value, duration, clock)
    if ready:
        transport._start_ready(loop_scope.get(), ready)


def _stopped(
    stoppable: Stoppable, spec: TaskSpec, why: str, error: BaseException | None = None
) -> None:
    """If the coroutine of ``spec`` was stopped for ignoring its cancellation, say so: in
    a warning, and a note on ``error``."""
    if not stoppable.ignored_cancellation:
        return
    what = (
        f"went on for {CANCEL_GRACE:g} s after {why}, catching each cancellation: "
        "dispatcher stopped awaiting it and closed it. A coroutine must let "
        "CancelledError through (re-raise it once cleaned up)."
    )
    log.warning("%s %s", node_name(spec.label), what)
    if error is not None:
        error.add_note(f"It {what}")
