"""Driving a run: the one path by which reports reach the scheduler, and the two loops.

A transport reports to its executor's :class:`Router` (the
:class:`~dispatcher.transport.EventSink`), which posts each report, as a small tuple, to
the :class:`EventQueue` of the run its key belongs to. A driver
repeats :func:`step` -- hand out ready tasks, apply what was reported -- and waits on the
queue when there is nothing to do: :func:`drive_blocking` on a thread,
:func:`drive_async` on an event loop.

A report may carry its value or exception still serialised
(:class:`~dispatcher.transport.Unloaded`): the driver loads it as it applies the report
(:func:`load_reported`), so the user's code that deserialising runs holds up that run
alone, never the transport's thread that reports for every run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._capacity import Pauses, when_stalled
from ._links import LinkCosts
from .transport import KEY_BITS, Key, TaskSpec, Transport, Unloaded

if TYPE_CHECKING:
    from ._scheduler import Run

__all__ = [
    "EV_FAILED",
    "EV_FINISHED",
    "EV_FINISHED_MANY",
    "EV_INPUTS_LOST",
    "EV_NO_WORKER_LEFT",
    "EV_TAKEN_BACK",
    "EV_WORKER_ADDED",
    "EV_WORKER_LOST",
    "EV_WORKER_PAUSED",
    "KEY_BITS",
    "LOOP_TURN",
    "EventQueue",
    "Router",
    "RunCancelled",
    "drive_async",
    "drive_blocking",
    "load_reported",
    "step",
]

_POSITION = (1 << KEY_BITS) - 1

log = logging.getLogger("dispatcher")

# Event kinds in the queue.
EV_FINISHED = 0
EV_FAILED = 1
EV_INPUTS_LOST = 2
EV_WORKER_ADDED = 3
EV_WORKER_LOST = 4
EV_WORKER_PAUSED = 5
EV_NO_WORKER_LEFT = 6
EV_TAKEN_BACK = 7
EV_FINISHED_MANY = 8

_NOVALUE: Any = ...

LOOP_TURN = 0.005
"""The longest a run that keeps making progress holds its event loop's thread (seconds,
on the driver's clock): then the loop's other tasks get a turn, the user's among them
when the run was awaited (``arun``)."""


class RunCancelled(BaseException):
    """Raised inside a blocking driver whose caller went away."""


class EventQueue:
    """Reports for one run, posted from any thread, taken by its driver."""

    __slots__ = ("_cond", "_sleeping", "_waker", "events", "stopped")

    def __init__(self) -> None:
        self.events: deque[tuple[Any, ...]] = deque()
        # Set (with a wake) when the run can go on no longer, whatever it waits for: its
        # executor was closed under it. Its driver raises it.
        self.stopped: BaseException | None = None
        # Made by the first wait: a run that never waits (every task called in the
        # caller) does without. Posters touch it only once a sleep is announced under it.
        self._cond: threading.Condition | None = None
        self._sleeping = False
        # An async driver's, while it waits: callable from any thread, wanted once. In a
        # slot of its own, taken in one step (dict.pop): a read then a clear could clear
        # the waker of the woken driver's next wait, which would then sleep for good.
        self._waker: dict[int, Callable[[], object]] = {}

    def post(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        # What wake() does, written out: a report per task comes through here.
        if self._sleeping:
            cond = self._cond
            assert cond is not None  # (made before any sleep was announced)
            with cond:
                cond.notify()
                self._sleeping = False
        elif self._waker:
            # Once woken, the driver takes every event there: the others posted before
            # it runs need not wake it again.
            waker = self._waker.pop(0, None)
            if waker is not None:
                waker()

    def wake(self) -> None:
        """Make the waiting driver look again (at new events, or at why it should stop)."""
        if self._sleeping:
            cond = self._cond
            assert cond is not None  # (made before any sleep was announced)
            with cond:
                cond.notify()
                # Once woken, the driver takes every event there: the others posted
                # before it runs need not wake it again.
                self._sleeping = False
        elif self._waker:
            waker = self._waker.pop(0, None)
            if waker is not None:
                waker()

    def wait(self, timeout: float | None) -> None:
        """Block until an event is posted, :meth:`wake` is called, or ``timeout`` passes."""
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition(threading.Lock())
        with cond:
            # Announce the sleep before looking, so a post in between is not missed.
            self._sleeping = True
            try:
                # (Stopped before this wait, the wake that said so found nobody asleep.)
                if not self.events and self.stopped is None:
                    cond.wait(timeout)
            finally:
                self._sleeping = False

    async def wait_async(
        self, call_soon: Callable[..., object], timeout: float | None = None
    ) -> None:
        """Like :meth:`wait`, awaited on an event loop; ``call_soon`` runs a callback on
        that loop from another thread (``call_soon_threadsafe``), so reports may be
        posted from any thread."""
        import anyio  # only drivers on an event loop need it

        if timeout is not None:
            with anyio.move_on_after(timeout):
                await self.wait_async(call_soon)
            return

        if self.events or self.stopped is not None:
            return
        woken = anyio.Event()
        here = threading.get_ident()

        def waker() -> None:
            if threading.get_ident() == here:
                woken.set()
                return
            try:
                call_soon(woken.set)
            except RuntimeError:
                pass  # the loop is closed: its run is over

        # Installed before looking again, so a post in between is not missed.
        self._waker[0] = waker
        try:
            if not self.events and self.stopped is None:
                await woken.wait()
        finally:
            self._waker.pop(0, None)


class Router:
    """The one event sink: an executor's transport reports here, and each report goes, as
    a small tuple with its key made a position, to the queue of the run the key belongs
    to; workers coming and going are told to every run."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.runs: dict[int, EventQueue] = {}
        self.workers: dict[str, int] = {}
        self.pauses = Pauses()
        """Paused workers, and whether none will come again (for runs yet to start)."""
        self.links = LinkCosts()
        """What moves between workers cost, as reported: every run's placement reads it."""
        self._lost_while_starting: set[str] | None = set()
        """Workers lost before the transport's ``start`` returned (its answer may still
        name them); None once that answer is in (see :meth:`started`)."""
        self._workers_lock = threading.Lock()
        self._closed: Callable[[], BaseException] | None = None

    def attach(self, run: Run) -> None:
        self.runs[run.base >> KEY_BITS] = run.queue
        run.placement.links = self.links
        # (Reports from now on reach the run too: applying one twice changes nothing.)
        run.capacity.seed(self.pauses)
        if self._closed is not None:  # closed between the run's start and here
            run.queue.stopped = self._closed()
            run.queue.wake()

    def close(self, error: Callable[[], BaseException]) -> None:
        """The executor is closing: stop every attached run (and any attached later) with
        a fresh ``error()`` each, for their drivers to raise; what they wait for will
        never come, their transport's workers are going."""
        self._closed = error
        for queue in list(self.runs.values()):
            queue.stopped = error()
            queue.wake()

    def detach(self, run: Run) -> None:
        self.runs.pop(run.base >> KEY_BITS, None)
        self._free_unread(run.queue, run.base)
        try:
            self.transport.run_finished(run.base >> KEY_BITS)
        except Exception:  # what it kept is the transport's to release at close
            log.exception("releasing what was kept for a run failed")

    def _free_unread(self, queue: EventQueue, base: Key) -> None:
        """A run is over: free the results announced to it that its driver never read (a
        report that arrived after it aborted), or they would stay on their workers."""
        events = queue.events
        while True:
            try:
                event = events.popleft()  # atomic: two callers never free one result twice
            except IndexError:
                return
            if event[0] == EV_FINISHED:
                self.transport.free(event[2], [base | event[1]])
            elif event[0] == EV_FINISHED_MANY:
                self.transport.free(event[1], [entry[0] for entry in event[2]])

    def inputs_moved(
        self, worker: str, moves: Sequence[tuple[tuple[str, ...], int, float]]
    ) -> None:
        for sources, nbytes, seconds in moves:
            self.links.observe(worker, sources, nbytes, seconds)

    def task_finished(
        self, key: Key, worker: str, duration: float, nbytes: int | None, value: Any = _NOVALUE
    ) -> None:
        number = key >> KEY_BITS
        queue = self.runs.get(number)
        if queue is None:
            self.transport.free(worker, [key])  # its run is over: nobody wants it
        else:
            queue.post((EV_FINISHED, key & _POSITION, worker, duration, nbytes, value))
            if number not in self.runs:  # detached while this was posted
                self._free_unread(queue, key & ~_POSITION)

    def tasks_finished(
        self, worker: str, finished: Sequence[tuple[Key, float, int | None, Any]]
    ) -> None:
        # One event for the lot, its keys left whole: a worker's batch is one run's but
        # for the few runs that share an executor at once, which go one by one.
        number = finished[0][0] >> KEY_BITS
        for entry in finished:
            if entry[0] >> KEY_BITS != number:
                for key, duration, nbytes, value in finished:
                    self.task_finished(key, worker, duration, nbytes, value)
                return
        queue = self.runs.get(number)
        if queue is None:
            self.transport.free(worker, [entry[0] for entry in finished])
        else:
            queue.post((EV_FINISHED_MANY, worker, finished))
            if number not in self.runs:  # detached while this was posted
                self._free_unread(queue, number << KEY_BITS)

    def task_failed(
        self, key: Key, worker: str, error: BaseException | Unloaded, duration: float
    ) -> None:
        queue = self.runs.get(key >> KEY_BITS)
        if queue is not None:
            queue.post((EV_FAILED, key & _POSITION, worker, error, duration))

    def task_inputs_lost(self, key: Key, worker: str, missing: Sequence[Key]) -> None:
        queue = self.runs.get(key >> KEY_BITS)
        if queue is not None:
            lost = [m & _POSITION for m in missing]
            queue.post((EV_INPUTS_LOST, key & _POSITION, worker, lost))

    def tasks_taken_back(self, worker: str, keys: Sequence[Key]) -> None:
        by_run: dict[int, list[int]] = {}
        for key in keys:
            by_run.setdefault(key >> KEY_BITS, []).append(key & _POSITION)
        for number, positions in by_run.items():
            queue = self.runs.get(number)
            if queue is not None:
                queue.post((EV_TAKEN_BACK, worker, positions))

    def started(self, workers: Mapping[str, int]) -> None:
        """The transport's ``start`` returned ``workers``: those not reported since (added,
        paused or lost while it started) join as it says. A worker lost meanwhile is not
        brought back: tasks placed there would wait for it."""
        with self._workers_lock:
            lost, self._lost_while_starting = self._lost_while_starting, None
            for worker, slots in workers.items():
                if lost is None or worker not in lost:
                    self.workers.setdefault(worker, slots)

    def worker_added(self, worker: str, slots: int) -> None:
        with self._workers_lock:
            self.workers[worker] = slots
            if self._lost_while_starting is not None:
                self._lost_while_starting.discard(worker)
        self.pauses.added(worker, slots)
        self._tell((EV_WORKER_ADDED, worker, slots))

    def worker_paused(self, worker: str, reason: str) -> None:
        with self._workers_lock:
            self.workers[worker] = 0
        since = self.pauses.pause(worker, reason)
        self._tell((EV_WORKER_PAUSED, worker, reason, since))

    def worker_lost(self, worker: str, reason: str, running: Sequence[Key] | None = None) -> None:
        with self._workers_lock:
            self.workers.pop(worker, None)
            if self._lost_while_starting is not None:
                self._lost_while_starting.add(worker)
        self.pauses.lost(worker, reason)
        self._tell((EV_WORKER_LOST, worker, reason, running))

    def no_worker_left(self, reason: str) -> None:
        self.pauses.gone = reason
        self._tell((EV_NO_WORKER_LEFT, reason))

    def _tell(self, event: tuple[Any, ...]) -> None:
        """Post ``event``, about the workers, to every run."""
        for queue in list(self.runs.values()):
            queue.post(event)


def load_reported(unloaded: Unloaded, spec: TaskSpec, what: str) -> tuple[bool, Any]:
    """``unloaded.load()``, in the driver applying the report about ``spec``:
    ``(True, value)``, or ``(False, error)``, the
    :class:`~dispatcher.SerializationError` that fails the task, for whatever loading raised
    (``what`` was loaded: ``"result"`` or ``"exception"``).

    A :class:`KeyboardInterrupt` is not the value's: it is the user's Ctrl-C reaching the
    driver's thread while it loads, and it goes on to stop the run like anywhere else in
    the driver."""
    try:
        return True, unloaded.load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # deserialising runs arbitrary code: SystemExit included
        # Imported here: the kit (and cloudpickle) is no part of a run that stays in process.
        from .remote._errors import unpickling_error

        return False, unpickling_error(spec.label, what, exc, in_caller=True)


def step(run: Run) -> bool:
    """One turn of a driver: apply what was reported, then hand out what is ready. True
    when nothing more can happen until a report arrives."""
    if run.queue.events:
        run.apply_events()
        if run.finished:
            return False
    progressed = run.dispatch()
    if progressed or run.queue.events or run.finished:
        return False  # tasks called in the caller may have readied others
    if run.table.inflight:
        # Not stalled: a report will come (look again by then if a queue is watched).
        run.capacity.deadline = run.look_again_at()
        return True
    if when_stalled(run):  # no worker can take what is left: that failed it
        return False
    if not run.table.ready and run.placement.room:
        raise RuntimeError(
            "dispatcher's scheduler stalled: nothing is running or ready but "
            f"{run.table.remaining} nodes remain; please report this as a bug"
        )
    return True


def drive_blocking(
    run: Run,
    transport: Transport,
    workers: Mapping[str, int],
    cancelled: threading.Event | None = None,
) -> None:
    """Run to the end on this thread, blocking while reports are awaited. ``cancelled``
    (with a :meth:`EventQueue.wake`) stops it from another thread."""
    run.start(transport, workers)
    wait, capacity = run.queue.wait, run.capacity
    try:
        while not run.finished:
            if step(run):
                deadline = capacity.deadline
                wait(0.25 if deadline is None else min(0.25, deadline - time.monotonic()))
                if cancelled is not None and cancelled.is_set():
                    raise RunCancelled
                if run.queue.stopped is not None:
                    raise run.queue.stopped
    except BaseException as exc:
        run.abort(run.error or exc)
        raise
    finally:
        run.release_all()


async def drive_async(
    run: Run,
    transport: Transport,
    workers: Mapping[str, int],
    call_soon: Callable[..., object],
) -> None:
    """Run to the end on the current event loop, whose ``call_soon_threadsafe`` (or
    trio's ``run_sync_soon``) is ``call_soon``; reports may come from any thread."""
    from anyio.lowlevel import checkpoint  # only drivers on an event loop need anyio

    run.start(transport, workers)
    run.turn = LOOP_TURN
    wait, capacity, clock = run.queue.wait_async, run.capacity, time.perf_counter
    turn_ends = clock() + LOOP_TURN
    extra_step = False
    try:
        while not run.finished:
            if step(run):
                deadline = capacity.deadline
                await wait(call_soon, None if deadline is None else deadline - time.monotonic())
                if run.queue.stopped is not None:
                    raise run.queue.stopped
                turn_ends = clock() + LOOP_TURN
            elif clock() > turn_ends:
                if run.queue.events and not extra_step:
                    # What was reported is applied first, in one more step: a failure
                    # posted as tasks were handed out stops the rest before the loop runs
                    # them.
                    extra_step = True
                    continue
                extra_step = False
                await checkpoint()  # progressing all the while: the loop's other tasks too
                turn_ends = clock() + LOOP_TURN
    except BaseException as exc:
        run.abort(run.error or exc)
        raise
    finally:
        run.release_all()
