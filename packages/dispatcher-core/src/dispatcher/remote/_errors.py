"""Exceptions across a process boundary: captured on the worker, restored in the caller.

Pickling an exception keeps its type and arguments but drops its traceback and its
``__cause__``; some exceptions do not pickle at all, some unpickle as something else, some
cannot even be printed. :func:`capture_error` packages whatever travels, never raising;
:func:`restore_error` brings back the user's own exception where it can, with the worker's
traceback as a note, and a :class:`~dispatcher.RemoteError` carrying the type name, message
and traceback text where it cannot. Neither ever lets an exception of its own escape.

The traceback the user sees starts at the user's code: the worker's own frames (its loop,
the call of the task) are left out, and the whole traceback is logged in the caller at
DEBUG on ``dispatcher.task.traceback``.
"""

from __future__ import annotations

import logging
import pickle
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import RemoteError, SerializationError, safe_str, set_link, user_traceback
from ._pickle import pickle_by_reference

if TYPE_CHECKING:
    from ..transport import Key, TaskSpec

_MAIN = threading.main_thread()

__all__ = [
    "WireError",
    "capture_error",
    "dumps_for",
    "restore_error",
    "serialization_error",
    "unpickling_error",
]

_MAX_CAUSES = 16

_log = logging.getLogger("dispatcher.task.traceback")


@pickle_by_reference
@dataclass
class WireError:
    """An exception made ready to cross a process boundary."""

    payload: bytes | None
    """The pickled exception, or ``None`` when it could not be pickled."""
    type_name: str
    message: str
    traceback_text: str
    """The traceback from the user's code down (just the exception, for an error of
    dispatcher's own), with the causes' and contexts' tracebacks."""
    causes: tuple[bytes, ...] = ()
    """Its ``__cause__`` chain, pickled one by one (pickling an exception drops it)."""
    whole_traceback_text: str = ""
    """The traceback with the worker's own frames, for the DEBUG log."""


def capture_error(exc: BaseException, dumps: Callable[[Any], bytes]) -> WireError:
    """Worker side: package ``exc`` with its traceback text. Never raises: whatever part of
    the exception cannot be pickled or printed is left out."""
    try:
        tb_text, whole = _traceback_texts(exc)
    except BaseException:
        whole = tb_text = f"{type(exc).__qualname__}: {safe_str(exc)}\n"
    type_name = _qualified_type(exc)
    try:
        payload: bytes | None = _dumps_alone(exc, dumps)
    except BaseException:
        payload = None
    causes: list[bytes] = []
    cause = exc.__cause__
    while cause is not None and len(causes) < _MAX_CAUSES:
        try:
            causes.append(_dumps_alone(cause, dumps))
        except BaseException:
            break  # keep the part of the chain that travels
        cause = cause.__cause__
    return WireError(payload, type_name, safe_str(exc), tb_text, tuple(causes), whole)


_HEADER = "Traceback (most recent call last):\n"
_FRAMES_KEPT = 1024
_FAST_FRAMES = 32  # longer tracebacks (recursion) go the standard way, which folds repeats

_frame_texts: dict[tuple[CodeType, int], str] = {}
"""A traceback entry's text by its code and instruction: the same each time that code
raises there (cleared when full)."""


def _frame_text(tb: TracebackType) -> str:
    """The text of ``tb``'s first entry, as the standard traceback shows it (file, line,
    function, source line, carets). Formatting an entry reads its file's status and
    source and compiles the line for its carets: tens of microseconds, paid once per
    code and instruction. Its source line is the one of the code that ran, even if the
    file has changed since."""
    key = (tb.tb_frame.f_code, tb.tb_lasti)
    text = _frame_texts.get(key)
    if text is None:
        if len(_frame_texts) >= _FRAMES_KEPT:
            _frame_texts.clear()
        text = _frame_texts[key] = "".join(traceback.extract_tb(tb, limit=1).format())
    return text


def _traceback_texts(exc: BaseException) -> tuple[str, str]:
    """``exc``'s traceback as the user sees it (from the user's code down; none at all
    for an error of dispatcher's own, a result that does not pickle..., whose message
    says what happened), and whole, with the worker's frames above the user's.

    Each entry's text is made once per place (:func:`_frame_text`), and the whole text
    is the user's with the worker's entries put in: formatting every traceback twice,
    afresh, made a task that raised cost ten times one that returned."""
    whole_tb = exc.__traceback__
    user = user_traceback(whole_tb)
    own: list[str] = []
    tb = whole_tb
    while tb is not None and tb is not user:
        own.append(_frame_text(tb))
        tb = tb.tb_next
    entries: list[str] = []
    while tb is not None and len(entries) < _FAST_FRAMES:
        entries.append(_frame_text(tb))
        tb = tb.tb_next
    shown_chain = exc.__cause__ is not None or (
        exc.__context__ is not None and not exc.__suppress_context__
    )
    if tb is not None or shown_chain or hasattr(sys, "tracebacklimit"):
        return _standard_texts(exc, user, own)
    last = traceback.format_exception_only(type(exc), exc)
    text = "".join([_HEADER, *entries, *last] if entries else last)
    if not own:
        return text, text
    return text, "".join([_HEADER, *own, *entries, *last])


def _standard_texts(
    exc: BaseException, user: TracebackType | None, own: list[str]
) -> tuple[str, str]:
    """:func:`_traceback_texts` the standard way: with the causes and contexts shown,
    long tracebacks folded, ``sys.tracebacklimit`` obeyed."""
    summary = traceback.TracebackException(type(exc), exc, user)
    parts = list(summary.format())
    text = "".join(parts)
    if not own:
        return text, text
    # The exception's own lines end the text; its frames, if any, follow the last header
    # before them (those before it are its causes' and contexts').
    end = len(parts) - len(list(summary.format_exception_only()))
    if user is None:
        parts[end:end] = [_HEADER, *own]
    else:
        at = max(i for i in range(end) if parts[i] == _HEADER) + 1
        parts[at:at] = own
    return text, "".join(parts)


def _dumps_alone(exc: BaseException, dumps: Callable[[Any], bytes]) -> bytes:
    """``exc`` pickled without its chain and traceback: its causes travel apart, each on
    its own, and its traceback as text. Where exceptions pickle with their chain (tblib's
    support, which importing dask.distributed installs), a cause that does not unpickle
    would otherwise take the exception down with it."""
    links = {name: getattr(exc, name) for name in ("__cause__", "__context__", "__traceback__")}
    suppress = exc.__suppress_context__
    try:
        for name in links:
            set_link(exc, name, None)
        return dumps(exc)
    finally:
        for name, value in links.items():
            set_link(exc, name, value)
        set_link(exc, "__suppress_context__", suppress)


def _load_exception(data: bytes, loads: Callable[[bytes], Any]) -> BaseException | None:
    try:
        exc = loads(data)
    except BaseException:  # unpickling runs arbitrary code: SystemExit included
        return None
    # A __reduce__ may rebuild something else entirely: only an exception will do.
    if not isinstance(exc, BaseException):
        return None
    # Where tracebacks pickle (dask installs tblib's support), the worker's frames would
    # show twice: the note has them, from the user's code down.
    set_link(exc, "__traceback__", None)
    return exc


def restore_error(
    wire: WireError, label: str | TaskSpec, loads: Callable[[bytes], Any]
) -> BaseException:
    """Caller side: the original exception with the worker's traceback as a note, or a
    :class:`~dispatcher.RemoteError` when it cannot be brought back. Never raises.

    ``label`` names the node: a label, or the task (named by its description)."""
    name = repr(label) if isinstance(label, str) else label.description
    if wire.whole_traceback_text and _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "the whole traceback of %s from its worker, dispatcher's frames included:\n%s",
            name,
            wire.whole_traceback_text,
        )
    exc = _load_exception(wire.payload, loads) if wire.payload is not None else None
    if exc is None:
        return RemoteError(wire.type_name, wire.message, wire.traceback_text)
    traceback_text = wire.traceback_text
    if isinstance(exc, SerializationError) and isinstance(exc.node, int):
        # Workers know tasks by key alone: the caller names the node, in the worker's
        # traceback too.
        label_text = label if isinstance(label, str) else label.label
        named = SerializationError(label_text, exc.what, exc.type_name, exc.detail)
        traceback_text = traceback_text.replace(safe_str(exc), safe_str(named))
        exc = named
    # Without a frame of the user's code (an error of dispatcher's own, a result that does
    # not pickle...) the traceback would only repeat the message.
    if "Traceback (most recent call last):" in traceback_text:
        try:
            exc.add_note(f"Traceback from the worker that ran {name}:\n{traceback_text}")
        except BaseException:
            pass  # an exception class that refuses notes still travels
    link = exc
    for data in wire.causes:
        cause = _load_exception(data, loads)
        if cause is None:
            break
        try:
            set_link(link, "__cause__", cause)
        except BaseException:
            break
        link = cause
    return exc


Packed = TypeVar("Packed")


def dumps_for(label: str | TaskSpec, what: str, obj: Any, dumps: Callable[[Any], Packed]) -> Packed:
    """``dumps(obj)``, turning any failure into :class:`~dispatcher.SerializationError`
    naming the node (``label``, or the task whose label it is: worked out only on
    failure), ``what`` was being sent, and the offending type."""
    try:
        return dumps(obj)
    except BaseException as exc:  # pickling runs arbitrary code: SystemExit included
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is _MAIN:
            raise  # the user's Ctrl-C, which lands in the main thread alone
        name = label if isinstance(label, str) else label.label
        raise serialization_error(name, what, obj, exc, in_caller=True) from exc


def serialization_error(
    label: str | Key, what: str, obj: Any, exc: BaseException, in_caller: bool = False
) -> SerializationError:
    """The error for ``obj`` (the ``what`` of node ``label``) failing to (un)pickle with
    ``exc``, naming the offending type as precisely as the failure tells it; ``in_caller``
    when it failed in the caller, on its way to a worker.

    A worker, which knows its tasks by key alone, passes the key: :func:`restore_error`
    puts the node's label in its place in the caller."""
    if isinstance(exc, Exception):
        return SerializationError(label, what, _culprit(obj, exc), None, in_caller)
    # SystemExit and the like: no pickling message to go by, so name the member that refuses.
    culprit = _qualified_type(_refusing(obj))
    detail = f"{culprit} cannot be pickled: pickling it raised {type(exc).__name__}"
    text = safe_str(exc)
    detail += f" ({text})" if text else ""
    return SerializationError(label, what, culprit, detail, in_caller)


def unpickling_error(
    label: str | Key, what: str, exc: BaseException, in_caller: bool = False
) -> SerializationError:
    """The error for the ``what`` of node ``label`` (or of task key ``label``, as for
    :func:`serialization_error`) failing to *un*pickle where it arrived (the caller, when
    ``in_caller``), with ``exc``: most often a module that process cannot import."""
    detail = f"it could not be unpickled where it arrived ({type(exc).__name__}: {safe_str(exc)})"
    if isinstance(exc, (ImportError, AttributeError)):
        detail += (
            "; what is pickled by reference (functions and classes of a module) must be "
            "importable there too: install the module on every worker, or put it on "
            "PYTHONPATH"
        )
    return SerializationError(label, what, type(exc).__qualname__, detail, in_caller)


def _culprit(obj: Any, exc: BaseException) -> str:
    # pickle names the offending type in its message ("cannot pickle '_thread.lock' object");
    # prefer that over the container's type.
    text = safe_str(exc)
    if "cannot pickle '" in text:
        return text.split("cannot pickle '", 1)[1].split("'", 1)[0]
    if isinstance(exc, pickle.PicklingError) or "pickle" in text:
        return f"{_qualified_type(obj)}: {text}"
    return _qualified_type(obj)


def _qualified_type(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _refusing(obj: Any, depth: int = 4) -> Any:
    """The innermost member of ``obj`` (tuples, lists and dicts, ``depth`` levels down)
    whose pickling raises, or ``obj`` itself: what a message should name when the
    exception does not say (the arguments' tuple never refuses, a member does)."""
    if depth == 0 or type(obj) not in (tuple, list, dict):
        return obj
    from ._pickle import dumps  # (only on the way to an error)

    for member in obj.values() if type(obj) is dict else obj:
        try:
            dumps(member)
        except BaseException:  # as it raised for the whole: SystemExit included
            return _refusing(member, depth - 1)
    return obj
