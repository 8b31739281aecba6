"""Deadlines of the ``async`` executor's thread tasks: given up on at their timeout, a task
of the loop, while the thread goes on (a running function cannot be stopped).

A cache's call (:mod:`._cache_plan`) is timed until its function returns: the store after
it is not the user's function, and a large result on a slow disk may take longer to
write than the function took to compute. Once the function returned in time, the deadline
becomes a bound on the store (:func:`~._cache_plan.store_seconds`), so that a store that
hangs (a frozen network file system) still does not hang the run.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from ._cache_plan import ReturnHook, store_seconds, stores_result
from ._errors import TaskTimeoutError
from ._template import call_task

if TYPE_CHECKING:
    from ._async import AsyncTransport, _Handle

__all__ = ["StoreDeadline", "abandon_at_deadline", "claim", "store_deadline"]


def store_deadline(transport: AsyncTransport, handle: _Handle) -> Callable[..., Any]:
    """How to call a thread task with a timeout: through a :class:`StoreDeadline` if it
    is a cache's call, else as any task."""
    if stores_result(handle.spec.func):
        return StoreDeadline(transport, handle).call
    return call_task


class StoreDeadline(ReturnHook):
    """The :data:`~._cache_plan.function_returned` of a cache's call with a timeout in a
    worker thread."""

    __slots__ = ("handle", "transport")

    def __init__(self, transport: AsyncTransport, handle: _Handle) -> None:
        self.transport = transport
        self.handle = handle

    def __call__(self, value: Any) -> bool:
        """The function returned ``value``: within its timeout, its deadline becomes the
        bound on storing it (True: store it); past it, or given up on, False (not
        stored: the node fails)."""
        now = perf_counter()
        handle, transport = self.handle, self.transport
        spec = handle.spec
        assert handle.start is not None
        assert spec.timeout is not None
        with transport._lock:  # the lock under which its deadline gives it up
            if transport.tasks.get(spec.key) is not handle or now - handle.start > spec.timeout:
                return False
            handle.storing_until = now + store_seconds(value)
        return True


def claim(transport: AsyncTransport, handle: _Handle) -> bool:
    """Take ``handle`` out of the tasks in flight; False if someone else did (it was
    cancelled, or abandoned at its deadline): then nothing more is reported of it."""
    key = handle.spec.key
    with transport._lock:
        if transport.tasks.get(key) is not handle:
            return False
        del transport.tasks[key]
        return True


async def abandon_at_deadline(transport: AsyncTransport, handle: _Handle) -> None:
    """Give up on a thread task at its deadline, counted from when it started, or, for a
    cache's call whose function returned in time, at its store's bound."""
    spec = handle.spec
    assert spec.timeout is not None
    while handle.start is None:
        if handle.done or handle.cancelled:
            return
        await anyio.sleep(0.01)
    deadline = handle.start + spec.timeout
    while True:
        remaining = deadline - perf_counter()
        if remaining > 0:
            await anyio.sleep(remaining)
        if handle.done or handle.cancelled:
            return
        with transport._lock:  # (decided against StoreDeadline's, under the same lock)
            until = handle.storing_until
            if until is None or until <= deadline:
                if transport.tasks.get(spec.key) is not handle:
                    return  # reported, or cancelled
                del transport.tasks[spec.key]
                break
        deadline = until  # its result is being stored: the store's bound is the deadline
    handle.cancelled = True
    if handle.job is not None:
        handle.job.abandon()  # its thread no longer counts toward the pool's size
    duration = perf_counter() - handle.start
    transport._failed(spec, TaskTimeoutError(spec.label, spec.timeout), duration)
