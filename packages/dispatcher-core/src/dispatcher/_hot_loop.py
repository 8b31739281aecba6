"""The one flat loop that calls ready tasks in the caller's thread and settles them.

This is the whole per-task cost of the in-process executors (``sync``, ``async`` with
``threads=0``, and the tiny calls of ``async``): it reads and writes a
:class:`~dispatcher._tasks.TaskTable`'s arrays directly, with no call per task that can be
written out.
"""

from __future__ import annotations

from collections.abc import Callable
from math import inf
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._awaiting import AWAITABLE_TYPES, await_blocking, is_awaitable
from ._errors import TaskTimeoutError
from ._options import NO_LIMIT
from ._states import CALLER, DONE, READY, RELEASED, WAITING
from ._template import SHAPE_CALL, SHAPE_CONSTANT, SHAPE_POSITIONAL, call_task
from ._tiny import SLOW

if TYPE_CHECKING:
    from ._tasks import TaskTable
    from ._tiny import TinyCalls

__all__ = ["call_ready_in_caller"]


def call_ready_in_caller(
    table: TaskTable,
    asks: Callable[[Callable[..., Any]], bool],
    in_caller: dict[Any, bool],
    alone: bool = False,
    watch: TinyCalls | None = None,
    until: float = inf,
) -> bool:
    """Call in this thread the tasks atop the ready stack that the transport lets the
    scheduler call (``asks``, answers cached in ``in_caller``) and whose inputs the
    caller holds, taking their dependents as they become ready; stop at the first task
    that must be submitted, or at the first that raises (left in :attr:`TaskTable.failure` for
    the run to retry or fail); with ``alone``, also as soon as more than one task is
    ready (those go to workers, in parallel); with ``watch``, also at a task with a
    timeout (a worker's deadline can be enforced), a call that turns out slow bars
    its function, whether it returns or raises (``CallClock.bar_if_slow``); and past
    ``until`` (``perf_counter()``, read every 64 calls: a loop's turn). The same
    bookkeeping as a submitted task, without a spec or a report. True if any ran.

    This is the whole per-task cost of the in-process executors, hence one flat loop:
    :meth:`TaskTable.settle` is written out here rather than called, and only here."""
    ready, state, nodes, deps_of = table.ready, table.state, table.nodes, table.deps

    dependents, waiting, needed = table.dependents, table.waiting, table.needed
    wanted = table.wanted
    caller_values, kept = table.caller_values, table.kept
    value_of = caller_values.__getitem__
    attempts, results, release = table.attempts, table.results, table.release
    started, finished = table.started_hook, table.finished_hook
    default_timeout = table.timeout
    awaitable_type = AWAITABLE_TYPES.get
    clock = watch.clock() if watch is not None else None
    # Timed only when anyone looks (a timeout, an observer, a watch): how long it ran.
    always_timed = default_timeout is not None or finished is not None or clock is not None
    ran = False
    last_allowed: object = None  # the last function the transport let us call here
    last_plain: type | None = None  # the last result type known not to be awaitable
    settled = 0  # subtracted from ``remaining`` once, on the way out
    bounded = alone or until != inf  # one test per task when neither bounds the loop
    try:
        while ready:
            if bounded and (
                (alone and len(ready) > 1) or (settled & 63 == 63 and perf_counter() > until)
            ):
                return ran
            p = ready.pop()  # put back if it is not called here after all
            if state[p] != READY:  # a stale entry (the node went back to waiting)
                continue
            node = nodes[p]
            shape = node._shape
            if shape == SHAPE_CONSTANT:
                table.complete_at_caller(p, node._args[0], hooks=True)
                ran = True
                continue
            func = node._func
            if func is not last_allowed:  # (most graphs call few functions, in runs)
                allowed = in_caller.get(func)
                if allowed is None:
                    allowed = in_caller[func] = asks(func)
                if not allowed:
                    ready.append(p)
                    return ran
                last_allowed = func
            timeout = node._timeout
            if timeout is None:
                timeout = default_timeout  # both positive when set
                timed = always_timed
            else:
                timed = True
            if clock is not None and timeout is not None and timeout != NO_LIMIT:
                ready.append(p)
                return ran  # a deadline to enforce: a worker's can be
            deps = deps_of[p]
            # Inputs of one- and two-input calls go in locals: building a list to
            # unpack into the call was a quarter of the cost of a task in a chain.
            count = len(deps)
            aside = False  # an input read where the transport keeps it
            try:
                if count == 1:
                    first = caller_values[deps[0]]
                elif count == 2:
                    first, second = caller_values[deps[0]], caller_values[deps[1]]
                elif count:
                    values = list(map(value_of, deps))
            except KeyError:
                kept_here = _kept_here(table, p, deps)  # (made by a thread of this process?)
                if kept_here is None:
                    ready.append(p)
                    return ran  # an input is held by a worker: submit it like any task
                values, aside = kept_here, True
                if count == 1:
                    first = values[0]
                elif count == 2:
                    first, second = values
            ran = True
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
                    elif not count:
                        values = []
                    value = call_task(func, node._args, node._kwargs, shape, values)
                kind = type(value)
                if kind is not last_plain:  # (results of a graph are of few types)
                    if awaitable_type(kind) is False:
                        last_plain = kind
                    elif is_awaitable(value):
                        value = await_blocking(value)  # a plain function's awaitable
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise  # in the caller's thread it cannot be told from Ctrl-C: stop
                # Counted only here, where recovery reads it: a call that returned
                # is never retried.
                attempts[p] += 1
                table.failure = (p, exc, perf_counter() - begun if timed else None)
                if clock is not None:  # (one that raised late held the thread too)
                    clock.bar_if_slow(func, begun, in_caller)
                return True
            if timed:
                duration = perf_counter() - begun
                if timeout is not None and duration > timeout:
                    # A call in this thread cannot be interrupted: it fails when it
                    # returns.
                    attempts[p] += 1
                    table.failure = (p, TaskTimeoutError(node.label, timeout), duration)
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
                    if aside and d not in caller_values:
                        release(d)  # the transport is told to drop it
                    # Read from the caller's values above: held there, so made there
                    # unless it is a constant or an input (kept), and none of those.
                    elif state[d] == DONE and d not in kept:
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
        table.remaining -= settled
        if clock is not None:
            clock.node = None


def _kept_here(table: TaskTable, p: int, deps: tuple[int, ...]) -> list[Any] | None:
    """The inputs of ``p``, all made, from the caller's values or from where the transport
    keeps its results in this process (:attr:`TaskTable.kept_here`: a thread's result
    need not cost a tiny task a hand-off to a thread); None if any is elsewhere. Read,
    not taken: the input is released as any worker's is, the transport told to drop it."""
    kept = table.kept_here
    if kept is None or table.waiting[p]:
        return None
    caller_values, base = table.caller_values, table.base
    try:
        return [caller_values[d] if d in caller_values else kept[base + d] for d in deps]
    except KeyError:
        return None
