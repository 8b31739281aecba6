"""What the caller makes of a task's outcome: the value it wanted, or the error to report."""

from __future__ import annotations

from typing import Any

from dispatcher import RemoteError, TaskTimeoutError
from dispatcher.remote import Pickled, UnrestoredError
from dispatcher.transport import TaskSpec, Unloaded

from ._task import Shipped, TaskFailure

__all__ = ["left_pickled", "restored"]


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
