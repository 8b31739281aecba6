"""Ctrl-C held back while a backend does what must not be cut short: starting or
closing its processes, or ending a job."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["ctrl_c_held"]


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
