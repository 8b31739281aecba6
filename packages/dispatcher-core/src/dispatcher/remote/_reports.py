"""Caller side: turning a worker's reports into scheduler events, through the in-flight
table (so a stale report is dropped here, once, for every backend).

These run on the transport's thread, which serves every run of its executor: nothing
here runs the user's code. Results and exceptions go to the scheduler still pickled
(:class:`Pickled`, :class:`UnrestoredError`), and the driver of the run they belong to
unpickles them (see :class:`~dispatcher.transport.Unloaded`), so one run's value that is
slow to unpickle, or never finishes unpickling, holds up that run alone.
"""

from __future__ import annotations

import logging
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._cache import CacheWarning
from .._errors import TaskTimeoutError
from ..transport import KEY_BITS, Unloaded
from ._errors import WireError, restore_error, unpickling_error
from ._inflight import InFlight
from ._messages import CacheWarned, Done, Failed, Lost, Started, Storing, TakenBack

if TYPE_CHECKING:
    from ..transport import EventSink, Key, TaskSpec

__all__ = ["CacheWarnings", "Pickled", "Reports", "UnrestoredError"]

_RUNS_REMEMBERED = 16
"""Runs whose cache warnings are remembered, to say each once per run."""

log = logging.getLogger("dispatcher.cache")


class CacheWarnings:
    """The run's cache warnings on workers, warned again in the caller, where the user
    runs the graph: a :class:`~dispatcher.CacheWarning` naming the node and the worker,
    each message once per run (a full disk says so for every node). Called on the
    transport's thread, which serves every run: a warning made an error is logged instead
    of ending that thread."""

    def __init__(self) -> None:
        self._said: dict[int, set[str]] = {}  # per run (the oldest first), what was said

    def warn(self, key: Key, spec: TaskSpec | None, worker: str, text: str) -> None:
        """The cache warned ``text`` on ``worker`` while task ``key`` ran (``spec``, if it
        is still known)."""
        run = key >> KEY_BITS
        said = self._said.get(run)
        if said is None:
            if len(self._said) >= _RUNS_REMEMBERED:
                del self._said[next(iter(self._said))]
            said = self._said[run] = set()
        if text in said:
            return
        said.add(text)
        node = f"node {spec.label!r}" if spec is not None else f"task {key}"
        try:
            warnings.warn(f"{text} ({node}, on worker {worker})", CacheWarning, stacklevel=2)
        except Exception:
            log.warning("%s (%s, on worker %s)", text, node, worker)


class Pickled(Unloaded):
    """A value as a pickle stream and its out-of-band buffers, unpickled by
    :meth:`load` in the run's driver."""

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, buffers: Sequence[Any] | None = None) -> None:
        self.data = data
        self.buffers = buffers
        """Out-of-band buffers, in order (already in this process: mapped, received)."""

    def load(self) -> Any:
        if self.buffers:
            return pickle.loads(self.data, buffers=self.buffers)
        return pickle.loads(self.data)


class UnrestoredError(Unloaded):
    """A task's exception as its worker captured it (:func:`capture_error`), restored by
    :meth:`load` in the run's driver (:func:`restore_error`, which never raises)."""

    __slots__ = ("spec", "wire")

    def __init__(self, wire: WireError, spec: TaskSpec) -> None:
        self.wire = wire
        self.spec = spec

    def load(self) -> BaseException:
        interrupted: list[KeyboardInterrupt] = []

        def loads(data: bytes) -> Any:
            try:
                return pickle.loads(data)
            except KeyboardInterrupt as exc:
                interrupted.append(exc)
                raise

        error = restore_error(self.wire, self.spec, loads)
        if interrupted:
            # restore_error takes whatever unpickling raises for the exception's own
            # failure; this is the user's Ctrl-C reaching the driver meanwhile.
            raise interrupted[0]
        return error


class Reports:
    """Hands :class:`Done`, :class:`Failed`, :class:`Started`, :class:`Lost` and
    :class:`TakenBack` to the event sink; :class:`Storing` moves a deadline, and
    :class:`CacheWarned` is warned here. ``received(worker, key, result)`` turns a result
    as the backend sent it into what is reported: an
    :class:`~dispatcher.transport.Unloaded` (a :class:`Pickled`), the run's driver
    unpickling it; it runs on the transport's thread and so must not unpickle anything
    itself. ``stale(worker, keys)`` frees results
    nobody expects any more. ``source_name(source)`` names a worker as the backend's
    workers name a source of their timed fetches (see :meth:`TaskRunner.moved`); by
    default they name it as the caller does. ``carried(worker, finished)``, if given,
    sees each :class:`Done`'s entries before any is reported, to keep the small values
    carried along unasked (see ``TaskRunner.carried_types``): kept before the scheduler
    hears of them, so no Free for one can come before it is kept."""

    def __init__(
        self,
        inflight: InFlight,
        events: EventSink,
        received: Callable[[str, Key, Any], Any],
        stale: Callable[[str, list[Key]], None],
        source_name: Callable[[Any], str] | None = None,
        carried: Callable[[str, list[tuple[Key, float, int | None, Any]]], None] | None = None,
    ) -> None:
        self.inflight = inflight
        self.events = events
        self.received = received
        self.stale = stale
        self.source_name = source_name
        self.carried = carried
        self._cache_warnings = CacheWarnings()
        self._returned_in_time: set[Key] = set()
        """Timed tasks whose function returned before their deadline, their result then
        stored (:class:`Storing`): their reported time counts the store too. Forgotten
        at the task's report, or when it starts again (a retry: timed afresh)."""
        self._finished = getattr(events, "tasks_finished", None) or self._one_by_one
        self._handlers: dict[type, Callable[[str, Any], None]] = {
            Done: self.done,
            Failed: self.failed,
            Started: self.started,
            Storing: self.storing,
            CacheWarned: self.cache_warned,
            Lost: self.lost,
            TakenBack: self.taken_back,
        }

    def handle(self, worker: str, message: Any) -> bool:
        """Handle ``message`` if it is one of the five; False if it is not."""
        handler = self._handlers.get(type(message))
        if handler is None:
            return False
        handler(worker, message)
        return True

    def done(self, worker: str, message: Done) -> None:
        """Tasks that finished on ``worker``: each result passed on, still pickled, if the
        caller wants it; stale ones freed; then those that failed (:meth:`failed`)."""
        if self.carried is not None:
            self.carried(worker, message.finished)
        # InFlight.take, written out: this loop runs once per task.
        out, deadlines, events = self.inflight.tasks, self.inflight.deadlines, self.events
        finished: list[tuple[Key, float, int | None, Any]] = []
        unwanted: list[Key] = []
        for key, duration, nbytes, result in message.finished:
            spec = out.get(key)
            if spec is None or spec.worker != worker:
                unwanted.append(key)
                continue
            taken = out.pop(key, None)
            if taken is not spec:  # the scheduler's thread took it meanwhile
                if taken is not None:
                    out[key] = taken  # and even sent it again: that one stays out
                unwanted.append(key)
                continue
            if spec.timeout is not None:
                deadlines.pop(key, None)
                # (_in_time first: it also forgets the key, whatever the duration)
                if not self._in_time(key) and duration > spec.timeout:
                    # Reported before its deadline was enforced (this thread was late,
                    # the machine busy): it fails as it would have then.
                    unwanted.append(key)
                    late = TaskTimeoutError(spec.label, spec.timeout)
                    events.task_failed(key, worker, late, spec.timeout)
                    continue
            if not spec.want_result:
                finished.append((key, duration, nbytes, ...))
            else:
                try:
                    value = self.received(worker, key, result)
                except Exception as exc:  # its bytes are gone (a segment removed...)
                    error = unpickling_error(spec.label, "result", exc, in_caller=True)
                    events.task_failed(key, worker, error, duration)
                    continue
                finished.append((key, duration, nbytes, value))
        if finished:
            self._finished(worker, finished)
        if unwanted:
            if self._returned_in_time:  # (taken meanwhile: cancelled, given up on)
                self._returned_in_time.difference_update(unwanted)
            self.stale(worker, unwanted)
        if message.failed:
            for key, duration, wire in message.failed:
                self.failed(worker, Failed(key, duration, wire))
        if message.moves:
            self.moved(worker, message.moves)

    def _one_by_one(self, worker: str, finished: list[tuple[Key, float, int | None, Any]]) -> None:
        """For a sink without ``tasks_finished``."""
        report = self.events.task_finished
        for key, duration, nbytes, value in finished:
            if value is ...:  # (a wanted result is always an Unloaded here)
                report(key, worker, duration, nbytes)
            else:
                report(key, worker, duration, nbytes, value)

    def moved(self, worker: str, moves: list[tuple[tuple[Any, ...], int, float]]) -> None:
        """Fetches ``worker`` timed: passed on with their sources named, to a sink that
        takes them (``inputs_moved`` is optional)."""
        report = getattr(self.events, "inputs_moved", None)
        if report is None:
            return
        name = self.source_name
        if name is not None:
            moves = [(tuple(map(name, sources)), n, s) for sources, n, s in moves]
        report(worker, moves)

    def failed(self, worker: str, message: Failed) -> None:
        """A task that raised on ``worker``: its exception reported, to be restored in
        the run's driver."""
        spec = self.inflight.take(message.key, worker)
        if spec is not None:
            if spec.timeout is not None:
                self._returned_in_time.discard(message.key)
            error = UnrestoredError(message.error, spec)
            self.events.task_failed(message.key, worker, error, message.duration)

    def started(self, worker: str, message: Started) -> None:
        """A timed task started on ``worker``: its deadline runs from now. An earlier
        attempt's return in time (its worker died storing the result) is void."""
        if self._returned_in_time:
            self._returned_in_time.discard(message.key)
        self.inflight.started(message.key, worker, time.monotonic())

    def storing(self, worker: str, message: Storing) -> None:
        """A timed task's function returned on ``worker``, its result being stored: its
        deadline is now the store's bound."""
        now = time.monotonic()
        deadline = self.inflight.deadlines.get(message.key)
        if deadline is not None and now <= deadline[0]:
            self._returned_in_time.add(message.key)
        self.inflight.storing(message.key, worker, now, message.seconds)

    def _in_time(self, key: Key) -> bool:
        """Did timed task ``key``'s function return before its deadline (its reported time
        may then count the store too)? Asked once, at its report: the key is forgotten."""
        if key in self._returned_in_time:
            self._returned_in_time.discard(key)
            return True
        return False

    def cache_warned(self, worker: str, message: CacheWarned) -> None:
        """The run's cache warned on ``worker``: see :class:`CacheWarnings`."""
        key = message.key
        self._cache_warnings.warn(key, self.inflight.tasks.get(key), worker, message.text)

    def lost(self, worker: str, message: Lost) -> None:
        """A task could not start on ``worker``: some of its inputs were not there."""
        if self.inflight.take(message.key, worker) is not None:
            self.events.task_inputs_lost(message.key, worker, message.missing)

    def taken_back(self, worker: str, message: TakenBack) -> None:
        """Tasks asked back from ``worker`` and removed there before they started: no
        longer out (a late report of one is stale), and placed again by the scheduler."""
        take = self.inflight.take
        taken = [key for key in message.keys if take(key, worker) is not None]
        if taken:
            self.events.tasks_taken_back(worker, taken)
