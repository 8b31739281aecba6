"""The dask transport: dispatcher's tasks as dask tasks, pinned where dispatcher places them.

dispatcher's scheduler decides what runs where; dask.distributed moves the values and runs
the calls. Each task becomes a dask task calling :func:`~dispatcher_dask._task.run_task`,
pinned to its worker (``workers=[address]``, ``allow_other_workers=False``), with dask's
own retries off: dispatcher's retries and lineage recovery are the only ones. The tasks of
one :meth:`~DaskTransport.submit` go as one low-level graph per worker; short tasks there
that read no other task's result run as one dask task, a fused run
(:func:`~dispatcher_dask._task.run_tasks`, chosen by :mod:`._fusing`), each holding a
future of the run's key, and read by their index in it. Inputs are the futures of earlier
results, so dask fetches them worker to worker; a result stays on its worker until
:meth:`~DaskTransport.free` releases its future, and only the values the caller wants are
gathered, in batches.

Workers are keyed by their address, and named ``dask-PORT@HOST`` (:func:`~._cluster.name_of`,
the host as the scheduler knows it): a worker restarted by its nanny comes back under a new
address, as a new worker. Arrivals and departures come from the scheduler's ``all`` event topic.
dask does not give up on a task pinned to a worker that is gone (it waits in "no-worker"),
so on a departure this transport releases every task pinned there and every result held
there, reports the loss, and reports the tasks elsewhere that were waiting for one of those
results as having lost their inputs: dispatcher recomputes what is needed. A task released
by its only client is forgotten by dask's scheduler; one already running finishes its call
in its worker thread (threads cannot be interrupted), and its result is dropped. What the
transport does about such tasks, and about those past their timeout, is in
:mod:`._giving_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pickle
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from dispatcher import SerializationError, WorkerLostError
from dispatcher.remote import CacheWarnings
from dispatcher.transport import Capabilities, EventSink, Key, TaskSpec, Transport

from ._abandoned import Abandoned
from ._cluster import (
    WorkerNames,
    check_options,
    disconnect,
    keep_workers,
    reach,
    registered,
)
from ._completions import Completions
from ._deadlines import Deadlines
from ._fusing import Fusing
from ._giving_up import GivingUp, Pending, log
from ._order import rank
from ._outbox import Outbox
from ._quiet import plugin_name
from ._reports import TaskReports
from ._task import pack, run_task, run_tasks

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

__all__ = ["DaskTransport"]

from ._capabilities import CAPABILITIES

# While the workers have work queued, send tasks at most this often (see _outbox), or
# less often, up to LONGEST_SEND_INTERVAL, when what is queued lasts longer.
SEND_INTERVAL = 0.01
LONGEST_SEND_INTERVAL = 0.05

# How long a worker the scheduler announced may take to appear in its worker table.
_ANNOUNCE_SECONDS = 5.0

# The scheduler's topics watched: workers arriving and leaving ("all"), and workers it
# gave up on for their silence ("scheduler").
_CLUSTER_TOPICS = ("all", "scheduler")
_CLUSTER_ACTIONS = frozenset(("add-worker", "worker-ttl-timed-out", "remove-worker"))

# How long a worker of a cluster that is not ours may take to drop the plugin at close.
_UNREGISTER_SECONDS = 5.0


class DaskTransport(Completions, GivingUp, Transport):
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
        prefetch: int = 16,
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
        self._prefetch = prefetch
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

    def _send(self, tasks: Sequence[TaskSpec]) -> None:
        """Send ``tasks`` to dask as one graph, a layer per worker pinned there: dask's
        scheduler pays per graph far more than per task. Short tasks that read no other
        task's result run as fused runs (see :mod:`._fusing`). A task reading the result
        of another of the same batch names it by its dask key."""
        from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

        graphs: dict[str, dict[str, Any]] = {}
        made: list[tuple[list[TaskSpec], str, tuple[Key, ...], bool]] = []
        batch: dict[Key, tuple[str, int | None]] = {}  # key -> dask key (and index), of this batch
        order: dict[str, int] = {}
        # Made in the order sent, where a task comes after the inputs it reads (a fused
        # run, which reads none, at the place of its first task).
        for group in self._groups(tasks):
            fused = len(group) > 1
            found = self._fused(group) if fused else self._task(group[0], batch)
            if found is None:
                continue
            task, members, reads = found
            graph = graphs.get(group[0].worker)
            if graph is None:
                graph = graphs[group[0].worker] = {}
            graph[task.key] = task
            made.append((members, task.key, reads, fused))
            for i, spec in enumerate(members):
                batch[spec.key] = (task.key, i if fused else None)
            order[task.key] = -rank(task)
        if not made:
            return
        addresses = self._names.address
        layers = {
            f"{self._token}-{i}": MaterializedLayer(
                graph,
                annotations={"workers": [addresses[worker]], "priority": order.__getitem__},
            )
            for i, (worker, graph) in enumerate(graphs.items())
        }
        # No layer dependencies: they would only serve optimizations that never run on
        # a graph of plain tasks, and two workers' layers may read each other.
        everything = HighLevelGraph(layers, {name: set() for name in layers})
        keys = [dask_key for _, dask_key, _, _ in made]
        # fifo_timeout=0: each graph is a new generation, so a worker runs the tasks of
        # earlier submissions first, as they were sent.
        futures = self.client.get(
            everything, keys, allow_other_workers=False, fifo_timeout=0, sync=False
        )
        self._register(made, dict(zip(keys, futures)))

    def _groups(self, tasks: Sequence[TaskSpec]) -> list[list[TaskSpec]]:
        """``tasks`` as the groups sent as one dask task each (fused runs, and single
        tasks; see :mod:`._fusing`), each at the place of its first task."""
        if self._stats_topic is None:  # a fused run's tasks are reported by those stats
            return [[spec] for spec in tasks]
        by_worker: dict[str, list[TaskSpec]] = {}
        for spec in tasks:
            by_worker.setdefault(spec.worker, []).append(spec)
        first: dict[int, list[TaskSpec]] = {}
        for specs in by_worker.values():
            for group in self._fusing.cut(specs):
                first[id(group[0])] = group
        return [first[id(spec)] for spec in tasks if id(spec) in first]

    def _register(
        self,
        made: list[tuple[list[TaskSpec], str, tuple[Key, ...], bool]],
        submitted: dict[str, Future],
    ) -> None:
        """Record the tasks just sent, each with a future of its own (the members of a
        fused run each hold one of the run's: dask keeps the run's values while one is
        held), and release the inputs they were the last to read."""
        from distributed import Future

        client = self.client
        released: list[Future] = []
        callbacks: list[tuple[Future, Any]] = []
        with self._lock:
            pending = self._pending
            for members, dask_key, reads, fused in made:
                future = submitted[dask_key]
                for i, spec in enumerate(members):
                    if fused:
                        own = future if i == 0 else Future(dask_key, client)
                        self._index[spec.key] = i
                        callbacks.append((own, partial(self._member_done, spec.key)))
                    else:
                        own = future
                        self._index.pop(spec.key, None)
                        self._keys[dask_key] = spec.key
                        callbacks.append((own, self._done))
                    self._futures[spec.key] = own
                    self._made[spec.key] = spec
                    pending[spec.key] = Pending(spec, own, reads)
                    # dask keeps an input while a task waiting for it is queued:
                    # dispatcher's last use of a result need not wait for ``free``, nor
                    # one still being made for its report (see _released_ahead).
                    for k in spec.last_use:
                        maker = self._made.get(k)
                        if maker is None or maker.worker != spec.worker:
                            continue
                        if k not in pending:
                            released.append(self._futures.pop(k))
                            self._index.pop(k, None)
                            del self._made[k]
                        elif k not in self._index:  # (a fused run's are freed as usual)
                            early = self._reader_sent(k)  # see _released_ahead
                            if early is not None:
                                released.append(early)
        if callbacks:
            self._when_settled(callbacks)
        for old in released:
            old.release()

    def _task(
        self, spec: TaskSpec, batch: Mapping[Key, tuple[str, int | None]]
    ) -> tuple[Any, list[TaskSpec], tuple[Key, ...]] | None:
        """The dask task for ``spec``, with ``spec`` alone as its tasks, and the keys of
        the results it reads; None (and reported) when it cannot be made. ``batch`` maps
        the tasks of the graph being made to their dask keys (and index in a fused run)."""
        from dask._task_spec import Task, TaskRef

        events = self._events
        assert events is not None
        inputs: list[TaskRef] = []
        reads: list[Key] = []
        inline: dict[int, Any] = {}
        picks: dict[int, int] = {}  # dask input -> index of the member read, in a fused run
        missing: list[Key] = []
        given = spec.inline
        with self._lock:
            if self._names.address.get(spec.worker) not in self._workers:
                # Lost since it was placed: the loss is reported, and dispatcher retries
                # what it had sent there.
                return None
            futures, index = self._futures, self._index
            for i, k in enumerate(spec.deps):
                if given is not None and k in given:
                    inline[i] = given[k]
                    continue
                future = futures.get(k)
                if future is not None:
                    member = index.get(k)
                    if member is not None:
                        picks[len(inputs)] = member
                    inputs.append(future)
                    reads.append(k)
                elif k in batch:
                    dask_key, member = batch[k]
                    if member is not None:
                        picks[len(inputs)] = member
                    inputs.append(TaskRef(dask_key))
                    reads.append(k)
                else:
                    missing.append(k)
        if missing:
            events.task_inputs_lost(spec.key, spec.worker, missing)
            return None
        try:
            payload = pack(spec, inline, picks)
        except SerializationError as exc:
            events.task_failed(spec.key, spec.worker, exc, 0.0)
            return None
        name = getattr(spec.func, "__name__", "task")
        dask_key = f"{name}-{self._token}-{next(self._serial)}"
        task = Task(
            dask_key, run_task, spec.key, payload, self._stats_topic, self._start_topic, *inputs
        )
        return task, [spec], tuple(reads)

    def _fused(
        self, group: Sequence[TaskSpec]
    ) -> tuple[Any, list[TaskSpec], tuple[Key, ...]] | None:
        """The dask task running ``group`` as a fused run (see :mod:`._fusing`), and the
        tasks in it: those that could be made (the others are reported)."""
        from dask._task_spec import Task

        events = self._events
        assert events is not None
        members: list[TaskSpec] = []
        payloads: list[tuple[Key, bytes]] = []
        with self._lock:
            if self._names.address.get(group[0].worker) not in self._workers:
                return None  # lost since it was placed: see _task
        for spec in group:
            given = spec.inline or {}
            inline = {i: given[k] for i, k in enumerate(spec.deps)}
            try:
                payloads.append((spec.key, pack(spec, inline)))
            except SerializationError as exc:
                events.task_failed(spec.key, spec.worker, exc, 0.0)
                continue
            members.append(spec)
        if not members:
            return None
        name = getattr(members[0].func, "__name__", "task")
        dask_key = f"{name}-fused-{self._token}-{next(self._serial)}"
        task = Task(
            dask_key,
            run_tasks,
            pickle.dumps(payloads, protocol=5),
            self._stats_topic,
            self._start_topic,  # (where its cache's warnings go)
        )
        return task, members, ()

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
        topics = [t for t in (*_CLUSTER_TOPICS, self._start_topic, self._stats_topic) if t]
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

    # -- connecting and watching the cluster -----------------------------------------------

    def _watch(self, client: Client) -> dict[str, int]:
        """On the control thread: subscribe to the cluster's events, then take its
        workers (events that arrive meanwhile wait behind this call)."""
        for topic in _CLUSTER_TOPICS:
            client.subscribe_topic(topic, self._on_cluster_event)
        if self._stats_topic is not None:
            client.subscribe_topic(self._stats_topic, self._on_stats)
        client.subscribe_topic(self._start_topic, self._on_task_word)
        try:
            client.register_plugin(
                TaskReports(self._token, self._stats_topic), plugin_name(self._token)
            )
        except Exception:  # only dask's log, and a few ms per task, are at stake
            log.debug("could not register the worker plugin", exc_info=True)
        if not self._own_client and self._want_workers:
            # A given client's cluster may still be growing (see connect() for address=).
            client.wait_for_workers(self._want_workers)
        info = client.scheduler_info(n_workers=-1)["workers"]
        with self._lock:
            for address, worker in info.items():
                self._nthreads[address] = max(1, worker.get("nthreads", 1))
                self._workers[address] = self._slots(address)
                self._names.add(address, worker.get("host"))
            return {self._names.of[address]: slots for address, slots in self._workers.items()}

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        # On dask's event loop: only the events handled go to the control thread (the
        # scheduler's topic also carries one per graph sent, and "all" one per gather).
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") in _CLUSTER_ACTIONS:
            self._control.submit(self._on_cluster, msg)

    def _on_cluster(self, msg: Any) -> None:
        if self._closed or not isinstance(msg, dict):
            return
        action = msg.get("action")
        try:
            if action == "add-worker":
                self._worker_added(msg["worker"])
            elif action == "worker-ttl-timed-out":
                silent = f"it did not answer the scheduler for {msg.get('ttl', 0):g} s (frozen?)"
                for address in msg.get("workers", ()):
                    self._worker_lost(address, f"dask worker lost: {silent}")
            elif action == "remove-worker":
                expected = "closed" if msg.get("expected") else "died"
                self._worker_lost(msg["worker"], f"dask worker {expected}")
        except Exception:  # a cluster going down while we look: nothing to report
            if not self._closed:
                raise

    def _worker_added(self, address: str) -> None:
        with self._lock:
            if address in self._workers:
                return
        info = registered(self.client, address, _ANNOUNCE_SECONDS)
        if info is None:
            return  # gone again before it was ever registered
        with self._lock:
            if address in self._workers or self._closed:
                return
            self._nthreads[address] = max(1, int(info.get("nthreads", 1)))
            slots = self._workers[address] = self._slots(address)
            name = self._names.add(address, info.get("host"))
        self._sink().worker_added(name, slots)

    def _worker_lost(self, address: str, reason: str, running: Sequence[Key] | None = None) -> None:
        """The worker at ``address`` is gone (``running``: the tasks it had started, if
        known; see :meth:`EventSink.worker_lost`)."""
        with self._lock:
            if self._workers.pop(address, None) is None:
                return
            self._nthreads.pop(address, None)
            name = self._names.of[address]
            gone = {k for k, maker in self._made.items() if maker.worker == name}
            dropped = [self._futures[k] for k in gone]
            for k in gone:
                self._forget(k)
            # Tasks elsewhere that read a result made there (or still being made there,
            # for a task sent before its input was ready) will never get it.
            orphans = self._waiting_for(gone)
        self._abandoned.forget_worker(address)
        events = self._sink()
        events.worker_lost(name, reason, running)
        for key, worker, missing, future in orphans:
            events.task_inputs_lost(key, worker, missing)
            dropped.append(future)
        # Pinned to a worker that is gone, they would wait for it forever.
        for future in dropped:
            future.release()
        if self._cluster is not None:
            keep_workers(self._cluster, self.client.loop)
