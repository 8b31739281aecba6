"""Large plain arguments given to many tasks of a run: kept once per run, named in each
task's pickle instead of pickled into it.

``op(f)(array, i)`` for a thousand ``i`` hands the same ``array`` to a thousand tasks. A
backend keeps such an argument once per run where its workers can reach it (mp: in a
shared-memory segment; mpi: on each rank, sent there once) and each task's pickle names it.
What is shared between backends lives here:

- what counts as large: at least :data:`LARGE_ARGUMENT_BYTES` once pickled;
- where to look: the arguments themselves and the builtin containers they are in, up to
  :data:`LOOK_AT` objects per task; the tasks that hold nothing large pay nothing, since
  their arguments are looked at only when a run already keeps some, or when their own
  pickle turns out large (it is made anyway);
- keying within a run by identity: the object is held as long as its run keeps it, so
  that its ``id`` cannot be reused by another;
- the pickle that names kept values: it starts with a *fragment* per kept value that
  calls a function of the backend's worker and puts what it returns into the unpickler's
  memo, and the pickler starts with a memo that already holds those objects under those
  numbers; so wherever the arguments refer to one, at any depth, the stream says "memo
  entry i", as for any object met twice, and pickles nothing of it.

A backend subclasses :class:`LargeArguments`: how a task's arguments are pickled
ordinarily and with names (:meth:`~LargeArguments.ordinary`,
:meth:`~LargeArguments.naming`), and how one large object is kept
(:meth:`~LargeArguments.keep`) and let go (:meth:`~LargeArguments.release`).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..transport import KEY_BITS, TaskSpec
from ._errors import dumps_for
from ._pickle import OUT_OF_BAND_BYTES, _SplitPickler
from ._worker import size_of

__all__ = [
    "LARGE_ARGUMENT_BYTES",
    "LOOK_AT",
    "Kept",
    "LargeArguments",
    "dumps_naming",
    "fragment",
    "objects_in",
]

LARGE_ARGUMENT_BYTES = OUT_OF_BAND_BYTES
"""An argument at least this big once pickled (stream and buffers) is kept once per run."""
LOOK_AT = 256
"""The most objects of one task's arguments looked at for large ones."""
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
_SCALARS = frozenset({int, float, bool, complex, type(None)})
_MANY = 16
"""With more candidates than this in one task, only those whose size says they are large
are tried: pickling each to learn its size would cost as much as the task's pickle."""

Packed = TypeVar("Packed")
"""A backend's packed arguments."""


@dataclass
class Kept:
    """One object given to tasks of a run: the object (held, so that its id stays its
    own), the backend's ``name`` for its kept copy and the pickle ``fragment`` that names
    it; ``fragment`` is ``None`` when it travels in each task's pickle (small once
    pickled, or nowhere to keep it)."""

    value: Any
    name: str | None = None
    fragment: bytes | None = None
    nbytes: int = 0


class LargeArguments(Generic[Packed]):
    """The caller's side of large plain arguments: which each run keeps, by identity.

    :meth:`pack` packs a task's arguments; a large object among them (at least
    :data:`LARGE_ARGUMENT_BYTES` once pickled, looked for in the arguments and the builtin
    containers they are in) is kept once per run by the backend (:meth:`keep`), and every
    task of the run that is given it names it (:func:`dumps_naming`) instead of pickling
    it. The tasks that hold nothing large pay nothing: their arguments are looked at only
    when a run already keeps some, or when their ordinary packing turns out large.
    :meth:`run_finished` lets go of what a run kept (:meth:`release`).

    A subclass says how arguments are packed (:meth:`ordinary`, :meth:`naming`,
    :meth:`size`) and how one object is kept and let go (:meth:`keep`,
    :meth:`release`)."""

    enabled = True
    """Whether large arguments are kept at all (else every task pickles its own)."""

    def __init__(self) -> None:
        self.runs: dict[int, dict[int, Kept]] = {}
        """Per run, its objects by id."""
        self.writes = 0
        """Arguments kept so far."""

    # -- what a backend provides ---------------------------------------------------------

    def ordinary(self, arguments: Any) -> Packed:
        """``arguments`` packed as they are (raises if they do not pickle)."""
        raise NotImplementedError

    def size(self, packed: Packed) -> int:
        """Bytes of ``packed`` arguments."""
        raise NotImplementedError

    def naming(self, arguments: Any, named: list[Kept]) -> Packed:
        """``arguments`` packed with the objects of ``named`` named (:func:`dumps_naming`)."""
        raise NotImplementedError

    def keep(self, obj: Any) -> Kept:
        """Keep ``obj`` for the tasks of a run, or say it travels with each (``fragment``
        ``None``)."""
        raise NotImplementedError

    def release(self, kept: Kept) -> None:
        """Let go of a kept copy (its run is over, or room is needed)."""

    # -- the caller's calls --------------------------------------------------------------

    def pack(
        self, spec: TaskSpec, arguments: tuple[Any, Any, Any], packed: Packed | None = None
    ) -> tuple[Packed, list[Kept]]:
        """``spec``'s ``(args, kwargs, inline)`` packed, and the kept objects the packing
        names (none when it holds nothing large); ``packed``: their ordinary packing, if
        made already. Raises :class:`~dispatcher.SerializationError` naming the node."""
        if packed is None and not self.runs:  # no run keeps anything: the ordinary first
            packed = dumps_for(spec, "arguments", arguments, self.ordinary)
            if not self.enabled or self.size(packed) < LARGE_ARGUMENT_BYTES:
                return packed, []
        run = spec.key >> KEY_BITS
        named: list[Kept] = []

        def dumps(arguments: Any) -> Packed:
            nonlocal packed
            kept = self.runs.get(run)
            if kept is not None:
                named.extend(_known(arguments, kept))
                if named:  # still large without them? another large one, then
                    packed = self.naming(arguments, named)
            if packed is None:
                packed = self.ordinary(arguments)
            if not self.enabled or self.size(packed) < LARGE_ARGUMENT_BYTES:
                return packed
            if kept is None:
                kept = self.runs[run] = {}
            more = [k for k in self._keep_large(arguments, kept) if all(k is not n for n in named)]
            if not more:
                return packed
            named.extend(more)
            return self.naming(arguments, named)

        return dumps_for(spec, "arguments", arguments, dumps), named

    def _keep_large(self, arguments: Any, by_id: dict[int, Kept]) -> list[Kept]:
        """Keep the large objects among ``arguments`` (once per run); the kept ones they
        hold, each once."""
        candidates = [obj for obj in objects_in(arguments) if type(obj) not in _SCALARS]
        if len(candidates) > _MANY:
            candidates = [c for c in candidates if size_of(c) >= LARGE_ARGUMENT_BYTES]
        found: list[Kept] = []
        for obj in candidates:
            kept = by_id.get(id(obj))
            if kept is None:
                kept = by_id[id(obj)] = self.keep(obj)
                if kept.fragment is not None:
                    self.writes += 1
            if kept.fragment is not None and all(k is not kept for k in found):
                found.append(kept)
        return found

    def run_finished(self, run: int) -> list[Kept]:
        """Let go of what run ``run`` kept; what it kept, for the workers to forget."""
        kept = self.runs.pop(run, None)
        if kept is None:
            return []
        gone = [k for k in kept.values() if k.fragment is not None]
        for k in gone:
            self.release(k)
        return gone

    def close(self) -> None:
        """Let go of everything kept (the executor closes)."""
        for run in list(self.runs):
            self.run_finished(run)


def _known(arguments: Any, by_id: Mapping[int, Kept]) -> list[Kept]:
    """The kept objects (those with a fragment) that ``arguments`` holds, each once."""
    found: list[Kept] = []
    for obj in objects_in(arguments):
        kept = by_id.get(id(obj))
        if kept is not None and kept.fragment is not None and all(k is not kept for k in found):
            found.append(kept)
    return found


def objects_in(arguments: Any) -> list[Any]:
    """The objects held by ``arguments`` and the builtin containers in it (not those
    containers themselves), up to :data:`LOOK_AT` objects looked at."""
    leaves: list[Any] = []
    stack = [arguments]
    budget = LOOK_AT
    while stack and budget > 0:
        obj = stack.pop()
        budget -= 1
        cls = type(obj)
        if cls in _CONTAINERS:
            stack.extend(obj.values() if cls is dict else obj)
        elif isinstance(obj, tuple):  # a namedtuple
            stack.extend(obj)
        elif cls not in _SCALARS:
            leaves.append(obj)
    return leaves


# -- the pickle that names kept values ----------------------------------------------------

_PROTO = b"\x80\x05"
_MEMOIZE_POP = b"\x940"  # MEMOIZE, POP


def _short_unicode(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def fragment(function: Callable[[bytes], Any], payload: bytes) -> bytes:
    """Pickle opcodes that push ``function(payload)`` into the unpickler's memo (one
    entry, no other) and leave the stack as it was. ``function`` is a module-level
    function of the worker's side, found there by its module and name."""
    return b"".join(
        (
            _short_unicode(function.__module__),
            _short_unicode(function.__qualname__),
            b"\x93",  # STACK_GLOBAL
            b"B" + len(payload).to_bytes(4, "little") + payload,  # BINBYTES
            b"\x85",  # TUPLE1
            b"R",  # REDUCE
            _MEMOIZE_POP,
        )
    )


def dumps_naming(
    arguments: Any,
    named: list[Kept],
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> bytes:
    """``arguments``' pickle, naming the objects of ``named`` instead of pickling them.

    The stream starts with each one's :func:`fragment`, which puts the value the worker
    finds by that name into the unpickler's memo (entries 0, 1, ...); the pickler starts
    with a memo that already holds those objects under those numbers, so wherever the
    arguments refer to one, at any depth, the stream says "memo entry i". With
    ``buffer_callback``, the buffers of the rest go out of band."""
    stream = io.BytesIO()
    stream.write(_PROTO)
    for kept in named:
        stream.write(kept.fragment or b"")
    pickler = _SplitPickler(stream, protocol=5, buffer_callback=buffer_callback)
    pickler.memo = {id(kept.value): (i, kept.value) for i, kept in enumerate(named)}
    pickler.dump(arguments)
    return stream.getvalue()
