"""Large plain arguments travel through shared memory, written once per run rather than
pickled into every task that is given them.

``op(f)(array, i)`` for a thousand ``i`` hands the same ``array`` to a thousand tasks. An
argument of at least :data:`~dispatcher.remote.LARGE_ARGUMENT_BYTES` (as pickled, or as
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
is written anew). Should the caller be killed, its janitor unlinks what it left, as it does
the caller's values.

Finding such arguments, keying them by identity within a run and naming them in each
task's pickle is the kit's (:class:`~dispatcher.remote.LargeArguments`), shared with
``mpi``; what is mp's own is keeping them in segments, and the budget.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from typing import Any

from dispatcher.remote import Kept, LargeArguments, dumps, dumps_naming, fragment, objects_in
from dispatcher.transport import TaskSpec

from ._caller_values import dump_large
from ._wire import SHM_DIR, Payload, SharedMemory, load

__all__ = ["SharedArguments", "forget_shared", "shared_argument"]


class SharedArguments(LargeArguments[bytes]):
    """The caller's side: which arguments of which run are in which segment (a
    :class:`~dispatcher.remote.Kept`'s ``name``).

    ``out()`` gives the tasks sent and not reported yet: while the segments of all runs
    add up to more than :attr:`budget`, those no such task names are unlinked before a
    run ends (a task given the same object later has it written anew), and their names
    queued in :attr:`unshared` for the workers."""

    def __init__(self, prefix: str, enabled: bool, out: Callable[[], Iterable[TaskSpec]]) -> None:
        super().__init__()
        self.shm = SharedMemory(f"{prefix}a-", enabled)
        """Segments named after the executor's ``prefix``, swept with the rest at close."""
        self.enabled = enabled
        self.out = out
        self.held = 0
        """Bytes in the segments of all runs."""
        self.budget = _budget()
        self.unshared: list[str] = []
        """Segments unlinked before their run ended, to tell the workers."""

    def ordinary(self, arguments: Any) -> bytes:
        return dumps(arguments)

    def size(self, packed: bytes) -> int:
        return len(packed)

    def naming(self, arguments: Any, named: list[Kept]) -> bytes:
        return dumps_naming(arguments, named)

    def keep(self, obj: Any) -> Kept:
        payload = dump_large(self.shm, obj)
        if payload is None or payload.segment is None:
            return Kept(obj)
        self.held += payload.nbytes
        if self.held > self.budget:
            self._make_room()
        described = pickle.dumps((payload.segment, payload.data, payload.sizes), protocol=5)
        return Kept(obj, payload.segment, fragment(shared_argument, described), payload.nbytes)

    def _make_room(self) -> None:
        """Unlink the segments no task out names (the one just written is not known
        yet, and the task being sent, which names it, is out)."""
        named = {id(obj) for spec in self.out() for obj in objects_in(_arguments_of(spec))}
        for shares in self.runs.values():
            for key, shared in list(shares.items()):
                if shared.name is not None and key not in named:
                    del shares[key]
                    self.release(shared)
                    self.unshared.append(shared.name)

    def take_unshared(self) -> list[str]:
        """The segments unlinked to make room since the last call (no task out names
        them): for the workers to forget."""
        unshared = self.unshared
        if unshared:
            self.unshared = []
        return unshared

    def release(self, kept: Kept) -> None:
        assert kept.name is not None
        self.shm.release(kept.name)
        self.held -= kept.nbytes

    def segments_of(self, run: int) -> list[str]:
        """Unlink run ``run``'s segments; their names, for the workers to forget."""
        return [kept.name for kept in self.run_finished(run) if kept.name is not None]


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


# -- in the worker ----------------------------------------------------------------------

_MAPPED: dict[str, Any] = {}
"""Shared arguments mapped in this worker, by segment, until the caller says their run
is over."""


def shared_argument(described: bytes) -> Any:
    """The value a segment holds (``described``: the segment's name, its pickle stream
    and buffer sizes), mapped the first time a task of this worker names it, then the
    same object."""
    segment, data, sizes = pickle.loads(described)
    value = _MAPPED.get(segment, _MAPPED)
    if value is _MAPPED:
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
