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
* with no worker at all, it waits: the transport is replacing the ones it lost (and says
  ``no_worker_left`` when it cannot), or the cluster is growing from none. A run that has
  waited so :data:`NO_WORKER_WARNING` seconds says so on the ``dispatcher`` logger, naming
  its waiting tasks and the workers lost, and again every :data:`NO_WORKER_REPEAT` seconds.

The rule lives here, once, for every backend: a transport only says what its workers do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import DispatcherError
from ._states import READY
from .transport import Key

if TYPE_CHECKING:
    from ._scheduler import Run

__all__ = [
    "Capacity",
    "Pauses",
    "on_no_worker_left",
    "on_worker_added",
    "on_worker_lost",
    "on_worker_paused",
    "when_stalled",
]

NO_WORKER_WARNING = 30.0
"""Seconds a run waits with no worker at all before it logs that it does."""
NO_WORKER_REPEAT = 300.0
"""... and then between two such warnings."""

log = logging.getLogger("dispatcher")

UNSAID = "it takes no task for now"
"""A paused worker's reason when its transport gave none (``worker_added`` with 0 slots)."""

_SHOWN = 5  # waiting tasks named in the error


class Pauses:
    """Which workers are paused, why and since when, and whether none will come again:
    kept by the executor's router (for runs yet to start) and by each run, by one rule."""

    __slots__ = ("gone", "paused")

    def __init__(self) -> None:
        self.paused: dict[str, tuple[str, float]] = {}
        """Paused workers: why, and since when (``time.monotonic()``)."""
        self.gone: str | None = None
        """Why no worker will come again, once the transport has said so."""

    def added(self, worker: str, slots: int) -> None:
        if slots > 0:
            self.paused.pop(worker, None)
            self.gone = None
        elif worker not in self.paused:
            self.paused[worker] = (UNSAID, time.monotonic())

    def pause(self, worker: str, reason: str, since: float | None = None) -> float:
        """``worker`` paused for ``reason``; since when (a pause already on keeps its
        start, unless ``since`` says otherwise)."""
        if since is None:
            since = self.paused.get(worker, (reason, time.monotonic()))[1]
        self.paused[worker] = (reason, since)
        return since

    def lost(self, worker: str, reason: str) -> None:
        self.paused.pop(worker, None)


class Capacity(Pauses):
    """What a run knows of its workers' pauses, and when it gives up waiting for one."""

    __slots__ = ("alone_since", "deadline", "lost_why", "warn_at")

    def __init__(self) -> None:
        super().__init__()
        self.lost_why: dict[str, str] = {}
        """Workers lost and not back: why."""
        self.alone_since: float | None = None
        """Since when the run has waited with no worker at all."""
        self.warn_at = 0.0
        """When it next says that it waits so."""
        self.deadline: float | None = None
        """When the run, stalled for want of a worker, fails or warns
        (``time.monotonic()``); ``None`` while it is not stalled so. Drivers wake by then."""

    def seed(self, known: Pauses) -> None:
        """Start from what the executor knew when the run began."""
        self.paused.update(known.paused)
        self.gone = known.gone

    def added(self, worker: str, slots: int) -> None:
        super().added(worker, slots)
        self.lost_why.pop(worker, None)
        if slots > 0:
            self.alone_since = None

    def pause(self, worker: str, reason: str, since: float | None = None) -> float:
        self.lost_why.pop(worker, None)
        return super().pause(worker, reason, since)

    def lost(self, worker: str, reason: str) -> None:
        super().lost(worker, reason)
        self.lost_why[worker] = reason


# -- the run's handlers of worker reports (see Run._handlers) -------------------------------


def on_worker_added(run: Run, worker: str, slots: int) -> None:
    run.placement.add_worker(worker, slots)
    run.capacity.added(worker, slots)


def on_worker_paused(run: Run, worker: str, reason: str, since: float) -> None:
    run.placement.add_worker(worker, 0)
    run.capacity.pause(worker, reason, since)


def on_worker_lost(run: Run, worker: str, reason: str, running: Sequence[Key] | None) -> None:
    run.capacity.lost(worker, reason)
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
        capacity.deadline = capacity.alone_since = None
        return False
    if capacity.gone is not None:
        _fail_waiting(run, DispatcherError(capacity.gone))
        return True
    if not workers:
        _wait_for_a_worker(run)
        return False
    capacity.alone_since = None
    assert run.transport is not None
    now = time.monotonic()
    since = max(capacity.paused.get(w, (UNSAID, now))[1] for w in workers)
    capacity.deadline = since + run.transport.paused_wait
    if now < capacity.deadline:
        return False
    capacity.deadline = None
    _fail_waiting(run, _no_capacity(run, now - since))
    return True


def _wait_for_a_worker(run: Run) -> None:
    """No worker at all: wait for one (lost ones are being replaced, or the cluster grows
    from none; ``no_worker_left`` comes otherwise), saying so now and then."""
    capacity, now = run.capacity, time.monotonic()
    if capacity.alone_since is None:
        capacity.alone_since = now
        capacity.warn_at = now + NO_WORKER_WARNING
    elif now >= capacity.warn_at:
        labels, have = _waiting(run)
        lost = [f"{worker} ({why})" for worker, why in list(capacity.lost_why.items())]
        log.warning(
            "%s %s waited %.0f s for a worker: the executor has none (lost: %s); the run "
            "goes on as soon as one arrives",
            labels,
            have,
            now - capacity.alone_since,
            _some(lost) if lost else "none",
        )
        capacity.warn_at = now + NO_WORKER_REPEAT
    capacity.deadline = capacity.warn_at


def _some(items: list[str]) -> str:
    """The first few of ``items``, for a message."""
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _waiting(run: Run) -> tuple[str, str]:
    """The labels of the run's ready tasks, in the order made, and "has" or "have"."""
    table = run.table
    waiting = [repr(table.nodes[p].label) for p in sorted(table.ready) if table.state[p] == READY]
    return _some(waiting), "has" if len(waiting) == 1 else "have"


def _no_capacity(run: Run, waited: float) -> DispatcherError:
    assert run.transport is not None
    labels, have = _waiting(run)
    lines = [
        f"  {worker}: {run.capacity.paused.get(worker, (UNSAID, 0.0))[0]}"
        for worker in run.placement.capacity
    ]
    advice = run.transport.capacity_advice()
    return DispatcherError(
        f"no capacity left: no worker has taken a task for {waited:.1f} s, and "
        f"{labels} {'waits' if have == 'has' else 'wait'} for one:\n"
        + "\n".join(lines)
        + (f"\n{advice}" if advice else "")
    )


def _fail_waiting(run: Run, error: DispatcherError) -> None:
    run.recovery.fail_unplaced(error)
    run.act_on_recovery()
