"""Recovery: what happens when a task does not simply finish.

The only home of the retry budget (``retries``, shared by ``retry_on`` failures and worker
losses): a failed attempt is retried or fails, and a failure skips everything downstream;
a worker lost takes its running tasks (an attempt each; tasks queued behind them are not
charged) and the results it held, which are recomputed from their lineage when still
needed; a task whose inputs are gone is put back (that is not an attempt). No I/O: tasks
to cancel are left in :attr:`Recovery.to_cancel`, and the error that ends a fail-fast run
in :attr:`Recovery.fatal`, for the run to act on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._errors import (
    DependencyError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    add_failure_note,
    failure_note,
    hide_own_frames,
)
from ._nodes import DispatchNode
from ._options import Options
from ._states import CALLER, DONE, FAILED, READY, RELEASED, RUNNING, SKIPPED, TERMINAL, WAITING

if TYPE_CHECKING:
    from ._hooks import Observers
    from ._placement import Placement
    from ._tasks import TaskTable
    from .transport import Key, TaskSpec

__all__ = ["Recovery"]


class Recovery:
    """Retries, failures, skips and recomputation for one run."""

    def __init__(
        self,
        table: TaskTable,
        placement: Placement,
        options: Options,
        observers: Observers,
        throw: bool,
    ) -> None:
        self.table = table
        self.placement = placement
        self.retries = options.retries
        self.retry_on = options.retry_on
        self.retry_timeouts = any(issubclass(cls, TimeoutError) for cls in self.retry_on)
        """Past its timeout, a task is retried only when ``retry_on`` names a timeout
        (``TaskTimeoutError``, or ``TimeoutError``): ``retry_on=Exception`` asks to retry
        what a function raised, not to wait for a hung one again and again."""
        self.throw = throw
        self._failed_hook = observers.task_failed
        self._retried_hook = observers.task_retried
        self.to_cancel: list[TaskSpec] = []
        """Tasks sent ahead of a failure: they will never run."""
        self.fatal: BaseException | None = None
        """The failure that ends the run (``throw=True``)."""
        self.started = time.time()
        """When the run started, by the clock every process on a host shares (see
        :func:`~._errors.add_failure_note`)."""

    def _attempts_left(self, p: int) -> bool:
        return self.table.attempts[p] <= self.retries

    # -- a failed attempt -------------------------------------------------------------------

    def task_failed(
        self, p: int, worker: str, error: BaseException, duration: float | None = None
    ) -> None:
        """Task ``p``'s attempt on ``worker`` raised ``error`` after running ``duration``
        seconds (``None``: unknown): retry it or fail it."""
        node = self.table.nodes[p]
        hide_own_frames(error, node)  # a task run in the caller: its traceback starts in it
        if isinstance(error, (TaskTimeoutError, SerializationError, WorkerLostError)):
            if not isinstance(error.node, DispatchNode):
                error.node = node  # the transport knew only the label
            if (
                self.retry_timeouts
                and isinstance(error, TaskTimeoutError)
                and self._attempts_left(p)
            ):
                self._retry(p, worker, error, duration)
                return
        elif self.retry_on and isinstance(error, self.retry_on) and self._attempts_left(p):
            self._retry(p, worker, error, duration)
            return
        self._fail(p, worker, error, duration)

    def fail_unplaced(self, error: BaseException) -> None:
        """No worker can take the ready tasks, and none will in time: fail each for good
        with ``error``, which says why (it names no node: it is the same for each)."""
        table = self.table
        for p in reversed(table.ready):
            if table.state[p] == READY:
                self._fail(p, CALLER, error, note=False)
                if self.fatal is not None:
                    return

    def carry_over(self, before: TaskTable, index: Mapping[DispatchNode, int]) -> None:
        """This run goes on from ``before``, a plan of it that ended to be planned again
        (a cache entry could not be read): what failed there for good fails here at once,
        without running again or being told twice, and what waits for a retry there keeps
        the attempts it made (``index``: this run's positions)."""
        hook, self._failed_hook = self._failed_hook, None
        try:
            state, attempts = self.table.state, self.table.attempts
            # The retry budget is the node's, not the plan's: one that failed and waits
            # for a retry has only what is left of it.
            for p, made in enumerate(before.attempts):
                if made and before.state[p] not in TERMINAL:
                    q = index.get(before.nodes[p])
                    if q is not None:
                        attempts[q] = made
            for p, error in before.errors.items():
                if isinstance(error, DependencyError):
                    continue  # skipped again below, by the failure that caused it
                q = index.get(before.nodes[p])
                if q is not None and state[q] not in TERMINAL:
                    self._fail(q, CALLER, error, note=False)
        finally:
            self._failed_hook = hook

    def _retry(
        self, p: int, worker: str, error: BaseException, duration: float | None = None
    ) -> None:
        if self._retried_hook is not None:
            self._retried_hook(
                node=self.table.nodes[p],
                worker=worker,
                error=error,
                attempt=self.table.attempts[p] + 1,
                duration=duration,
            )
        self.table.requeue(p)

    def _fail(
        self,
        p: int,
        worker: str,
        error: BaseException,
        duration: float | None = None,
        note: bool = True,
    ) -> None:
        table = self.table
        node = table.nodes[p]
        state = table.state
        state[p] = FAILED
        table.errors[p] = error
        table.remaining -= 1
        if self._failed_hook is not None:
            self._failed_hook(node=node, worker=worker, error=error, duration=duration)
        if self.throw:
            if note:
                try:
                    add_failure_note(error, failure_note(node, worker, error), self.started)
                except Exception:  # its __notes__ is not a list, it is frozen: raised without
                    pass
            self.fatal = error
            return
        table.consume_inputs(p)
        self._skip(table.dependents[p], p)

    def _skip(self, start: Sequence[int], cause: int) -> None:
        """Everything from ``start`` down cannot run, for the failure of ``cause``: skip
        it, naming that node."""
        table = self.table
        state, node, error = table.state, table.nodes[cause], table.errors[cause]
        dependents, inflight, load = table.dependents, table.inflight, self.placement.load
        stack = list(start)
        while stack:
            j = stack.pop()
            if state[j] == RUNNING:
                # Sent ahead to run after its input: it never will.
                spec = inflight.pop(j, None)
                if spec is not None:
                    load[spec.worker] -= 1
                    self.to_cancel.append(spec)
            elif state[j] in TERMINAL:
                continue
            state[j] = SKIPPED
            table.remaining -= 1
            dep_error = DependencyError(table.nodes[j], node, error)
            table.errors[j] = dep_error
            if self._failed_hook is not None:
                self._failed_hook(
                    node=table.nodes[j], worker=CALLER, error=dep_error, duration=None
                )
            table.consume_inputs(j)
            stack.extend(dependents[j])

    # -- lost inputs and workers ------------------------------------------------------------

    def inputs_lost(self, p: int, spec: TaskSpec, missing: list[int]) -> None:
        """Task ``p`` (no longer in flight) could not start on ``spec.worker``: these
        inputs were not where ``spec`` said. Recompute those held nowhere, then run it
        again; this was not an attempt."""
        table = self.table
        table.attempts[p] -= 1
        lost = []
        deps = table.deps[p]
        for m in missing:
            if table.state[m] == DONE and m not in table.caller_values:
                # Only where the spec said it was: a result made since (the input's retry,
                # elsewhere) is not what the report is about.
                source = spec.source_of(deps.index(m))
                if source is not None and source in (table.holders[m] or ()):
                    table.forget_holder(m, source)
                if not table.holders[m]:
                    lost.append(m)
        table.state[p] = WAITING  # so the recomputation does not count it as waiting twice
        self._recompute(lost, spec.worker, "inputs missing")
        if table.state[p] == WAITING:  # (not skipped: an input can no longer be made)
            table.requeue(p)

    def worker_lost(
        self, worker: str, reason: str, running_keys: Sequence[Key] | None = None
    ) -> None:
        """``worker`` is gone (already removed from placement): recompute the results that
        lived only there and are still needed; retry what it ran while attempts allow.
        ``running_keys``: the tasks it had started, as the transport knows them (``None``:
        unknown); only they are charged, so a worker killed from outside does not fail the
        innocent tasks queued on it."""
        table = self.table
        # Losses are rare: find what it ran and held by looking, rather than keeping
        # per-worker books on every task. In flight in the order sent.
        out = [p for p, spec in table.inflight.items() if spec.worker == worker]
        if running_keys is not None:
            started = {key - table.base for key in running_keys}
            running = [p for p in out if p in started]
            queued = [p for p in out if p not in started]
        elif self.placement.in_order:
            # One task at a time, in the order sent: only the first had started. Each
            # loss still charges a task, so one that kills its worker runs out of attempts.
            running, queued = out[:1], out[1:]
        else:
            running, queued = out, []
        held = [p for p, where in enumerate(table.holders) if where and worker in where]
        table.frees.pop(worker, None)
        lost: list[int] = []
        for p in held:
            table.forget_holder(p, worker)
            if table.state[p] == RELEASED and table.needed[p] > 0:
                lost.append(p)
        self._recompute(lost, worker, reason)
        for p in queued:
            table.inflight.pop(p, None)
            if table.state[p] != RUNNING:
                continue
            table.attempts[p] -= 1
            table.state[p] = WAITING  # so the recomputation does not count it twice
            self._recompute(
                [d for d in table.deps[p] if table.state[d] == RELEASED], worker, reason
            )
            if table.state[p] == WAITING:  # (not skipped: an input can no longer be made)
                table.requeue(p)
        for p in running:
            table.inflight.pop(p, None)
            if table.state[p] != RUNNING:
                continue
            error = WorkerLostError(table.nodes[p], worker, reason)
            if self._attempts_left(p):
                table.state[p] = WAITING
                released = [d for d in table.deps[p] if table.state[d] == RELEASED]
                self._recompute(released, worker, reason)
                if table.state[p] == WAITING:  # (not skipped, as above)
                    self._retry(p, worker, error)
            else:
                self._fail(p, worker, error)
                if self.fatal is not None:
                    return

    def _recompute(self, roots: list[int], worker: str, reason: str) -> None:
        """Run again the results in ``roots`` (lost, still needed), and whatever released
        ancestors they need in turn: their lineage."""
        if not roots:
            return
        table = self.table
        state, deps = table.state, table.deps
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
            table.remaining += 1
        needed = table.needed
        for p in order:
            for d in deps[p]:
                needed[d] += 1
        for p in sorted(order):
            table.requeue(p)
            if self._retried_hook is not None:
                error = WorkerLostError(table.nodes[p], worker, f"its result was lost: {reason}")
                self._retried_hook(
                    node=table.nodes[p],
                    worker=worker,
                    error=error,
                    attempt=table.attempts[p] + 1,
                    duration=None,
                )
        # Dependents that counted a recomputed result as available must wait for it again.
        for p in order:
            for j in table.dependents[p]:
                if j not in seen and state[j] in (WAITING, READY):
                    table.requeue(j)
        # A result made from an input that has failed since (a recomputation of it, on a
        # run with throw=False) cannot be made again: it and what waits for it are skipped.
        for p in order:
            failed = next((d for d in deps[p] if state[d] in (FAILED, SKIPPED)), None)
            if failed is not None and state[p] in (WAITING, READY):
                self._skip([p], failed)
