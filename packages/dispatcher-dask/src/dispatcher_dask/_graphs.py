"""How the dask transport turns a batch of dispatcher's tasks into one dask graph.

A batch (:meth:`TaskGraphs._send`) goes as one low-level graph with a layer per worker,
each pinned there (``workers=[address]``; dask's scheduler pays per graph far more than
per task). A task becomes a dask task calling :func:`~._task.run_task` with the futures of
the results it reads as inputs, or the dask keys of those made in the same batch; short
tasks that read no other task's result go as one dask task, a fused run
(:func:`~._task.run_tasks`, chosen by :mod:`._fusing`). Once sent, each task holds a future
of its own (:meth:`TaskGraphs._register`), and the inputs it was the last to read are
released. :class:`TaskGraphs` is a part of :class:`~._transport.DaskTransport` and works on
its records.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from dispatcher import SerializationError
from dispatcher.transport import Key, TaskSpec

from ._completions import Completions
from ._giving_up import Pending
from ._order import rank
from ._task import pack, run_task, run_tasks

if TYPE_CHECKING:
    from distributed import Future

    from ._cluster import WorkerNames

__all__ = ["TaskGraphs"]


class TaskGraphs(Completions):
    """The part of the dask transport that sends its tasks to dask (see the module's
    docstring)."""

    _token: str
    _start_topic: str
    _serial: itertools.count[int]
    _names: WorkerNames
    _workers: dict[str, int]

    def _send(self, tasks: Sequence[TaskSpec]) -> None:
        """Send ``tasks`` to dask as one graph, a layer per worker pinned there: dask's
        scheduler pays per graph far more than per task. Short tasks that read no other
        task's result run as fused runs (see :mod:`._fusing`). A task reading the result
        of another of the same batch names it by its dask key."""
        from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

        gone = self._client_gone()
        if gone is not None:  # (sending would wait for dask to reconnect, then fail)
            raise ConnectionError(gone)  # the outbox fails the batch with it
        graphs: dict[str, dict[str, Any]] = {}
        made: list[tuple[list[TaskSpec], str, tuple[Key, ...], bool]] = []
        batch: dict[Key, tuple[str, int | None]] = {}  # key -> dask key (and index), of this batch
        order: dict[str, int] = {}
        # Made in the order sent, where a task comes after the inputs it reads (a fused
        # run, which reads none, at the place of its first task).
        for group in self._groups(tasks):
            fused = len(group) > 1
            found = self._fused(group, batch) if fused else self._task(group[0], batch)
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
                        elif k not in self._index:
                            early = self._reader_sent(k)  # see _released_ahead
                            if early is not None:
                                released.append(early)
                        else:  # a fused run's: released once its run reports it made
                            self._release_made.add(k)
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
        self, group: Sequence[TaskSpec], batch: Mapping[Key, tuple[str, int | None]]
    ) -> tuple[Any, list[TaskSpec], tuple[Key, ...]] | None:
        """The dask task running ``group`` as a fused run (see :mod:`._fusing`), the
        tasks in it (those that could be made: the others are reported) and the keys of
        the results it reads from outside the run (``batch`` as :meth:`_task` takes it)."""
        from dask._task_spec import Task, TaskRef

        events = self._events
        assert events is not None
        in_run = {spec.key for spec in group}
        found: dict[Key, tuple[Any, int | None]] = {}  # outside result -> (reference, pick)
        with self._lock:
            if self._names.address.get(group[0].worker) not in self._workers:
                return None  # lost since it was placed: see _task
            futures, made_index = self._futures, self._index
            for spec in group:
                given = spec.inline or {}
                for k in spec.deps:
                    if k in given or k in in_run or k in found:
                        continue
                    future = futures.get(k)
                    if future is not None:
                        found[k] = (future, made_index.get(k))
                    elif k in batch:
                        found[k] = (TaskRef(batch[k][0]), batch[k][1])
        members: list[TaskSpec] = []
        payloads: list[tuple[Key, bytes, tuple[int, ...], tuple[int, ...]]] = []
        index: dict[Key, int] = {}  # member -> its place in the run's values
        inputs: list[Any] = []  # references to what it reads from outside
        outside: dict[Key, int] = {}  # ... their keys, and their place among them
        picks: dict[int, int] = {}  # input -> the member read, of another fused run's
        for spec in group:
            given = spec.inline or {}
            inline: dict[int, Any] = {}
            reads: list[int] = []  # what it reads, in order (see run_tasks)
            missing: list[Key] = []
            for i, k in enumerate(spec.deps):
                if k in given:
                    inline[i] = given[k]
                elif k in index:
                    reads.append(index[k])
                elif k in outside:
                    reads.append(-1 - outside[k])
                elif k in found:
                    ref, member = found[k]
                    if member is not None:
                        picks[len(inputs)] = member
                    outside[k] = len(inputs)
                    reads.append(-1 - len(inputs))
                    inputs.append(ref)
                else:  # lost, or an earlier member that could not be made
                    missing.append(k)
            if missing:
                events.task_inputs_lost(spec.key, spec.worker, missing)
                continue
            # The values it was the last to read are dropped once it has run.
            drops = tuple(index[k] for k in spec.last_use if k in index)
            try:
                payloads.append((spec.key, pack(spec, inline), tuple(reads), drops))
            except SerializationError as exc:
                events.task_failed(spec.key, spec.worker, exc, 0.0)
                continue
            index[spec.key] = len(members)
            members.append(spec)
        if not members:
            return None
        name = getattr(members[0].func, "__name__", "task")
        dask_key = f"{name}-fused-{self._token}-{next(self._serial)}"
        task = Task(
            dask_key,
            run_tasks,
            pickle.dumps((payloads, picks), protocol=5),
            self._stats_topic,
            self._start_topic,  # (where its cache's warnings go)
            *inputs,
        )
        return task, members, tuple(outside)
