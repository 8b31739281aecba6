"""What the caller makes of a task's outcome: the value it wanted, the error to report, or
the run's cache warnings on its worker."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from dispatcher import CacheWarning, RemoteError, TaskTimeoutError
from dispatcher.remote import Pickled, UnrestoredError
from dispatcher.transport import KEY_BITS, TaskSpec, Unloaded

from ._task import Shipped, TaskFailure

__all__ = ["CacheWarnings", "left_pickled", "restored"]

RUNS_REMEMBERED = 16
"""Runs whose cache warnings are remembered, to say each once per run."""

log = logging.getLogger("dispatcher.dask")


def left_pickled(shipped: Any) -> Any:
    """A wanted value from the :class:`Shipped` bytes its worker sent, left for the run's
    driver to unpickle: this runs on a thread that serves every run, and unpickling runs
    the user's code (see :class:`~dispatcher.transport.Unloaded`)."""
    if type(shipped) is not Shipped:
        return shipped  # a value placed on the cluster by other means
    return Pickled(shipped.data)


def restored(spec: TaskSpec, exc: BaseException | None) -> BaseException | Unloaded:
    """The error to report for ``spec`` from what its dask future raised (the task's own
    exception is restored by the run's driver)."""
    if isinstance(exc, TaskFailure):
        if exc.error is None:
            assert exc.timeout is not None
            return TaskTimeoutError(spec.label, exc.timeout)
        return UnrestoredError(exc.error, spec)
    # dask's own failure (a worker that died three times, a lost connection...).
    return RemoteError(type(exc).__qualname__, str(exc), "")


class CacheWarnings:
    """The run's cache warnings on workers, warned again in the caller, where the user
    runs the graph: a :class:`~dispatcher.CacheWarning` naming the node and the worker,
    each message once per run (a full disk says so for every node)."""

    def __init__(self) -> None:
        self._said: dict[int, set[str]] = {}  # per run (the oldest first), what was said

    def warn(self, key: int, spec: TaskSpec | None, worker: str, text: str) -> None:
        """The cache warned ``text`` on ``worker`` while task ``key`` ran (``spec``, if it
        is still known)."""
        run = key >> KEY_BITS
        said = self._said.get(run)
        if said is None:
            if len(self._said) >= RUNS_REMEMBERED:
                del self._said[next(iter(self._said))]
            said = self._said[run] = set()
        if text in said:
            return
        said.add(text)
        node = f"node {spec.label!r}" if spec is not None else f"task {key}"
        try:
            warnings.warn(f"{text} ({node}, on worker {worker})", CacheWarning, stacklevel=2)
        except Exception:  # warnings made errors: this thread serves every run, and goes on
            log.warning("%s (%s, on worker %s)", text, node, worker)
