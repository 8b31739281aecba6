"""The event loop an ``async`` run is driven on: finding one, handing work to it from
worker threads, and what escapes it."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from types import CodeType, FrameType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

__all__ = [
    "LoopScope",
    "first_leaf",
    "in_event_loop",
    "interruptible",
    "interrupts_calls_in",
    "loop_scope",
    "stops_the_loop",
]


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


class LoopScope:
    """The event loop a run is driven on, and the task group its tasks live in."""

    __slots__ = ("call_soon", "context", "group", "interrupted", "open", "thread")

    def __init__(self, group: TaskGroup) -> None:
        self.group = group
        self.open = True
        """Does the group take new tasks? Set on the loop, when the run's block ends."""
        self.interrupted: KeyboardInterrupt | None = None
        """A Ctrl-C that came while a task of the group ran (see :meth:`interrupt`)."""
        self.thread = threading.get_ident()
        self.context = self.capture_context()
        native: Any = anyio.lowlevel.current_token().native_token
        # How a worker thread gets a callback run on this loop, without blocking.
        self.call_soon: Callable[..., Any] = (
            getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon
        )

    @staticmethod
    def capture_context() -> contextvars.Context:
        """The current context, as a callback from a worker thread runs in it, so that it
        may start tasks in the group. Call it on the loop."""
        context = contextvars.copy_context()
        try:
            sniffio: Any = importlib.import_module("sniffio")  # anyio's, where it has it
        except ImportError:
            pass  # anyio then takes any running loop for asyncio, callbacks included
        else:
            # A loop's plain callback runs in no task, where sniffio (and so anyio) cannot
            # tell which library runs the loop unless the context says so.
            library = sniffio.current_async_library()
            context.run(sniffio.current_async_library_cvar.set, library)
        return context

    def interrupt(self, interrupt: KeyboardInterrupt) -> None:
        """A task of the group was interrupted (Ctrl-C, or it raised KeyboardInterrupt):
        end the group, to raise ``interrupt`` once it has ended. Raised out of the task
        itself, it would leave the loop at once, and the run's own task would end later,
        while the loop shuts down, with an error that nobody reads (asyncio then prints
        "Task exception was never retrieved")."""
        if self.interrupted is None:
            self.interrupted = interrupt
        self.group.cancel_scope.cancel()

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start a task in the group, from any thread. From another thread, a task that
        arrives after the group closed is dropped: the run it served is over (raised in
        the loop's callback, that error would reach no one, and trio would take it for
        its own and end the user's program); a loop already closed is a RuntimeError."""
        if threading.get_ident() == self.thread:
            self.group.start_soon(func, *args)
        else:
            self.call_soon(self.context.run, self._start_if_open, func, args)

    def _start_if_open(
        self, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]
    ) -> None:
        if not self.open:
            return  # (starting it would make the coroutine, never to be awaited)
        try:
            self.group.start_soon(func, *args)
        except RuntimeError:
            pass  # the group is closed


loop_scope: contextvars.ContextVar[LoopScope | None] = contextvars.ContextVar(
    "dispatcherloop_scope", default=None
)


def stops_the_loop(error: BaseException) -> bool:
    """Is ``error``, raised by a task on the loop, not the task's own failure? A
    cancellation of a scope around it (the run's, the task's deadline) belongs to the loop,
    and a KeyboardInterrupt there cannot be told from Ctrl-C: both end the run (or the
    task, for its scope to catch). Anything else a task raises fails its node: SystemExit,
    and a ``CancelledError`` that no scope asked for (the task raised it, or awaited a
    future someone cancelled)."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, anyio.get_cancelled_exc_class()):
        return anyio.current_effective_deadline() == -math.inf  # a scope was cancelled
    return False


@contextlib.contextmanager
def interruptible(on_loop: bool) -> Iterator[None]:
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


class _RunnerInterrupts:
    """The SIGINT handler of asyncio's runner, wrapped while runs are driven on its loop."""

    def __init__(self, runner_handler: Callable[[int, FrameType | None], Any]) -> None:
        self.runner_handler = runner_handler
        self.calls: list[CodeType] = []
        """The code of the functions under which the loop's thread calls tasks, one entry
        per run driven now (runs on one loop all share the loop's thread)."""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.runner_handler(signum, frame)  # the runner cancels its main task, as ever
        calls = set(self.calls)
        while frame is not None:
            if frame.f_code in calls:
                # The loop's thread is calling a task: that call would never notice.
                raise KeyboardInterrupt
            frame = frame.f_back


_runner_interrupts: _RunnerInterrupts | None = None


def _is_asyncio_runner_handler(handler: object) -> bool:
    runner = getattr(asyncio, "Runner", None)  # Python 3.11 on; 3.10's asyncio.run has none
    method = getattr(handler, "func", handler)  # the runner binds its task with a partial
    return runner is not None and isinstance(getattr(method, "__self__", None), runner)


def _wrap_runner_handler() -> _RunnerInterrupts | None:
    """The wrapper of asyncio's runner's SIGINT handler, installed now if it was not yet;
    None where there is no such runner (or this is not the main thread)."""
    global _runner_interrupts
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGINT)
    if _runner_interrupts is not None and handler is _runner_interrupts:
        return _runner_interrupts
    if not (callable(handler) and _is_asyncio_runner_handler(handler)):
        return None
    _runner_interrupts = _RunnerInterrupts(handler)
    signal.signal(signal.SIGINT, _runner_interrupts)
    return _runner_interrupts


_NOTHING = contextlib.nullcontext()


def interrupts_calls_in(code: CodeType) -> contextlib.AbstractContextManager[None]:
    """Inside ``asyncio.run``, make Ctrl-C raise KeyboardInterrupt in a task called on the
    loop (under ``code``) while a run is driven there; see :func:`_interrupts_calls_in`.
    Costs next to nothing where no asyncio loop runs in this thread (most calls)."""
    if asyncio._get_running_loop() is None:
        return _NOTHING
    return _interrupts_calls_in(code)


@contextlib.contextmanager
def _interrupts_calls_in(code: CodeType) -> Iterator[None]:
    """Inside ``asyncio.run``, make Ctrl-C raise KeyboardInterrupt in a task called on the
    loop (under ``code``: the driver's step) while a run is driven there.

    asyncio's runner answers the first Ctrl-C by cancelling its main task, which a plain
    function running on the loop (one proven tiny that turned blocking) never notices: only
    a second Ctrl-C would stop it. While the loop's thread is anywhere else, the runner's
    own answer stands. trio raises KeyboardInterrupt in such code itself.
    """
    wrapper = _wrap_runner_handler()
    if wrapper is None:
        yield
        return
    wrapper.calls.append(code)
    try:
        yield
    finally:
        wrapper.calls.remove(code)
        if not wrapper.calls:
            _unwrap_runner_handler(wrapper)


def _unwrap_runner_handler(wrapper: _RunnerInterrupts) -> None:
    """The last run on the loop is over: give the runner its own handler back."""
    global _runner_interrupts
    runner_handler = wrapper.runner_handler
    if signal.getsignal(signal.SIGINT) is wrapper:
        # The runner restores the default handler at its end only if its own is there.
        signal.signal(signal.SIGINT, runner_handler)
    if _runner_interrupts is wrapper:
        _runner_interrupts = None


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
