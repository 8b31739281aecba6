"""What the dask transport does about tasks it gives up on, which dask cannot stop.

A task given up on (past its timeout, or abandoned by a failed or cancelled run) runs its
call to the end in its worker thread. The transport (:class:`GivingUp`, a part of
:class:`~._transport.DaskTransport`):

- fails a task past its timeout at its deadline, counted from when its worker said it
  started (:class:`~._deadlines.Deadlines`), and hands back the tasks sent ahead that
  wait for its result; a cached task whose function returned in time has the store of
  its result bounded instead (its worker says so: :data:`~._task.STORING`);
- counts the threads such tasks take (:class:`~._abandoned.Abandoned`) and gives their
  workers fewer slots meanwhile;
- once every thread of a worker is taken (or it does not answer while it holds such a
  task: a task holding the GIL starves its event loop): restarts it if the executor
  started the cluster (its nanny kills it and starts a new worker under a new address),
  or else moves elsewhere what was queued there; meanwhile it reports the worker paused,
  naming the tasks that hold it, so that when no worker of a user's cluster has a thread
  left the scheduler's rule ends the runs with that reason (see
  :meth:`~dispatcher.transport.EventSink.worker_paused`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher import TaskTimeoutError, WorkerLostError
from dispatcher.transport import EventSink, Key, TaskSpec

from ._quiet import quiet_broadcasts_to
from ._task import CACHE_WARNED, STORING

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from distributed import Client, Future, LocalCluster

    from dispatcher.remote import CacheWarnings

    from ._abandoned import Abandoned
    from ._cluster import WorkerNames
    from ._deadlines import Deadlines
    from ._outbox import Outbox
    from ._prefetch import QueueDepth

__all__ = ["GivingUp", "Pending"]

RESTART_SECONDS = 30.0
"""How long a worker of our own may take to be restarted."""

log = logging.getLogger("dispatcher.dask")


RESTART_AFTER = 1.0
"""Seconds every thread of a worker of our own must stay taken by tasks given up on before
it is restarted."""

KILL_GRACE = 1.0
"""Seconds a worker being restarted is given to close before its nanny kills it: it runs
nothing that anyone waits for, and its event loop may be starved (a task holding the GIL)
so that it could not close at all. dask's own restart waits four seconds."""


async def _restart_worker(client: Client, address: str, nanny: str | None) -> None:
    """Have the nanny at ``nanny`` kill its worker at ``address`` after
    :data:`KILL_GRACE`; it then starts a new one (its own rule for a worker that exits).
    Without a nanny, or if that fails, dask's scheduler restarts (or removes) it."""
    from distributed.core import rpc

    if nanny is not None:
        try:
            async with rpc(nanny, connection_args=client.connection_args) as keeper:
                await asyncio.wait_for(
                    keeper.kill(timeout=KILL_GRACE, reason="dispatcher-restart"),
                    RESTART_SECONDS,
                )
            return
        except Exception:
            log.debug("the nanny of %s did not kill it", address, exc_info=True)
    await client.scheduler.restart_workers(
        workers=[address],
        timeout=RESTART_SECONDS,
        wait_for_workers=False,
        on_error="return",
        stimulus_id=f"dispatcher-restart-{time.time()}",
    )


@dataclass(eq=False)
class Pending:
    """A task submitted and not yet reported."""

    spec: TaskSpec
    future: Future
    inputs: tuple[Key, ...]
    """The keys of the results it reads from other tasks (not the caller's values)."""


class GivingUp:
    """The part of the dask transport that deals with tasks given up on (see the
    module's docstring); it works on the transport's own records."""

    _lock: threading.Lock
    _closed: bool
    _events: EventSink | None
    _cluster: LocalCluster | None
    _control: ThreadPoolExecutor
    _pending: dict[Key, Pending]
    _workers: dict[str, int]
    _nthreads: dict[str, int]
    _names: WorkerNames
    _depth: QueueDepth
    _abandoned: Abandoned
    _deadlines: Deadlines[Pending]
    _restarting: set[str]
    _full_since: dict[str, float]  # workers found full, since when (see _full)
    _cache_warnings: CacheWarnings
    _outbox: Outbox

    if TYPE_CHECKING:

        @property
        def client(self) -> Client: ...

        def _forget(self, key: Key) -> None: ...

        def _worker_lost(
            self, address: str, reason: str, running: Sequence[Key] | None = None
        ) -> None: ...

    def _on_thread(self, pool: ThreadPoolExecutor, work: Callable[..., None], *args: Any) -> None:
        """Have ``pool``'s thread call ``work(*args)``, supervised: what escapes it fails
        every task out, with the reason, where the report it would have made would
        otherwise be waited for for ever. Once the pool refuses work (the transport closed,
        or the interpreter exits), nothing."""
        try:
            pool.submit(self._supervised, work, *args)
        except RuntimeError:  # shut down
            return

    def _supervised(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except BaseException as exc:  # SystemExit included: it would end nothing here
            if self._closed:
                return
            what = getattr(work, "__name__", repr(work))
            log.error("the dask transport's %s failed", what, exc_info=exc)
            self._fail_out(f"dask: the caller's thread failed in {what}: {exc!r}")

    def _fail_out(self, why: str, timed_only: bool = False) -> None:
        """Fail every task out (or every timed one) with :class:`WorkerLostError` saying
        ``why``: what would have reported them is gone."""
        with self._lock:
            out = [
                pending.spec
                for pending in self._pending.values()
                if not timed_only or pending.spec.timeout is not None
            ]
            for spec in out:
                self._forget(spec.key)
        for spec in out:
            error = WorkerLostError(spec.label, spec.worker, why)
            self._sink().task_failed(spec.key, spec.worker, error, 0.0)

    def _slots(self, address: str) -> int:
        """The tasks ``address`` may be assigned: its threads not taken by tasks given up
        on, and the prefetch queue behind them; none while every thread is taken."""
        free = self._nthreads[address] - self._abandoned.busy(address)
        return free + self._depth.depth if free > 0 else 0

    def _threads_of(self, address: str) -> int:
        return self._nthreads.get(address, 1)

    def _capacity_changed(self, address: str, holding: list[str]) -> None:
        """Tasks given up on took or gave back threads of ``address``: say so, and with
        every thread taken, which tasks (``holding``: their labels) hold them."""
        with self._lock:
            if address not in self._workers or self._closed:
                return
            slots = self._workers[address] = self._slots(address)
            name = self._names.of[address]
        if slots:
            self._full_since.pop(address, None)
            self._sink().worker_added(name, slots)
            return
        held = ", ".join(repr(label) for label in holding) if holding else "tasks unknown"
        threads = self._threads_of(address)
        self._sink().worker_paused(
            name, f"each of its {threads} threads still runs a task given up on ({held})"
        )

    def _depth_changed(self) -> None:
        """The queue depth moved (see :mod:`._prefetch`): say each worker's new slots (a
        worker paused meanwhile keeps its pause)."""
        changed: list[tuple[str, int]] = []
        with self._lock:
            if self._closed or self._events is None:
                return
            for address, slots in self._workers.items():
                now = self._slots(address)
                if slots and now and now != slots:
                    self._workers[address] = now
                    changed.append((self._names.of[address], now))
        for name, slots in changed:
            self._sink().worker_added(name, slots)

    def _sink(self) -> EventSink:
        assert self._events is not None
        return self._events

    def _full(self, address: str) -> None:
        """Every thread of ``address`` runs a task given up on (said at each check while
        it does): move elsewhere what was queued there, and if the worker is ours and
        stays so for :data:`RESTART_AFTER` seconds, restart it. (Tasks given up on by a
        run that failed fast mostly return within that: a restart costs seconds.) The
        look then is a timer's: the next check of a worker whose tasks hold the GIL comes
        only once asking it has timed out, seconds later.

        What was queued is moved at every check, not only the first: the scheduler may
        have placed tasks there after the first, before it heard the worker was paused,
        and they would wait behind tasks that may never return."""
        self._withdraw(address)
        now = time.monotonic()
        since = self._full_since.setdefault(address, now)
        if since == now and self._cluster is not None:
            loop = self.client.loop.asyncio_loop
            loop.call_soon_threadsafe(
                loop.call_later, RESTART_AFTER, self._restart_if_still_full, address, since
            )

    def _restart_if_still_full(self, address: str, since: float) -> None:
        """On dask's event loop, :data:`RESTART_AFTER` after ``address`` was found full at
        ``since``: restart it if it has stayed so."""
        if self._closed or self._full_since.get(address) != since:
            return
        if address not in self._restarting:
            self._restarting.add(address)
            self._on_thread(self._control, self._restart, address)

    def _restart(self, address: str) -> None:
        """On the control thread: restart our worker at ``address`` through its nanny (it
        comes back under a new address, a new worker), reporting it lost first. The
        restart goes on in dask's event loop: other cluster events are not held up."""
        self._full_since.pop(address, None)
        held = ", ".join(repr(label) for label in self._abandoned.running(address))
        reason = f"restarted: each of its threads ran a task given up on ({held})"
        log.warning("dask worker %s %s", self._names.of.get(address, address), reason)
        quiet_broadcasts_to(address)
        try:
            client = self.client
            nanny = (client.scheduler_info(n_workers=-1)["workers"].get(address) or {}).get("nanny")
            # Nothing else ran there: the tasks queued behind are not charged.
            self._worker_lost(address, reason, running=[])
            done = asyncio.run_coroutine_threadsafe(
                _restart_worker(client, address, nanny), client.loop.asyncio_loop
            )
        except BaseException:
            self._restarting.discard(address)
            raise
        done.add_done_callback(lambda _: self._restarting.discard(address))

    def _on_task_word(self, event: tuple[float, Any]) -> None:
        """What a task's worker says while it runs (on dask's event loop; said only by
        timed or cached tasks, see :mod:`._task`): that it started (its key), that its
        function returned in time and its result is being stored, or that the run's
        cache warned."""
        word = event[1]
        if type(word) is int:
            self._on_started(word)
        elif word[0] == STORING:
            self._on_storing(word[1], word[2])
        elif word[0] == CACHE_WARNED:
            key, text, address = word[1], word[2], word[3]
            pending = self._pending.get(key)
            worker = self._names.of.get(address, address)
            self._cache_warnings.warn(key, None if pending is None else pending.spec, worker, text)

    def _on_started(self, key: Key) -> None:
        """A timed task started on its worker: its deadline runs. The word can come
        before the send that made the task has recorded it (the thread sending it did
        not run meanwhile): it is then looked at again once that send is done, from the
        control thread (dask's event loop, which runs this, must not wait for a send)."""
        sending = self._outbox.sending.locked()  # (before the look: see _started_after_send)
        pending = self._pending.get(key)
        if pending is not None:
            self._deadline_runs(pending)
        elif sending:
            self._on_thread(self._control, self._started_after_send, key)
        # (else it was forgotten since)

    def _started_after_send(self, key: Key) -> None:
        """:meth:`_on_started`, once the send under way when its word came is done. (A
        task that starts was sent: if no send was under way then, its own was done, and
        the task is known, or forgotten since.)"""
        with self._outbox.sending:
            pending = self._pending.get(key)
        if pending is not None:
            self._deadline_runs(pending)

    def _deadline_runs(self, pending: Pending) -> None:
        """``pending`` started: if it is timed and has not returned, its deadline runs."""
        timeout = pending.spec.timeout
        if timeout is not None and not pending.future.done():
            self._deadlines.add(pending, timeout)

    def _on_storing(self, key: Key, seconds: float) -> None:
        """A timed task's function returned in time on its worker, which stores its
        result now: its deadline is the store's bound, ``seconds`` from now (its timeout
        bounds the user's function, not the store)."""
        pending = self._pending.get(key)
        if pending is not None and not pending.future.done():
            self._deadlines.move(pending, seconds)

    def _timed_out(self, pending: Pending) -> None:
        """``pending`` ran past its timeout and still runs: fail it now, give up its
        thread (dask cannot stop it), and hand back the tasks waiting for its result."""
        spec = pending.spec
        # After a send under way has recorded its tasks: one may read this one's result.
        with self._outbox.sending, self._lock:
            if self._pending.get(spec.key) is not pending or pending.future.done():
                return
            self._forget(spec.key)
            back = self._waiting_for({spec.key})
        events = self._sink()
        assert spec.timeout is not None
        error = TaskTimeoutError(spec.label, spec.timeout)
        events.task_failed(spec.key, spec.worker, error, spec.timeout)
        for key, worker, missing, future in back:
            events.task_inputs_lost(key, worker, missing)
            future.release()
        address = self._names.address[spec.worker]
        if address in self._workers:  # (a worker lost meanwhile took its thread with it)
            self._abandoned.add(address, {pending.future.key: spec.label}, running=True)
        pending.future.release()

    def _waiting_for(self, gone: set[Key]) -> list[tuple[Key, str, list[Key], Future]]:
        """Forget the tasks waiting for a result of ``gone``; return them, with the
        results they miss and their futures. The caller holds the lock."""
        waiting = []
        for k, pending in list(self._pending.items()):
            missing = [d for d in pending.inputs if d in gone]
            if missing:
                waiting.append((k, pending.spec.worker, missing, pending.future))
                self._forget(k)
        return waiting

    def _no_deadlines(self, exc: BaseException) -> None:
        """The deadline thread died: fail the timed tasks out rather than let one hang."""
        self._fail_out(f"dask: deadlines lost: {exc!r}", timed_only=True)

    def _withdraw(self, address: str) -> None:
        """Every thread of ``address`` runs a task given up on: the tasks queued there
        (sent before that was known) would wait for them. Hand them back to be placed
        again, with the tasks elsewhere that wait for their results; none of this counts
        as an attempt."""
        with self._outbox.sending, self._lock:  # (see _timed_out)
            if self._closed:
                return
            name = self._names.of[address]
            queued = {
                k
                for k, p in self._pending.items()
                if p.spec.worker == name and not p.future.done()  # (done: being gathered)
            }
            back: list[tuple[Key, str, list[Key], Future]] = [
                (k, name, [], self._pending[k].future) for k in queued
            ]
            for k in queued:
                self._forget(k)
            back += self._waiting_for(queued)
        events = self._sink()
        for key, worker, missing, future in back:
            events.task_inputs_lost(key, worker, missing)
            future.release()
