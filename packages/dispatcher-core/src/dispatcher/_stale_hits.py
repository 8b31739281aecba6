"""A cache hit whose entry cannot be read: the run starts nothing more, lets what runs
finish (and store its result), and ends, to be planned again; the hit's ancestors were
pruned from this plan, and only a new one can compute them (see ``Run.stale_hits``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._cache import CacheEntryError
from ._starts import never_started
from ._states import CALLER, DONE, RUNNING, WAITING

if TYPE_CHECKING:
    from ._scheduler import Run
    from .transport import TaskSpec

__all__ = ["hit_unreadable", "read_hit_in_caller"]


def read_hit_in_caller(run: Run, p: int) -> None:
    """Read hit ``p``'s value from the cache in this thread and settle it."""
    func, args, _, _ = run._cache_calls[p]  # type: ignore[index]
    table = run.table
    try:
        value = func(*args)
    except CacheEntryError:
        run.stale_hits.append(run._cache_keys[p])
        return
    table.state[p] = DONE
    table.caller_values[p] = value
    if table.wanted[p]:
        table.results[p] = value
    if run._cached_hook is not None:
        run._cached_hook(node=table.nodes[p], worker=CALLER)
    table.settle(p)


def hit_unreadable(run: Run, p: int, error: BaseException) -> bool:
    """Did task ``p`` fail as a hit whose entry could not be read? Then the run is to be
    planned again, and the tasks sent ahead to wait for it are cancelled."""
    if run.hits is None or p not in run.hits or not isinstance(error, CacheEntryError):
        return False
    run.stale_hits.append(run._cache_keys[p])
    _cancel_sent_ahead_of(run, p)
    return True


def _cancel_sent_ahead_of(run: Run, p: int) -> None:
    """``p`` will not be made in this run: cancel the tasks sent ahead to wait for it, and
    theirs in turn, which would wait for ever."""
    table, load = run.table, run.placement.load
    state, inflight, dependents = table.state, table.inflight, table.dependents
    cancelled: list[TaskSpec] = []
    stack = list(dependents[p])
    while stack:
        j = stack.pop()
        spec = inflight.get(j)
        if spec is not None and state[j] == RUNNING and table.waiting[j]:
            del inflight[j]
            load[spec.worker] -= 1
            state[j] = WAITING
            cancelled.append(spec)
            stack.extend(dependents[j])
    if cancelled:
        never_started(run, cancelled)
        assert run.transport is not None
        with contextlib.suppress(Exception):  # best effort: their reports are ignored
            run.transport.cancel(cancelled)
