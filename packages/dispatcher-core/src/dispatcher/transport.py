"""The transport SPI: what a backend implements, and nothing more.

Scheduling lives once, in :mod:`dispatcher`'s scheduler: dependency counting, the ready
queue, placement, retries, releasing results, cancellation and observer hooks. A backend
only *moves things*: it starts and stops workers, runs the tasks it is handed on the worker
it is told, and reports what happened. The whole contract is this module:

* :class:`Transport` -- the methods the scheduler calls (``start``, ``submit``, ``free``,
  ``cancel``, ``close``);
* :class:`EventSink` -- the methods the transport calls back (``task_finished``,
  ``task_failed``, ``task_inputs_lost``, ``worker_added``, ``worker_lost``);
* :class:`TaskSpec` -- one task to run: a function, an argument template whose
  :class:`Ref` placeholders stand for results named by key, and where those results live;
* :func:`call_task` -- how a worker turns a spec and its input values into a call, so every
  backend calls functions the same way.

Results are named by integer keys. A result stays on the worker that made it; the
scheduler says, in :attr:`TaskSpec.sources`, which worker holds each input, and the
transport gets the bytes from there to the task's worker (it may move them directly,
worker to worker). A result the caller asked for comes back with its completion
(:attr:`TaskSpec.want_result`). :meth:`Transport.free` drops results nobody needs.

The helpers at the end (:class:`FunctionRegistry`, :func:`capture_error`,
:func:`restore_error`, :func:`dumps_for`) are what a process-based backend needs to ship
functions once per worker and to bring exceptions back faithfully. ``dispatcher.testing``
holds an in-memory :class:`~dispatcher.testing.FakeTransport` and the conformance suite a
backend runs to prove itself.

This module is imported by worker processes: it must stay light.
"""

from __future__ import annotations

import abc
import pickle
import sys
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ._errors import RemoteError, SerializationError
from ._template import SHAPE_CALL, SHAPE_POSITIONAL, SHAPE_TEMPLATE, Ref, call_task

__all__ = [
    "SHAPE_CALL",
    "SHAPE_POSITIONAL",
    "SHAPE_TEMPLATE",
    "Capabilities",
    "EventSink",
    "FunctionRegistry",
    "Key",
    "Ref",
    "TaskSpec",
    "Transport",
    "WireError",
    "call_task",
    "capture_error",
    "dumps_for",
    "restore_error",
    "serialization_error",
    "size_of",
    "unpickling_error",
]

Key = int
"""A result's name: unique within one executor, for as long as the executor lives."""


def size_of(value: Any) -> int:
    """A cheap estimate of ``value``'s size in bytes, to report with a completion: what
    placement weighs inputs by. Buffers (NumPy arrays, memoryviews) give their ``nbytes``,
    bytes-likes their length, anything else its shallow ``sys.getsizeof``."""
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is int:
        return nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    try:
        return sys.getsizeof(value)
    except Exception:  # a __sizeof__ that fails: no estimate, no error
        return 0


class TaskSpec:
    """One task for a worker.

    The scheduler fills every field; a transport reads them and never changes them.
    """

    __slots__ = (
        "_named",
        "args",
        "attempt",
        "deps",
        "func",
        "inline",
        "key",
        "kwargs",
        "last_use",
        "shape",
        "sources",
        "timeout",
        "want_result",
        "worker",
    )

    key: Key
    """The key the result will be known by."""
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] | None
    shape: int
    """One of ``SHAPE_CALL``, ``SHAPE_POSITIONAL``, ``SHAPE_TEMPLATE``; see :func:`call_task`."""
    deps: tuple[Key, ...]
    """Keys of the input values, in :class:`Ref` order."""
    sources: tuple[str | None, ...] | None
    """Per input, the worker that holds it (``None``: the value is in ``inline``).

    ``sources`` itself is ``None`` when every input is on ``worker`` already or inline.
    """
    inline: dict[Key, Any] | None
    """Input values held by the caller (constants and ``inputs=``), shipped with the task."""
    worker: str
    """Where to run it."""
    timeout: float | None
    """Seconds the task may run, from its start on the worker; the transport enforces it."""
    want_result: bool
    """Send the value back with the completion: the caller needs it."""
    attempt: int
    """1 for the first attempt, 2 for the first re-run, ..."""
    last_use: tuple[Key, ...]
    """Inputs held on ``worker`` that nothing else will read: the worker may drop them as
    soon as the task has its input values, instead of waiting for :meth:`Transport.free`
    (a chain sent ahead then keeps one link alive, not the whole queue's worth)."""

    def __init__(
        self,
        key: Key,
        label: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None,
        shape: int,
        deps: tuple[Key, ...],
        sources: tuple[str | None, ...] | None,
        inline: dict[Key, Any] | None,
        worker: str,
        timeout: float | None,
        want_result: bool,
        attempt: int,
        last_use: tuple[Key, ...] = (),
    ) -> None:
        self.key = key
        self._named = label
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.shape = shape
        self.deps = deps
        self.sources = sources
        self.inline = inline
        self.worker = worker
        self.timeout = timeout
        self.want_result = want_result
        self.attempt = attempt
        self.last_use = last_use

    @property
    def label(self) -> str:
        """The node's label, for messages."""
        named = self._named
        # The scheduler passes the node itself: its label is worked out only if needed.
        return named if isinstance(named, str) else str(named.label)

    def source_of(self, index: int) -> str | None:
        """The worker holding input ``index``; ``None`` when it is inline."""
        if self.inline is not None and self.deps[index] in self.inline:
            return None
        if self.sources is None:
            return self.worker
        return self.sources[index]

    def __repr__(self) -> str:
        return f"<TaskSpec {self.key} {self.label!r} on {self.worker}>"


class EventSink(Protocol):
    """What a transport reports. Every method may be called from any thread.

    Reports about a key the scheduler no longer expects (a cancelled or finished run) are
    ignored, and a result they announce is freed through :meth:`Transport.free`.
    """

    def task_finished(
        self,
        key: Key,
        worker: str,
        duration: float,
        nbytes: int | None,
        value: Any = ...,
    ) -> None:
        """The task ran and its result is now held on ``worker``.

        ``value`` is given exactly when the spec had ``want_result``. ``duration`` is the
        run time in seconds measured on the worker; ``nbytes`` the result's size where known.
        """

    def task_failed(self, key: Key, worker: str, error: BaseException, duration: float) -> None:
        """The task raised ``error`` (the user's exception, restored as well as possible),
        could not be (de)serialized (:class:`~dispatcher.SerializationError`), or ran past
        its timeout (:class:`~dispatcher.TaskTimeoutError`)."""

    def task_inputs_lost(self, key: Key, worker: str, missing: Sequence[Key]) -> None:
        """The task could not start because these inputs are no longer anywhere.

        The scheduler recomputes them and runs the task again; this is not an attempt.
        """

    def worker_added(self, worker: str, slots: int) -> None:
        """A worker (new, or a replacement under the same name) is ready for tasks."""

    def worker_lost(self, worker: str, reason: str) -> None:
        """The worker is gone with every result it held and every task it was running."""


@dataclass(frozen=True)
class Capabilities:
    """What a transport can do; the conformance suite skips what it cannot, with the reason."""

    survives_worker_loss: bool = False
    """A worker that dies is replaced and its work redone."""
    interrupts_running_tasks: bool = False
    """A task over its timeout is stopped while it runs (not only failed when it returns)."""
    concurrent: bool = True
    """Independent tasks run at the same time."""
    separate_processes: bool = False
    """Tasks run in other processes than the caller (so they cannot share its memory)."""
    runs_tasks_in_order: bool = False
    """Each worker runs one task at a time, in the order it was sent them, and queues the
    rest (its slots are that queue's length). The scheduler then keeps fewer tasks queued
    while tasks are long, and may send a task to the worker that is still computing its
    last missing input, to run right after it without a round trip: such an input's
    source is the task's own worker, and if it is not there when the task starts (its
    producer failed or was cancelled), the transport reports ``task_inputs_lost``."""


class Transport(abc.ABC):
    """Base class of a backend. Subclass it, implement the abstract methods, and return an
    instance from your executor factory (see :class:`dispatcher.ExecutorInfo`).

    One transport serves one executor: it may see tasks of several runs at once, and must
    keep going after any one task fails. Methods are called from the scheduler's thread
    and must not block for long (queue, then return).
    """

    capabilities: ClassVar[Capabilities] = Capabilities()

    @abc.abstractmethod
    def start(self, events: EventSink) -> Mapping[str, int]:
        """Start the workers; return each worker's name and how many tasks may be assigned
        to it at once (tasks beyond what it runs at once wait in its queue)."""

    @abc.abstractmethod
    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        """Run these tasks, each on its ``worker``. Report each through the event sink,
        from any thread, at any time (even before this call returns)."""

    @abc.abstractmethod
    def free(self, worker: str, keys: Sequence[Key]) -> None:
        """Drop these results from ``worker``: nobody needs them any more."""

    def runs_in_caller(self, func: Callable[..., Any]) -> bool:
        """May the scheduler call ``func`` itself, at once, in its own thread?

        Only an in-process transport whose worker *is* the calling thread says yes, and
        only for functions it would call plainly (not coroutine functions). Such a task
        then skips :meth:`submit` and the event sink altogether: its result is held with
        the caller's values and handed to submitted tasks through
        :attr:`TaskSpec.inline`. Asked once per distinct function per run. The default,
        for every transport with workers of its own, is no.
        """
        return False

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:  # noqa: B027 - optional
        """Best effort: do not start these tasks, abandon them if running.

        Nothing more needs to be reported about them. The default does nothing: their
        reports arrive later and are ignored.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker and release every resource. Idempotent."""


# ---------------------------------------------------------------------------------------
# Helpers for transports whose workers live in other processes.


class FunctionRegistry:
    """Stable tokens for functions, so each distinct function is pickled once per worker.

    A token is never reused, even after its function is gone (``id()`` would be): the
    registry keeps a weak reference where it can, a strong one otherwise.
    """

    def __init__(self) -> None:
        self._weak: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._strong: dict[int, tuple[Any, int]] = {}
        self._next = 0
        # Most tasks of a batch call the function the one before called.
        self._last: tuple[Any, int] = (None, 0)

    def token(self, func: Any) -> tuple[int, bool]:
        """Return ``(token, new)``: ``new`` is True the first time ``func`` is seen."""
        last, token = self._last
        if last is func:
            return token, False
        try:
            found = self._weak.get(func)
        except TypeError:  # not weak-referenceable (a builtin, a partial...)
            entry = self._strong.get(id(func))
            if entry is not None and entry[0] is func:
                self._last = entry
                return entry[1], False
            self._next += 1
            self._strong[id(func)] = self._last = (func, self._next)
            return self._next, True
        if found is not None:
            self._last = (func, found)
            return found, False
        self._next += 1
        self._weak[func] = self._next
        self._last = (func, self._next)
        return self._next, True


@dataclass
class WireError:
    """An exception made ready to cross a process boundary."""

    payload: bytes | None
    """The pickled exception, or ``None`` when it could not be pickled."""
    type_name: str
    message: str
    traceback_text: str
    causes: tuple[bytes, ...] = ()
    """Its ``__cause__`` chain, pickled one by one (pickling an exception drops it)."""


def capture_error(exc: BaseException, dumps: Callable[[Any], bytes]) -> WireError:
    """Worker side: package ``exc`` with its traceback text."""
    tb_text = "".join(traceback.format_exception(exc))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        payload: bytes | None = dumps(exc)
    except Exception:
        payload = None
    causes: list[bytes] = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 16:
        try:
            causes.append(dumps(cause))
        except Exception:
            break  # keep the part of the chain that travels
        cause = cause.__cause__
    return WireError(payload, type_name, str(exc), tb_text, tuple(causes))


def restore_error(wire: WireError, label: str, loads: Callable[[bytes], Any]) -> BaseException:
    """Caller side: the original exception with the worker's traceback as a note, or a
    :class:`~dispatcher.RemoteError` when it cannot be brought back."""
    if wire.payload is not None:
        try:
            exc = loads(wire.payload)
        except Exception:
            exc = None
        traceback_text = wire.traceback_text
        if isinstance(exc, SerializationError) and isinstance(exc.node, int):
            # Workers know tasks by key alone: the caller names the node, in the worker's
            # traceback too.
            named = SerializationError(label, exc.what, exc.type_name, exc.detail)
            traceback_text = traceback_text.replace(str(exc), str(named))
            exc = named
        if isinstance(exc, BaseException):
            exc.add_note(f"Traceback from the worker that ran {label!r}:\n{traceback_text}")
            link = exc
            for data in wire.causes:
                try:
                    cause = loads(data)
                except Exception:
                    break
                link.__cause__ = cause
                link = cause
            return exc
    return RemoteError(wire.type_name, wire.message, wire.traceback_text)


def dumps_for(label: str | TaskSpec, what: str, obj: Any, dumps: Callable[[Any], bytes]) -> bytes:
    """``dumps(obj)``, turning any failure into :class:`~dispatcher.SerializationError`
    naming the node (``label``, or the task whose label it is: worked out only on
    failure), ``what`` was being sent, and the offending type."""
    try:
        return dumps(obj)
    except Exception as exc:
        name = label if isinstance(label, str) else label.label
        raise serialization_error(name, what, obj, exc) from exc


def serialization_error(
    label: str | Key, what: str, obj: Any, exc: BaseException
) -> SerializationError:
    """The error for ``obj`` (the ``what`` of node ``label``) failing to (un)pickle with
    ``exc``, naming the offending type as precisely as the failure tells it.

    A worker, which knows its tasks by key alone, passes the key: :func:`restore_error`
    puts the node's label in its place in the caller."""
    return SerializationError(label, what, _culprit(obj, exc))


def unpickling_error(label: str | Key, what: str, exc: BaseException) -> SerializationError:
    """The error for the ``what`` of node ``label`` (or of task key ``label``, as for
    :func:`serialization_error`) failing to *un*pickle where it arrived, with ``exc``:
    most often a module that process cannot import."""
    detail = f"it could not be unpickled where it arrived ({type(exc).__name__}: {exc})"
    if isinstance(exc, (ImportError, AttributeError)):
        detail += (
            "; what is pickled by reference (functions and classes of a module) must be "
            "importable there too: install the module on every worker, or put it on "
            "PYTHONPATH"
        )
    return SerializationError(label, what, type(exc).__qualname__, detail)


def _culprit(obj: Any, exc: BaseException) -> str:
    # pickle names the offending type in its message ("cannot pickle '_thread.lock' object");
    # prefer that over the container's type.
    text = str(exc)
    if "cannot pickle '" in text:
        return text.split("cannot pickle '", 1)[1].split("'", 1)[0]
    if isinstance(exc, pickle.PicklingError) or "pickle" in text:
        return f"{type(obj).__module__}.{type(obj).__qualname__}: {text}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
