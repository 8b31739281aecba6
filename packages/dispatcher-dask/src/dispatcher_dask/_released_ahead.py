"""Results released by the caller before they are made: a chain sent ahead on one worker.

When the last task reading a result is sent to the worker making it, dask keeps that
result for its reader alone: the caller's future of it may go. Held until the result is
reported made, the future makes dask's scheduler keep the result until the caller's release
comes back to it, a round trip through the caller's busy process during which the worker
goes on down the chain: a chain of tiny tasks then held four or five links at once, where
dask's own graphs hold two. Released as soon as its reader is sent, the result is freed the
moment that reader has run, as dask frees its own intermediates.

A future released so early no longer tells how its task ended, so such a task (one whose
value the caller does not want, with no deadline, on a transport receiving every task's
stats) is reported by its stats event when it succeeds (:meth:`ReleasedAhead._made_ahead`),
and otherwise through the task that reads it, whose future is held or reported so in turn:
once that reader is reported made, so are the tasks it read (:meth:`_before`); when it
fails, the one that failed is reported failed and the others as waiting for their inputs
again (:meth:`_failed_ahead`). A worker lost takes them with the rest of what it held.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from dispatcher import WorkerLostError
from dispatcher.transport import EventSink, Key, TaskSpec

from ._giving_up import Pending
from ._outcome import restored
from ._task import TaskFailure

if TYPE_CHECKING:
    from distributed import Future

__all__ = ["ReleasedAhead"]


class ReleasedAhead:
    """The part of the dask transport that reports the tasks whose futures it released
    before they were made (see the module's docstring)."""

    _lock: threading.Lock
    _events: EventSink | None
    _pending: dict[Key, Pending]
    _keys: dict[str, Key]
    _futures: dict[Key, Future]
    _made: dict[Key, TaskSpec]
    _release_made: set[Key]
    _stats_topic: str | None
    _ahead: set[Key]
    """Tasks pending whose futures were released when their last reader was sent."""

    def _reader_sent(self, key: Key) -> Future | None:
        """The last reader of ``key``, still being made, was sent to its worker: the
        future to release now, or None when it is released once reported (see
        ``Completions._done``). The caller holds the lock."""
        pending = self._pending[key]
        spec = pending.spec
        if self._stats_topic is None or spec.want_result or spec.timeout is not None:
            self._release_made.add(key)
            return None
        self._ahead.add(key)
        return pending.future

    def _settle_ahead(self, pending: Pending) -> list[Pending]:
        """Forget the tasks released ahead that ``pending`` reads, directly or through
        others of them, and return them, the earliest first. The caller holds the lock."""
        ahead, found, stack = self._ahead, [], list(pending.inputs)
        while stack:
            key = stack.pop()
            if key in ahead:
                ahead.discard(key)
                earlier = self._pending.pop(key, None)
                if earlier is None:
                    continue
                self._keys.pop(earlier.future.key, None)
                if self._futures.get(key) is earlier.future:
                    del self._futures[key]
                    del self._made[key]
                found.append(earlier)
                stack.extend(earlier.inputs)
        found.reverse()
        return found

    def _before(self, pending: Pending) -> None:
        """``pending`` is reported made: so were the tasks released ahead that it read,
        whose stats never came (they came before those tasks were released: see
        ``_made_ahead``); report them first, their run time unknown."""
        if not pending.inputs or not self._ahead:
            return
        with self._lock:
            earlier = self._settle_ahead(pending)
        events = self._events
        assert events is not None
        for made in earlier:
            events.task_finished(made.spec.key, made.spec.worker, 0.0, None)

    def _made_ahead(self, key: Key, duration: float, nbytes: int | None) -> bool:
        """Report task ``key`` made, if it was released ahead (its stats just came, on
        dask's event loop); True if it was."""
        with self._lock:
            if key not in self._ahead:
                return False
            pending = self._pending.get(key)
            if pending is None:
                return False
        self._before(pending)
        with self._lock:
            if key not in self._ahead:
                return True  # reported meanwhile, with the task that read it
            self._ahead.discard(key)
            del self._pending[key]
            self._keys.pop(pending.future.key, None)
            if self._futures.get(key) is pending.future:
                del self._futures[key]
                del self._made[key]
        events = self._events
        assert events is not None
        events.task_finished(key, pending.spec.worker, duration, nbytes)
        return True

    def _failed_ahead(self, pending: Pending, raised: Any, status: str) -> None:
        """``pending``'s future ended with ``status``, not "finished" (``raised``: its
        exception, for "error"): report the tasks released ahead that it read. The one
        that failed (named by the :class:`TaskFailure`) failed, those reading it wait
        for their inputs again, those before it were made; all fail with it when dask
        dropped them (a worker lost reports its own)."""
        if status == "lost" or not pending.inputs or not self._ahead:
            return
        with self._lock:
            earlier = self._settle_ahead(pending)
        events = self._events
        assert events is not None
        failed = raised.key if isinstance(raised, TaskFailure) else None
        after: set[Key | None] = {failed}  # the failed task and those reading it, directly or not
        grew = True
        while grew:
            grew = False
            for p in earlier:
                if p.spec.key not in after and after.intersection(p.inputs):
                    after.add(p.spec.key)
                    grew = True
        for p in earlier:
            spec = p.spec
            if status != "error":
                reason = f"the dask cluster {status} the task"
                error = WorkerLostError(spec.label, spec.worker, reason)
                events.task_failed(spec.key, spec.worker, error, 0.0)
            elif spec.key == failed:
                events.task_failed(spec.key, spec.worker, restored(spec, raised), raised.duration)
            elif spec.key in after:
                events.task_inputs_lost(spec.key, spec.worker, [k for k in p.inputs if k in after])
            else:
                events.task_finished(spec.key, spec.worker, 0.0, None)
