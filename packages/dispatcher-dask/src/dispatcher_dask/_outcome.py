"""What the caller makes of a task's outcome: the value it wanted, or the error to report."""

from __future__ import annotations

import pickle
from typing import Any

from dispatcher import RemoteError, TaskTimeoutError
from dispatcher.remote import restore_error
from dispatcher.transport import TaskSpec

from ._task import Shipped, TaskFailure

__all__ = ["restored", "unpickled"]


def unpickled(shipped: Any) -> tuple[bool, Any]:
    """A wanted value from the :class:`Shipped` bytes its worker sent: ``(True, value)``,
    or ``(False, exception)`` for whatever unpickling raised (``SystemExit`` included: it
    fails the node, not the caller)."""
    if type(shipped) is not Shipped:
        return True, shipped  # a value placed on the cluster by other means
    try:
        return True, pickle.loads(shipped.data)
    except BaseException as exc:
        return False, exc


def restored(spec: TaskSpec, exc: BaseException | None) -> BaseException:
    """The error to report for ``spec`` from what its dask future raised."""
    if isinstance(exc, TaskFailure):
        if exc.error is None:
            assert exc.timeout is not None
            return TaskTimeoutError(spec.label, exc.timeout)
        return restore_error(exc.error, spec, pickle.loads)
    # dask's own failure (a worker that died three times, a lost connection...).
    return RemoteError(type(exc).__qualname__, str(exc), "")
