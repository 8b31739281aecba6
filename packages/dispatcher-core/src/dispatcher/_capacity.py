"""A run's workers coming, pausing and going -- and the one rule that stops a run waiting
for ever when none of them can take its tasks.

A transport reports workers added, lost, and *paused*: a paused worker keeps its results
but takes no task for now (every thread it has runs a task given up on, which cannot be
stopped). When a run has tasks left, none out, and no worker with a slot:

* if the transport said no worker will come again (:meth:`~dispatcher.transport.EventSink.
  no_worker_left`), those tasks fail at once with its reason;
* if every worker is paused, the run waits :attr:`~dispatcher.transport.Transport.
  paused_wait` seconds, counted from the moment the last of them paused, for one to come
  back; then those tasks fail with "no capacity left", naming each worker and why;
* with no worker at all, it waits: the transport is replacing the ones it lost, and says
  ``no_worker_left`` when it cannot.

The rule lives here, once, for every backend: a transport only says what its workers do.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._errors import DispatcherError
from ._tasks import READY
from .transport import Key

if TYPE_CHECKING:
    from ._scheduler import Run

__all__ = [
    "Capacity",
    "on_no_worker_left",
    "on_worker_added",
    "on_worker_lost",
    "on_worker_paused",
    "when_stalled",
]

UNSAID = "it takes no task for now"
"""A paused worker's reason when its transport gave none (``worker_added`` with 0 slots)."""

_SHOWN = 5  # waiting tasks named in the error


class Capacity:
    """What a run knows of its workers' pauses, and when it gives up waiting for one."""

    __slots__ = ("deadline", "gone", "paused")

    def __init__(self) -> None:
        self.paused: dict[str, tuple[str, float]] = {}
        """Paused workers: why, and since when (``time.monotonic()``)."""
        self.gone: str | None = None
        """Why no worker will come again, once the transport has said so."""
        self.deadline: float | None = None
        """When the run, stalled for want of a worker, fails (``time.monotonic()``);
        ``None`` while it is not stalled so. Drivers wake by then."""

    def seed(self, paused: Mapping[str, tuple[str, float]], gone: str | None) -> None:
        """Start from what the executor knew when the run began."""
        self.paused.update(paused)
        self.gone = gone

    def added(self, worker: str, slots: int) -> None:
        if slots > 0:
            self.paused.pop(worker, None)
            self.gone = None
        elif worker not in self.paused:
            self.paused[worker] = (UNSAID, time.monotonic())

    def lost(self, worker: str) -> None:
        self.paused.pop(worker, None)


# -- the run's handlers of worker reports (see Run._handlers) -------------------------------


def on_worker_added(run: Run, worker: str, slots: int) -> None:
    run.placement.add_worker(worker, slots)
    run.capacity.added(worker, slots)


def on_worker_paused(run: Run, worker: str, reason: str, since: float) -> None:
    run.placement.add_worker(worker, 0)
    run.capacity.paused[worker] = (reason, since)


def on_worker_lost(run: Run, worker: str, reason: str, running: Sequence[Key] | None) -> None:
    run.capacity.lost(worker)
    if worker in run.placement.room:
        run.placement.remove_worker(worker)
        run.recovery.worker_lost(worker, reason, running)


def on_no_worker_left(run: Run, reason: str) -> None:
    run.capacity.gone = reason


# -- the rule ---------------------------------------------------------------------------------


def when_stalled(run: Run) -> bool:
    """``run`` has nothing to do until a report arrives and none of its tasks is out.
    If no worker can take its tasks, fail them now or set :attr:`Capacity.deadline` to
    when they will be. True if that failed tasks (the run has something to do)."""
    capacity, workers, table = run.capacity, run.placement.capacity, run.table
    if any(workers.values()) or not any(table.state[p] == READY for p in table.ready):
        capacity.deadline = None
        return False
    if capacity.gone is not None:
        _fail_waiting(run, DispatcherError(capacity.gone))
        return True
    if not workers:
        capacity.deadline = None  # lost ones are being replaced, or no_worker_left comes
        return False
    assert run.transport is not None
    now = time.monotonic()
    since = max(capacity.paused.get(w, (UNSAID, now))[1] for w in workers)
    capacity.deadline = since + run.transport.paused_wait
    if now < capacity.deadline:
        return False
    capacity.deadline = None
    _fail_waiting(run, _no_capacity(run, now - since))
    return True


def _no_capacity(run: Run, waited: float) -> DispatcherError:
    assert run.transport is not None
    table = run.table
    waiting = [table.nodes[p] for p in sorted(table.ready) if table.state[p] == READY]
    labels = ", ".join(repr(node.label) for node in waiting[:_SHOWN])  # in the order made
    if len(waiting) > _SHOWN:
        labels += f" and {len(waiting) - _SHOWN} more"
    lines = [
        f"  {worker}: {run.capacity.paused.get(worker, (UNSAID, 0.0))[0]}"
        for worker in run.placement.capacity
    ]
    advice = run.transport.capacity_advice()
    return DispatcherError(
        f"no capacity left: no worker has taken a task for {waited:.1f} s, and "
        f"{labels} {'waits' if len(waiting) == 1 else 'wait'} for one:\n"
        + "\n".join(lines)
        + (f"\n{advice}" if advice else "")
    )


def _fail_waiting(run: Run, error: DispatcherError) -> None:
    run.recovery.fail_unplaced(error)
    run.act_on_recovery()
