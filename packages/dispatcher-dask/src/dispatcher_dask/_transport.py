"""The dask transport: dispatcher's tasks as dask tasks, pinned where dispatcher places them.

dispatcher's scheduler decides what runs where; dask.distributed moves the values and runs
the calls. Each task becomes a dask task calling :func:`~dispatcher_dask._task.run_task`,
pinned to its worker (``workers=[address]``, ``allow_other_workers=False``), with dask's
own retries off: dispatcher's retries and lineage recovery are the only ones. The tasks of
one :meth:`~DaskTransport.submit` go as one low-level graph per worker; short tasks there
that read no other task's result run as one dask task, a fused run
(:func:`~dispatcher_dask._task.run_tasks`, chosen by :mod:`._fusing`), each holding a
future of the run's key, and read by their index in it (how a batch becomes a graph:
:mod:`._graphs`). Inputs are the futures of earlier
results, so dask fetches them worker to worker; a result stays on its worker until
:meth:`~DaskTransport.free` releases its future, and only the values the caller wants are
gathered, in batches.

Workers are keyed by their address, and named ``dask-PORT@HOST`` (:func:`~._cluster.name_of`,
the host as the scheduler knows it): a worker restarted by its nanny comes back under a new
address, as a new worker. Arrivals and departures come from the scheduler's ``all`` event topic.
dask does not give up on a task pinned to a worker that is gone (it waits in "no-worker"),
so on a departure this transport releases every task pinned there and every result held
there, reports the loss, and reports the tasks elsewhere that were waiting for one of those
results as having lost their inputs: dispatcher recomputes what is needed (following the
cluster: :mod:`._membership`; reporting what tasks did: :mod:`._completions`). A task released
by its only client is forgotten by dask's scheduler; one already running finishes its call
in its worker thread (threads cannot be interrupted), and its result is dropped. What the
transport does about such tasks, and about those past their timeout, is in
:mod:`._giving_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ClassVar

from dispatcher import WorkerLostError
from dispatcher.remote import CacheWarnings
from dispatcher.transport import Capabilities, EventSink, Key, TaskSpec, Transport

from ._abandoned import Abandoned
from ._capabilities import CAPABILITIES
from ._cluster import WorkerNames, check_options, disconnect, reach
from ._deadlines import Deadlines
from ._fusing import Fusing
from ._giving_up import Pending
from ._graphs import TaskGraphs
from ._membership import CLUSTER_TOPICS, Membership
from ._outbox import Outbox
from ._prefetch import QueueDepth
from ._quiet import plugin_name

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

__all__ = ["DaskTransport"]

# While the workers have work queued, send tasks at most this often (see _outbox), or
# less often, up to LONGEST_SEND_INTERVAL, when what is queued lasts longer.
SEND_INTERVAL = 0.01
LONGEST_SEND_INTERVAL = 0.05

# How long a worker of a cluster that is not ours may take to drop the plugin at close.
_UNREGISTER_SECONDS = 5.0


class DaskTransport(TaskGraphs, Membership, Transport):
    """Runs tasks on a dask.distributed cluster: one the transport starts (a
    ``LocalCluster`` of worker processes, closed with it), one at ``address`` (a scheduler
    address or a scheduler file), or the one an existing ``client`` talks to."""

    capabilities: ClassVar[Capabilities] = CAPABILITIES
    paused_wait: ClassVar[float] = 5.0

    def __init__(
        self,
        workers: int | None = None,
        *,
        threads_per_worker: int = 1,
        address: str | None = None,
        client: Client | None = None,
        prefetch: int | None = None,
        dashboard_address: str | None = None,
        stats: bool = True,
    ) -> None:
        check_options(address, client, workers, threads_per_worker, prefetch)
        self._want_workers = workers
        self._threads = threads_per_worker
        self._address = address
        self._client: Client | None = client
        self._own_client = client is None
        self._cluster: LocalCluster | None = None
        self._depth = QueueDepth(prefetch)  # see _prefetch
        self._dashboard = dashboard_address
        self._events: EventSink | None = None
        # Keys must not collide with another client's on a shared cluster.
        self._token = token = uuid.uuid4().hex[:8]
        self._stats_topic = f"dispatcher-stats-{token}" if stats else None
        self._start_topic = f"dispatcher-started-{token}"
        self._serial = itertools.count(1)  # dask tasks made so far: see _rank
        self._lock = threading.Lock()
        self._workers: dict[str, int] = {}  # address -> slots
        self._nthreads: dict[str, int] = {}
        self._names = WorkerNames()
        self._abandoned = Abandoned(
            lambda: self.client, self._capacity_changed, self._full, self._threads_of
        )
        self._restarting: set[str] = set()  # workers of our own being restarted
        self._full_since: dict[str, float] = {}
        self._cache_warnings = CacheWarnings()
        self._deadlines: Deadlines[Pending] = Deadlines(self._timed_out, self._no_deadlines)
        self._futures: dict[Key, Future] = {}  # every result held or being computed
        # The task that made each of those (its ``worker`` holds the result): a late
        # cancel of that very task still finds a result it reported meanwhile.
        self._made: dict[Key, TaskSpec] = {}
        self._pending: dict[Key, Pending] = {}
        self._keys: dict[str, Key] = {}  # dask key -> dispatcher key, while pending
        # Each task's run time, result size, and the wanted value it carried (or None).
        self._stats: dict[Key, tuple[float, int | None, bytes | None]] = {}
        # Of the tasks in fused runs (see _fusing): each one's index in its run, while
        # its future is held; and its run time, result size and failure (pickled), once
        # its run reported them.
        self._fusing = Fusing()
        self._index: dict[Key, int] = {}
        self._member_stats: dict[Key, tuple[float, int | None, bytes | None]] = {}
        # Cluster events are handled here, in order, off dask's loop (they make blocking
        # client calls) and off the scheduler's thread.
        self._control = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-dask")
        # Values the caller wants travel in batches: one gather while the next fills.
        self._gatherer = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-dask-gather")
        self._to_gather: list[Pending] = []
        self._watching: set[asyncio.Future[None]] = set()  # see Completions._when_settled
        self._release_made: set[Key] = set()  # see Completions._done
        self._ahead: set[Key] = set()  # see _released_ahead
        self._closed = False
        self._mean_run = 0.0  # seconds, of the tasks reported lately (moving average)
        self._outbox = Outbox(self._send, self._not_sent, self._send_interval)

    # -- the SPI ---------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The dask client this transport submits through."""
        if self._client is None:
            raise RuntimeError("the dask transport has not been started")
        return self._client

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        self._cluster, client = reach(
            self._client, self._address, self._want_workers, self._threads, self._dashboard
        )
        self._client = client
        workers = self._control.submit(self._watch, client).result()
        self._outbox.start()
        return workers

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        self._outbox.put(tasks)

    def capacity_advice(self) -> str:
        return (
            "dask cannot stop a running task: the threads come back when those tasks "
            "return. Make them return (a timeout= on those nodes fails them at their "
            "deadline, but their threads stay taken until they do), restart the workers "
            "(client.restart_workers(...) or client.restart()), or add workers; a cluster "
            "the dask executor starts itself restarts such workers on its own"
        )

    def _send_interval(self) -> float:
        """How long after a batch the next may wait (see :mod:`._outbox`): not at all
        unless the workers have about two tasks per thread still to run (finished ones
        being gathered count too: an estimate, asked once per batch); then a quarter of
        the time the work queued per thread lasts, by the tasks' mean run time, between
        :data:`SEND_INTERVAL` and :data:`LONGEST_SEND_INTERVAL`: one graph per ten
        completions of 10 ms tasks rather than one per two, where dask's scheduler
        pays per graph."""
        threads = sum(self._nthreads.values())
        pending = len(self._pending)
        if pending < 2 * threads or not threads:
            return 0.0
        queued = pending / threads * self._mean_run
        return min(max(queued / 4, SEND_INTERVAL), LONGEST_SEND_INTERVAL)

    def _not_sent(self, tasks: Sequence[TaskSpec], exc: BaseException) -> None:
        """The client failed to send ``tasks`` (it is closing, or lost its scheduler):
        report them failed rather than leave the run waiting."""
        if self._closed:
            return
        assert self._events is not None
        for spec in tasks:
            if spec.key not in self._made:
                reason = self._client_gone() or f"dask: {exc}"
                error = WorkerLostError(spec.label, spec.worker, reason)
                self._events.task_failed(spec.key, spec.worker, error, 0.0)

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        released: list[Future] = []
        with self._lock:
            made, futures = self._made, self._futures
            for k in keys:
                maker = made.get(k)
                if maker is not None and maker.worker == worker and k not in self._pending:
                    del made[k]
                    released.append(futures.pop(k))
                    self._index.pop(k, None)
        for future in released:
            future.release()

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        dropped: list[Future] = []
        may_run: dict[str, dict[str, str]] = {}  # worker -> tasks that may run: key -> label
        self._outbox.drop(tasks)
        # A batch being sent is registered when the send returns: wait for that.
        with self._outbox.sending, self._lock:
            pending = self._pending
            for spec in tasks:
                found = pending.get(spec.key)
                # Its inputs all made, it may have started (one that waits cannot have).
                if found is not None and not any(k in pending for k in found.inputs):
                    may_run.setdefault(spec.worker, {})[found.future.key] = spec.label
            if any(spec.key in self._index for spec in tasks):
                self._keep_live_runs(tasks, may_run)
            for spec in tasks:
                # Pending, or reported a moment ago (a report the run will never read).
                if self._made.get(spec.key) is not spec:
                    continue
                dropped.append(self._futures[spec.key])
                self._forget(spec.key)
        # Its thread is taken until it returns: new work must not queue behind it.
        for worker, keys in may_run.items():
            self._abandoned.add(self._names.address[worker], keys)
        # Released by its only client, a task is forgotten by the scheduler: a queued one
        # never runs, a running one is abandoned (its thread runs the call to its end:
        # dask cannot interrupt it).
        for future in dropped:
            future.release()

    def _keep_live_runs(
        self, tasks: Sequence[TaskSpec], may_run: dict[str, dict[str, str]]
    ) -> None:
        """A fused run of which tasks not among ``tasks`` are still pending stays held
        (they run, and the cancelled ones with them: their reports are ignored): it is
        no task given up on. The caller holds the lock."""
        cancelled = {spec.key for spec in tasks}
        live = {
            p.future.key
            for k, p in self._pending.items()
            if k not in cancelled and k in self._index
        }
        for keys in may_run.values():
            for dask_key in live.intersection(keys):
                del keys[dask_key]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.close()
        self._abandoned.close()
        self._deadlines.close()
        with self._outbox.sending, self._lock:  # after a send in progress registered its tasks
            futures = list(self._futures.values())
            self._futures.clear()
            self._made.clear()
            self._pending.clear()
            self._keys.clear()
            self._index.clear()
            self._member_stats.clear()
            self._ahead.clear()
        for future in futures:
            future.release()
        topics = [t for t in (*CLUSTER_TOPICS, self._start_topic, self._stats_topic) if t]
        if self._cluster is None and self._client is not None:
            # A cluster that is not ours keeps running: take the plugin back (without
            # waiting for ever on a frozen worker).
            unregister = self._control.submit(
                self._client.unregister_worker_plugin, plugin_name(self._token)
            )
            with contextlib.suppress(Exception):
                unregister.result(_UNREGISTER_SECONDS)
        try:
            disconnect(self._client, topics, self._own_client, self._cluster)
        finally:
            self._control.shutdown(wait=False, cancel_futures=True)
            self._gatherer.shutdown(wait=False, cancel_futures=True)
