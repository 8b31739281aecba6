"""The task table: what every node of one run is waiting for, holds and has become.

Per-node arrays indexed by the node's position in the graph, the ready stack, the rule
that settles a task once it has its result, and the one flat loop that calls in-caller
tasks (see :meth:`dispatcher.transport.Transport.runs_in_caller`) and settles them.
No I/O: results a worker may drop are queued in :attr:`TaskTable.frees` for the run to
send.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import compress
from math import inf
from operator import not_
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._awaiting import AWAITABLE_TYPES, await_blocking, is_awaitable
from ._errors import TaskTimeoutError
from ._graph import gc_paused
from ._hosts import worker_host
from ._options import NO_LIMIT
from ._template import SHAPE_CALL, SHAPE_CONSTANT, SHAPE_POSITIONAL, call_task
from ._tiny import SLOW

if TYPE_CHECKING:
    from ._graph import DispatchGraph
    from ._hooks import Observers
    from ._nodes import DispatchNode
    from ._tiny import TinyCalls
    from .transport import Key, TaskSpec

__all__ = [
    "CALLER",
    "DONE",
    "FAILED",
    "READY",
    "RELEASED",
    "RUNNING",
    "SKIPPED",
    "TERMINAL",
    "WAITING",
    "TaskTable",
]

# Node states.
WAITING = 0  # some input is not available yet
READY = 1  # in the ready stack
RUNNING = 2  # handed to a worker
DONE = 3  # result held by a worker (or by the caller)
RELEASED = 4  # result no longer held: nobody needed it, or it was lost and is not needed
FAILED = 5  # its own call raised
SKIPPED = 6  # an ancestor failed
TERMINAL = (DONE, RELEASED, FAILED, SKIPPED)

CALLER = "main"  # where constants and inputs live, and the worker named in their hooks

_ABSENT = object()  # a task's result may be anything, ``...`` included


class TaskTable:
    """The per-node state of one run of ``graph`` towards ``targets``."""

    def __init__(
        self,
        graph: DispatchGraph,
        targets: Sequence[DispatchNode],
        inputs: Mapping[DispatchNode, Any],
        observers: Observers,
        timeout: float | None,
        key_base: int,
    ) -> None:
        # Per-node arrays for every node at once: nothing to collect while they are made.
        with gc_paused():
            nodes = graph._nodes
            n = len(nodes)
            self.nodes = nodes
            self.deps = graph._deps
            self.dependents = graph._dependent_positions()
            self.base = key_base
            """Added to a position to make the key a transport knows the result by."""
            self.timeout = timeout
            """The run's timeout, for tasks without their own."""
            self.started_hook = observers.task_started
            self.finished_hook = observers.task_finished

            index = graph._index
            self.target_positions = [index[t] for t in targets]
            self.wanted = bytearray(n)
            for p in self.target_positions:
                self.wanted[p] = 1
            self.state = bytearray(n)
            self.waiting = list(map(len, self.deps))
            """Inputs each node still waits for."""
            self.needed = list(map(len, self.dependents))
            """Consumers that have yet to use each node's result."""
            self.attempts = bytearray(n)  # attempts made so far (capped at 255: retries are few)
            # Values held by the caller: constants, inputs, and results of tasks called in the
            # caller. Only the last are ever released.
            self.caller_values: dict[int, Any] = {}
            self.kept: set[int] = set()  # constants and inputs: never released
            self.results: dict[int, Any] = {}
            self.errors: dict[int, BaseException] = {}
            # Who holds each result: a shared frozenset per worker for the usual single holder,
            # so finishing a task allocates nothing here.
            self.holders: list[frozenset[str] | None] = [None] * n
            self._alone: dict[str, frozenset[str]] = {}
            self.keeps_copies = False
            """Workers keep the inputs they fetch: copies are holders (see ``copied``)."""
            self.nbytes: list[int | None] = [None] * n
            self.inflight: dict[int, TaskSpec] = {}
            """The spec of every task handed to a worker and not yet reported."""
            self.frees: dict[str, list[int]] = {}
            """Keys each worker may drop, for the run to send."""
            self.remaining = n
            self.failure: tuple[int, BaseException, float | None] | None = None
            """Set by :meth:`call_ready_in_caller` when an in-caller task raised."""
            self.ready: list[int] = []
            """Positions ready to run, the next on top; stale entries are skipped."""

            for node, value in inputs.items():
                given = index.get(node)
                if given is not None:
                    self.complete_at_caller(given, value, hooks=False)
            # Sources first in the ready stack's pop order: push them in reverse.
            state, waiting = self.state, self.waiting
            if inputs:
                self.ready = [
                    p for p in range(n - 1, -1, -1) if not waiting[p] and state[p] <= READY
                ]
            else:  # nothing is done yet: the sources are the nodes without inputs
                self.ready = list(compress(range(n - 1, -1, -1), map(not_, reversed(waiting))))
            for p in self.ready:
                state[p] = READY

    # -- the settle rule -----------------------------------------------------------------

    def settle(self, p: int) -> None:
        """``p`` has its result: release the inputs it used last, wake its dependents, and
        release its result at once if nothing needs it."""
        self.remaining -= 1
        needed, release = self.needed, self.release
        for d in self.deps[p]:  # consume_inputs(p), written out: once per reported task
            needed[d] -= 1
            if needed[d] == 0:
                release(d)
        state, waiting, ready = self.state, self.waiting, self.ready
        for j in self.dependents[p]:
            waiting[j] -= 1
            if waiting[j] == 0 and state[j] == WAITING:
                state[j] = READY
                ready.append(j)
        if needed[p] == 0:
            release(p)

    def consume_inputs(self, p: int) -> None:
        """``p`` is done with its inputs (it ran, or never will): release those that
        nothing else needs."""
        needed = self.needed
        for d in self.deps[p]:
            needed[d] -= 1
            if needed[d] == 0:
                self.release(d)

    def release(self, p: int) -> None:
        """Nothing needs ``p``'s result any more: forget it, and queue it to be freed on
        the workers that hold it."""
        if self.state[p] != DONE or p in self.kept:
            return  # constants and inputs stay: recomputing a lost result may need them
        self.state[p] = RELEASED
        if self.caller_values.pop(p, _ABSENT) is not _ABSENT:
            return  # made in the caller: no worker holds it
        where = self.holders[p]
        self.holders[p] = None
        if where:
            frees, key = self.frees, self.base + p
            for w in where:
                pending = frees.get(w)
                if pending is None:
                    frees[w] = [key]
                else:
                    pending.append(key)

    def ready_ahead(self, p: int) -> None:
        """``p`` was just sent: put on the ready stack the dependents whose last missing
        input it is, to be sent ahead of it (placement says where they may go:
        ``Placement.place_ahead``), so a chain goes out without a round trip per link.
        Not a task still missing other inputs: sent ahead, a reduction parks in its
        worker at a cost that the round trip it saves does not repay (measured on the
        ``async`` executor), and on a worker with room for every task, the whole graph
        would go at once. They stay counted as waiting for their input until it settles."""
        state, waiting, ready = self.state, self.waiting, self.ready
        for j in self.dependents[p]:
            if waiting[j] == 1 and state[j] == WAITING:
                state[j] = READY
                ready.append(j)

    def inputs_sent(self, p: int) -> bool:
        """Are all of ``p``'s inputs made or being made? (An entry of the ready stack put
        there by :meth:`ready_ahead` whose input went back to waiting since is not.)"""
        state = self.state
        # A loop, not all() over a generator: once per task sent ahead.
        for d in self.deps[p]:  # noqa: SIM110
            if state[d] != RUNNING and state[d] != DONE:
                return False
        return True

    def free_on(self, worker: str, p: int) -> None:
        """Queue ``p``'s result to be freed on ``worker`` (a copy the run does not track)."""
        self.frees.setdefault(worker, []).append(self.base + p)

    def requeue(self, p: int) -> None:
        """Back to waiting, or to the ready stack if its inputs are all available."""
        state = self.state
        missing = sum(1 for d in self.deps[p] if state[d] != DONE)
        self.waiting[p] = missing
        if missing:
            state[p] = WAITING
        else:
            state[p] = READY
            self.ready.append(p)

    # -- results -------------------------------------------------------------------------

    def complete_at_caller(self, p: int, value: Any, hooks: bool) -> None:
        """``p``'s value is held by the caller: a constant, or given through ``inputs``
        (then not run, so no hooks)."""
        self.caller_values[p] = value
        self.kept.add(p)
        self.state[p] = DONE
        if self.wanted[p]:
            self.results[p] = value
        if hooks:
            node = self.nodes[p]
            if self.started_hook is not None:
                self.started_hook(node=node, worker=CALLER)
            if self.finished_hook is not None:
                self.finished_hook(node=node, worker=CALLER, duration=0.0, nbytes=None)
        self.settle(p)

    def held_on(self, worker: str) -> frozenset[str]:
        """The holders of a result held on ``worker`` alone (one shared set per worker)."""
        where = self._alone.get(worker)
        if where is None:
            where = self._alone[worker] = frozenset((worker,))
        return where

    def forget_holder(self, p: int, worker: str) -> None:
        """``worker`` no longer holds ``p``'s result; released if nobody else does."""
        where = self.holders[p]
        if where is not None and worker in where:
            where = where - {worker}
            self.holders[p] = where or None
            if not where:
                self.state[p] = RELEASED

    def inputs_of(
        self, p: int, worker: str, sourced: bool
    ) -> tuple[
        tuple[Key, ...], tuple[str | None, ...] | None, dict[Key, Any] | None, tuple[Key, ...]
    ]:
        """For ``p`` sent to ``worker``: its inputs' keys; where each is to be taken from
        (``None`` when all are at hand there, or when not ``sourced``: a single worker);
        the caller's values shipped with it; and the inputs only it still needs, held
        where it runs (freed there once it has run)."""
        base, deps = self.base, self.deps[p]
        caller_values, needed, wanted = self.caller_values, self.needed, self.wanted
        holders, inflight = self.holders, self.inflight
        if not base:
            keys = deps
        elif len(deps) == 1:  # (a chain's link: no comprehension to call)
            keys = (base + deps[0],)
        else:
            keys = tuple([base + d for d in deps])
        shipped: dict[Key, Any] | None = None
        picked: list[str | None] = []  # where each input is to be taken from
        local = True
        used_up: list[Key] = []
        for d in deps:
            if d in caller_values:  # held by the caller: shipped with the task
                if shipped is None:
                    shipped = {}
                shipped[base + d] = caller_values[d]
                picked.append(None)
                continue
            where = holders[d]
            if where is None:
                making = inflight.get(d)
                if making is not None and making.worker != worker:
                    picked.append(making.worker)  # still being computed there
                    local = False
                    continue
            elif worker not in where:
                picked.append(_nearest(where, worker) if len(where) > 1 else next(iter(where)))
                local = False
                continue
            # Held there, or sent ahead: still being computed on this very worker.
            picked.append(worker)
            if needed[d] == 1 and not wanted[d]:
                used_up.append(base + d)
        sources = tuple(picked) if not local and sourced else None
        return keys, sources, shipped, tuple(used_up) if used_up else ()

    # -- the hot loop ----------------------------------------------------------------------

    def call_ready_in_caller(
        self,
        asks: Callable[[Callable[..., Any]], bool],
        in_caller: dict[Any, bool],
        alone: bool = False,
        watch: TinyCalls | None = None,
        until: float = inf,
    ) -> bool:
        """Call in this thread the tasks atop the ready stack that the transport lets the
        scheduler call (``asks``, answers cached in ``in_caller``) and whose inputs the
        caller holds, taking their dependents as they become ready; stop at the first task
        that must be submitted, or at the first that raises (left in :attr:`failure` for
        the run to retry or fail); with ``alone``, also as soon as more than one task is
        ready (those go to workers, in parallel); with ``watch``, also at a task with a
        timeout (a worker's deadline can be enforced), a call that turns out slow bars
        its function, whether it returns or raises (``CallClock.bar_if_slow``); and past
        ``until`` (``perf_counter()``, read every 64 calls: a loop's turn). The same
        bookkeeping as a submitted task, without a spec or a report. True if any ran.

        This is the whole per-task cost of the in-process executors, hence one flat loop:
        :meth:`settle` is written out here rather than called, and only here."""
        ready, state, nodes, deps_of = self.ready, self.state, self.nodes, self.deps
        dependents, waiting, needed = self.dependents, self.waiting, self.needed
        wanted = self.wanted
        caller_values, kept = self.caller_values, self.kept
        value_of = caller_values.__getitem__
        attempts, results, release = self.attempts, self.results, self.release
        started, finished = self.started_hook, self.finished_hook
        default_timeout = self.timeout
        awaitable_type = AWAITABLE_TYPES.get
        clock = watch.clock() if watch is not None else None
        # Timed only when anyone looks (a timeout, an observer, a watch): how long it ran.
        always_timed = default_timeout is not None or finished is not None or clock is not None
        ran = False
        last_allowed: object = None  # the last function the transport let us call here
        settled = 0  # subtracted from ``remaining`` once, on the way out
        try:
            while ready:
                if (alone and len(ready) > 1) or (settled & 63 == 63 and perf_counter() > until):
                    return ran
                p = ready[-1]
                if state[p] != READY:  # a stale entry (the node went back to waiting)
                    ready.pop()
                    continue
                node = nodes[p]
                shape = node._shape
                if shape == SHAPE_CONSTANT:
                    ready.pop()
                    self.complete_at_caller(p, node._args[0], hooks=True)
                    ran = True
                    continue
                func = node._func
                if func is not last_allowed:  # (most graphs call few functions, in runs)
                    allowed = in_caller.get(func)
                    if allowed is None:
                        allowed = in_caller[func] = asks(func)
                    if not allowed:
                        return ran
                    last_allowed = func
                timeout = node._timeout
                if timeout is None:
                    timeout = default_timeout  # both positive when set
                    timed = always_timed
                else:
                    timed = True
                if clock is not None and timeout is not None and timeout != NO_LIMIT:
                    return ran  # a deadline to enforce: a worker's can be
                deps = deps_of[p]
                # Inputs of one- and two-input calls go in locals: building a list to
                # unpack into the call was a quarter of the cost of a task in a chain.
                count = len(deps)
                try:
                    if count == 1:
                        first = caller_values[deps[0]]
                    elif count == 2:
                        first, second = caller_values[deps[0]], caller_values[deps[1]]
                    else:
                        values = list(map(value_of, deps)) if deps else []
                except KeyError:
                    return ran  # an input is held by a worker: submit it like any task
                ready.pop()
                ran = True
                attempts[p] += 1
                if started is not None:
                    started(node=node, worker=CALLER)
                if timed:
                    begun = perf_counter()
                    if clock is not None:
                        clock.calling(node, begun)
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
                    if awaitable_type(type(value)) is not False and is_awaitable(value):
                        value = await_blocking(value)  # a plain function's awaitable
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        raise  # in the caller's thread it cannot be told from Ctrl-C: stop
                    self.failure = (p, exc, perf_counter() - begun if timed else None)
                    if clock is not None:  # (one that raised late held the thread too)
                        clock.bar_if_slow(func, begun, in_caller)
                    return True
                if timed:
                    duration = perf_counter() - begun
                    if timeout is not None and duration > timeout:
                        # A call in this thread cannot be interrupted: it fails when it
                        # returns.
                        self.failure = (p, TaskTimeoutError(node.label, timeout), duration)
                        return True
                    if clock and duration > SLOW and clock.bar_if_slow(func, begun, in_caller):
                        last_allowed = None
                if needed[p]:
                    state[p] = DONE
                    caller_values[p] = value
                else:
                    # Nothing will read it (a target, or its readers were skipped): what
                    # release() would do at the end of settling, done at once.
                    state[p] = RELEASED
                if wanted[p]:
                    results[p] = value
                if finished is not None:
                    finished(node=node, worker=CALLER, duration=duration, nbytes=None)
                # settle(p), written out, and release() of a result the caller made (the
                # usual input here) with it.
                settled += 1
                for d in deps:
                    needed[d] -= 1
                    if not needed[d]:
                        if state[d] == DONE and d in caller_values and d not in kept:
                            state[d] = RELEASED
                            del caller_values[d]
                        else:
                            release(d)
                for j in dependents[p]:
                    waiting[j] -= 1
                    if not waiting[j] and state[j] == WAITING:
                        state[j] = READY
                        ready.append(j)
            return ran
        finally:
            self.remaining -= settled
            if clock is not None:
                clock.node = None


def _nearest(holders: frozenset[str], worker: str) -> str:
    """The holder to take a result from for a task on ``worker``: one on its host, if any."""
    host = worker_host(worker)
    for holder in holders:
        if worker_host(holder) == host:
            return holder
    return next(iter(holders))
