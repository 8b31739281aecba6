"""Ctrl-C held back while a backend does what must not be cut short: starting or
closing its processes, or ending a job; and kept from the processes it starts until
they are ready to ignore it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["ctrl_c_blocked_for_children", "ctrl_c_held"]


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) held back inside; what it yields says whether one came meanwhile,
    and takes it. One not taken is raised on leaving, as ``KeyboardInterrupt``. Only where
    Python would raise it: on the main thread, with its default handler (a program's own,
    or SIGINT ignored, is left alone)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False
        return
    came: list[int] = []

    def interrupted() -> bool:
        taken = bool(came)
        came.clear()
        return taken

    signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if came:
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_blocked_for_children(resource_tracker: bool = True) -> Iterator[None]:
    """SIGINT blocked in this thread inside: the processes started here (and the threads,
    which pass it on to theirs) start with it blocked. A terminal's Ctrl-C goes to the
    whole process group; one that came while such a process still imports, before it
    ignores SIGINT, would print a traceback of its own (or kill it as it starts). The
    process unblocks it once it ignores it. The caller's other threads still take it.

    Starting multiprocessing's resource tracker unblocks SIGINT in the starting thread,
    whatever was blocked before: with ``resource_tracker``, it is started first (pass
    False where nothing started here would start it: ``fork`` workers)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    if resource_tracker:
        from multiprocessing import resource_tracker as tracker

        with contextlib.suppress(Exception):  # (a start it prevents fails on its own)
            tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
