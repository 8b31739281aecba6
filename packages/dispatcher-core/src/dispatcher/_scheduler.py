"""The scheduler: one run of a graph over a transport.

Everything about *when* and *where* lives here, once, for every backend: dependency
counting, the ready queue, placement by data locality, retries, recomputing results lost
with a worker, releasing results nobody needs, fail-fast cancellation and the observer
hooks. The transport only moves things (see :mod:`dispatcher.transport`).

A :class:`Run` does no I/O of its own and never blocks: a driver (see ``_drivers``) calls
:meth:`Run.dispatch`, waits for events in :attr:`Run.inbox`, and hands them to
:meth:`Run.process` until :attr:`Run.finished`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import DependencyError, SerializationError, TaskTimeoutError, WorkerLostError
from ._graph import gc_paused
from ._nodes import DispatchNode
from ._options import NO_LIMIT, Options
from ._template import SHAPE_CALL, SHAPE_CONSTANT, SHAPE_POSITIONAL, call_task
from .transport import TaskSpec, Transport

if TYPE_CHECKING:
    from ._graph import DispatchGraph
    from ._hooks import Observers

# Node states.
WAITING = 0  # some input is not available yet
READY = 1  # in the ready queue
RUNNING = 2  # handed to a worker
DONE = 3  # result held by a worker (or by the caller)
RELEASED = 4  # result no longer held: nobody needed it, or it was lost and is not needed
FAILED = 5  # its own call raised
SKIPPED = 6  # an ancestor failed
TERMINAL = (DONE, RELEASED, FAILED, SKIPPED)

CALLER = "main"  # where constants and inputs live, and the worker named in their hooks

# Event kinds in the inbox.
EV_FINISHED = 0
EV_FAILED = 1
EV_INPUTS_LOST = 2
EV_WORKER_ADDED = 3
EV_WORKER_LOST = 4

_NOVALUE: Any = ...
_ABSENT = object()  # a task's result may be anything, ``...`` included

# On workers that run their tasks in order, keep about this much work (by the mean task
# duration so far) queued behind the running task: enough to hide a round trip to the
# worker, little enough that no worker sits on a long queue while another idles.
QUEUED_SECONDS = 0.002
# What placement assumes before any task has reported its duration, and what moving a
# result between workers costs: rough figures for pipes and shared memory on one machine
# (MPI is faster on both counts); what matters is the order of magnitude.
UNKNOWN_DURATION = 0.001
MOVE_SECONDS = 100e-6
MOVE_BYTES_PER_SECOND = 1e9


def _running_mean(mean: float | None, sample: float) -> float:
    """An exponential moving average that follows the last few dozen samples."""
    return sample if mean is None else mean + (sample - mean) * 0.05


class Inbox:
    """Events from the transport, posted from any thread, consumed by the run's driver."""

    __slots__ = ("_cond", "_sleeping", "_waker", "events")

    def __init__(self) -> None:
        self.events: deque[tuple[Any, ...]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._sleeping = False
        self._waker: Any = None  # set by an async driver: called (on its loop) to wake it

    def post(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        if self._sleeping:
            with self._cond:
                self._cond.notify()
                # Once woken, the driver takes every event there: the others posted
                # before it runs need not wake it again.
                self._sleeping = False
        elif self._waker is not None:
            self._waker()

    def wake(self) -> None:
        """Wake an async driver that waits (something changed without an event)."""
        if self._waker is not None:
            self._waker()

    def wait(self, timeout: float | None) -> None:
        """Block until an event is there (or ``timeout`` passes)."""
        with self._cond:
            # Announce the sleep before looking, so a post in between is not missed.
            self._sleeping = True
            try:
                if not self.events:
                    self._cond.wait(timeout)
            finally:
                self._sleeping = False


class DirectSink:
    """The event sink of a transport that reports on the run's own thread, from inside
    its calls into the transport or while the driver waits on its event loop: events are
    applied at once instead of queued (the in-process executors' fast path)."""

    __slots__ = ("_run", "_wake")

    def __init__(self, run: Run) -> None:
        self._run = run
        self._wake = run.inbox

    def task_finished(
        self, key: int, worker: str, duration: float, nbytes: int | None, value: Any = _NOVALUE
    ) -> None:
        run = self._run
        run._on_finished(key - run.base, worker, duration, nbytes, value)
        if self._wake._waker is not None:
            self._wake._waker()

    def task_failed(self, key: int, worker: str, error: BaseException, duration: float) -> None:
        run = self._run
        run._on_failed(key - run.base, worker, error, duration)
        self._wake.wake()

    def task_inputs_lost(self, key: int, worker: str, missing: Sequence[int]) -> None:
        run = self._run
        run._on_inputs_lost(key - run.base, worker, [m - run.base for m in missing])
        self._wake.wake()

    def worker_added(self, worker: str, slots: int) -> None:
        self._run._on_worker_added(worker, slots)
        self._wake.wake()

    def worker_lost(self, worker: str, reason: str) -> None:
        self._run._on_worker_lost(worker, reason)
        self._wake.wake()


class Run:
    """The state of one run of ``graph``; implements the transport's event sink."""

    def __init__(
        self,
        graph: DispatchGraph,
        targets: Sequence[DispatchNode],
        inputs: Mapping[DispatchNode, Any],
        options: Options,
        observers: Observers,
        throw: bool,
        key_base: int = 0,
    ) -> None:
        # Per-node arrays for every node at once: nothing to collect while they are made.
        with gc_paused():
            nodes = graph._nodes
            n = len(nodes)
            self.graph = graph
            self.nodes = nodes
            self.deps = graph._deps
            self.dependents = graph._dependent_positions()
            self.options = options
            self._timeout = options.timeout
            self.throw = throw
            self.base = key_base
            self.inbox = Inbox()
            self.observers = observers
            self._started = observers.task_started
            self._finished_hook = observers.task_finished
            self._failed_hook = observers.task_failed
            self._retried_hook = observers.task_retried

            index = graph._index
            self.target_positions = [index[t] for t in targets]
            self.wanted = bytearray(n)
            for p in self.target_positions:
                self.wanted[p] = 1
            self.state = bytearray(n)
            self.waiting = list(map(len, self.deps))
            self.needed = list(map(len, self.dependents))
            self.attempts = bytearray(n)  # attempts made so far (capped at 255: retries are few)
            # Values held by the caller: constants, inputs, and results of tasks the scheduler
            # called itself (see Transport.runs_in_caller). Only the last are ever released.
            self.caller_values: dict[int, Any] = {}
            self._kept: set[int] = set()
            self.results: dict[int, Any] = {}
            self.errors: dict[int, BaseException] = {}
            # Who holds each result: a shared frozenset per worker for the usual single holder,
            # so finishing a task allocates nothing here.
            self.holders: list[frozenset[str] | None] = [None] * n
            self._alone: dict[str, frozenset[str]] = {}
            self.nbytes: list[int | None] = [None] * n
            self.inflight: dict[int, TaskSpec] = {}
            self.ready: list[int] = []
            self.remaining = n
            self.error: BaseException | None = None  # what ends the run (throw=True)
            self.aborted = False

            self.transport: Transport | None = None
            self._runs_in_caller: Callable[[Callable[..., Any]], bool] | None = None
            self._in_caller: dict[Any, bool] = {}  # function -> answer of runs_in_caller
            self._single: str | None = None
            self.slots: dict[str, int] = {}  # tasks each worker may be assigned now
            self._ceiling: dict[str, int] = {}  # ... and at most, as its transport said
            self.load: dict[str, int] = {}
            self._in_order = False
            self._mean_duration: float | None = None
            self._mean_nbytes: float | None = None  # of results whose size is known
            self._queued = 1  # tasks queued behind the running one, on in-order workers
            self._frees: dict[str, list[int]] = {}

            for node, value in inputs.items():
                given = index.get(node)
                if given is not None:
                    self._complete_at_caller(given, value, hooks=False)
            # Sources first in the ready stack's pop order: push them in reverse.
            state = self.state
            self.ready = [
                p
                for p, waits in zip(range(n - 1, -1, -1), reversed(self.waiting))
                if not waits and not state[p]
            ]
            for p in self.ready:
                state[p] = READY

    # -- driving ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.remaining == 0 or self.aborted

    def start(self, transport: Transport, workers: Mapping[str, int]) -> None:
        self.transport = transport
        if type(transport).runs_in_caller is not Transport.runs_in_caller:
            self._runs_in_caller = transport.runs_in_caller
        self._in_order = transport.capabilities.runs_tasks_in_order
        for name, slots in workers.items():
            self._add_worker(name, slots)

    def dispatch(self) -> bool:
        """Hand ready tasks to workers with room for them; True if anything happened."""
        if self.aborted:
            return False
        progressed = False
        ready, state, nodes = self.ready, self.state, self.nodes
        specs: list[TaskSpec] = []
        single = self._single
        here = self._runs_in_caller is not None
        while ready:
            if here:
                if self._call_ready_here():
                    progressed = True
                    if self.aborted:
                        return True
                if not ready:
                    break
            p = ready[-1]
            if state[p] != READY:  # a stale entry (the node went back to waiting)
                ready.pop()
                continue
            node = nodes[p]
            if node._shape == SHAPE_CONSTANT:
                ready.pop()
                self._complete_at_caller(p, node._args[0], hooks=True)
                progressed = True
                continue
            if single is not None:
                if self.load[single] >= self.slots[single]:
                    break
                worker = single
            else:
                placed = self._place(p)
                if placed is None:
                    break
                worker = placed
            ready.pop()
            specs.append(self._spec(p, node, worker))
            if self._in_order:
                self._send_ahead(p, worker, specs)
        if specs:
            assert self.transport is not None
            self.transport.submit(specs)
            progressed = True
        if self._frees:
            self._flush_frees()
        return progressed

    def _call_ready_here(self) -> bool:
        """Call in this thread the tasks atop the ready stack that the transport lets the
        scheduler call (see Transport.runs_in_caller) and whose inputs the caller holds,
        taking their dependents as they become ready; stop at the first task that must be
        submitted. The same bookkeeping as a submitted task, without a spec or a report.

        This is the whole per-task cost of the in-process executors, hence one flat loop:
        what ``_settled`` does is written out here rather than called. True if any task
        ran."""
        asks = self._runs_in_caller
        assert asks is not None
        ready, state, nodes, deps_of = self.ready, self.state, self.nodes, self.deps
        dependents, waiting, needed, wanted = (
            self.dependents,
            self.waiting,
            self.needed,
            self.wanted,
        )
        in_caller, caller_values = self._in_caller, self.caller_values
        value_of = caller_values.__getitem__
        attempts, results, release = self.attempts, self.results, self._release
        started, finished = self._started, self._finished_hook
        default_timeout = self._timeout
        ran = False
        while ready:
            p = ready[-1]
            if state[p] != READY:  # a stale entry (the node went back to waiting)
                ready.pop()
                continue
            node = nodes[p]
            shape = node._shape
            if shape == SHAPE_CONSTANT:
                ready.pop()
                self._complete_at_caller(p, node._args[0], hooks=True)
                ran = True
                continue
            func = node._func
            allowed = in_caller.get(func)
            if allowed is None:
                allowed = in_caller[func] = asks(func)
            if not allowed:
                return ran
            deps = deps_of[p]
            # Inputs of one- and two-input calls go in locals: building a list to unpack
            # into the call was a quarter of the cost of a task in a chain.
            count = len(deps)
            try:
                if count == 1:
                    first = value_of(deps[0])
                elif count == 2:
                    first, second = value_of(deps[0]), value_of(deps[1])
                else:
                    values = list(map(value_of, deps)) if deps else []
            except KeyError:
                return ran  # an input is held by a worker: submit it like any task
            ready.pop()
            ran = True
            attempts[p] += 1
            if started is not None:
                started(node=node, worker=CALLER)
            timeout = node.timeout or default_timeout  # both positive when set
            timed = timeout is not None or finished is not None
            if timed:
                begun = perf_counter()
            try:
                if shape == SHAPE_POSITIONAL:
                    if count == 1:
                        value = func(first)
                    elif count == 2:
                        value = func(first, second)
                    else:
                        value = func(*values)
                elif shape == SHAPE_CALL and not node._kwargs:
                    value = func(*node._args)
                else:
                    if count == 1:
                        values = [first]
                    elif count == 2:
                        values = [first, second]
                    value = call_task(func, node._args, node._kwargs, shape, values)
            except Exception as exc:
                self._task_error(p, CALLER, exc)
                if self.aborted:
                    return True
                continue
            if timed:
                duration = perf_counter() - begun
                if timeout is not None and duration > timeout:
                    # A call in this thread cannot be interrupted: it fails when it returns.
                    self._task_error(p, CALLER, TaskTimeoutError(node.label, timeout))
                    if self.aborted:
                        return True
                    continue
            state[p] = DONE
            caller_values[p] = value
            if wanted[p]:
                results[p] = value
            if finished is not None:
                finished(node=node, worker=CALLER, duration=duration, nbytes=None)
            # What _settled does, written out.
            self.remaining -= 1
            for d in deps:
                needed[d] -= 1
                if not needed[d]:
                    release(d)
            for j in dependents[p]:
                waiting[j] -= 1
                if not waiting[j] and state[j] == WAITING:
                    state[j] = READY
                    ready.append(j)
            if not needed[p]:
                release(p)
        return ran

    def _send_ahead(self, p: int, worker: str, specs: list[TaskSpec]) -> None:
        """Queue on ``worker`` the dependents whose last missing input is ``p``, which
        ``worker`` is about to compute, and theirs in turn, while it has room: a chain
        then runs without a round trip per step."""
        state, waiting, nodes, dependents = self.state, self.waiting, self.nodes, self.dependents
        load, slots = self.load, self.slots
        stack = [p]
        while stack:
            for j in dependents[stack.pop()]:
                if waiting[j] == 1 and state[j] == WAITING:
                    if load[worker] >= slots[worker]:
                        return
                    specs.append(self._spec(j, nodes[j], worker))
                    stack.append(j)

    def _learn(self, duration: float, nbytes: int | None) -> None:
        """Fold a finished task's duration (and result size, if known) into the running
        means; resize the queues when the mean duration moved much."""
        self._mean_duration = mean = _running_mean(self._mean_duration, duration)
        if nbytes is not None:
            self._mean_nbytes = _running_mean(self._mean_nbytes, nbytes)
        if not self._in_order:
            return
        queued = int(QUEUED_SECONDS / mean) if mean > 0 else 1 << 30
        queued = max(1, min(queued, 1 << 30))
        if queued != self._queued and not (self._queued // 2 < queued < self._queued * 2):
            self._queued = queued
            for worker in self.slots:
                self.slots[worker] = self._limit(worker)

    def _limit(self, worker: str) -> int:
        ceiling = self._ceiling[worker]
        return min(ceiling, 1 + self._queued) if self._in_order else ceiling

    def _only_on(self, worker: str) -> frozenset[str]:
        where = self._alone.get(worker)
        if where is None:
            where = self._alone[worker] = frozenset((worker,))
        return where

    def _workers_changed(self) -> None:
        # With one worker there is nothing to place, and inputs are always local.
        self._single = next(iter(self.slots)) if len(self.slots) == 1 else None

    def _place(self, p: int) -> str | None:
        """The worker where the task would finish soonest, all told: the work queued
        there before it, moving the inputs it lacks there, and moving its result later to
        meet the other inputs of its consumers (or theirs to it). Tiny tasks therefore
        stay with their data, long ones spread out, and the producers of one consumer's
        inputs gather on one worker. A worker whose queue is at its usual length takes
        one more only when that saves a move worth the wait. None when no worker will
        take the task now, or when waiting for room on a full one beats moving: a tiny
        task waits behind a few others where its inputs are instead of moving them."""
        load, slots, ceiling = self.load, self.slots, self._ceiling
        open_ = [w for w in slots if load[w] < ceiling[w]]
        if not open_:
            return None
        moving, near = self._moves(p)
        if near is None:  # nothing to move, wherever it runs: the shortest queue
            usual = [w for w in open_ if load[w] < slots[w]]
            return min(usual, key=load.__getitem__) if usual else None
        mean = self._mean_duration
        if mean is None:
            mean = UNKNOWN_DURATION

        def finish(w: str) -> tuple[float, int]:
            return load[w] * mean + moving - near.get(w, 0.0), load[w]

        best = min(open_, key=finish)
        if len(open_) < len(slots) and finish(min(slots, key=finish))[0] < finish(best)[0]:
            return None  # sooner done by waiting for room on a full worker than moving
        # Beyond the usual queue only when the move saved outweighs the extra wait there.
        beyond = load[best] + 1 - slots[best]
        if beyond <= 0 or near.get(best, 0.0) >= MOVE_SECONDS + beyond * mean:
            return best
        usual = [w for w in open_ if load[w] < slots[w]]
        return min(usual, key=finish) if usual else None

    def _moves(self, p: int) -> tuple[float, dict[str, float] | None]:
        """Seconds of moves task ``p`` would cause on a worker holding none of what it
        weighs (its inputs, its consumers' other inputs), and what running on each
        worker would spare of that; None for the latter when there is nothing to weigh."""
        holders, nbytes, inflight = self.holders, self.nbytes, self.inflight
        weighed: list[tuple[frozenset[str], float]] = []
        for d in self.deps[p]:
            where = holders[d]
            if where:
                weighed.append((where, nbytes[d] or 0))
        expected = self._mean_nbytes or 0.0
        for j in self.dependents[p][:4]:
            siblings = self.deps[j]
            if len(siblings) > 16:
                continue  # a reduction over many: no one home to gather near
            for d in siblings:
                where = holders[d]
                if where is None:
                    spec = inflight.get(d)
                    if spec is None:
                        continue
                    where = self._only_on(spec.worker)  # still being computed there
                weighed.append((where, min(expected, nbytes[d] or expected)))
        if not weighed:
            return 0.0, None
        moving = 0.0
        near: dict[str, float] = {}
        for where, size in weighed:
            cost = MOVE_SECONDS + size / MOVE_BYTES_PER_SECOND
            moving += cost
            for w in where:
                near[w] = near.get(w, 0.0) + cost
        return moving, near

    def _spec(self, p: int, node: DispatchNode, worker: str) -> TaskSpec:
        base = self.base
        deps = self.deps[p]
        caller_values = self.caller_values
        inline: dict[int, Any] | None = None
        sources: tuple[str | None, ...] | None = None
        if deps:
            keys = tuple([base + d for d in deps]) if base else deps
            needed, wanted, holders = self.needed, self.wanted, self.holders
            picked: list[str | None] = []  # where each input is to be taken from
            local = True
            used_up: list[int] = []  # inputs only this task still needs, held where it runs
            for d in deps:
                if d in caller_values:  # held by the caller: shipped inline
                    if inline is None:
                        inline = {}
                    inline[base + d] = caller_values[d]
                    picked.append(None)
                    continue
                where = holders[d]
                if where is not None and worker not in where:
                    picked.append(next(iter(where)))
                    local = False
                    continue
                # Held there, or sent ahead: still being computed on this very worker.
                picked.append(worker)
                if needed[d] == 1 and not wanted[d]:
                    used_up.append(base + d)
            if not local and self._single is None:
                sources = tuple(picked)
            last_use = tuple(used_up)
        else:
            keys = last_use = ()
        self.attempts[p] += 1
        timeout = node.timeout if node.timeout is not None else self._timeout
        if timeout == NO_LIMIT:  # op(f, timeout=math.inf): unlimited, whatever the default
            timeout = None
        spec = TaskSpec(
            base + p,
            node,
            node._func,
            node._args,
            node._kwargs,
            node._shape,
            keys,
            sources,
            inline,
            worker,
            timeout,
            bool(self.wanted[p]),
            self.attempts[p],
            last_use,
        )
        self.state[p] = RUNNING
        self.inflight[p] = spec
        self.load[worker] += 1
        if self._started is not None:
            self._started(node=node, worker=worker)
        return spec

    def process(self) -> None:
        """Apply every event waiting in the inbox."""
        events = self.inbox.events
        popleft = events.popleft
        handlers = self._handlers
        while events:
            event = popleft()
            handlers[event[0]](self, *event[1:])
            if self.aborted:
                events.clear()
                break
        if self._frees:
            self._flush_frees()

    # -- the event sink (called by the transport, from any thread) -------------------------

    def task_finished(
        self, key: int, worker: str, duration: float, nbytes: int | None, value: Any = _NOVALUE
    ) -> None:
        self.inbox.post((EV_FINISHED, key - self.base, worker, duration, nbytes, value))

    def task_failed(self, key: int, worker: str, error: BaseException, duration: float) -> None:
        self.inbox.post((EV_FAILED, key - self.base, worker, error, duration))

    def task_inputs_lost(self, key: int, worker: str, missing: Sequence[int]) -> None:
        self.inbox.post((EV_INPUTS_LOST, key - self.base, worker, [m - self.base for m in missing]))

    def worker_added(self, worker: str, slots: int) -> None:
        self.inbox.post((EV_WORKER_ADDED, worker, slots))

    def worker_lost(self, worker: str, reason: str) -> None:
        self.inbox.post((EV_WORKER_LOST, worker, reason))

    # -- event handlers (on the driver's thread) ------------------------------------------

    def _on_finished(
        self, p: int, worker: str, duration: float, nbytes: int | None, value: Any
    ) -> None:
        spec = self.inflight.get(p)
        if spec is None or spec.worker != worker or self.state[p] != RUNNING:
            self._queue_free(worker, p)  # a stale report: its result is not wanted
            return
        del self.inflight[p]
        self.load[worker] -= 1
        self._learn(duration, nbytes)
        self.state[p] = DONE
        self.holders[p] = self._alone.get(worker) or self._only_on(worker)
        self.nbytes[p] = nbytes
        if self.wanted[p]:
            self.results[p] = value
        if self._finished_hook is not None:
            self._finished_hook(node=self.nodes[p], worker=worker, duration=duration, nbytes=nbytes)
        self._settled(p)

    def _settled(self, p: int) -> None:
        """``p`` has its result: release its inputs, wake its dependents."""
        self.remaining -= 1
        needed = self.needed
        for d in self.deps[p]:
            needed[d] -= 1
            if needed[d] == 0:
                self._release(d)
        state, waiting, ready = self.state, self.waiting, self.ready
        for j in self.dependents[p]:
            waiting[j] -= 1
            if waiting[j] == 0 and state[j] == WAITING:
                state[j] = READY
                ready.append(j)
        if needed[p] == 0:
            self._release(p)

    def _complete_at_caller(self, p: int, value: Any, hooks: bool) -> None:
        self.caller_values[p] = value
        self._kept.add(p)
        self.state[p] = DONE
        if self.wanted[p]:
            self.results[p] = value
        if hooks:
            node = self.nodes[p]
            if self._started is not None:
                self._started(node=node, worker=CALLER)
            if self._finished_hook is not None:
                self._finished_hook(node=node, worker=CALLER, duration=0.0, nbytes=None)
            self._settled(p)
        else:
            # Given through ``inputs``: not run, so not counted as a settled task.
            self.remaining -= 1
            for d in self.deps[p]:
                self.needed[d] -= 1
            for j in self.dependents[p]:
                self.waiting[j] -= 1

    def _release(self, p: int) -> None:
        if self.state[p] != DONE or p in self._kept:
            return  # constants and inputs stay: recomputing a lost result may need them
        self.state[p] = RELEASED
        if self.caller_values.pop(p, _ABSENT) is not _ABSENT:
            return  # made by the scheduler itself: no worker holds it
        where = self.holders[p]
        self.holders[p] = None
        if where:
            frees, key = self._frees, self.base + p
            for w in where:
                pending = frees.get(w)
                if pending is None:
                    frees[w] = [key]
                else:
                    pending.append(key)

    def _queue_free(self, worker: str, p: int) -> None:
        self._frees.setdefault(worker, []).append(self.base + p)

    def _flush_frees(self) -> None:
        if self._frees:
            frees, self._frees = self._frees, {}
            transport = self.transport
            assert transport is not None
            for worker, keys in frees.items():
                if worker in self.slots:
                    transport.free(worker, keys)

    def _on_failed(self, p: int, worker: str, error: BaseException, duration: float) -> None:
        spec = self.inflight.get(p)
        if spec is None or spec.worker != worker or self.state[p] != RUNNING:
            return
        del self.inflight[p]
        self.load[worker] -= 1
        self._task_error(p, worker, error)

    def _task_error(self, p: int, worker: str, error: BaseException) -> None:
        """Task ``p``'s attempt on ``worker`` raised ``error``: retry it or fail it."""
        node = self.nodes[p]
        if isinstance(error, (TaskTimeoutError, SerializationError, WorkerLostError)):
            if not isinstance(error.node, DispatchNode):
                error.node = node  # the transport knew only the label
        elif (
            self.options.retry_on
            and isinstance(error, self.options.retry_on)
            and self.attempts[p] <= self.options.retries
        ):
            self._retry(p, worker, error)
            return
        self._fail(p, worker, error)

    def _retry(self, p: int, worker: str, error: BaseException) -> None:
        if self._retried_hook is not None:
            self._retried_hook(
                node=self.nodes[p], worker=worker, error=error, attempt=self.attempts[p] + 1
            )
        self._requeue(p)

    def _requeue(self, p: int) -> None:
        """Back to the queue once its inputs are available again."""
        state = self.state
        missing = sum(1 for d in self.deps[p] if state[d] != DONE)
        self.waiting[p] = missing
        if missing:
            state[p] = WAITING
        else:
            state[p] = READY
            self.ready.append(p)

    def _fail(self, p: int, worker: str, error: BaseException) -> None:
        node = self.nodes[p]
        self.state[p] = FAILED
        self.errors[p] = error
        self.remaining -= 1
        if self._failed_hook is not None:
            self._failed_hook(node=node, worker=worker, error=error)
        if self.throw:
            error.add_note(f"dispatcher: raised by node {node.label!r} on worker {worker!r}")
            self.abort(error)
            return
        self._consumed_inputs(p)
        # Everything downstream cannot run: skip it, naming this node.
        state, dependents = self.state, self.dependents
        stack = list(dependents[p])
        ahead: list[TaskSpec] = []
        while stack:
            j = stack.pop()
            if state[j] == RUNNING:
                # Sent ahead to run after its input: it never will.
                spec = self.inflight.pop(j, None)
                if spec is not None:
                    self.load[spec.worker] -= 1
                    ahead.append(spec)
            elif state[j] in TERMINAL:
                continue
            state[j] = SKIPPED
            self.remaining -= 1
            dep_error = DependencyError(self.nodes[j], node, error)
            self.errors[j] = dep_error
            if self._failed_hook is not None:
                self._failed_hook(node=self.nodes[j], worker=CALLER, error=dep_error)
            self._consumed_inputs(j)
            stack.extend(dependents[j])
        if ahead:
            assert self.transport is not None
            with contextlib.suppress(Exception):  # best effort: its report is ignored anyway
                self.transport.cancel(ahead)

    def _consumed_inputs(self, p: int) -> None:
        # ``p`` will never use its inputs: they may be released.
        needed = self.needed
        for d in self.deps[p]:
            needed[d] -= 1
            if needed[d] == 0:
                self._release(d)

    def _on_inputs_lost(self, p: int, worker: str, missing: list[int]) -> None:
        spec = self.inflight.get(p)
        if spec is None or spec.worker != worker or self.state[p] != RUNNING:
            return
        del self.inflight[p]
        self.load[worker] -= 1
        self.attempts[p] -= 1  # not an attempt: it never started
        lost = []
        for m in missing:
            where = self.holders[m]
            if self.state[m] == DONE and m not in self.caller_values:
                for w in list(where or ()):
                    if spec.sources is None or w in spec.sources:
                        self._forget_holder(m, w)
                if not self.holders[m]:
                    lost.append(m)
        self.state[p] = WAITING  # so the recomputation does not count it as waiting twice
        self._recompute(lost, worker, "inputs missing")
        self._requeue(p)

    def _forget_holder(self, p: int, worker: str) -> None:
        where = self.holders[p]
        if where is not None and worker in where:
            where = where - {worker}
            self.holders[p] = where or None
            if not where:
                self.state[p] = RELEASED

    def _on_worker_added(self, worker: str, slots: int) -> None:
        self._add_worker(worker, slots)

    def _add_worker(self, worker: str, slots: int) -> None:
        self._ceiling[worker] = max(1, slots)
        self.slots[worker] = self._limit(worker)
        self.load.setdefault(worker, 0)
        self._workers_changed()

    def _on_worker_lost(self, worker: str, reason: str) -> None:
        if worker not in self.slots:
            return
        # Losses are rare: find what it ran and held by looking, rather than keeping
        # per-worker books on every task.
        running = sorted(p for p, spec in self.inflight.items() if spec.worker == worker)
        held = [p for p, where in enumerate(self.holders) if where and worker in where]
        del self.slots[worker]
        del self._ceiling[worker]
        del self.load[worker]
        self._workers_changed()
        self._frees.pop(worker, None)
        # Results that lived only there are gone; recompute those still needed.
        lost: list[int] = []
        for p in sorted(held):
            self._forget_holder(p, worker)
            if self.state[p] == RELEASED and self.needed[p] > 0:
                lost.append(p)
        self._recompute(lost, worker, reason)
        # Tasks it was running are retried while attempts allow.
        for p in running:
            self.inflight.pop(p, None)
            if self.state[p] != RUNNING:
                continue
            node = self.nodes[p]
            error = WorkerLostError(node, worker, reason)
            if self.attempts[p] <= self.options.retries:
                self.state[p] = WAITING
                self._recompute(
                    [d for d in self.deps[p] if self.state[d] == RELEASED], worker, reason
                )
                self._retry(p, worker, error)
            else:
                self._fail(p, worker, error)
                if self.aborted:
                    return

    def _recompute(self, roots: list[int], worker: str = "?", reason: str = "") -> None:
        """Run again the results in ``roots`` (lost, still needed), and whatever released
        ancestors they need in turn: their lineage."""
        if not roots:
            return
        state, deps = self.state, self.deps
        order: list[int] = []
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            p = stack.pop()
            if p in seen or state[p] != RELEASED:
                continue
            seen.add(p)
            order.append(p)
            stack.extend(d for d in deps[p] if state[d] == RELEASED)
        for p in order:
            state[p] = WAITING
            self.remaining += 1
        needed = self.needed
        for p in order:
            for d in deps[p]:
                needed[d] += 1
        for p in sorted(order):
            self._requeue(p)
            if self._retried_hook is not None:
                error = WorkerLostError(self.nodes[p], worker, f"its result was lost: {reason}")
                self._retried_hook(
                    node=self.nodes[p], worker=worker, error=error, attempt=self.attempts[p] + 1
                )
        # Dependents that counted a recomputed result as available must wait for it again.
        for p in order:
            for j in self.dependents[p]:
                if j not in seen and state[j] in (WAITING, READY):
                    self._requeue(j)

    _handlers: ClassVar[dict[int, Callable[..., None]]] = {
        EV_FINISHED: _on_finished,
        EV_FAILED: _on_failed,
        EV_INPUTS_LOST: _on_inputs_lost,
        EV_WORKER_ADDED: _on_worker_added,
        EV_WORKER_LOST: _on_worker_lost,
    }

    # -- ending ---------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Stop now: drop the queue, abandon what runs, free what is held."""
        if self.aborted:
            return
        self.aborted = True
        self.error = error
        self.ready.clear()
        transport = self.transport
        if transport is None:
            return
        if self.inflight:
            specs = list(self.inflight.values())
            self.inflight.clear()
            try:
                transport.cancel(specs)
            except Exception:  # cancelling is best effort; the run is over either way
                pass
        for p, where in enumerate(self.holders):
            if where:
                for w in where:
                    self._queue_free(w, p)
        with contextlib.suppress(Exception):
            self._flush_frees()

    def release_all(self) -> None:
        """At the end of a run: free whatever workers still hold for it."""
        for p, where in enumerate(self.holders):
            if where:
                self.holders[p] = None
                for w in where:
                    self._queue_free(w, p)
        self._flush_frees()
