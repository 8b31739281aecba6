"""The exceptions dispatcher raises, and what a user sees of a task's exception.

Each exception names the node it is about, where there is one. A task's own exception
keeps its traceback from the user's code down: the frames of dispatcher's code that called
the task are dropped from what the user sees (:func:`hide_own_frames`; the whole
traceback goes to the ``dispatcher.task`` logger at DEBUG).
"""

from __future__ import annotations

import difflib
import logging
import traceback
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "CycleError",
    "DependencyError",
    "DispatcherError",
    "ExecutorNotFound",
    "RemoteError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "hide_own_frames",
    "is_own_frame",
    "user_traceback",
]

_OWN_PACKAGES = frozenset({"dispatcher", "dispatcher_mp", "dispatcher_mpi", "dispatcher_dask"})
# dispatcher's tests of executors and their tasks are the user's code of their runs.
_USER_MODULES = ("dispatcher.testing",)

_log = logging.getLogger("dispatcher.task")


def is_own_frame(frame: FrameType) -> bool:
    """Whether ``frame`` runs dispatcher's code (core's or a backend's), not the user's."""
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str):
        return False
    return name.partition(".")[0] in _OWN_PACKAGES and not name.startswith(_USER_MODULES)


def user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from its first frame of the user's code: the frames of dispatcher's code that
    led to it (the worker loop, the call of the task) dropped. ``None`` when it has no
    frame of the user's: the error is dispatcher's own."""
    while tb is not None and is_own_frame(tb.tb_frame):
        tb = tb.tb_next
    return tb


def hide_own_frames(error: BaseException, node: object) -> None:
    """Drop from ``error``'s traceback the frames of dispatcher's code above the user's
    (an error with no frame of the user's code keeps them all: it is dispatcher's own).
    The whole traceback is logged at DEBUG first, naming ``node``."""
    tb = error.__traceback__
    if tb is None or not is_own_frame(tb.tb_frame):
        return
    kept = user_traceback(tb)
    if kept is None:
        return
    if _log.isEnabledFor(logging.DEBUG):
        text = "".join(traceback.format_exception(type(error), error, tb))
        _log.debug("the whole traceback of %s, dispatcher's frames included:\n%s", node, text)
    error.__traceback__ = kept


class DispatcherError(Exception):
    """Base class of every error dispatcher raises itself."""


class CycleError(DispatcherError):
    """The graph has a cycle; ``.nodes`` are the nodes on it, in order."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        path = " -> ".join(repr(n) for n in [*nodes, nodes[0]]) if nodes else "?"
        super().__init__(f"the graph has a cycle: {path}")


class DependencyError(DispatcherError):
    """A node could not run because an ancestor failed.

    ``.node`` is the ancestor whose own call raised, ``.cause`` (also ``__cause__``) its
    exception, ``.dependent`` the node that could not run.
    """

    def __init__(self, dependent: Any, node: Any, cause: BaseException) -> None:
        self.dependent = dependent
        self.node = node
        self.cause = cause
        self.__cause__ = cause
        super().__init__(
            f"{dependent!r} did not run because its ancestor {node!r} failed: "
            f"{type(cause).__name__}: {cause}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.dependent, self.node, self.cause))


class ExecutorNotFound(DispatcherError, LookupError):
    """No executor is registered under ``.name``; ``.available`` lists those that are.

    The message also says, where it knows, what to install for that name (``.install``: a
    pip requirement relative to a clone of dispatcher), which available name was probably
    meant, and where the name came from when it was not passed in the call (``.origin``,
    e.g. an environment variable).
    """

    def __init__(
        self,
        name: str,
        available: list[str],
        install: str | None = None,
        origin: str | None = None,
    ) -> None:
        self.name = name
        self.available = available
        self.install = install
        self.origin = origin
        listing = ", ".join(repr(n) for n in sorted(available)) or "none"
        text = f"no executor named {name!r}"
        if origin:
            text += f" (from {origin})"
        text += f"; available: {listing}"
        if install:
            text += (
                f". {name!r} comes with a distribution of its own; from a clone of "
                f"dispatcher: pip install ./packages/dispatcher-core {install}"
            )
        else:
            near = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
            if near:
                text += f". Did you mean {near[0]!r}?"
        super().__init__(text)

    def __str__(self) -> str:
        # LookupError would quote the message like a KeyError; keep it readable.
        return str(self.args[0])


class WorkerLostError(DispatcherError):
    """The worker running ``.node`` died, and retries were used up."""

    def __init__(self, node: Any, worker: str, reason: str) -> None:
        self.node = node
        self.worker = worker
        self.reason = reason
        super().__init__(f"worker {worker} was lost while running {node!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node, self.worker, self.reason))


class TaskTimeoutError(DispatcherError, TimeoutError):
    """``.node`` ran longer than its ``timeout`` (``.seconds``)."""

    def __init__(self, node: Any, seconds: float) -> None:
        self.node = node
        self.seconds = seconds
        super().__init__(f"{node!r} ran past its timeout of {seconds:g} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node, self.seconds))


class SerializationError(DispatcherError):
    """``.what`` (the function, an argument, the result) of ``.node`` could not be sent;
    ``.type_name`` names the offending type."""

    def __init__(self, node: Any, what: str, type_name: str, detail: str | None = None) -> None:
        self.node = node
        self.what = what
        self.type_name = type_name
        self.detail = detail
        super().__init__(
            f"cannot send the {what} of {node!r} between processes: "
            + (detail or f"{type_name} cannot be pickled")
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node, self.what, self.type_name, self.detail))


class RemoteError(DispatcherError):
    """Stands in for a worker-side exception that could not be brought back as itself."""

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n\nRemote traceback:\n{self.traceback_text}"
