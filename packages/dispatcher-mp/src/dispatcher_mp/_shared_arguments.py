"""Large plain arguments travel through shared memory, written once per run rather than
pickled into every task that is given them.

``op(f)(array, i)`` for a thousand ``i`` hands the same ``array`` to a thousand tasks. An
argument of at least :data:`~dispatcher_mp._wire.SHM_THRESHOLD` bytes (as pickled, or as
its buffers) goes into a segment the first time a task of a run needs it, keyed by the
object's identity within that run; the object is held as long as its segment lives, so
that its ``id`` cannot be reused by another. The task's pickle then starts by naming the segment
(:func:`shared_argument`) and refers to that value wherever the arguments hold the object,
nested in containers or not: a few hundred bytes instead of the whole value.

A worker maps each segment once, the first time one of its tasks names it, and hands the
same value to every task of that run it runs after: mapped copy-on-write, so a task that
changes it in place changes this worker's copy only (later tasks of the run on the same
worker see the change; the caller and other workers never do).

When the run ends (whatever ended it), its segments are unlinked and the workers told to
drop their mappings (:class:`~dispatcher_mp._messages.Unshare`). A run that gives each task
a different large object would otherwise keep them all in ``/dev/shm`` until it ends: once
the segments of all runs add up to more than a quarter of ``/dev/shm``, those that no task
out names are unlinked as soon as another is written (given to a task again, such an object
is written anew). Each segment is also registered with multiprocessing's resource tracker,
as the caller's values are: should the caller be killed, the tracker unlinks what it left.

Finding such arguments costs the tasks that have none nothing: a task's arguments are
looked at only when a run already has shared arguments, or when their pickle turns out
large (the ordinary pickle is made anyway); then only the arguments themselves and the
builtin containers they are in are looked at, up to :data:`_LOOK_AT` objects per task.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle

from dispatcher.remote import dumps, dumps_for, size_of
from dispatcher.transport import KEY_BITS, TaskSpec

from ._caller_values import dump_large
from ._wire import SHM_DIR, SHM_THRESHOLD, Payload, SharedMemory, load

__all__ = ["SharedArguments", "forget_shared", "shared_argument"]

_LOOK_AT = 256
"""The most objects of one task's arguments looked at for shared values."""
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
_SCALARS = frozenset({int, float, bool, complex, type(None)})
_MANY = 16
"""With more candidates than this in one task, only those whose size says they are large
are tried: pickling each to learn its size would cost as much as the task's pickle."""


@dataclass
class _Shared:
    """One object given to tasks of a run: the object (held, so that its id stays its
    own), and its segment with the pickle fragment that names it; ``fragment`` is
    ``None`` when it travels in each task's pickle (small once pickled, or no room)."""

    value: Any
    segment: str | None = None
    fragment: bytes | None = None
    nbytes: int = 0


class SharedArguments:
    """The caller's side: which arguments of which run are in which segment.

    ``out()`` gives the tasks sent and not reported yet: while the segments of all runs
    add up to more than :attr:`budget`, those no such task names are unlinked before a
    run ends (a task given the same object later has it written anew), and their names
    queued in :attr:`unshared` for the workers."""

    def __init__(self, prefix: str, enabled: bool, out: Callable[[], Iterable[TaskSpec]]) -> None:
        self.shm = SharedMemory(f"{prefix}a-", enabled, tracked=True)
        """Segments named after the executor's ``prefix``, swept with the rest at close."""
        self.out = out
        self.runs: dict[int, dict[int, _Shared]] = {}
        """Per run, its objects by id."""
        self.writes = 0
        """Arguments written to shared memory so far."""
        self.held = 0
        """Bytes in the segments of all runs."""
        self.budget = _budget()
        self.unshared: list[str] = []
        """Segments unlinked before their run ended, to tell the workers."""

    def pack(self, spec: TaskSpec, arguments: tuple[Any, Any, Any]) -> bytes:
        """The pickle of ``spec``'s ``(args, kwargs, inline)``: as :func:`dumps` makes
        it when it holds no large value, else naming the segments of those it holds.
        Raises :class:`~dispatcher.SerializationError` naming the node."""
        data = None
        if not self.runs:  # no run has shared arguments: the ordinary pickle first
            data = dumps_for(spec, "arguments", arguments, dumps)
            if len(data) < SHM_THRESHOLD or not self.shm.enabled:
                return data
        run = spec.key >> KEY_BITS
        return dumps_for(spec, "arguments", arguments, lambda a: self._dumps(run, a, data))

    def _dumps(self, run: int, arguments: Any, data: bytes | None) -> bytes:
        """``pack``'s pickle for a task of run ``run``; ``data``: its ordinary pickle,
        if made already."""
        shares = self.runs.get(run)
        if shares is not None:
            found = _known(arguments, shares)
            if found:
                return _dumps_naming(arguments, found)
        if data is None:
            data = dumps(arguments)
        if len(data) < SHM_THRESHOLD or not self.shm.enabled:
            return data
        if shares is None:
            shares = self.runs[run] = {}
        found = self._share(arguments, shares)
        return _dumps_naming(arguments, found) if found else data

    def _share(self, arguments: Any, by_id: dict[int, _Shared]) -> list[_Shared]:
        """Put the large objects among ``arguments`` into segments (once per run); the
        shared ones they hold, each once."""
        candidates = _candidates(arguments)
        if len(candidates) > _MANY:
            candidates = [c for c in candidates if size_of(c) >= SHM_THRESHOLD]
        found: list[_Shared] = []
        for obj in candidates:
            shared = by_id.get(id(obj))
            if shared is None:
                shared = by_id[id(obj)] = self._write(obj)
            if shared.fragment is not None and all(s is not shared for s in found):
                found.append(shared)
        return found

    def _write(self, obj: Any) -> _Shared:
        payload = dump_large(self.shm, obj)
        if payload is None or payload.segment is None:
            return _Shared(obj)
        self.writes += 1
        self.held += payload.nbytes
        if self.held > self.budget:
            self._make_room()
        return _Shared(obj, payload.segment, _fragment(payload), payload.nbytes)

    def _make_room(self) -> None:
        """Unlink the segments no task out names (the one just written is not known
        yet, and the task being sent, which names it, is out)."""
        named = {id(obj) for spec in self.out() for obj in _walk(_arguments_of(spec))}
        for shares in self.runs.values():
            for key, shared in list(shares.items()):
                if shared.segment is not None and key not in named:
                    del shares[key]
                    self._release(shared)
                    self.unshared.append(shared.segment)

    def take_unshared(self) -> list[str]:
        """The segments unlinked to make room since the last call (no task out names
        them): for the workers to forget."""
        unshared = self.unshared
        if unshared:
            self.unshared = []
        return unshared

    def _release(self, shared: _Shared) -> None:
        assert shared.segment is not None
        self.shm.release(shared.segment)
        self.held -= shared.nbytes

    def run_finished(self, run: int) -> list[str]:
        """Unlink run ``run``'s segments; their names, for the workers to forget."""
        shares = self.runs.pop(run, None)
        if shares is None:
            return []
        names = []
        for shared in shares.values():
            if shared.segment is not None:
                self._release(shared)
                names.append(shared.segment)
        return names

    def close(self) -> None:
        """Unlink every segment (the executor closes)."""
        for run in list(self.runs):
            self.run_finished(run)


def _arguments_of(spec: TaskSpec) -> tuple[Any, Any, Any]:
    return spec.args, spec.kwargs, spec.inline


def _budget() -> int:
    """Bytes the segments of shared arguments may hold beyond those tasks out name: a
    quarter of /dev/shm, which the workers' results need too."""
    try:
        stats = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return stats.f_blocks * stats.f_frsize // 4


def _known(arguments: Any, by_id: Mapping[int, _Shared]) -> list[_Shared]:
    """The shared objects (those with a segment) that ``arguments`` holds, each once."""
    found: list[_Shared] = []
    for obj in _walk(arguments):
        shared = by_id.get(id(obj))
        if (
            shared is not None
            and shared.fragment is not None
            and all(s is not shared for s in found)
        ):
            found.append(shared)
    return found


def _candidates(arguments: Any) -> list[Any]:
    """The objects among ``arguments`` that may be worth a segment: not builtin
    containers (the scheduler copies those into each task), not scalars."""
    return [obj for obj in _walk(arguments) if type(obj) not in _SCALARS]


def _walk(arguments: Any) -> list[Any]:
    """The objects held by ``arguments`` and the builtin containers in it (not those
    containers themselves), up to :data:`_LOOK_AT` objects looked at."""
    leaves: list[Any] = []
    stack = [arguments]
    budget = _LOOK_AT
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


# -- the pickle that names segments -----------------------------------------------------

_PROTO = b"\x80\x05"
_GLOBAL = (
    b"".join(
        b"\x8c" + bytes([len(part)]) + part  # SHORT_BINUNICODE
        for part in (__name__.encode(), b"shared_argument")
    )
    + b"\x93"
)  # STACK_GLOBAL
_MEMOIZE_POP = b"R\x940"  # REDUCE, MEMOIZE, POP


def _fragment(payload: Payload) -> bytes:
    """Pickle opcodes that push ``shared_argument(<payload>)`` into the unpickler's memo
    (one entry, no other) and leave the stack as it was."""
    segment = payload.segment
    assert segment is not None
    name = segment.encode()
    described = pickle.dumps((payload.data, payload.sizes), protocol=5)
    return b"".join(
        (
            _GLOBAL,
            b"X" + len(name).to_bytes(4, "little") + name,  # BINUNICODE
            b"B" + len(described).to_bytes(4, "little") + described,  # BINBYTES
            b"\x86",  # TUPLE2
            _MEMOIZE_POP,
        )
    )


def _dumps_naming(arguments: Any, shared: list[_Shared]) -> bytes:
    """``arguments``' pickle, its shared objects named by segment.

    The stream starts by making each shared value with :func:`shared_argument` into the
    unpickler's memo (entries 0, 1, ...); the pickler starts with a memo that already holds
    those objects under those numbers, so wherever the arguments refer to one, the stream
    says "memo entry i", as for any object met twice (and pickles nothing of it)."""
    stream = io.BytesIO()
    stream.write(_PROTO)
    for entry in shared:
        stream.write(entry.fragment or b"")
    pickler = cloudpickle.Pickler(stream, protocol=5)
    pickler.memo = {id(entry.value): (i, entry.value) for i, entry in enumerate(shared)}
    pickler.dump(arguments)
    return stream.getvalue()


# -- in the worker ----------------------------------------------------------------------

_MAPPED: dict[str, Any] = {}
"""Shared arguments mapped in this worker, by segment, until the caller says their run
is over."""


def shared_argument(segment: str, described: bytes) -> Any:
    """The value in ``segment`` (``described``: its pickle stream and buffer sizes),
    mapped the first time a task of this worker names it, then the same object."""
    value = _MAPPED.get(segment, _MAPPED)
    if value is _MAPPED:
        data, sizes = pickle.loads(described)
        value = _MAPPED[segment] = load(Payload(data, None, segment, sizes))
        # The caller unlinks a segment before it says to forget it: if it is gone, the
        # word may have come while this was mapping it, and been acted on too early.
        if not os.path.exists(os.path.join(SHM_DIR, segment)):
            _MAPPED.pop(segment, None)
    return value


def forget_shared(segments: list[str]) -> None:
    """Drop these mappings: their run is over (the caller unlinked the segments)."""
    for segment in segments:
        _MAPPED.pop(segment, None)
