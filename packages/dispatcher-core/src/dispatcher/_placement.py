"""Placement: which worker takes a ready task, and how much work each worker may hold.

Per worker: its *capacity* (how many tasks its transport says may be assigned to it at
once), its *room* (how many it may be assigned now: on workers that run their tasks in
order, the queue is sized from the tasks' learned durations, per function: a function
not yet seen to finish in the run is not assumed as quick as the others), its *load* (how many it
has) and its *host* (see :func:`dispatcher.transport.worker_host`). A task goes where it
would finish soonest, counting the cost of moving its inputs and its result over the link
each move takes (:meth:`Placement.place`): none on the worker that holds it, a cheap one
within its host, a dear one across hosts, each as the executor's moves measured it (see
:mod:`dispatcher._links`; the rough figures :data:`WITHIN_HOST` and :data:`ACROSS_HOSTS`
until then). A chain is sent ahead to the worker computing
its inputs, or anywhere on a transport that accepts pending inputs
(:meth:`Placement.place_ahead`). No I/O.
"""

from __future__ import annotations

from typing import Any

from ._hosts import worker_host
from ._links import ACROSS_HOSTS, WITHIN_HOST, Link, LinkCosts
from ._states import DONE, READY, RUNNING, WAITING
from ._tasks import TaskTable
from ._template import function_kind

__all__ = ["ACROSS_HOSTS", "WITHIN_HOST", "Link", "Placement"]  # the links: from ._links

# On workers that run their tasks in order, keep about this much work (by the mean task
# duration so far) queued behind the running task: enough to hide a round trip to the
# worker, little enough that no worker sits on a long queue while another idles.
QUEUED_SECONDS = 0.002
# What placement assumes before any task has reported its duration.
UNKNOWN_DURATION = 0.001
# Before any result's size is known, a worker already making another input of one of a
# task's consumers draws the task by this many tasks' duration: more than one (so a pair
# of inputs stays together over queues of equal length) and less than two (so no worker
# gets more than one task deeper than the others on that account). Only while no worker
# idles: then parallelism is a sure gain and a move an unknown one.
SIBLING_PULL = 1.5
# The weight of the newest sample in the running means of durations and sizes: they
# follow the last few dozen tasks.
SMOOTHING = 0.05


# Every run's until attached to its router: one for all, learning nothing (a run's
# placement only reads its links; what transports measure goes to the router's).
_ASSUMED_LINKS = LinkCosts()
_ASSUMED_LINKS.learning = False


def _queue_for(duration: float) -> int:
    """How many tasks of ``duration`` an in-order worker keeps queued behind its running
    one: about :data:`QUEUED_SECONDS` of them, at least one."""
    queued = int(QUEUED_SECONDS / duration) if duration > 0 else 1 << 30
    return max(1, min(queued, 1 << 30))


class Placement:
    """Where the tasks of one run go, over the workers its transport offers."""

    def __init__(self, table: TaskTable) -> None:
        self.table = table
        self.room: dict[str, int] = {}
        """Tasks each worker may be assigned now."""
        self.capacity: dict[str, int] = {}
        """... and at most, as its transport said."""
        self.load: dict[str, int] = {}
        """Tasks each worker has been assigned and not yet reported."""
        self.single: str | None = None
        """The only worker, when there is one: nothing to place."""
        self.in_order = False
        """Workers run their tasks one at a time, in order (see ``Capabilities``)."""
        self.anywhere = False
        """A task may go to any worker before its inputs are made (see ``Capabilities``)."""
        self.host: dict[str, str | None] = {}
        """Each worker's host (``None``: the caller's)."""
        self.on_host: dict[str | None, list[str]] = {}
        """The workers on each host."""
        self.spread = False
        """The workers span more than one host: moves across hosts cost more."""
        self.links = _ASSUMED_LINKS
        """What a move costs per class of link: the executor's, once the run is attached
        to its router (the assumed links, before)."""
        self.mean_duration: float | None = None
        self.durations: dict[Any, float] = {}
        """The mean duration of each function's tasks so far, by
        :func:`~dispatcher.transport.function_kind`."""
        self._rooms: dict[int, dict[str, int]] = {}  # queue length: room for such tasks
        self.mean_nbytes: float | None = None  # of results whose size is known
        self._queued = 1  # tasks queued behind the running one, on in-order workers
        self._steady = (0.0, 0.0)
        self._set_queued(1)
        self.waits_for: str | None = None
        """The full worker :meth:`place` last chose to wait for, rather than move."""
        self.parked: dict[str | None, list[int]] = {}
        """Tasks refused only for want of room ahead of their inputs, by the worker whose
        room they wait for (``None``: any worker's; see :meth:`place_ahead`)."""

    # -- workers --------------------------------------------------------------------------

    def add_worker(self, worker: str, capacity: int) -> None:
        """A new worker, or a known one whose capacity changed (0: it takes nothing now)."""
        self.capacity[worker] = max(0, capacity)
        self.room[worker] = self._room_of(worker)
        self.load.setdefault(worker, 0)
        if worker not in self.host:
            host = self.host[worker] = worker_host(worker)
            self.on_host.setdefault(host, []).append(worker)
        self._workers_changed()

    def last_among_equals(self, worker: str) -> None:
        """Break ties between workers against ``worker`` from now on (it just gave back
        tasks queued behind one that runs long)."""
        for table in (self.capacity, self.room, self.load):
            table[worker] = table.pop(worker)

    def remove_worker(self, worker: str) -> None:
        del self.room[worker]
        del self.capacity[worker]
        del self.load[worker]
        host = self.host.pop(worker)
        self.on_host[host].remove(worker)
        if not self.on_host[host]:
            del self.on_host[host]
        self._workers_changed()

    def _workers_changed(self) -> None:
        self._rooms.clear()
        # With one worker there is nothing to place, and inputs are always local.
        self.single = next(iter(self.room)) if len(self.room) == 1 else None
        self.spread = len(self.on_host) > 1

    def _room_of(self, worker: str) -> int:
        capacity = self.capacity[worker]
        return min(capacity, 1 + self._queued) if self.in_order else capacity

    # -- learning ---------------------------------------------------------------------------

    def learn(self, func: Any, duration: float, nbytes: int | None) -> None:
        """Fold a finished task's duration (and result size, if known) into the running
        means, its function's and all tasks'; resize the queues when the mean duration
        moved much."""
        # Exponential moving averages (see SMOOTHING), and function_kind's answer for a
        # function, written out: once per reported task.
        kind = getattr(func, "__code__", None) or function_kind(func)
        durations = self.durations
        known = durations.get(kind)
        durations[kind] = duration if known is None else known + (duration - known) * SMOOTHING
        mean = self.mean_duration
        mean = duration if mean is None else mean + (duration - mean) * SMOOTHING
        self.mean_duration = mean
        if nbytes is not None:
            mean_nbytes = self.mean_nbytes
            self.mean_nbytes = (
                nbytes if mean_nbytes is None else mean_nbytes + (nbytes - mean_nbytes) * SMOOTHING
            )
        if not self.in_order or self._steady[0] < mean <= self._steady[1]:
            return
        queued = _queue_for(mean)
        if queued != self._queued and not (self._queued // 2 < queued < self._queued * 2):
            self._set_queued(queued)
            self._rooms.clear()
            for worker in self.room:
                self.room[worker] = self._room_of(worker)

    def _set_queued(self, queued: int) -> None:
        """Queue ``queued`` tasks behind the running one on in-order workers, until the
        mean duration leaves the range whose :func:`_queue_for` is within half to twice
        that (``_steady``: inside it, :meth:`learn` skips the sum)."""
        self._queued = queued
        self._steady = (QUEUED_SECONDS / (2 * queued), QUEUED_SECONDS / (queued // 2 + 1))

    # -- placing --------------------------------------------------------------------------

    def place(self, p: int) -> str | None:
        """The worker where task ``p`` would finish soonest, all told: the work queued
        there before it, moving the inputs it lacks there, and moving its result later to
        meet the other inputs of its consumers (or theirs to it). Tiny tasks therefore
        stay with their data, long ones spread out, and the producers of one consumer's
        inputs gather on one worker. A worker whose queue is at its usual length takes
        one more only when that saves a move worth the wait. None when no worker will
        take the task now, or when waiting for room on a full one beats moving: a tiny
        task waits behind a few others where its inputs are instead of moving them."""
        single = self.single
        if single is not None:
            return single if self.load[single] < self.room[single] else None
        load, capacity = self.load, self.capacity
        open_ = [w for w in capacity if load[w] < capacity[w]]
        if not open_:
            return None
        # expected(p) written out for a function already timed: once per task placed.
        func = self.table.nodes[p]._func
        mean = self.durations.get(getattr(func, "__code__", None) or function_kind(func))
        if mean is None:
            mean, room = self.expected(p)
        else:
            room = self.room
        pull = 0.0
        if self.mean_nbytes is None and all(load[w] for w in open_):
            pull = SIBLING_PULL * mean
        moving, near = self._moves(p, pull)
        if near is None:  # nothing to move, wherever it runs: the shortest queue
            usual = [w for w in open_ if load[w] < room[w]]
            return min(usual, key=load.__getitem__) if usual else None
        wait = self._input_wait(p, mean) if self.anywhere else 0.0

        def finish(w: str) -> tuple[float, int]:
            queued = load[w] * mean
            return (queued if queued > wait else wait) + moving - near.get(w, 0.0), load[w]

        best = min(open_, key=finish)
        if len(open_) < len(room):
            # Sooner done by waiting for room on a full worker than moving (a worker with
            # no capacity at all gives no room to wait for).
            full = min((w for w in room if capacity[w]), key=finish, default=best)
            if finish(full)[0] < finish(best)[0]:
                self.waits_for = full
                return None
        # Beyond the usual queue only when the move saved outweighs the extra wait there
        # (a saving known, not the pull of a guess).
        beyond = load[best] + 1 - room[best]
        saved = near.get(best, 0.0) - pull
        if beyond <= 0 or saved >= self.links.within.link.latency + beyond * mean:
            return best
        usual = [w for w in open_ if load[w] < room[w]]
        return min(usual, key=finish) if usual else None

    def _input_wait(self, p: int, mean: float) -> float:
        """How long task ``p`` waits, wherever it runs, for the inputs it was sent ahead
        of: the queue of the worker making each (``mean`` seconds per task, as
        :meth:`place` counts every queue), the longest of them. No worker starts ``p``
        sooner, so a shorter queue elsewhere is no reason to move those inputs: a chain
        sent ahead stays on the worker making it rather than moving each link's input."""
        table = self.table
        holders, inflight, load = table.holders, table.inflight, self.load
        wait = 0
        for d in table.deps[p]:
            if holders[d] is None:
                spec = inflight.get(d)
                if spec is not None:
                    wait = max(wait, load.get(spec.worker, 0))
        return wait * mean

    def expected(self, p: int) -> tuple[float, dict[str, int]]:
        """How long task ``p`` is expected to run, and the room each worker has for it.
        Its function's mean duration so far in this run; until one of its tasks has
        finished, the longer of :data:`UNKNOWN_DURATION` and all tasks' mean, and no
        deeper a queue on in-order workers than such a duration allows: tasks of a new
        function may be long after thousands of tiny ones."""
        func = self.table.nodes[p]._func
        mean = self.durations.get(getattr(func, "__code__", None) or function_kind(func))
        if mean is not None:
            return mean, self.room
        overall = self.mean_duration
        if overall is None:  # (the room is already that of tasks of unknown length)
            return UNKNOWN_DURATION, self.room
        mean = max(overall, UNKNOWN_DURATION)
        if not self.in_order:
            return mean, self.room
        queued = _queue_for(mean)
        room = self._rooms.get(queued)
        if room is None:
            room = self._rooms[queued] = {w: min(r, 1 + queued) for w, r in self.room.items()}
        return mean, room

    def moving(self, p: int, workers: list[str]) -> dict[str, float]:
        """Seconds of moves task ``p`` would cause on each of ``workers`` (its inputs and
        its result, as :meth:`place` weighs them)."""
        moving, near = self._moves(p)
        if near is None:
            return dict.fromkeys(workers, 0.0)
        return {w: moving - near.get(w, 0.0) for w in workers}

    def _moves(self, p: int, pull: float = 0.0) -> tuple[float, dict[str, float] | None]:
        """Seconds of moves task ``p`` would cause on a worker of a host holding none of
        what it weighs (its inputs, its consumers' other inputs), and what running on
        each worker would spare of that; None for the latter when there is nothing to
        weigh. While no result's size is known, a consumer's other input counts ``pull``
        seconds on each worker holding or making one (see :data:`SIBLING_PULL`)."""
        table = self.table
        holders, nbytes, inflight, deps = table.holders, table.nbytes, table.inflight, table.deps
        weighed: list[tuple[frozenset[str], float]] = []
        expected = self.mean_nbytes or 0.0
        pulled: set[str] | None = set() if pull else None  # (no pull: none to collect)
        for d in deps[p]:
            where = holders[d]
            if where:
                weighed.append((where, nbytes[d] or 0))
            elif d in inflight:  # sent ahead of its input, which is still being computed
                weighed.append((table.held_on(inflight[d].worker), expected))
        unplaced = 0  # consumers' other inputs that no worker has been given yet
        for j in table.dependents[p][:4]:
            siblings = deps[j]
            if len(siblings) > 16:
                continue  # a reduction over many: no one home to gather near
            for d in siblings:
                where = holders[d]
                if where is None:
                    spec = inflight.get(d)
                    if spec is None:
                        unplaced += d != p
                        continue
                    where = table.held_on(spec.worker)  # still being computed there
                weighed.append((where, min(expected, nbytes[d] or expected)))
                if pulled is not None and d != p:
                    pulled.update(where)
        if not weighed:
            return 0.0, None
        near = dict.fromkeys(pulled, pull) if pulled else {}
        if not self.spread:
            moving = pull if pulled else 0.0
            link = self.links.within.link
            latency, bandwidth = link.latency, link.bandwidth
            for where, size in weighed:
                cost = latency + size / bandwidth  # (Link.seconds, written out)
                moving += cost
                for w in where:
                    near[w] = near.get(w, 0.0) + cost
            return moving, near
        moving, near = self._moves_across(weighed, unplaced * expected, near)
        return moving + (pull if pulled else 0.0), near

    def _moves_across(
        self, weighed: list[tuple[frozenset[str], float]], unplaced: float, near: dict[str, float]
    ) -> tuple[float, dict[str, float]]:
        """:meth:`_moves` where workers span hosts: a worker holding a value spares its
        whole move across hosts; its host's other workers spare the difference between
        a move across hosts and one within. The consumers' other inputs that no worker
        has yet (``unplaced`` bytes of them) will most likely be made where the work is
        now: each host spares that much of a move across hosts as its share of the load."""
        host = self.host
        moving = 0.0
        near_host: dict[str | None, float] = {}
        load = self.load
        total = sum(load.values()) if unplaced else 0
        within_host, across_hosts = self.links.within.link, self.links.across.link
        if total:
            spared = across_hosts.seconds(unplaced) - within_host.seconds(unplaced)
            for h, workers in self.on_host.items():
                near_host[h] = spared * sum(load[w] for w in workers) / total
        for where, size in weighed:
            within = within_host.seconds(size)
            across = max(within, across_hosts.seconds(size))  # noise never inverts the two
            moving += across
            hosts = set()
            for w in where:
                near[w] = near.get(w, 0.0) + within
                hosts.add(host.get(w))
            for h in hosts:
                near_host[h] = near_host.get(h, 0.0) + across - within
        on_host = self.on_host
        for h, spared in near_host.items():
            for w in on_host.get(h, ()):
                near[w] = near.get(w, 0.0) + spared
        return moving, near

    def place_ahead(self, p: int) -> str | None:
        """Where task ``p`` may go ahead of its inputs (see
        ``Capabilities.accepts_pending_inputs``): on a transport that accepts pending
        inputs, wherever :meth:`place` puts it; on one whose workers run their tasks in
        order, only behind its inputs, on the worker computing all of them, while that
        worker has room. None: nowhere now (or an input is neither made nor being made:
        it went back to waiting since ``p`` was readied); it waits for its inputs'
        reports, or, refused only for want of room, is parked until room is made
        (:meth:`unpark`): a chain longer than a worker's room streams out as its links
        finish instead of waiting, a roomful at a time, for the last one sent."""
        table = self.table
        if self.anywhere:
            if not table.inputs_sent(p):
                return None
            self.waits_for = None
            worker = self.place(p)
            if worker is None:
                self.parked.setdefault(self.waits_for, []).append(p)
            return worker
        state, inflight = table.state, table.inflight
        worker = None
        # (TaskTable.inputs_sent, checked in the same pass: once per task sent ahead.)
        for d in table.deps[p]:
            if state[d] == RUNNING:
                spec = inflight.get(d)
                if spec is None or (worker is not None and spec.worker != worker):
                    return None
                worker = spec.worker
            elif state[d] != DONE:
                return None
        if worker is None:
            return None
        # (expected's room, written out for a function already timed: once per task.)
        func = table.nodes[p]._func
        if (getattr(func, "__code__", None) or function_kind(func)) in self.durations:
            room = self.room
        else:
            room = self.expected(p)[1]
        if self.load[worker] < room[worker]:
            return worker
        parked = self.parked.get(worker)
        if parked is None:
            self.parked[worker] = [p]
        else:
            parked.append(p)
        return None

    def unpark(self) -> None:
        """Put back on the ready stack, first parked on top, the tasks parked by
        :meth:`place_ahead` whose worker has half its room free again (any worker, for
        those parked under ``None``; all of a worker's once it is gone): its queue is
        topped up by half a roomful at a time, before it runs dry, not by a task per
        report. One still waiting ahead of its inputs goes back; one readied by its
        inputs' reports since, or sent back to waiting, is already where it belongs."""
        parked, load, room = self.parked, self.load, self.room
        table = self.table
        state, waiting, ready = table.state, table.waiting, table.ready
        for worker in list(parked):
            if worker is None:
                if not any(load[w] <= room[w] // 2 for w in room):
                    continue
            elif worker in room and load[worker] > room[worker] // 2:
                continue
            for p in reversed(parked.pop(worker)):
                if state[p] == WAITING and waiting[p]:
                    state[p] = READY
                    ready.append(p)
