"""Large plain arguments reach each rank once per run, not with every task.

``op(f)(array, i)`` for a thousand ``i`` hands the same ``array`` to a thousand tasks. An
argument of at least :data:`~dispatcher.remote.LARGE_ARGUMENT_BYTES` (its pickle and
buffers) is pickled once per run, the first time a task of the run needs it (found and
keyed by identity as the kit does it: :class:`~dispatcher.remote.LargeArguments`), and
given a name no other argument ever gets in this job. Before the first task of the run
that names it goes to a rank, rank 0 sends that rank the argument itself
(:class:`~._messages.HoldArgument`, its buffers as raw MPI messages); every task's pickle
then names it, a few dozen bytes instead of the whole value. MPI delivers one sender's
messages in order, so the argument is there before any task that names it.

A rank unpickles it the first time one of its tasks names it, and hands the same value
to every task of that run it runs after: a task that changes it in place changes this
rank's copy only (later tasks of the run on the same rank see the change; rank 0 and
other ranks never do).

When the run ends (whatever ended it: success, failure, fail-fast, Ctrl-C), rank 0
forgets its arguments and tells the ranks that hold them to drop them
(:class:`~._messages.DropArguments`). A rank taken out of scheduling and back keeps what
it holds, and rank 0 keeps knowing it holds it: rank 0 forgets that a rank holds an
argument only as it tells the rank to drop it. A run that gives each task another large
argument would pile them all up on its ranks: once those a rank holds add up to more than
:data:`HELD_BUDGET`, the run's own that no task out there names are dropped there (rank 0
sends one again should a later task name it; only the run's own, since only the run's
driver sends its tasks: another run's task may be on its way there). A name is never
reused, so a task can never be given
another value than the one its caller gave; a task that names an argument its rank no
longer holds (one of a run already over, still queued there) fails with a
:class:`LookupError` saying so, and its run, over, ignores it.
"""

from __future__ import annotations

import itertools
import pickle
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dispatcher.remote import (
    LARGE_ARGUMENT_BYTES,
    Kept,
    LargeArguments,
    dumps_for,
    dumps_naming,
    fragment,
    objects_in,
)
from dispatcher.transport import KEY_BITS, TaskSpec

from ._channel import encode
from ._messages import DropArguments, HoldArgument

__all__ = ["HeldArguments", "drop_held", "held_argument", "held_count", "hold"]

Packed = tuple[bytes, list[memoryview]]
"""A pickle stream and its out-of-band buffers (:func:`~._channel.encode`)."""

_names = itertools.count(1)

HELD_BUDGET = 1 << 30
"""Bytes of large arguments a rank may hold beyond those its tasks out name: a run that
gives each task another large argument would otherwise pile them all up on its ranks
until it ends."""


class HeldArguments(LargeArguments[Packed]):
    """Rank 0's side: the large arguments of each run and the ranks that hold each.

    ``out(rank)`` gives the tasks sent to ``rank`` and not reported yet: once the
    arguments a rank holds add up to more than :attr:`budget`, those none of them names
    are dropped there (sent again should a later task name one)."""

    def __init__(self, out: Callable[[int], Iterable[TaskSpec]]) -> None:
        super().__init__()
        self.out = out
        self.budget = HELD_BUDGET
        self.packed: dict[str, Packed] = {}
        """Each kept argument's pickle, made once, sent to each rank that needs it."""
        self.holders: dict[str, set[int]] = {}
        """The ranks each kept argument was sent to."""
        self.held: dict[int, dict[str, Kept]] = {}
        """By rank, the arguments sent there, by name."""
        self.held_bytes: dict[int, int] = {}
        self.lock = threading.Lock()
        """Runs submit from their drivers' threads."""

    def ordinary(self, arguments: Any) -> Packed:
        return encode(arguments)

    def size(self, packed: Packed) -> int:
        return len(packed[0]) + sum(b.nbytes for b in packed[1])

    def naming(self, arguments: Any, named: list[Kept]) -> Packed:
        raw: list[pickle.PickleBuffer] = []
        stream = dumps_naming(arguments, named, raw.append)
        return stream, [b.raw() for b in raw]

    def keep(self, obj: Any) -> Kept:
        try:
            packed = encode(obj)
        except Exception:  # the task's own pickle says what is wrong with it
            return Kept(obj)
        nbytes = self.size(packed)
        if nbytes < LARGE_ARGUMENT_BYTES:
            return Kept(obj)
        name = str(next(_names))
        self.packed[name] = packed
        self.holders[name] = set()
        return Kept(obj, name, fragment(held_argument, name.encode()), nbytes)

    def release(self, kept: Kept) -> None:
        assert kept.name is not None
        self.packed.pop(kept.name, None)
        for rank in self.holders.get(kept.name, ()):
            self._forget(rank, kept)

    def _forget(self, rank: int, kept: Kept) -> None:
        """Rank 0's record that ``rank`` holds ``kept``, gone."""
        assert kept.name is not None
        if self.held[rank].pop(kept.name, None) is not None:
            self.held_bytes[rank] -= kept.nbytes

    def pack_for(self, spec: TaskSpec, rank: int) -> tuple[list[Any], list[Any]]:
        """``spec``'s arguments for its task to ``rank`` (stream, then its out-of-band
        buffers, which the hub sends raw), and the messages to send ``rank`` before it:
        the arguments it names that ``rank`` lacks, and those to drop to make room.
        Raises :class:`~dispatcher.SerializationError` naming the node."""
        arguments = (spec.args, spec.kwargs, spec.inline)
        ordinary = None
        if not self.runs:  # the common case, without the lock: nothing large kept
            ordinary = dumps_for(spec, "arguments", arguments, encode)
            if not ordinary[1] and len(ordinary[0]) < LARGE_ARGUMENT_BYTES:
                return [ordinary[0]], []
        with self.lock:
            (stream, buffers), named = self.pack(spec, arguments, ordinary)
            before: list[Any] = []
            for kept in named:
                assert kept.name is not None
                holders = self.holders[kept.name]
                if rank in holders:
                    continue
                holders.add(rank)
                self.held.setdefault(rank, {})[kept.name] = kept
                self.held_bytes[rank] = self.held_bytes.get(rank, 0) + kept.nbytes
                if self.held_bytes[rank] > self.budget:
                    drop = self._make_room(rank, spec.key >> KEY_BITS, named)
                    if drop:
                        before.append(DropArguments(drop))
                packed = self.packed.get(kept.name)
                if packed is None:  # dropped everywhere to make room: pickled anew
                    packed = self.packed[kept.name] = encode(kept.value)
                header, views = packed
                before.append(HoldArgument(kept.name, [header, *map(pickle.PickleBuffer, views)]))
        return [stream, *map(pickle.PickleBuffer, buffers)], before

    def _make_room(self, rank: int, run: int, named: list[Kept]) -> list[str]:
        """Drop on ``rank`` the arguments of run ``run`` that neither its tasks out nor
        the task being sent (``named``) name; their names."""
        wanted = {id(k.value) for k in named}
        for spec in self.out(rank):
            wanted.update(map(id, objects_in((spec.args, spec.kwargs, spec.inline))))
        own = self.runs.get(run, {})
        dropped = []
        for name, kept in list(self.held[rank].items()):
            if own.get(id(kept.value)) is kept and id(kept.value) not in wanted:
                self._forget(rank, kept)
                holders = self.holders[name]
                holders.discard(rank)
                if not holders:
                    self.packed.pop(name, None)
                dropped.append(name)
        return dropped

    def finish(self, run: int | None = None) -> dict[int, list[str]]:
        """Forget run ``run``'s arguments (every run's if ``None``); by rank, the names
        each rank holds of them, for it to drop."""
        with self.lock:
            runs = list(self.runs) if run is None else [run]
            drop: dict[int, list[str]] = {}
            for each in runs:
                for kept in self.run_finished(each):
                    assert kept.name is not None
                    for rank in self.holders.pop(kept.name, ()):
                        drop.setdefault(rank, []).append(kept.name)
            return drop


# -- on a worker rank ---------------------------------------------------------------------

_UNLOADED = object()
_HELD: dict[str, list[Any]] = {}
"""The large arguments this rank holds, by name: ``[packed, value]``, the value unpickled
(on the task thread) the first time a task names it. Entries are added and removed by
the hub thread alone, as rank 0 says."""


def hold(message: HoldArgument) -> None:
    """Keep an argument rank 0 sent (on the hub thread): tasks that name it follow."""
    _HELD[message.name] = [message.value, _UNLOADED]


def drop_held(names: list[str]) -> None:
    """Drop these arguments (on the hub thread): their run is over."""
    for name in names:
        _HELD.pop(name, None)


def held_count() -> int:
    """How many large arguments this rank holds (for checks: none once their runs end)."""
    return len(_HELD)


def held_argument(name: bytes) -> Any:
    """The argument ``name``, unpickled the first time a task of this rank names it, then
    the same object. Called while a task's arguments are unpickled (on the task thread):
    what it raises fails that task."""
    key = name.decode()
    entry = _HELD.get(key)
    if entry is None:
        raise LookupError(
            f"large argument {key} is not held by this rank: the run that gave it is over, "
            "or it was dropped to make room"
        )
    value = entry[1]
    if value is _UNLOADED:
        packed = entry[0]
        value = entry[1] = pickle.loads(packed[0], buffers=packed[1:])
        entry[0] = None  # the value is made over these buffers, not copied from them
    return value
