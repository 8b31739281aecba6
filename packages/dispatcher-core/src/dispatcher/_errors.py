"""The exceptions dispatcher raises, and what a user sees of a task's exception.

Each exception names the node it is about, where there is one. A task's own exception
keeps its traceback from the user's code down: the frames of dispatcher's code that called
the task are dropped from what the user sees (:func:`hide_own_frames`; the whole
traceback goes to the ``dispatcher.task.traceback`` logger at DEBUG).
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
    "add_failure_note",
    "failure_note",
    "hide_own_frames",
    "is_own_frame",
    "node_name",
    "user_traceback",
]

_OWN_PACKAGES = frozenset({"dispatcher", "dispatcher_mp", "dispatcher_mpi", "dispatcher_dask"})
# dispatcher's tests of executors and their tasks are the user's code of their runs.
_USER_MODULES = ("dispatcher.testing",)

_log = logging.getLogger("dispatcher.task.traceback")


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


def safe_str(error: BaseException) -> str:
    """``str(error)``, or a stand-in when its ``__str__`` fails: describing an error
    must never lose it, nor the run it ended."""
    try:
        return str(error)
    except BaseException:
        return f"<{type(error).__qualname__}: str() failed>"


def set_link(error: BaseException, name: str, value: Any) -> None:
    """Set ``error.__cause__``, ``__context__``, ``__traceback__`` or
    ``__suppress_context__``, even on an exception that refuses attributes (a frozen
    dataclass: its ``__setattr__`` raises), as Python's own ``raise`` does."""
    object.__setattr__(error, name, value)


def hide_own_frames(error: BaseException, node: object) -> None:
    """Drop from ``error``'s traceback the frames of dispatcher's code above the user's.

    An error with no frame of the user's code is dispatcher's own: a
    :class:`DispatcherError`, whose message says what happened, loses its frames (and its
    cause's: how pickle failed, say); anything else is a bug and keeps them all. The whole
    traceback is logged at DEBUG first, naming ``node``."""
    tb = error.__traceback__
    if tb is None or not is_own_frame(tb.tb_frame):
        return
    kept = user_traceback(tb)
    if kept is None and not isinstance(error, DispatcherError):
        return
    if _log.isEnabledFor(logging.DEBUG):
        text = "".join(traceback.format_exception(type(error), error, tb))
        _log.debug("the whole traceback of %s, dispatcher's frames included:\n%s", node, text)
    set_link(error, "__traceback__", kept)
    if kept is None and error.__cause__ is not None:
        set_link(error.__cause__, "__traceback__", None)


class DispatcherError(Exception):
    """Base class of every error dispatcher raises itself."""


def node_name(node: Any) -> str:
    """How a message names ``node``: a node by its description (label and arguments, as
    ``str(node)`` gives it: ``parse('b.txt')``), a bare label (all a transport may know)
    quoted."""
    if isinstance(node, str):
        return repr(node)
    try:
        return str(node)
    except Exception:  # a message must never fail for its node's sake
        return f"<{type(node).__name__}>"


def failure_note(node: Any, worker: str, error: BaseException) -> str:
    """The note a run's failure gets: which node raised it, and where."""
    where = f"on worker {worker!r}"
    if isinstance(error, SerializationError) and error.in_caller:
        what = "receiving its result from" if error.what == "result" else "sending it to"
        where = f"in the caller, {what} worker {worker!r}"
    return f"dispatcher: raised by node {node_name(node)} {where}"


def add_failure_note(error: BaseException, note: str, run_started: float) -> None:
    """Add ``note`` (a :func:`failure_note`) to ``error``, failing a run that started at
    ``run_started`` (``time.time()``).

    One exception object may be raised again (a module-level instance, a shared future's
    error): the notes of runs that started before this one are taken out first, so that
    the object names the node that raised it this time, and does not grow with every run.
    Those of runs started since stay: a run nested in a task of this one, whose failure
    became that task's. Raises what ``add_note`` does for an object that refuses notes.
    """
    noted: list[tuple[str, float]] = error.__dict__.get(_NOTED, [])
    notes = getattr(error, "__notes__", None)
    if noted and type(notes) is list:
        for text, started in noted:
            if started < run_started and text in notes:
                notes.remove(text)
        noted = [(text, started) for text, started in noted if started >= run_started]
    error.add_note(note)
    setattr(error, _NOTED, [*noted, (note, run_started)])


_NOTED = "_dispatcher_failure_notes"
"""The attribute where an exception keeps the failure notes runs gave it, with when each
run started (it travels with the exception when pickled)."""


class CycleError(DispatcherError):
    """The graph has a cycle; ``.nodes`` are the nodes on it, in order."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        path = " -> ".join(node_name(n) for n in [*nodes, nodes[0]]) if nodes else "?"
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
        super().__init__(self._message())

    def _message(self) -> str:
        cause = self.cause
        return (
            f"{node_name(self.dependent)} did not run because its ancestor "
            f"{node_name(self.node)} failed: {type(cause).__name__}: {safe_str(cause)}"
        )

    def __str__(self) -> str:
        return self._message()

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
        super().__init__(str(self))

    def __str__(self) -> str:
        # From the attributes: the scheduler puts the node where a transport knew its label.
        return f"worker {self.worker} was lost while running {node_name(self.node)}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node, self.worker, self.reason))


class TaskTimeoutError(DispatcherError, TimeoutError):
    """``.node`` ran longer than its ``timeout`` (``.seconds``)."""

    def __init__(self, node: Any, seconds: float) -> None:
        self.node = node
        self.seconds = seconds
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{node_name(self.node)} ran past its timeout of {self.seconds:g} s"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node, self.seconds))


class SerializationError(DispatcherError):
    """``.what`` (the function, an argument, the result) of ``.node`` could not be sent;
    ``.type_name`` names the offending type. ``.in_caller`` says the failure happened in
    the caller (pickling what it sends, or unpickling a result it received), not on the
    worker."""

    def __init__(
        self,
        node: Any,
        what: str,
        type_name: str,
        detail: str | None = None,
        in_caller: bool = False,
    ) -> None:
        self.node = node
        self.what = what
        self.type_name = type_name
        self.detail = detail
        self.in_caller = in_caller
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot send the {self.what} of {node_name(self.node)} between processes: " + (
            self.detail or f"{self.type_name} cannot be pickled"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.node, self.what, self.type_name, self.detail, self.in_caller),
        )


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


# Shown where the user imports them from: a traceback's last line reads
# "dispatcher.SerializationError: ...", not the private module's name.
for _error in (
    DispatcherError,
    CycleError,
    DependencyError,
    ExecutorNotFound,
    WorkerLostError,
    TaskTimeoutError,
    SerializationError,
    RemoteError,
):
    _error.__module__ = "dispatcher"
