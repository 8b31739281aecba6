"""Rank 0's side: the transport the scheduler talks to, over the job's hub.

Worker ranks are named ``rank-1`` ... ``rank-N``. Tasks go to their rank in one message per
rank per dispatch; a task's inputs held by other ranks are named by rank, and the worker
fetches them from there itself, so data moves rank to rank and reaches rank 0 only when the
caller asked for it.

Timeouts: a rank cannot be killed and kept. When a task runs past its timeout, its node
fails with :class:`~dispatcher.TaskTimeoutError` at once; the rank is taken out of
scheduling (reported lost: what was queued there runs elsewhere, what it held is
recomputed) until the late task returns, and then comes back. A task abandoned by a
fail-fast stop is handled the same way. A task that never returns keeps its rank out for
the rest of the job, and does not stop the job from ending.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dispatcher import DispatcherError, TaskTimeoutError
from dispatcher.transport import (
    Capabilities,
    EventSink,
    FunctionRegistry,
    Key,
    TaskSpec,
    Transport,
    dumps_for,
    restore_error,
)

from ._channel import Hub, encode

__all__ = ["LAUNCH_HELP", "MpiTransport", "Root", "current_root"]

LAUNCH_HELP = (
    "the 'mpi' executor runs inside an MPI job started by the dispatcher launcher, with "
    "at least one worker rank besides rank 0:\n"
    "    mpiexec -n 4 python -m dispatcher_mpi your_script.py [args...]\n"
    "(also `-m module` or `-c code`, like python -m mpi4py.futures)"
)


_BUSY_SLEEP = 200e-6  # rank 0's longest nap while tasks are out
_IDLE_SLEEP = 2e-3


def _name(rank: int) -> str:
    return f"rank-{rank}"


@functools.cache
def _rank(worker: str) -> int:
    return int(worker.rsplit("-", 1)[1])


class Root:
    """Rank 0's view of the job: the hub, the worker ranks, what each has been sent."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.ranks = list(range(1, comm.Get_size()))
        self.hub = Hub(comm, self.deliver)
        self.hub.tick = self.tick
        self.registry = FunctionRegistry()
        self.functions: dict[int, bytes] = {}
        self.sent: dict[int, set[int]] = {r: set() for r in self.ranks}
        self.transport: MpiTransport | None = None
        self.busy: dict[int, Key] = {}  # rank -> key of a task given up on, still running
        self.lock = threading.RLock()

    def available(self) -> list[int]:
        return [r for r in self.ranks if r not in self.busy]

    def deliver(self, source: int, message: tuple[Any, ...]) -> None:
        """On the hub thread: a worker rank reports."""
        kind = message[0]
        if kind == "busy":
            # It still runs a task we gave up on (its run failed fast, or its executor
            # closed): keep the rank out of scheduling until that task ends, whichever
            # executor is open by then.
            self.retire(source, message[1], "finishing a task that was abandoned")
            return
        if kind in ("done", "fail"):
            keys = [entry[0] for entry in message[1]] if kind == "done" else [message[1]]
            if self.busy.get(source) in keys:
                self._back(source)
        transport = self.transport
        if transport is not None:
            transport.on_message(source, message)
        elif kind == "done":  # nobody wants these any more
            self.hub.post(source, ("free", [entry[0] for entry in message[1]]))

    def retire(self, rank: int, key: Key, reason: str) -> None:
        """Take ``rank`` out of scheduling until the task ``key`` it runs returns."""
        if rank in self.busy:
            return
        self.busy[rank] = key
        self.hub.post(rank, ("reset",))  # what was queued there will run elsewhere
        transport = self.transport
        if transport is not None:
            transport.lose(rank, reason)

    def _back(self, rank: int) -> None:
        del self.busy[rank]
        transport = self.transport
        if transport is not None and transport.events is not None and rank in transport.ranks:
            transport.events.worker_added(_name(rank), transport.slots)

    def tick(self) -> None:
        transport = self.transport
        # While tasks are out, a completion should not wait out a long nap: nap briefly.
        self.hub.max_sleep = (
            _BUSY_SLEEP if transport is not None and transport.tasks else (_IDLE_SLEEP)
        )
        if transport is not None and transport.deadlines:
            transport.enforce_deadlines()

    def stop(self) -> None:
        """At the end of the job: every worker rank stops serving."""
        for rank in self.ranks:
            self.hub.post(rank, ("stop",))
        self.hub.stop()


_root: Root | None = None


def current_root() -> Root:
    if _root is None:
        raise DispatcherError(LAUNCH_HELP)
    if not _root.ranks:
        raise DispatcherError("this MPI job has no worker ranks (-n 1). " + LAUNCH_HELP)
    return _root


def install_root(root: Root | None) -> None:
    global _root
    _root = root


class MpiTransport(Transport):
    """Worker ranks of the current job; one such transport may be open at a time."""

    capabilities = Capabilities(separate_processes=True, runs_tasks_in_order=True)

    def __init__(self, workers: int | None = None, prefetch: int = 16) -> None:
        self.root = current_root()
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative int, got {prefetch!r}")
        self.ranks = self.root.ranks[:workers] if workers else list(self.root.ranks)
        self.slots = 1 + prefetch
        self.events: EventSink | None = None
        self.tasks: dict[Key, TaskSpec] = {}
        self.deadlines: dict[Key, tuple[float, int]] = {}

    def start(self, events: EventSink) -> Mapping[str, int]:
        with self.root.lock:
            if self.root.transport is not None:
                raise DispatcherError(
                    "an 'mpi' executor is already open in this job; close it first "
                    "(or reuse it: with get_executor('mpi') as ex: ...)"
                )
            self.root.transport = self
        self.events = events
        return {_name(r): self.slots for r in self.ranks if r not in self.root.busy}

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        root = self.root
        batches: dict[int, list[tuple[Any, ...]]] = {}
        for spec in tasks:
            rank = _rank(spec.worker)
            try:
                token, _ = root.registry.token(spec.func)
                if token not in root.sent[rank]:
                    data = root.functions.get(token)
                    if data is None:
                        data = dumps_for(spec, "function", spec.func, _dumps)
                        root.functions[token] = data
                    root.hub.post(rank, ("fn", token, data))
                    root.sent[rank].add(token)
            except DispatcherError as error:
                assert self.events is not None
                self.events.task_failed(spec.key, spec.worker, error, 0.0)
                continue
            sources = (
                tuple(_rank(s) if s is not None else 0 for s in spec.sources)
                if spec.sources is not None
                else None
            )
            self.tasks[spec.key] = spec
            batches.setdefault(rank, []).append(
                (
                    spec.key,
                    token,
                    spec.args,
                    spec.kwargs,
                    spec.inline,
                    spec.shape,
                    spec.deps,
                    sources,
                    spec.want_result,
                    spec.timeout is not None,
                    spec.last_use,
                )
            )
        for rank, batch in batches.items():
            self._post_tasks(rank, batch)

    def _post_tasks(self, rank: int, batch: list[tuple[Any, ...]]) -> None:
        try:
            self.root.hub.post(rank, ("run", batch))
            return
        except Exception:
            pass
        # Something in the batch cannot be pickled: find it, fail it, send the rest.
        good = []
        for task in batch:
            try:
                encode(task)
                good.append(task)
            except Exception as exc:
                spec = self.tasks.pop(task[0])
                assert self.events is not None
                try:
                    dumps_for(spec, "arguments", (spec.args, spec.kwargs, spec.inline), _dumps)
                    error: BaseException = exc
                except DispatcherError as serialization:
                    error = serialization
                self.events.task_failed(spec.key, spec.worker, error, 0.0)
        if good:
            self.root.hub.post(rank, ("run", good))

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        self.root.hub.post(_rank(worker), ("free", list(keys)))

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        by_rank: dict[int, list[Key]] = {}
        for spec in tasks:
            if self.tasks.pop(spec.key, None) is not None:
                self.deadlines.pop(spec.key, None)
                by_rank.setdefault(_rank(spec.worker), []).append(spec.key)
        for rank, keys in by_rank.items():
            self.root.hub.post(rank, ("cancel", keys))

    def close(self) -> None:
        root = self.root
        with root.lock:
            if root.transport is not self:
                return
            root.transport = None
        # Whatever this executor left on the ranks is nobody's any more.
        for rank in self.ranks:
            root.hub.post(rank, ("reset",))

    # -- on the hub thread ---------------------------------------------------------------

    def on_message(self, source: int, message: tuple[Any, ...]) -> None:
        events = self.events
        assert events is not None
        worker = _name(source)
        kind = message[0]
        if kind == "done":
            for entry in message[1]:
                key = entry[0]
                spec = self.tasks.get(key)
                if spec is None or spec.worker != worker:
                    self.root.hub.post(source, ("free", [key]))
                    continue
                del self.tasks[key]
                self.deadlines.pop(key, None)
                if len(entry) == 4:
                    events.task_finished(key, worker, entry[1], entry[2], entry[3])
                else:
                    events.task_finished(key, worker, entry[1], entry[2])
        elif kind == "fail":
            _, key, duration, wire = message
            spec = self.tasks.get(key)
            if spec is not None and spec.worker == worker:
                del self.tasks[key]
                self.deadlines.pop(key, None)
                events.task_failed(key, worker, restore_error(wire, spec.label, _loads), duration)
        elif kind == "lost":
            spec = self.tasks.get(message[1])
            if spec is not None and spec.worker == worker:
                del self.tasks[message[1]]
                events.task_inputs_lost(message[1], worker, message[2])
        elif kind == "started":
            spec = self.tasks.get(message[1])
            if spec is not None and spec.worker == worker and spec.timeout is not None:
                self.deadlines[message[1]] = (time.monotonic() + spec.timeout, source)

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for key, (deadline, rank) in list(self.deadlines.items()):
            if deadline > now:
                continue
            del self.deadlines[key]
            spec = self.tasks.pop(key, None)
            if spec is None or spec.timeout is None:
                continue
            assert self.events is not None
            self.events.task_failed(
                key, spec.worker, TaskTimeoutError(spec.label, spec.timeout), spec.timeout
            )
            self.root.retire(rank, key, f"still running {spec.label!r}, past its timeout")

    def lose(self, rank: int, reason: str) -> None:
        """Tell the scheduler ``rank`` is gone for now: its queue and results with it."""
        if rank not in self.ranks or self.events is None:
            return
        for other, spec in list(self.tasks.items()):
            if spec.worker == _name(rank):
                del self.tasks[other]
                self.deadlines.pop(other, None)
        assert self.events is not None
        self.events.worker_lost(_name(rank), reason)


def _dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def _loads(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)
