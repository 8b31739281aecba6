"""The messages a caller and its workers exchange, by name.

Every message is a small :class:`~typing.NamedTuple` registered under a short name with
:func:`message`; code builds, reads and dispatches on these types. On the wire a message is
the plain tuple ``(name, *fields)`` (:func:`to_wire`, :func:`from_wire`): unpickling an
instance of a class imports its module by name every time, which cost several times what
the rest of a small message did. The two messages that carry one entry per task
(:class:`Run` and :class:`Done`) hold their entries as plain tuples in the field order of
:class:`Task` and :class:`Finished`, for the same reason. :func:`task_record` builds a
:class:`Task` entry; a worker reads one as a :class:`Task` through :func:`as_task`.

A backend adds messages of its own (data fetches, start-up, output) the same way, under
names of its own (``"mp.fetch"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .._template import SHAPE_POSITIONAL
from ._errors import WireError
from ._pickle import OUT_OF_BAND_BYTES

if TYPE_CHECKING:
    from ..transport import TaskSpec

__all__ = [
    "CacheWarned",
    "Cancel",
    "Define",
    "Done",
    "Failed",
    "Finished",
    "Forget",
    "Free",
    "Lost",
    "Run",
    "RunEnded",
    "Started",
    "Stop",
    "Storing",
    "TakeBack",
    "TakenBack",
    "Task",
    "as_task",
    "from_wire",
    "message",
    "packs_arguments",
    "reported_keys",
    "task_record",
    "to_wire",
]

Key = int
M = TypeVar("M", bound=type)

_KINDS: dict[str, type] = {}
_NAMES: dict[type, str] = {}


def message(name: str) -> Callable[[M], M]:
    """Class decorator: register a message type under ``name`` (unique in the process)."""

    def register(cls: M) -> M:
        if name in _KINDS and _KINDS[name] is not cls:
            raise ValueError(f"two message types are named {name!r}")
        _KINDS[name] = cls
        _NAMES[cls] = name
        return cls

    return register


def to_wire(message: Any) -> tuple[Any, ...]:
    """``message`` as the plain tuple that travels: its name, then its fields."""
    return (_NAMES[type(message)], *message)


def from_wire(raw: tuple[Any, ...]) -> Any:
    """The message :func:`to_wire` made ``raw`` from."""
    return tuple.__new__(_KINDS[raw[0]], raw[1:])  # type: ignore[type-var]


# -- caller to worker ------------------------------------------------------------------


class Task(NamedTuple):
    """One task as a worker receives it."""

    key: Key
    token: int
    """The function, as defined by an earlier :class:`Define`."""
    args: tuple[Any, ...] | bytes | list[Any]
    """The positional arguments; or, packed by the sender, the pickle of
    ``(args, kwargs, inline)`` (then ``kwargs`` and ``inline`` are ``None``): as ``bytes``,
    or as a list of its stream and its out-of-band buffers. Packed, arguments that cannot
    be unpickled on the worker fail their own task rather than the message that carried
    them."""
    kwargs: Mapping[str, Any] | None
    inline: dict[Key, Any] | None
    """Input values shipped with the task."""
    shape: int
    deps: tuple[Key, ...]
    remote: Any
    """Where inputs held by other workers come from, in the backend's own terms."""
    want_result: bool
    timed: bool
    """Report :class:`Started` before calling: the caller keeps the task's deadline."""
    last_use: tuple[Key, ...]


# Arguments of these types pickle the same with pickle as with cloudpickle, and unpickle
# anywhere: they need no pickle of their own.
_PLAIN = frozenset({int, float, bool, str, type(None)})


_LONG_STR = OUT_OF_BAND_BYTES // 4
"""A ``str`` this long may be a large argument once encoded (up to 4 bytes a character):
it is packed, so that the backend keeps it once per run if it is (see
:class:`~dispatcher.remote.LargeArguments`), instead of sending it with every task."""


def packs_arguments(spec: TaskSpec) -> bool:
    """Should ``spec``'s arguments travel packed (see :attr:`Task.args`)? Only plain
    scalar arguments, and strings too short to be large arguments (under a quarter of
    :data:`~dispatcher.remote.LARGE_ARGUMENT_BYTES` characters), travel as they are, in
    the pickle of the message itself."""
    if spec.inline is not None:
        return True
    if spec.shape == SHAPE_POSITIONAL:
        return False
    if spec.kwargs:
        return True
    args = spec.args
    # Once per task: C-level, not all() over a generator (nor any() without a string).
    if not _PLAIN.issuperset(map(type, args)):
        return True
    if str not in map(type, args):
        return False
    return any(type(arg) is str and len(arg) >= _LONG_STR for arg in args)


def task_record(
    spec: TaskSpec, token: int, args: tuple[Any, ...] | bytes | list[Any] | None, remote: Any
) -> tuple[Any, ...]:
    """``spec``'s entry of a :class:`Run`, in :class:`Task`'s field order. ``args`` is what
    to send for the arguments: ``None`` for the spec's own (``args``, ``kwargs``,
    ``inline`` travel as they are), a packed pickle, or a plain-valued ``args`` tuple."""
    if args is None:
        return (
            spec.key,
            token,
            spec.args,
            spec.kwargs,
            spec.inline,
            spec.shape,
            spec.deps,
            remote,
            spec.want_result,
            spec.timeout is not None,
            spec.last_use,
        )
    return (
        spec.key,
        token,
        args,
        None,
        None,
        spec.shape,
        spec.deps,
        remote,
        spec.want_result,
        spec.timeout is not None,
        spec.last_use,
    )


def as_task(record: tuple[Any, ...]) -> Task:
    """A :class:`Run` entry read by field name (no copy of its items)."""
    return tuple.__new__(Task, record)  # type: ignore[type-var]


@message("run")
class Run(NamedTuple):
    """Tasks to run in this order, after those sent before."""

    tasks: list[tuple[Any, ...]]
    """:class:`Task` entries (see :func:`task_record`)."""
    defines: list[tuple[int, bytes]] | None = None
    """Functions the tasks call that the worker does not hold yet, as :class:`Define`'s
    fields, defined before the tasks are read: one message for a batch whose tasks each
    call a function of their own (a closure per node), not one more per function."""


@message("define")
class Define(NamedTuple):
    """A function, pickled, under the token later tasks name it by."""

    token: int
    data: bytes


@message("forget")
class Forget(NamedTuple):
    """Functions no task sent from now on will name: drop them."""

    tokens: list[int]


@message("free")
class Free(NamedTuple):
    """Results nobody needs any more."""

    keys: list[Key]


@message("cancel")
class Cancel(NamedTuple):
    """Tasks not to start, if they have not started yet."""

    keys: list[Key]


@message("take_back")
class TakeBack(NamedTuple):
    """Tasks to give back if they are still queued here, not started: answered by
    :class:`TakenBack` with those removed (none: no answer)."""

    keys: list[Key]


@message("ended")
class RunEnded(NamedTuple):
    """Run ``run`` is over: drop every result of it held here, and whatever its tasks
    still queued or running here would keep (the keys of a run carry it in their high
    bits: ``key >> KEY_BITS``)."""

    run: int


@message("stop")
class Stop(NamedTuple):
    """Finish what runs, then exit."""


# -- worker to caller ------------------------------------------------------------------


class Finished(NamedTuple):
    """One task done, as an entry of :class:`Done`."""

    key: Key
    duration: float
    nbytes: int | None
    result: Any
    """The value's serialised form, when the caller asked for it; else a small value's
    pickle (``bytes``), where the worker carries such values along (see
    ``TaskRunner.carried_types``), or ``None``."""


@message("done")
class Done(NamedTuple):
    """Tasks that finished, in the order they ran."""

    finished: list[tuple[Key, float, int | None, Any]]
    """:class:`Finished` entries, as plain tuples."""
    moves: list[tuple[tuple[Any, ...], int, float]] | None = None
    """The inputs the worker fetched from other workers since its last report, timed:
    ``(sources, nbytes, seconds)`` per task that fetched, ``sources`` naming the workers
    in the backend's own terms (see :meth:`TaskRunner.moved`); ``None``: none."""
    failed: list[tuple[Key, float, WireError]] | None = None
    """Tasks that failed since the last report, as :class:`Failed`'s fields, in the order
    they ran; ``None``: none. The first failure after a report goes at once, alone, as a
    :class:`Failed`; those that follow it travel here, batched like completions: one
    message per failure cost a task that raised ten times one that returned."""


@message("failed")
class Failed(NamedTuple):
    """A task raised, or its function, arguments or result could not travel."""

    key: Key
    duration: float
    error: WireError


def reported_keys(report: Any) -> list[Key]:
    """The tasks whose outcome a :class:`Done`, :class:`Failed` or :class:`Lost` reports."""
    kind = type(report)
    if kind is Done:
        keys = [entry[0] for entry in report.finished]
        if report.failed:
            keys += [entry[0] for entry in report.failed]
        return keys
    return [report.key]


@message("started")
class Started(NamedTuple):
    """A task with a timeout starts now."""

    key: Key


@message("cache_warned")
class CacheWarned(NamedTuple):
    """The run's cache warned while task ``key`` ran (a result not stored, a damaged
    entry): warned again in the caller, where the user sees it."""

    key: Key
    text: str


@message("storing")
class Storing(NamedTuple):
    """A timed task's function returned in time, and its result is being stored in the
    run's cache: its deadline is now ``seconds`` from here, a bound on the store (the
    timeout bounds the user's function, not our store)."""

    key: Key
    seconds: float


@message("taken_back")
class TakenBack(NamedTuple):
    """Tasks asked back (:class:`TakeBack`) that were removed from the queue here before
    they started: they will not run here, and nothing more is said about them."""

    keys: list[Key]


@message("lost")
class Lost(NamedTuple):
    """A task could not start: these inputs are gone."""

    key: Key
    missing: list[Key]
