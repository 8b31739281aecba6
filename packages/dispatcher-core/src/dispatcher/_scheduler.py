"""The scheduler: one run of a graph over a transport.

Everything about *when* and *where* lives here, once, for every backend; the transport
only moves things (see :mod:`dispatcher.transport`). A :class:`Run` composes

* the task table (:mod:`._tasks`): per-node state, the ready stack, settling a task, and
  the hot loop that calls in-caller tasks;
* placement (:mod:`._placement`): per-worker room and load, the move-cost model,
  where a task sent ahead of its inputs may go;
* recovery (:mod:`._recovery`): retries, failures and skips, lost workers and inputs,
  recomputing lost results from their lineage;
* capacity (:mod:`._capacity`): workers coming, pausing and going, and failing what no
  worker can take rather than waiting for ever;
* stealing (:mod:`._stealing`): taking back, for a worker gone idle, tasks queued behind
  a long one on a worker that runs its tasks in order;

and is the only one of them that talks to the transport. It does no I/O of its own and
never blocks: a driver (see :mod:`._driver`) calls :meth:`Run.dispatch` and
:meth:`Run.apply_events` until :attr:`Run.finished`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from math import inf
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from ._capacity import (
    Capacity,
    on_no_worker_left,
    on_worker_added,
    on_worker_lost,
    on_worker_paused,
)
from ._copies import copied, stale_copies
from ._driver import (
    EV_FAILED,
    EV_FINISHED,
    EV_FINISHED_MANY,
    EV_INPUTS_LOST,
    EV_NO_WORKER_LEFT,
    EV_TAKEN_BACK,
    EV_WORKER_ADDED,
    EV_WORKER_LOST,
    EV_WORKER_PAUSED,
    EventQueue,
    load_reported,
)
from ._hot_loop import call_ready_in_caller
from ._nodes import DispatchNode
from ._options import Options, task_timeout
from ._placement import Placement
from ._recovery import Recovery
from ._stale_hits import hit_unreadable, read_hit_in_caller
from ._starts import (
    announce,
    announce_at_own_report,
    announce_inputs_made,
    announce_unless_ahead,
    never_started,
)
from ._states import CALLER, DONE, READY, RUNNING, WAITING
from ._stealing import Stealing, taken_back, told_before
from ._tasks import TaskTable
from ._template import SHAPE_CONSTANT
from ._tiny import Probes
from .transport import TaskSpec, Transport, Unloaded

if TYPE_CHECKING:
    from ._cache_plan import CachePlan
    from ._graph import DispatchGraph
    from ._hooks import Observers
    from ._tiny import TinyCalls

__all__ = ["Run"]


def _on_finished(
    run: Run, p: int, worker: str, duration: float, nbytes: int | None, value: Any
) -> None:
    """Task ``p`` finished on ``worker``: learn from it, keep its result, settle it."""
    table = run.table
    # Run._reported, written out: once per task.
    spec = table.inflight.get(p)
    if spec is None or spec.worker != worker or table.state[p] != RUNNING:
        table.free_on(worker, p)  # a stale report: its result is not wanted
        stale_copies(table, p, worker)
        return
    del table.inflight[p]
    placement = run.placement
    placement.load[worker] -= 1
    if isinstance(value, Unloaded):
        loaded, value = _load_result(run, p, worker, spec, value, duration)
        if not loaded:
            return
    unannounced = run.unannounced
    if unannounced:
        announce_at_own_report(run, p, worker)
    placement.learn(table.nodes[p]._func, duration, nbytes)
    table.state[p] = DONE
    table.holders[p] = table._alone.get(worker) or table.held_on(worker)
    table.nbytes[p] = nbytes
    if table.wanted[p]:
        table.results[p] = value
    if spec.sources is not None:
        copied(table, p, spec, worker, True)
    if run.hits is not None and p in run.hits:
        if run._cached_hook is not None:
            run._cached_hook(node=table.nodes[p], worker=worker)
    elif run._finished_hook is not None:
        run._finished_hook(node=table.nodes[p], worker=worker, duration=duration, nbytes=nbytes)
    table.settle(p, worker, spec.last_use)
    if unannounced:
        announce_inputs_made(run, table.dependents[p])


def _on_finished_many(
    run: Run, worker: str, finished: list[tuple[int, float, int | None, Any]]
) -> None:
    """Tasks finished on ``worker``, reported together (keys whole): each as
    :func:`_on_finished`. One that gives recovery something to act on (or ends the run)
    ends the loop: the rest go back to the front of the queue, applied after recovery
    acted, or freed by the router if the run is over."""
    base, recovery = run.base, run.recovery
    applied = 0
    try:
        for key, duration, nbytes, value in finished:
            applied += 1
            _on_finished(run, key - base, worker, duration, nbytes, value)
            if recovery.fatal is not None or recovery.to_cancel or run.aborted:
                break
    finally:
        if applied < len(finished):
            run.queue.events.appendleft((EV_FINISHED_MANY, worker, finished[applied:]))


def _on_failed(run: Run, p: int, worker: str, error: Any, duration: float) -> None:
    """Task ``p`` raised on ``worker`` (or could not run there): retried, or failed."""
    spec = run._reported(p, worker)
    if spec is None:
        stale_copies(run.table, p, worker)
        return
    copied(run.table, p, spec, worker, False)
    if duration > 0:  # time spent failing counts too: placement sizes queues by it
        run.placement.learn(run.table.nodes[p]._func, duration, None)
    if isinstance(error, Unloaded):
        error = load_reported(error, spec, "exception")[1]
    _failed(run, p, worker, error, duration)


class Run:
    """One run of ``graph`` towards ``targets``, from start to its end."""

    def __init__(
        self,
        graph: DispatchGraph,
        targets: Sequence[DispatchNode],
        inputs: Mapping[DispatchNode, Any],
        options: Options,
        observers: Observers,
        throw: bool,
        key_base: int = 0,
        cache: CachePlan | None = None,
    ) -> None:
        self.table = table = TaskTable(graph, targets, inputs, observers, options.timeout, key_base)
        self.placement = Placement(table)
        self.recovery = Recovery(table, self.placement, options, observers, throw)
        self.capacity = Capacity()
        self.queue = EventQueue()
        """Reports for this run (see :class:`._driver.Router`)."""
        self.base = key_base
        self.throw = throw
        self.error: BaseException | None = None  # what ends the run (throw=True)
        self.aborted = False
        self.turn = inf  # seconds a dispatch() may take: a loop's driver sets its turn

        self.transport: Transport | None = None
        self._asks: Callable[[Callable[..., Any]], bool] | None = None
        self._in_caller: dict[Any, bool] = {}  # function -> what runs_in_caller said
        self._idle_asks: Callable[[Callable[..., Any]], bool] | None = None
        self._idle_in_caller: dict[Any, bool] = {}  # function -> what _idle_asks said
        self._tiny: TinyCalls | None = None
        self._tiny_seen = 0  # its changes when the run last asked afresh
        self._probes: Probes | None = None
        self._sends_ahead = False
        """Tasks go before their inputs are made (see ``start``)."""
        self.unannounced: set[int] | None = None
        """Tasks sent ahead whose task_started waits for their inputs to be made
        (:mod:`._starts`)."""
        self.stealing: Stealing | None = None  # taking back work for idle workers: start
        self.started_hook = observers.task_started
        self._finished_hook = observers.task_finished
        # The cache's calls (load a hit, or call and store) replace those nodes' own:
        # ``None`` without a cache, so a run without one pays a test per task, no more.
        self._cache_calls: dict[int, Any] | None = None
        self.hits: set[int] | None = None  # the cache's hits to read, not run
        self._hits_in_caller = False
        """Hits are read in the caller's thread: the transport calls plain functions
        there (``sync``, ``async`` with ``threads=0``)."""
        self.stale_hits: list[str] = []
        """Keys of hits whose entry could not be read: the run starts nothing more, lets
        what runs finish (and store its result), and ends, to be planned again (their
        ancestors were pruned: only a new plan can compute them)."""
        if cache is not None and cache.calls:
            self._cache_calls = cache.calls
            self.hits = cache.hits
            self._cache_keys = cache.keys
            self._cached_hook = observers.task_cached
            # These must be submitted as specs (whose calls are replaced), never called
            # in the caller's hot loop (which calls the node's own function).
            nodes = table.nodes
            for p in cache.calls:
                self._in_caller[nodes[p]._func] = False
        self._pinned = dict(self._in_caller)  # what goes as a spec, whatever is said

    @property
    def finished(self) -> bool:
        return (
            self.table.remaining == 0
            or self.aborted
            # Planning again: once what runs has stored its result, so the new plan reads it.
            or (bool(self.stale_hits) and not self.table.inflight)
        )

    def call_when_idle(self, asks: Callable[[Callable[..., Any]], bool]) -> None:
        """Let the driving thread call a task itself when it would otherwise only wait:
        nothing of this run is out on a worker and one task is ready. ``asks(func)`` says
        which functions may be called so. Only for a run driven by a thread that serves
        it alone and enforces no deadline (the ``async`` executor's runs without a loop):
        a chain then costs what it costs in the caller, not a thread hand-off per link."""
        self._idle_asks = asks
        # What must go as a spec (a cached node's replaced call) stays so.
        self._idle_in_caller = {f: False for f, here in self._in_caller.items() if not here}

    def call_tiny(self, tiny: TinyCalls) -> None:
        """Let the driving thread call the functions ``tiny`` finds too cheap for a worker
        (``runs_in_caller`` reads it), never with a timeout; see :mod:`._tiny`."""
        self._tiny = tiny
        self._tiny_seen = tiny.changes
        if self.table.timeout is None:  # (with one, every task goes to a thread)
            self._probes = Probes(tiny, self._pinned)

    def _ask_again(self, tiny: TinyCalls) -> None:
        """A verdict of ``tiny`` changed: forget what ``runs_in_caller`` said."""
        self._tiny_seen = tiny.changes
        self._in_caller.clear()
        self._in_caller.update(self._pinned)

    def start(self, transport: Transport, workers: Mapping[str, int]) -> None:
        """Begin on ``transport``, whose workers are ``workers`` (name: capacity) so far."""
        self.transport = transport
        if type(transport).runs_in_caller is not Transport.runs_in_caller:
            self._asks = transport.runs_in_caller
        capabilities = transport.capabilities
        in_order = self.placement.in_order = capabilities.runs_tasks_in_order
        pending = self.placement.anywhere = capabilities.accepts_pending_inputs
        # A worker that runs its tasks in order runs one sent behind its inputs after them.
        self._sends_ahead = in_order or pending
        self.table.keeps_copies = capabilities.keeps_fetched_inputs
        if in_order and not pending and capabilities.takes_back_queued_tasks:
            told = self.started_hook is not None
            self.stealing = Stealing(self.table, self.placement, told)
        if self._sends_ahead and self.started_hook is not None:
            self.unannounced = set()  # told started when their inputs are made
        if self.hits is not None and self._asks is not None:
            from ._cache import load_entry

            self._hits_in_caller = self._asks(load_entry)
        for name, slots in workers.items():
            on_worker_added(self, name, slots)

    # -- handing out tasks ------------------------------------------------------------------

    def dispatch(self) -> bool:
        """Call in-caller tasks, hand other ready tasks to workers with room for them;
        True if anything happened."""
        if self.aborted or self.stale_hits:
            return False
        table = self.table
        ready, state, nodes, waiting = table.ready, table.state, table.nodes, table.waiting
        place, asks, sends_ahead = self.placement.place, self._asks, self._sends_ahead
        progressed = False
        specs: list[TaskSpec] = []
        in_caller, tiny, probes = self._in_caller, self._tiny, self._probes
        held: list[int] = []  # calls of functions being learned, waiting for probes
        if tiny is not None and tiny.changes != self._tiny_seen:
            self._ask_again(tiny)
        turn_ends = perf_counter() + self.turn
        while ready:
            if len(specs) & 63 == 63 and perf_counter() > turn_ends:
                break  # the driver's turn is over: the rest at its next step
            # (A function known not to run in the caller skips the hot loop's call.)
            if asks is not None and in_caller.get(nodes[ready[-1]]._func, True):
                if call_ready_in_caller(table, asks, in_caller, False, tiny, turn_ends):
                    progressed = True
                    if table.failure is not None:
                        if self._caller_failed():
                            return True
                        continue
                    if perf_counter() > turn_ends:
                        break  # the driver's turn is over: the rest at its next step
                if not ready:  # (the loop above may have emptied it of stale entries)
                    break
            if not specs and self._idle_asks is not None and self._called_alone(self._idle_asks):
                progressed = True
                if table.failure is not None and self._caller_failed():
                    return True
                continue
            p = ready[-1]
            if state[p] != READY:  # a stale entry (the node went back to waiting)
                ready.pop()
                continue
            node = nodes[p]
            if node._shape == SHAPE_CONSTANT:
                ready.pop()
                table.complete_at_caller(p, node._args[0], hooks=True)
                progressed = True
                continue
            if waiting[p]:  # readied ahead of an input still being made (see ready_ahead)
                worker = self.placement.place_ahead(p)
                if worker is None:  # (or an input went back to waiting since)
                    ready.pop()
                    state[p] = WAITING  # readied again once its inputs are made, or room
                    continue
            elif self._hits_in_caller and p in self.hits:  # type: ignore[operator]
                # A hit where tasks run in the caller: read it here, without a spec.
                read_hit_in_caller(self, ready.pop())
                progressed = True
                if self.stale_hits:
                    break
                continue
            else:
                if probes is not None and probes.hold(p, node, table.inflight):
                    held.append(ready.pop())
                    continue
                worker = place(p)
                if worker is None:
                    break
            ready.pop()
            specs.append(self._spec(p, node, worker))
            if sends_ahead:
                table.ready_ahead(p)
        ready.extend(reversed(held))
        if specs:
            assert self.transport is not None
            self.transport.submit(specs)
            progressed = True
        if table.frees:
            self._send_frees()
        if self.stealing is not None and not ready:
            _ask_back(self, self.stealing)
        return progressed

    def look_again_at(self) -> float | None:
        """When to dispatch again though nothing was reported (``None``: not before)."""
        stealing = self.stealing  # (watching: only while a worker idles beside queues)
        return stealing.wake_at(monotonic()) if stealing and stealing.watching else None

    def _called_alone(self, asks: Callable[[Callable[..., Any]], bool]) -> bool:
        """Call the one ready task in this thread, if nothing is out (``call_when_idle``)."""
        table = self.table
        if len(table.ready) != 1 or table.inflight:
            return False
        return call_ready_in_caller(table, asks, self._idle_in_caller, True)

    def _caller_failed(self) -> bool:
        """A task called here raised (``TaskTable.failure``); True if that ended the run."""
        table = self.table
        assert table.failure is not None
        p, error, duration = table.failure
        table.failure = None
        self.recovery.task_failed(p, CALLER, error, duration)
        self.act_on_recovery()
        return self.aborted

    def _spec(self, p: int, node: DispatchNode, worker: str) -> TaskSpec:
        table = self.table
        base = table.base
        if table.deps[p]:
            keys, sources, shipped, last_use = table.inputs_of(
                p, worker, self.placement.single is None
            )
        else:
            keys, sources, shipped, last_use = (), None, None, ()
        table.attempts[p] += 1
        timeout = table.timeout if node._timeout is None else task_timeout(node._timeout, None)
        func, args, kwargs, shape = node._func, node._args, node._kwargs, node._shape
        if self._cache_calls is not None:
            call = self._cache_calls.get(p)
            if call is not None:
                func, args, kwargs, shape = call
                if p in self.hits:  # type: ignore[operator]
                    timeout = None  # (the timeout bounds the function, which a hit skips)
        spec = TaskSpec(
            base + p,
            node,
            func,
            args,
            kwargs,
            shape,
            keys,
            sources,
            shipped,
            worker,
            timeout,
            bool(table.wanted[p]),
            table.attempts[p],
            last_use,
        )
        table.state[p] = RUNNING
        table.inflight[p] = spec
        self.placement.load[worker] += 1
        # (No call per task when nobody watches; a task taken back was told already.)
        if self.started_hook is not None and not told_before(self.stealing, p):
            if self.unannounced is not None:
                announce_unless_ahead(self, p, node, worker)
            else:
                announce(self, p, node, worker)
        return spec

    # -- applying reports --------------------------------------------------------------------

    def apply_events(self) -> None:
        """Apply the reports waiting in the queue: all of them, or as many as fit in the
        driver's :attr:`turn`."""
        if self.aborted:
            return  # its reports are the router's to free
        events = self.queue.events
        popleft = events.popleft
        handlers = self._handlers
        recovery = self.recovery
        # (Tasks counted, not events: a batch of completions is one event.)
        turn_ends, applied, look_at = perf_counter() + self.turn, 0, 64
        while events:
            applied += 1
            if applied >= look_at:
                if perf_counter() > turn_ends:
                    break  # the driver's turn is over: the rest at its next step
                look_at = applied + 64
            event = popleft()
            if event[0] == EV_FINISHED_MANY:
                applied += len(event[2]) - 1
            handlers[event[0]](self, *event[1:])
            if recovery.fatal is not None or recovery.to_cancel:
                self.act_on_recovery()
            if self.aborted:
                break  # what is left is freed when the run is detached from its router
        if self.placement.parked:  # reports made room for tasks parked ahead of inputs
            self.placement.unpark()
        if self.table.frees:
            self._send_frees()

    def act_on_recovery(self) -> None:
        """End the run on a fatal failure; cancel what recovery found will never run."""
        recovery = self.recovery
        if recovery.fatal is not None:
            self.abort(recovery.fatal)
        if recovery.to_cancel:
            ahead, recovery.to_cancel = recovery.to_cancel, []
            never_started(self, ahead)
            assert self.transport is not None
            with contextlib.suppress(Exception):  # best effort: its report is ignored anyway
                self.transport.cancel(ahead)

    def _reported(self, p: int, worker: str) -> TaskSpec | None:
        """The spec of in-flight task ``p`` on ``worker``, now no longer in flight; None
        for a stale report (a task since cancelled, retried or given to another worker)."""
        table = self.table
        spec = table.inflight.get(p)
        if spec is None or spec.worker != worker or table.state[p] != RUNNING:
            return None
        del table.inflight[p]
        self.placement.load[worker] -= 1
        return spec

    def _on_inputs_lost(self, p: int, worker: str, missing: list[int]) -> None:
        spec = self._reported(p, worker)
        if spec is not None:
            if self.unannounced:
                self.unannounced.discard(p)  # it never started
            self.recovery.inputs_lost(p, spec, missing)

    _handlers: ClassVar[dict[int, Callable[..., None]]] = {
        EV_FINISHED: _on_finished,
        EV_FINISHED_MANY: _on_finished_many,
        EV_FAILED: _on_failed,
        EV_INPUTS_LOST: _on_inputs_lost,
        EV_WORKER_ADDED: on_worker_added,
        EV_WORKER_PAUSED: on_worker_paused,
        EV_WORKER_LOST: on_worker_lost,
        EV_NO_WORKER_LEFT: on_no_worker_left,
        EV_TAKEN_BACK: taken_back,
    }

    @property
    def replan(self) -> bool:
        """Did the run end because a cache entry planned as a hit could not be read?"""
        return bool(self.stale_hits) and self.error is None

    # -- talking to the transport --------------------------------------------------------------

    def _send_frees(self) -> None:
        table = self.table
        frees, table.frees = table.frees, {}
        transport = self.transport
        assert transport is not None
        room = self.placement.room
        for worker, keys in frees.items():
            if worker in room:
                transport.free(worker, keys)

    def abort(self, error: BaseException) -> None:
        """Stop now: drop the queue, abandon what runs, free what is held."""
        if self.aborted:
            return
        self.aborted = True
        self.error = error
        table = self.table
        table.ready.clear()
        transport = self.transport
        if transport is None:
            return
        if table.inflight:
            specs = list(table.inflight.values())
            table.inflight.clear()
            with contextlib.suppress(Exception):  # best effort; the run is over either way
                transport.cancel(specs)
        for p, where in enumerate(table.holders):
            if where:
                for w in where:
                    table.free_on(w, p)
        with contextlib.suppress(Exception):
            self._send_frees()

    def release_all(self) -> None:
        """At the end of a run: free whatever workers still hold for it."""
        table = self.table
        if any(table.holders):  # (scanned in C: tasks run in the caller leave it empty)
            for p, where in enumerate(table.holders):
                if where:
                    table.holders[p] = None
                    for w in where:
                        table.free_on(w, p)
        if self.transport is not None:
            self._send_frees()


def _ask_back(run: Run, stealing: Stealing) -> None:
    """Nothing ready is left: ask back what waits too long behind others (:mod:`._stealing`)."""
    if stealing.quiet():
        return
    assert run.transport is not None
    for worker, positions in stealing.look(monotonic()).items():
        with contextlib.suppress(Exception):  # best effort: what is not given back runs
            run.transport.take_back(worker, [run.base + p for p in positions])


def _load_result(
    run: Run, p: int, worker: str, spec: TaskSpec, value: Unloaded, duration: float
) -> tuple[bool, Any]:
    """Task ``p``'s reported result, unpickled here in the run's driver: ``(True,
    value)``; or ``(False, error)`` when it cannot be, and the task has failed with it."""
    loaded = False
    try:
        loaded, outcome = load_reported(value, spec, "result")
    finally:
        if not loaded:  # (or interrupted) the worker's copy is no use
            run.table.free_on(worker, p)
    if not loaded:
        copied(run.table, p, spec, worker, False)  # the inputs it took: freed there too
        _failed(run, p, worker, outcome, duration)
    return loaded, outcome


def _failed(run: Run, p: int, worker: str, error: BaseException, duration: float) -> None:
    """Task ``p`` failed: retried, failed for good, or (an unreadable hit) planned again."""
    if run.unannounced:
        announce_at_own_report(run, p, worker)
    if run.hits is None or not hit_unreadable(run, p, error):
        run.recovery.task_failed(p, worker, error, duration)
