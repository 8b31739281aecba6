"""Telling ``task_started``: at once for a task sent to a worker, or, for a task sent
ahead of its inputs (to a transport that accepts pending inputs, or queued behind them on
a worker that runs its tasks in order), once they are made, since only then can it start.
A hit read from the cache is told as cached, never started."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._nodes import DispatchNode
    from ._scheduler import Run
    from .transport import TaskSpec

__all__ = [
    "announce",
    "announce_at_own_report",
    "announce_inputs_made",
    "announce_unless_ahead",
    "never_started",
]


def never_started(run: Run, cancelled: list[TaskSpec]) -> None:
    """These tasks, sent ahead, are cancelled before they started: never tell it."""
    if run.unannounced:
        run.unannounced.difference_update(spec.key - run.base for spec in cancelled)


def announce(run: Run, p: int, node: DispatchNode, worker: str) -> None:
    """Tell that ``p`` started on ``worker``, unless it is a hit (told as cached)."""
    if run.started_hook is not None and (run.hits is None or p not in run.hits):
        run.started_hook(node=node, worker=worker)


def announce_unless_ahead(run: Run, p: int, node: DispatchNode, worker: str) -> None:
    """``p`` was just sent: tell its start now, unless it went ahead of its inputs (then
    it is told once they are made: :func:`announce_inputs_made`)."""
    unannounced = run.unannounced
    assert unannounced is not None
    if run.table.waiting[p]:
        unannounced.add(p)
    else:
        unannounced.discard(p)  # sent again, not ahead this time
        announce(run, p, node, worker)


def announce_at_own_report(run: Run, p: int, worker: str) -> None:
    """``p``, sent ahead, reported before its inputs did (their reports may come in any
    order): it ran, so it started; tell that first, if not yet told."""
    unannounced = run.unannounced
    assert unannounced is not None
    if p in unannounced:
        unannounced.discard(p)
        announce(run, p, run.table.nodes[p], worker)


def announce_inputs_made(run: Run, positions: Iterable[int]) -> None:
    """Of ``positions`` (the dependents of a task just settled), tell the start of the
    tasks sent ahead whose inputs are now all made. A transport that accepts pending
    inputs starts such a task the moment its last input is made, which the run learns
    from that input's report: its start is told then (or at its own report, if that came
    first); a task whose input failed was never started, only skipped or sent again."""
    unannounced, table = run.unannounced, run.table
    assert unannounced is not None
    waiting, inflight = table.waiting, table.inflight
    for j in positions:
        if j in unannounced and not waiting[j] and (spec := inflight.get(j)) is not None:
            unannounced.discard(j)
            announce(run, j, table.nodes[j], spec.worker)
