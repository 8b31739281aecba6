"""Caller side: turning a worker's reports into scheduler events, through the in-flight
table (so a stale report is dropped here, once, for every backend)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import restore_error, unpickling_error
from ._inflight import InFlight
from ._messages import Done, Failed, Lost, Started
from ._pickle import loads

if TYPE_CHECKING:
    from ..transport import EventSink, Key

__all__ = ["Reports"]


class Reports:
    """Hands :class:`Done`, :class:`Failed`, :class:`Started` and :class:`Lost` to the
    event sink. ``load_result(worker, key, result)`` turns a result as the backend sent
    it into the value; ``stale(worker, keys)`` frees results nobody expects any more."""

    def __init__(
        self,
        inflight: InFlight,
        events: EventSink,
        load_result: Callable[[str, Key, Any], Any],
        stale: Callable[[str, list[Key]], None],
    ) -> None:
        self.inflight = inflight
        self.events = events
        self.load_result = load_result
        self.stale = stale
        self._handlers: dict[type, Callable[[str, Any], None]] = {
            Done: self.done,
            Failed: self.failed,
            Started: self.started,
            Lost: self.lost,
        }

    def handle(self, worker: str, message: Any) -> bool:
        """Handle ``message`` if it is one of the four; False if it is not."""
        handler = self._handlers.get(type(message))
        if handler is None:
            return False
        handler(worker, message)
        return True

    def done(self, worker: str, message: Done) -> None:
        """Tasks that finished on ``worker``: each result loaded if the caller wants it
        (a result that will not unpickle fails its task), stale ones freed."""
        take, events = self.inflight.take, self.events
        unwanted: list[Key] = []
        for key, duration, nbytes, result in message.finished:
            spec = take(key, worker)
            if spec is None:
                unwanted.append(key)
            elif not spec.want_result:
                events.task_finished(key, worker, duration, nbytes)
            else:
                try:
                    value = self.load_result(worker, key, result)
                except BaseException as exc:  # unpickling runs arbitrary code
                    error = unpickling_error(spec.label, "result", exc, in_caller=True)
                    events.task_failed(key, worker, error, duration)
                    continue
                events.task_finished(key, worker, duration, nbytes, value)
        if unwanted:
            self.stale(worker, unwanted)

    def failed(self, worker: str, message: Failed) -> None:
        """A task that raised on ``worker``: its exception restored and reported."""
        spec = self.inflight.take(message.key, worker)
        if spec is not None:
            error = restore_error(message.error, spec, loads)
            self.events.task_failed(message.key, worker, error, message.duration)

    def started(self, worker: str, message: Started) -> None:
        """A timed task started on ``worker``: its deadline runs from now."""
        self.inflight.started(message.key, worker, time.monotonic())

    def lost(self, worker: str, message: Lost) -> None:
        """A task could not start on ``worker``: some of its inputs were not there."""
        if self.inflight.take(message.key, worker) is not None:
            self.events.task_inputs_lost(message.key, worker, message.missing)
