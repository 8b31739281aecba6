"""A task's awaitable result, awaited wherever the task ran.

One rule on every executor: whatever a task's function returns that is awaitable (a
coroutine function's coroutine, or a plain function's: ``lambda x: fetch(x)``) is awaited,
and its result is the node's value. Coroutine functions on ``async`` run concurrently on
its loop; any other awaitable is awaited where its function was called, blocking that
thread as a plain call would. A leaf module: worker processes import it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import threading
from collections.abc import Awaitable, Generator
from time import perf_counter
from types import GeneratorType
from typing import Any

from ._loop import interrupts_calls_in

__all__ = ["AWAITABLE_TYPES", "CANCEL_GRACE", "Stoppable", "await_blocking", "is_awaitable"]

CANCEL_GRACE = 1.0
"""Seconds an awaitable may go on after its first cancellation, while the loop keeps
cancelling it, before it is stopped (see :class:`Stoppable`)."""

AWAITABLE_TYPES: dict[type, bool] = dict.fromkeys(
    (int, float, complex, str, bytes, bool, type(None), list, tuple, dict), False
)
"""Per result type seen, are its values awaitable (by their type)? ``inspect.isawaitable``
asks an ABC, which costs more than a tiny task; a result type is looked up here
instead, so the hot loops test ``AWAITABLE_TYPES.get(type(value)) is not False`` first."""

_MOST_TYPES = 4096  # classes made at run time must not grow the table without end


def is_awaitable(value: Any) -> bool:
    """Must ``value``, a task's result, be awaited for the node's value?"""
    kind = type(value)
    known = AWAITABLE_TYPES.get(kind)
    if known is None:
        if kind is GeneratorType:
            # Awaitable only when made by a @types.coroutine function: each one is asked,
            # and the type never enters the table, whose False would skip the asking.
            return inspect.isawaitable(value)
        known = hasattr(kind, "__await__")
        if len(AWAITABLE_TYPES) < _MOST_TYPES:
            AWAITABLE_TYPES[kind] = known
    return known


class Stoppable:
    """Awaits ``awaitable`` as ``await`` would, passing on what the loop sends and throws,
    but stops an awaitable that ignores its cancellation.

    A coroutine that catches its cancellation and goes on (``except CancelledError: pass``
    in a loop) would keep its task, and the run waiting for it, alive for ever: anyio and
    trio cancel again at each of its waits, without end. Once it has gone on for
    :data:`CANCEL_GRACE` seconds after the first cancellation thrown into it, the next
    one is not passed on: the awaitable is closed (best effort: it is never resumed
    again either way), :attr:`ignored_cancellation` is set, and the cancellation is
    raised here, as if the awaitable had let it through.
    """

    __slots__ = ("awaitable", "ignored_cancellation")

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable
        self.ignored_cancellation = False

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self.awaitable.__await__()
        send, throw = inner.send, inner.throw
        sent: Any = None
        thrown: BaseException | None = None
        first: float | None = None  # when the first cancellation came
        while True:
            try:
                yielded = send(sent) if thrown is None else throw(thrown)
            except StopIteration as stop:
                return stop.value
            thrown = None
            try:
                sent = yield yielded
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as exc:  # what asyncio throws in: its cancellation
                cancellation: BaseException = exc
                sent, thrown = None, exc
            else:
                if sent is None:
                    continue
                sent_cancellation = _cancellation_sent(sent)
                if sent_cancellation is None:
                    continue
                cancellation = sent_cancellation
            now = perf_counter()
            if first is None:
                first = now
            elif now - first > CANCEL_GRACE:
                self.ignored_cancellation = True
                try:
                    inner.close()
                except BaseException:  # (RuntimeError: it ignored GeneratorExit too)
                    pass
                raise cancellation


def _cancellation_sent(sent: Any) -> BaseException | None:
    """The cancellation in what trio resumed a task with, if any: trio sends an outcome,
    and a cancellation comes as ``outcome.Error(trio.Cancelled)``, raised inside the
    awaitable when unwrapped (never thrown in)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    error = getattr(sent, "error", None)
    return error if isinstance(error, trio.Cancelled) else None


def await_blocking(awaitable: Awaitable[Any]) -> Any:
    """Run an awaitable to completion from synchronous code.

    A fresh asyncio loop runs it here, or in a helper thread when this thread already
    runs a loop (a nested ``run`` from inside a coroutine, or a task called on the loop),
    of asyncio or of another library: under trio, anyio would take an asyncio loop run
    in trio's thread for trio's.
    """

    async def wrapper() -> Any:
        # A Ctrl-C while the awaitable blocks the loop (time.sleep in a coroutine) is
        # raised there, as in a plain function, rather than wait for its next await.
        with interrupts_calls_in(wrapper.__code__):
            return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if not _in_another_librarys_loop():
            return _run_here(wrapper())
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(wrapper())))
        except BaseException as exc:  # handed to the waiting thread, never lost
            box.append((False, exc))

    # In this thread's context: what the awaitable reads of it (the cache's clock, say)
    # is what it would read awaited here.
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(target,), name="dispatcher-await", daemon=True
    )
    thread.start()
    thread.join()
    ok, value = box[0]
    if ok:
        return value
    raise value


def _run_here(coroutine: Any) -> Any:
    """``asyncio.run(coroutine)``, but a Ctrl-C is never lost. asyncio turns it into a
    cancellation of the coroutine, and raises ``KeyboardInterrupt`` only if that
    cancellation comes out of it: one that catches it, cleans up and returns (as is
    usual) took the Ctrl-C with it, and the run went on."""
    with asyncio.Runner() as runner:
        value = runner.run(coroutine)
        # Counted by the Runner's own SIGINT handler (main thread only; private, hence
        # read with a default).
        if getattr(runner, "_interrupt_count", 0):
            raise KeyboardInterrupt
        return value


def _in_another_librarys_loop() -> bool:
    """Does this thread run the event loop of an async library other than asyncio?"""
    sniffio = sys.modules.get("sniffio")
    if sniffio is None:  # (trio imports it; without it, anyio takes any loop for asyncio's)
        return False
    try:
        return bool(sniffio.current_async_library() != "asyncio")
    except Exception:  # none runs here
        return False
