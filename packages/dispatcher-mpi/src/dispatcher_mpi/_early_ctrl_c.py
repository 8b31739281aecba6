"""Ctrl-C held from the first line of ``python -m dispatcher_mpi``, before any import.

Importing the package (then dispatcher's core, then mpi4py) takes a few tenths of a second
on every rank, and ``mpiexec`` passes a Ctrl-C to every rank: one that came meanwhile
killed each rank with a traceback through those imports, and hydra took the ranks' ends
for crashes. The package's first lines call :func:`hold` when it is run as the program
(``sys.argv[0]`` is ``"-m"`` while it is found); :func:`release` hands over to the
startup's own hold, saying whether one came.

It is :func:`dispatcher.remote.ctrl_c_held` spread over two calls, and kept apart from it
because any module of dispatcher's would import the whole core first.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["hold", "release"]

_came: list[int] = []
_held = False


def hold() -> None:
    """Record Ctrl-C instead of raising it, where Python would raise it."""
    global _held
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, lambda signum, frame: _came.append(signum))
        _held = True


def release() -> bool:
    """Python's own Ctrl-C handling back; whether one came while held."""
    global _held
    if _held:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _held = False
    return bool(_came)
