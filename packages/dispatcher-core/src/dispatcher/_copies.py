"""Copies as holders: on a transport whose workers keep the inputs they fetch
(``Capabilities.keeps_fetched_inputs``), a result copied to another worker is held there
too, until freed.

The run counts each such copy as one more holder of its result, so later tasks on that
worker read it where it is, tasks on its host take it from there (see
``TaskTable.inputs_of``), placement weighs it, and frees go to every holder: a result
crosses to another host once, however many tasks read it there. A copy the run cannot
count (its result released meanwhile, or the task's report no longer expected, or the
task failed) is freed at once, so none is left behind on a worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._states import DONE, RUNNING

if TYPE_CHECKING:
    from ._tasks import TaskTable
    from .transport import TaskSpec

__all__ = ["copied", "stale_copies"]


def copied(table: TaskTable, p: int, spec: TaskSpec, worker: str, kept: bool) -> None:
    """Task ``p`` (``spec``) ran on ``worker`` with inputs taken from other workers.
    ``kept``: it finished, and the worker holds those copies: each is one more holder of
    its result, or is freed if the result is released already. A task that failed may
    hold copies too: they are freed."""
    sources = spec.sources
    if sources is None or not table.keeps_copies:
        return
    state, holders, caller_values = table.state, table.holders, table.caller_values
    for i, d in enumerate(table.deps[p]):
        source = sources[i]
        if source is None or source == worker or d in caller_values:
            continue
        where = holders[d]
        if kept and state[d] == DONE and where:
            if worker not in where:
                holders[d] = where | {worker}
        elif _not_made_on(table, d, worker):
            table.free_on(worker, d)


def stale_copies(table: TaskTable, p: int, worker: str) -> None:
    """A report of ``p`` from ``worker`` that the run no longer expected: free there the
    copies of its inputs it may keep (those the run does not count it holding)."""
    if not table.keeps_copies:
        return
    holders, caller_values = table.holders, table.caller_values
    for d in table.deps[p]:
        where = holders[d]
        if (
            (where is None or worker not in where)
            and d not in caller_values
            and _not_made_on(table, d, worker)
        ):
            table.free_on(worker, d)


def _not_made_on(table: TaskTable, d: int, worker: str) -> bool:
    """Is ``d`` not being computed on ``worker`` right now? (Freeing a copy there would
    drop that result.)"""
    if table.state[d] != RUNNING:
        return True
    spec = table.inflight.get(d)
    return spec is None or spec.worker != worker
