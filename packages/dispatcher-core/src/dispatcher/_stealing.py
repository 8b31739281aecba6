"""Stealing: a worker gone idle takes back work queued behind a long task elsewhere.

On a transport whose workers run their tasks in order and can give back a task still
queued (``Capabilities.takes_back_queued_tasks``: ``mp``, ``mpi``), placement puts a task
behind a running one when that looks cheapest at the time, by the durations learned so
far; when the running task turns out long, what is queued behind it waits while other
workers idle. So when a worker has nothing to do and nothing ready is left,
:meth:`Stealing.look` goes over the other workers' queues and picks the tasks expected to
wait there clearly longer than running them on an idle worker would cost; the run asks
them back (:meth:`~dispatcher.transport.Transport.take_back`). Those the worker had not
started come back (:func:`taken_back`) and are placed again like any ready task: that is
not an attempt, and their start, told when they were first handed out, is not told again
(:func:`told_before`). A task that had started is not given back and finishes as
usual.

What a task waits: what is left of the task running ahead of it, and the learned duration
of each task queued between (``Placement.expected``). A running task is expected to need
what its function's calls took so far, less what it has run; and at least as long again as
it has run, since the calls learned from say little about one that already outlasted them
(a function whose calls are tiny at first and long later). It has run at least since a
look first saw it at the head of its worker's queue.

What it would cost elsewhere: moving its inputs and its result (``Placement.moving``, the
move-cost model), and the round trip that asks it back. Never asked back: a task whose
inputs are not all made (sent ahead behind its own producer) and one with a task sent
ahead behind it (a chain stays a chain).

Rate: looks are :data:`LOOK_EVERY` apart, and further apart (up to
:data:`LOOK_AT_MOST`) while workers idle beside queues with nothing worth asking back; a
dispatch with no worker idle, or none with a task queued, pays two tests in C. A worker
has at most one request out at a time, until it answers, it is lost, none of the tasks
asked is still queued there, or :data:`ANSWER_WAIT` has passed (a worker answers only
when it gave back some). No I/O: the run sends the requests.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from ._states import RUNNING

if TYPE_CHECKING:
    from ._placement import Placement
    from ._scheduler import Run
    from ._tasks import TaskTable

__all__ = ["ANSWER_WAIT", "LEAST_WAIT", "LOOK_AT_MOST", "LOOK_EVERY", "WORTH", "Stealing"]

LOOK_EVERY = 0.01
"""Seconds between two looks at the queues, at least."""
LOOK_AT_MOST = 0.5
"""... and at most, while workers idle beside queues with nothing worth taking back."""
ANSWER_WAIT = 1.0
"""Seconds after which a request still unanswered no longer holds its worker back."""
WORTH = 2.0
"""A queued task is asked back when it is expected to wait this many times longer than
asking it back and moving what it needs would take..."""
LEAST_WAIT = 0.005
"""... and at least this many seconds: a queue this short drains before it matters."""


class Stealing:
    """What one run watches of its in-order workers' queues, and has asked back."""

    __slots__ = ("asked", "every", "heads", "next_look", "placement", "table", "told", "watching")

    def __init__(self, table: TaskTable, placement: Placement, tells_starts: bool) -> None:
        self.table = table
        self.placement = placement
        self.told: set[int] | None = set() if tells_starts else None
        """Tasks taken back whose start was told when they were first handed out."""
        self.heads: dict[str, tuple[int, float]] = {}
        """Per worker, the first of its tasks out, and when a look first saw it there."""
        self.asked: dict[str, tuple[float, list[int]]] = {}
        """Per worker, when the request out to it was sent, and the tasks it names."""
        self.next_look = 0.0
        """When the next look may be (``time.monotonic``)."""
        self.every = LOOK_EVERY
        self.watching = False
        """A worker idles beside queues: look again at :attr:`next_look` unasked."""

    def wake_at(self, now: float) -> float | None:
        """When the run's driver should look again though nothing was reported: while a
        worker idles beside queues, at the next look; else ``None``."""
        return self.next_look if self.watching and self.next_look > now else None

    def quiet(self) -> bool:
        """No worker idles, or none has a task queued: nothing to look at. The usual
        case, asked once per dispatch that leaves nothing ready: told in C."""
        counts = self.placement.load.values()
        if 0 not in counts or max(counts) < 2:
            self.watching, self.every = False, LOOK_EVERY
            return True
        return False

    def look(self, now: float) -> dict[str, list[int]]:
        """Unless :meth:`quiet`: the tasks to ask back now, by worker (see the module
        docstring); none before :attr:`next_look`."""
        if now < self.next_look:
            self.watching = True  # the driver comes back for it
            return {}
        table, placement = self.table, self.placement
        load, room = placement.load, placement.room
        idle = [w for w, slots in room.items() if slots > 0 and load[w] == 0]
        self._forget_answered(now)
        busy: dict[str, list[int]] = {
            w: [] for w, n in load.items() if n > 1 and w not in self.asked
        }
        for w in [w for w in self.heads if not load.get(w)]:
            del self.heads[w]
        self.watching = bool(idle and (busy or self.asked))
        wanted: dict[str, list[int]] = {}
        if idle and busy:
            for p, spec in table.inflight.items():  # in the order sent: each queue's order
                queue = busy.get(spec.worker)
                if queue is not None:
                    queue.append(p)
            for worker, queue in busy.items():
                picked = self._worth_taking(worker, queue, idle, now)
                if picked:
                    wanted[worker] = picked
                    self.asked[worker] = (now, picked)
        self.every = LOOK_EVERY if wanted else min(2 * self.every, LOOK_AT_MOST)
        self.next_look = now + self.every
        return wanted

    def _forget_answered(self, now: float) -> None:
        """Drop the requests that no longer hold their worker back."""
        inflight, room = self.table.inflight, self.placement.room
        for worker, (sent, asked) in list(self.asked.items()):
            if (
                worker not in room
                or now - sent > ANSWER_WAIT
                or not any((s := inflight.get(p)) is not None and s.worker == worker for p in asked)
            ):
                del self.asked[worker]

    def _worth_taking(
        self, worker: str, queue: list[int], idle: list[str], now: float
    ) -> list[int]:
        """Of ``queue``, the tasks out on ``worker`` in the order sent, those that wait
        there clearly longer than running them on one of ``idle`` would cost."""
        table, placement = self.table, self.placement
        head = queue[0]
        seen = self.heads.get(worker)
        if seen is None or seen[0] != head:
            self.heads[worker] = (head, now)
            ran = 0.0
        else:
            ran = now - seen[1]
        expected = placement.expected
        wait = max(expected(head)[0] - ran, ran)  # what is left of the running task
        links = placement.links
        link = links.across.link if placement.spread else links.within.link
        round_trip = 2 * link.latency
        waiting, dependents, inflight = table.waiting, table.dependents, table.inflight
        picked: list[int] = []
        for p in queue[1:]:
            if wait > LEAST_WAIT and not waiting[p] and not _sent_behind(p, dependents, inflight):
                moves = placement.moving(p, [*idle, worker])
                extra = max(0.0, min(moves[w] for w in idle) - moves[worker])
                if wait > WORTH * (round_trip + extra):
                    picked.append(p)
            wait += expected(p)[0]
        return picked


def told_before(stealing: Stealing | None, p: int) -> bool:
    """Was ``p``'s start told already (it was taken back, and is handed out again)?"""
    told = None if stealing is None else stealing.told
    if told is not None and p in told:
        told.discard(p)
        return True
    return False


def _sent_behind(p: int, dependents: list[list[int]], inflight: Container[int]) -> bool:
    """Is a task sent ahead behind ``p`` (one of its dependents out before it is made)?"""
    return any(j in inflight for j in dependents[p])


def taken_back(run: Run, worker: str, positions: list[int]) -> None:
    """``worker`` gave back these tasks, never started: placed again, not charged."""
    stealing = run.stealing
    if stealing is None:
        return
    stealing.asked.pop(worker, None)  # answered
    table, load = run.table, run.placement.load
    inflight, state, attempts = table.inflight, table.state, table.attempts
    back: list[int] = []
    for p in positions:
        spec = inflight.get(p)
        if spec is None or spec.worker != worker or state[p] != RUNNING:
            continue  # cancelled or lost meanwhile: dealt with already
        del inflight[p]
        if worker in load:
            load[worker] -= 1
        attempts[p] -= 1
        back.append(p)
    if back:
        run.placement.last_among_equals(worker)
    told = stealing.told
    for p in reversed(back):  # the first asked back is placed first (a stack)
        if told is not None:
            told.add(p)
        table.requeue(p)
