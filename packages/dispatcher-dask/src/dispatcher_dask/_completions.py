"""How the dask transport learns that its tasks ended, and reports them.

A task's run time, result size (and a small wanted value) come ahead of its completion, as
an event its worker logs (:func:`~._task.run_task`; one event per fused run,
:func:`~._task.run_tasks`); the completion is its dask future settling, on dask's callback
thread. A wanted value not carried by the event is gathered, in batches, on a thread of
its own. :class:`Completions` is a part of :class:`~._transport.DaskTransport` and works on
its records.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from dispatcher import WorkerLostError
from dispatcher.remote import unpickling_error
from dispatcher.transport import EventSink, Key, TaskSpec

from ._cluster import gather
from ._giving_up import Pending, log
from ._outcome import left_pickled, restored
from ._released_ahead import ReleasedAhead
from ._task import Shipped, TaskFailure

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from distributed import Client, Future

    from ._deadlines import Deadlines
    from ._fusing import Fusing
    from ._prefetch import QueueDepth

__all__ = ["Completions"]


class Completions(ReleasedAhead):
    """The part of the dask transport that reports what its tasks did (see the module's
    docstring)."""

    _lock: threading.Lock
    _closed: bool
    _client: Client | None
    _events: EventSink | None
    _pending: dict[Key, Pending]
    _keys: dict[str, Key]
    _futures: dict[Key, Future]
    _made: dict[Key, TaskSpec]
    _index: dict[Key, int]
    _stats: dict[Key, tuple[float, int | None, bytes | None]]
    _member_stats: dict[Key, tuple[float, int | None, bytes | None]]
    _deadlines: Deadlines[Pending]
    _gatherer: ThreadPoolExecutor
    _to_gather: list[Pending]
    _fusing: Fusing
    _mean_run: float
    _depth: QueueDepth
    _control: ThreadPoolExecutor
    _watching: set[asyncio.Future[None]]
    _release_made: set[Key]
    """Results still being made whose last reader was sent to their worker: released once
    reported made, as dask then keeps them only while that reader needs them."""
    _own_client: bool
    _scheduler_lost = False
    """Set once the client was seen reconnecting: its closing later is dask giving up."""
    _told_lost = False  # the runs were told no worker is left, the scheduler being lost

    if TYPE_CHECKING:

        @property
        def client(self) -> Client: ...

        def _depth_changed(self) -> None: ...

        def _on_thread(
            self, pool: ThreadPoolExecutor, work: Callable[..., None], *args: Any
        ) -> None: ...

    def _when_settled(self, settled: Sequence[tuple[Future, Callable[[Future], None]]]) -> None:
        """Call each callback with its future once that settles: on dask's event loop if
        it finished (reporting it there is quick), else on the transport's gather thread
        (reading an error blocks). dask's own ``add_done_callback`` hands every future to that
        thread, a thread switch per task that the caller's process pays, where a local
        cluster's scheduler runs too."""
        self.client.loop.add_callback(self._when_settled_on_loop, settled)

    def _when_settled_on_loop(
        self, settled: Sequence[tuple[Future, Callable[[Future], None]]]
    ) -> None:
        from distributed.client import done_callback

        watching = self._watching
        for future, callback in settled:
            task = asyncio.ensure_future(done_callback(future, partial(self._settled, callback)))
            watching.add(task)  # (the loop keeps only a weak reference to a task)
            task.add_done_callback(watching.discard)

    def _settled(self, callback: Callable[[Future], None], future: Future) -> None:
        if future.status != "finished":
            # Reading its error blocks: on a thread of ours (dask's own callback thread
            # refused it at interpreter exit, with a traceback in dask's log).
            self._on_thread(self._gatherer, callback, future)
            return
        try:
            callback(future)
        except BaseException:  # as dask's callback thread does; nothing may end its loop
            log.exception("reporting the dask task %s failed", future.key)

    def _on_stats(self, event: tuple[float, Any]) -> None:
        # On dask's event loop: keep it short.
        report = event[1]
        if report and isinstance(report[0], list | tuple):  # a fused run's: one per task
            for key, duration, nbytes, failure in report:
                pending = self._learn(key, duration, nbytes)
                if pending is not None:
                    self._member_stats[key] = (duration, nbytes, failure)
            return
        key, duration, nbytes, carried = report
        if self._learn(key, duration, nbytes) is not None and not self._made_ahead(
            key, duration, nbytes
        ):
            self._stats[key] = (duration, nbytes, carried)

    def _learn(self, key: Key, duration: float, nbytes: int | None) -> Pending | None:
        """Fold a task's run time and result size in; its record, if it is still pending
        (not for a task cancelled meanwhile: nobody would read its report)."""
        mean = self._mean_run
        mean = self._mean_run = duration if mean == 0.0 else mean + (duration - mean) / 16
        if self._depth.retuned(mean) and not self._closed:
            self._on_thread(self._control, self._depth_changed)  # (dropped once closing)
        pending = self._pending.get(key)
        if pending is not None:
            self._fusing.learn(pending.spec.func, duration, nbytes)
        return pending

    def _done(self, future: Future) -> None:
        """A future settled (on dask's callback thread): report it, unless it is stale."""
        status = future.status
        gather = False
        carried = None  # the wanted value, if it came with the task's report
        release = None
        with self._lock:
            key = self._keys.get(future.key)
            pending = None if key is None else self._pending.get(key)
            if key is None or pending is None or pending.future is not future:
                return
            if key in self._ahead:  # released ahead: its stats or its reader report it
                return
            self._deadlines.discard(pending)
            if status == "finished" and pending.spec.want_result:
                carried = self._stats.get(key, (0.0, None, None))[2]
            if carried is None and status == "finished" and pending.spec.want_result:
                # Pending until its value is here: cancelling it meanwhile still works.
                self._to_gather.append(pending)
                gather = len(self._to_gather) == 1
            else:
                del self._pending[key]
                del self._keys[future.key]
            if key in self._release_made:
                self._release_made.discard(key)
                wanted = pending.spec.want_result
                if status == "finished" and not wanted and self._futures.get(key) is future:
                    # Its last reader, on its worker, was sent: dask keeps it for that
                    # reader alone (a chain sent ahead holds no more than its last links).
                    del self._futures[key]
                    del self._made[key]
                    release = future
        if gather:
            self._on_thread(self._gatherer, self._gather)
        events = self._events
        assert events is not None
        spec = pending.spec
        if status == "finished":
            self._before(pending)
            if carried is not None:
                duration, nbytes, _ = self._stats.pop(key, (0.0, None, None))
                self._finished_with(spec, future, duration, nbytes, (True, Shipped(carried)))
            elif not spec.want_result:
                duration, nbytes, _ = self._stats.pop(key, (0.0, None, None))
                events.task_finished(key, spec.worker, duration, nbytes)
            if release is not None:
                release.release()
            return
        self._unfinished(pending, future, status)

    def _unfinished(self, pending: Pending, future: Future, status: str) -> None:
        """Report ``pending`` failed, or waiting for its inputs again: its future ended
        with ``status``, not "finished"."""
        events = self._events
        assert events is not None
        spec = pending.spec
        key = spec.key
        if status == "error":
            try:
                raised = future.exception()
            except Exception as err:  # the exception itself could not be brought back
                raised = err
            self._drop(key, future)
            self._failed_ahead(pending, raised, status)
            if isinstance(raised, TaskFailure) and raised.key != key:
                # An input failed, or one of its own inputs, after this task was sent:
                # dispatcher decides their fate, and this task waits for them again.
                events.task_inputs_lost(key, spec.worker, self._not_made(pending))
            else:
                duration = raised.duration if isinstance(raised, TaskFailure) else 0.0
                events.task_failed(key, spec.worker, restored(spec, raised), duration)
            return
        self._drop(key, future)
        self._failed_ahead(pending, None, status)
        if status != "lost":
            reason = self._client_gone() or f"the dask cluster {status} the task"
            error = WorkerLostError(spec.label, spec.worker, reason)
            events.task_failed(key, spec.worker, error, 0.0)

    def _member_done(self, key: Key, future: Future) -> None:
        """The fused run that ran task ``key`` settled (on dask's callback thread): report
        the task as its run reported it, unless that is stale."""
        status = future.status
        release = None
        with self._lock:
            pending = self._pending.get(key)
            if pending is None or pending.future is not future:
                return
            del self._pending[key]
            stats = self._member_stats.pop(key, None)
            if key in self._release_made:
                self._release_made.discard(key)
                made = status == "finished" and stats is not None and stats[2] is None
                if made and self._futures.get(key) is future:
                    # Its last reader was sent: dask keeps the run's values for that
                    # reader alone, or the run dropped it (see _fusing).
                    del self._futures[key]
                    del self._made[key]
                    del self._index[key]
                    release = future
        if status != "finished":
            self._unfinished(pending, future, status)
            return
        events = self._events
        assert events is not None
        spec = pending.spec
        if stats is None:
            # Its run's report never came (it cannot be told whether the task failed):
            # it runs again, which counts as no attempt. Its run ended, so what it read
            # was made: those released ahead are reported so, by it alone.
            self._before(pending)
            self._drop(key, future)
            events.task_inputs_lost(key, spec.worker, [])
            return
        duration, nbytes, failure = stats
        if failure is None:
            self._before(pending)  # the first of a run may read a result released ahead
            events.task_finished(key, spec.worker, duration, nbytes)
            if release is not None:
                release.release()
            return
        self._drop(key, future)
        try:
            raised: BaseException = pickle.loads(failure)
        except Exception as exc:
            raised = exc
        self._failed_ahead(pending, raised, "error")
        if isinstance(raised, TaskFailure) and raised.key != key:
            # An input made earlier in its run failed: dispatcher decides its fate, and
            # this task waits for it again.
            events.task_inputs_lost(key, spec.worker, [raised.key])
            return
        events.task_failed(key, spec.worker, restored(spec, raised), duration)

    def _client_gone(self) -> str | None:
        """Why the client can no longer run anything, if it cannot: it was closed, or lost
        its scheduler (then dask cancels every task it had, and the task is not to blame).
        The first time it finds the scheduler lost, it also tells the runs that no worker
        is left."""
        client = self._client
        status = getattr(client, "status", None)
        if status == "connecting":
            self._scheduler_lost = True
        elif status not in ("closing", "closed"):
            return None
        elif not (self._scheduler_lost or self._own_client):
            return (
                "the dask client was closed while the run used it (close a client given "
                "with client= only after the runs on it have ended)"
            )
        # Reconnecting, or closed by dask once it gave up (nobody else closes the
        # client this executor made).
        scheduler = getattr(getattr(client, "scheduler", None), "address", None)
        at = f" at {scheduler}" if scheduler else ""
        reason = (
            f"the dask client lost its connection to the scheduler{at} (it stopped, or "
            "the network failed): this executor cannot run anything more; once the "
            "cluster is back, run again with a new executor"
        )
        if not self._told_lost and self._events is not None:
            # Runs that wait for a worker's thread (one still running a task given up
            # on) would wait for one that never comes back: they fail now, saying why.
            self._told_lost = True
            self._events.no_worker_left(reason)
        return reason

    def _not_made(self, pending: Pending) -> list[Key]:
        """The inputs ``pending`` read that were never reported made (all of them, if
        that cannot be told)."""
        with self._lock:
            made = self._made
            missing = [k for k in pending.inputs if k in self._pending or k not in made]
        return missing or list(pending.inputs)

    def _gather(self) -> None:
        """Bring the values the caller wants, all that finished meanwhile in one call."""
        with self._lock:
            batch, self._to_gather = self._to_gather, []
        if not batch or self._closed:
            return
        values = gather(self.client, [pending.future for pending in batch])
        for pending, fetched in zip(batch, values):
            spec, future = pending.spec, pending.future
            with self._lock:
                if self._pending.get(spec.key) is not pending:
                    continue  # cancelled while it travelled
                del self._pending[spec.key]
                self._keys.pop(future.key, None)
            duration, nbytes, _ = self._stats.pop(spec.key, (0.0, None, None))
            if fetched[0]:
                self._before(pending)
            self._finished_with(spec, future, duration, nbytes, fetched)

    def _finished_with(
        self, spec: TaskSpec, future: Future, duration: float, nbytes: int | None, fetched: Any
    ) -> None:
        """Report ``spec`` finished with the value its worker sent (``fetched``: ``(True,
        the Shipped value)``, or ``(False, why it could not be brought)``), or failed in
        the caller if it did not come. The run's driver unpickles it."""
        ok, value = fetched
        events = self._events
        assert events is not None
        if ok:
            events.task_finished(spec.key, spec.worker, duration, nbytes, left_pickled(value))
            return
        self._drop(spec.key, future)
        error = unpickling_error(spec.label, "result", value, in_caller=True)
        events.task_failed(spec.key, spec.worker, error, duration)

    def _drop(self, key: Key, future: Future) -> None:
        with self._lock:
            if self._futures.get(key) is future:
                del self._futures[key]
                del self._made[key]
                self._index.pop(key, None)
        future.release()

    def _forget(self, key: Key) -> None:
        """Drop every record of ``key``; the caller holds the lock."""
        future = self._futures.pop(key, None)
        self._made.pop(key, None)
        self._release_made.discard(key)
        self._ahead.discard(key)
        self._stats.pop(key, None)
        self._index.pop(key, None)
        self._member_stats.pop(key, None)
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._deadlines.discard(pending)
            self._keys.pop(pending.future.key, None)
        elif future is not None:
            self._keys.pop(future.key, None)
