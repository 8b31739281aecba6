"""How the dask transport follows its cluster: the workers there at start, and those that
arrive and leave.

:class:`Membership` is a part of :class:`~._transport.DaskTransport` and works on its
records. At start it subscribes to the scheduler's topics (workers arriving and leaving on
``all``, workers given up on for their silence on ``scheduler``) and to the transport's own
(task reports and starts), registers the worker plugin that sends reports, and takes the
workers there. Events are handled in order on the transport's control thread, off dask's
event loop (they make blocking client calls). A worker keyed by its address is named
``dask-PORT@HOST`` (:class:`~._cluster.WorkerNames`); on its loss every task pinned there
and every result held there is released (dask would wait for it forever), the loss is
reported, and so are the tasks elsewhere that waited for one of those results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispatcher.transport import Key, TaskSpec

from ._cluster import keep_workers, registered
from ._giving_up import GivingUp, log
from ._quiet import plugin_name
from ._reports import TaskReports

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["CLUSTER_TOPICS", "Membership"]

ANNOUNCE_SECONDS = 5.0
"""How long a worker the scheduler announced may take to appear in its worker table."""

CLUSTER_TOPICS = ("all", "scheduler")
"""The scheduler's topics watched: workers arriving and leaving (``all``), and workers it
gave up on for their silence (``scheduler``)."""
_CLUSTER_ACTIONS = frozenset(("add-worker", "worker-ttl-timed-out", "remove-worker"))


class Membership(GivingUp):
    """The part of the dask transport that follows the cluster's workers (see the module's
    docstring)."""

    _own_client: bool
    _want_workers: int | None
    _token: str
    _stats_topic: str | None
    _start_topic: str
    _futures: dict[Key, Future]
    _made: dict[Key, TaskSpec]

    if TYPE_CHECKING:

        def _on_stats(self, event: tuple[float, Any]) -> None: ...

    def _watch(self, client: Client) -> dict[str, int]:
        """On the control thread: subscribe to the cluster's events, then take its
        workers (events that arrive meanwhile wait behind this call)."""
        for topic in CLUSTER_TOPICS:
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
            self._on_thread(self._control, self._on_cluster, msg)

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
        info = registered(self.client, address, ANNOUNCE_SECONDS)
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
        # After a send under way has recorded its tasks: they may read results made there.
        with self._outbox.sending, self._lock:
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
