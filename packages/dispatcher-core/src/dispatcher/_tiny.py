"""Which plain functions are cheap enough for the ``async`` executor's driving thread to
call itself, rather than hand each call to a worker thread.

Handing a task to a thread and hearing back from it costs about 20 µs; a task of a
microsecond pays that twentyfold. So a plain function whose calls in threads have
returned, :data:`PROVEN_AFTER` times in a row, each within :data:`TINY`, has proven tiny:
from then on the scheduler calls it in the thread that drives the run, as ``threads=0``
does (:meth:`dispatcher._scheduler.Run.call_tiny`). One call there that takes longer than
:data:`SLOW` bars the function for the executor's life: it goes back to threads, and the
driving thread (an event loop, maybe) is never held that long by it again.

The verdicts are kept per executor, across its runs: a graph run again (or a graph of many
calls of one function) learns once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PROVEN_AFTER", "SLOW", "TINY", "TinyCalls"]

TINY = 20e-6
"""A call this short costs less than handing it to a thread (seconds)."""

PROVEN_AFTER = 3
"""Consecutive tiny calls in threads before a function is called in the driving thread."""

SLOW = 1e-3
"""A call in the driving thread this long bars its function from it (seconds)."""

_MAX_FUNCTIONS = 4096
"""Functions remembered at most (closures made afresh for every run must not pile up)."""


class TinyCalls:
    """The verdicts of one executor: which functions have proven tiny, which are barred.

    :meth:`observe` is told of calls in worker threads (from those threads);
    :meth:`allows` and :meth:`bar` are used by the driving threads of runs."""

    __slots__ = ("_lock", "_streaks", "changes", "verdicts")

    def __init__(self) -> None:
        self.verdicts: dict[Callable[..., Any], bool] = {}
        """True: proven tiny; False: barred. Absent: still being learned."""
        self._streaks: dict[Callable[..., Any], int] = {}
        self.changes = 0
        """Bumped at every new verdict: a run that asked before asks again."""
        self._lock = threading.Lock()

    def allows(self, func: Callable[..., Any]) -> bool:
        """May the driving thread call ``func`` itself?"""
        return self.verdicts.get(func) is True

    def observe(self, func: Callable[..., Any], duration: float) -> None:
        """``func`` returned after ``duration`` seconds in a worker thread.

        A slow call there only breaks the streak: a thread's clock also counts the time it
        waited for the interpreter lock, so it never bars a function."""
        if duration > TINY:
            self._streaks.pop(func, None)
            return
        if func in self.verdicts:
            return
        streak = self._streaks.get(func, 0) + 1
        if streak < PROVEN_AFTER:
            if len(self._streaks) >= _MAX_FUNCTIONS:
                self._streaks.clear()
            self._streaks[func] = streak
            return
        with self._lock:
            self._streaks.pop(func, None)
            if func in self.verdicts:
                return
            if len(self.verdicts) >= _MAX_FUNCTIONS:
                self.verdicts.clear()  # learned again; what was barred is tried again
            self.verdicts[func] = True
            self.changes += 1

    def bar(self, func: Callable[..., Any]) -> None:
        """A call of ``func`` in the driving thread took longer than :data:`SLOW`: never
        again there."""
        with self._lock:
            self.verdicts[func] = False
            self._streaks.pop(func, None)
            self.changes += 1
