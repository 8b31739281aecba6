"""The task table: what every node of one run is waiting for, holds and has become.

Per-node arrays indexed by the node's position in the graph, the ready stack, and the rule
that settles a task once it has its result; the one flat loop that calls in-caller tasks
(see :meth:`dispatcher.transport.Transport.runs_in_caller`) and settles them reads and
writes them directly (:mod:`dispatcher._hot_loop`). No I/O: results a worker may drop are
queued in :attr:`TaskTable.frees` for the run to send.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from operator import not_
from typing import TYPE_CHECKING, Any

from ._graph import gc_paused
from ._hosts import worker_host
from ._states import (
    CALLER,
    DONE,
    READY,
    RELEASED,
    RUNNING,
    WAITING,
)

if TYPE_CHECKING:
    from ._graph import DispatchGraph
    from ._hooks import Observers
    from ._nodes import DispatchNode
    from .transport import Key, TaskSpec

__all__ = ["TaskTable"]

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
            self.kept_here: Mapping[Key, Any] | None = None
            """Where the transport keeps, in this process, the results its workers made
            (by key): the caller's hot loop reads inputs there too (``_hot_loop._kept_here``)."""
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
            """Set by the hot loop (:mod:`._hot_loop`) when an in-caller task raised."""
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

    def settle(self, p: int, worker: str = CALLER, dropped: Sequence[Key] = ()) -> None:
        """``p`` has its result: release the inputs it used last, wake its dependents, and
        release its result at once if nothing needs it. ``dropped``: inputs ``worker``
        dropped itself once ``p`` had read them (its ``last_use``), which are then not to
        be freed there: a message per batch that would only repeat it. (Only while ``p``
        is their last reader: one that reads them since finds them gone, and the run
        recovers them, as before.)"""
        self.remaining -= 1
        needed, release = self.needed, self.release
        if dropped:
            base, holders = self.base, self.holders
            for key in dropped:
                d = key - base
                where = holders[d]
                if where is not None and needed[d] == 1 and worker in where:
                    holders[d] = (where - {worker}) if len(where) > 1 else None
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


def _nearest(holders: frozenset[str], worker: str) -> str:
    """The holder to take a result from for a task on ``worker``: one on its host, if any."""
    host = worker_host(worker)
    for holder in holders:
        if worker_host(holder) == host:
            return holder
    return next(iter(holders))
