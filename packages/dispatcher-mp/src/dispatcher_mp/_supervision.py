"""Keeping the ``mp`` workers going: deadlines, abandoned tasks, restarts and replacements.

Part of :class:`~dispatcher_mp._transport.MpTransport` (a base class of it, so that the data
path and the care of the processes each have a module). A task's clock starts when its
worker says it started, or, where it cannot (frozen), when the task's turn came on it. A
worker that runs a task past its timeout, or does not confirm soon enough that it dropped
a task no run wants, is restarted: the tasks queued behind that task never started, and go
to the replacement uncharged. A worker that died is reported lost and replaced. Replacements
start on their own thread; when none can start and no worker is left, every task fails with
the reason. A worker stopped (``SIGSTOP``) for :data:`FROZEN_LIMIT` seconds with tasks out is
killed and treated as one that died: an untimed task on it would otherwise wait for ever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispatcher import TaskTimeoutError
from dispatcher.remote import InFlight, Reports, RunEnded, Started, start_thread
from dispatcher.transport import KEY_BITS, EventSink, Key, TaskSpec

from ._process import (
    ExitedWhileStarting,
    KilledWhileStarting,
    WorkerProcess,
    kill,
    process_state,
)

if TYPE_CHECKING:
    from ._copies import Copies
    from ._reader import Reader

__all__ = ["ABANDON_GRACE", "FROZEN_LIMIT", "SupervisedReports", "WorkerSupervision", "is_stopped"]

log = logging.getLogger("dispatcher.mp")

START_TRIES = 5
"""Replacements of one worker started in a row that may be killed, or exit, while starting
(the OOM killer, a Ctrl-C while it imports) before the worker is given up."""

ABANDON_GRACE = 0.25
"""Seconds a worker has to confirm it is not running a task no run wants any more (it was
cancelled: its run failed fast, was interrupted or cancelled) before it is stopped and
replaced, so that the next run never waits behind it."""


FROZEN_LIMIT = 30.0
"""Seconds a worker may stay stopped (``SIGSTOP``; not a debugger's stop) with tasks out
before it is killed: its tasks are then retried as for a worker that died."""
_FROZEN_CHECK = 1.0  # how often the workers' states are read while tasks are out


def stopped_by_signal(pid: int) -> bool:
    """Is process ``pid`` stopped by a signal (``SIGSTOP``, ``SIGTSTP``)? ``False`` where
    the system cannot tell."""
    return process_state(pid) == "T"


def is_stopped(pid: int) -> bool:
    """Is process ``pid`` stopped (``SIGSTOP``, a debugger) or gone? Where the system
    cannot tell, assume so."""
    return process_state(pid) in (None, "?", "T", "t", "Z", "X")


class SupervisedReports(Reports):
    """The kit's reports; a task's own "started" replaces the clock
    :meth:`WorkerSupervision.advance` started for it."""

    def __init__(self, transport: WorkerSupervision, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.unconfirmed = transport.unconfirmed

    def started(self, worker: str, message: Started) -> None:
        self.unconfirmed.pop(message.key, None)
        super().started(worker, message)


class WorkerSupervision:
    """The workers' care, for :class:`~dispatcher_mp._transport.MpTransport`; see the
    module docstring."""

    # Provided by the transport:
    lock: threading.RLock
    workers: dict[str, WorkerProcess]
    starting: dict[str, WorkerProcess]
    start_tries: dict[str, int]
    held: dict[str, list[TaskSpec]]
    unconfirmed: dict[Key, TaskSpec]
    inflight: InFlight
    _next_frozen_check = 0.0
    _last_frozen_check = 0.0
    _frozen_since: dict[str, float] | None = None
    _gave_up: dict[int, set[str]] | None = None
    events: EventSink | None
    copies: Copies
    _fetch_source: dict[Key, str]
    _reader: Reader | None
    shipper: Any
    setup: bytes | None
    start_method: str
    slots: int
    closing: bool
    broken: str | None
    new_deadline: bool
    roster: int
    abandoning: bool

    def spawn(self, name: str) -> WorkerProcess:
        raise NotImplementedError

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        raise NotImplementedError

    def fetch_failed(self, key: Key, missing: bool, reason: Any = None) -> None:
        raise NotImplementedError

    def _wake_for_deadlines(self) -> None:
        if self.new_deadline and self._reader is not None:
            self.new_deadline = False
            self._reader.wake()

    def advance(self, worker: WorkerProcess) -> None:
        """Drop the tasks reported over from the head of ``worker.sent``. Under the lock.

        A timed task at the head is running, or about to, unless its worker is frozen:
        its clock starts now if the worker has not said it started (a frozen worker never
        will, and its task must still time out). The worker's own "started" moves the
        deadline to the actual start.
        """
        sent, out = worker.sent, self.inflight.tasks
        while sent:
            spec: TaskSpec = sent[0]
            key = spec.key
            if out.get(key) is spec:  # still out, and on this worker (the same spec)
                if (
                    spec.timeout is not None
                    and key not in self.inflight.deadlines
                    and not worker.abandoned
                ):
                    self.inflight.started(key, worker.name, time.monotonic())
                    self.unconfirmed[key] = spec
                    self.new_deadline = True
                return
            sent.popleft()
            if spec.timeout is not None:
                worker.timed -= 1
                if self.unconfirmed.get(key) is spec:
                    del self.unconfirmed[key]

    def confirmed(self, worker: WorkerProcess, keys: Sequence[Key]) -> None:
        """``worker`` is not running these cancelled tasks (and will not)."""
        with self.lock:
            for key in keys:
                worker.abandoned.pop(key, None)
            self.advance(worker)

    def next_deadline(self) -> float | None:
        """When :meth:`enforce_deadlines` must next look: the earliest task deadline or
        confirmation time of an abandoned task; ``None`` when there is neither."""
        deadline = self.inflight.next_deadline()
        # Tasks may be sent while the reader waits: it looks every second regardless.
        check = self._next_frozen_check
        deadline = check if deadline is None or check < deadline else deadline
        if not self.abandoning:
            return deadline
        with self.lock:
            abandoning = False
            for worker in self.workers.values():
                if worker.abandoned and worker.alive:
                    abandoning = True
                    first = min(worker.abandoned.values())
                    deadline = first if deadline is None else min(deadline, first)
            self.abandoning = abandoning
        return deadline

    def enforce_deadlines(self) -> None:
        """Fail the tasks past their timeout, and stop the processes running them; stop
        the workers that did not confirm in time that they dropped abandoned tasks."""
        now = time.monotonic()
        if now >= self._next_frozen_check:
            self._next_frozen_check = now + _FROZEN_CHECK
            if self.inflight.tasks:
                self._kill_frozen(now)
                now = time.monotonic()  # reading /proc took a while
        if not self.inflight.deadlines and not self.abandoning:
            return
        victims: dict[str, str] = {}
        assert self.events is not None
        with self.lock:
            late = self.inflight.expired(now)
            late = [spec for spec in late if not self._still_starting(spec, now)]
        for spec in late:
            # A running function cannot be stopped from outside: stop its process. The
            # node fails first, so the loss that follows does not retry it.
            assert spec.timeout is not None
            error = TaskTimeoutError(spec.label, spec.timeout)
            self.events.task_failed(spec.key, spec.worker, error, spec.timeout)
            victims[spec.worker] = f"stopped: {spec.label!r} ran past its timeout"
        with self.lock:
            for worker in self.workers.values():
                if worker.alive and worker.abandoned and min(worker.abandoned.values()) <= now:
                    victims.setdefault(
                        worker.name, "stopped: it kept running a task no run wants any more"
                    )
        for name, why in victims.items():
            victim = self.workers.get(name)
            if victim is not None and victim.alive:
                self.restart(victim, why)

    def given_up(self, keys_by_worker: dict[str, list[Key]]) -> None:
        """These tasks, sent to these workers, were given up on: each worker is told when
        their run ends (:meth:`tell_run_ended`)."""
        gave_up = self._gave_up
        if gave_up is None:
            gave_up = self._gave_up = {}
        for name, keys in keys_by_worker.items():
            for key in keys:
                gave_up.setdefault(key >> KEY_BITS, set()).add(name)

    def tell_run_ended(self, run: int) -> None:
        """The workers sent tasks that run ``run`` gave up on drop what of it they still
        hold (an input that reached a task skipped since, a late result), which no late
        report frees. (A run that gave up on nothing has had all it made freed.)"""
        if self._gave_up is None:
            return
        for name in self._gave_up.pop(run, ()):
            worker = self.workers.get(name)
            if worker is not None and worker.alive:
                with contextlib.suppress(OSError):
                    worker.send(RunEnded(run))

    def _kill_frozen(self, now: float) -> None:
        """Kill the workers stopped for :data:`FROZEN_LIMIT` seconds with tasks out (or
        holding an input a task out elsewhere waits for), and treat each as lost (on the
        reader's thread, which would otherwise see it die)."""
        since = self._frozen_since
        if since is None or now - self._last_frozen_check > 3 * _FROZEN_CHECK:
            # None yet, or this process did not run either (the whole job was stopped
            # with Ctrl-Z): the workers' clocks start again.
            since = self._frozen_since = {}
        self._last_frozen_check = now
        with self.lock:
            workers = [worker for worker in self.workers.values() if worker.alive]
        for worker in workers:
            if not stopped_by_signal(worker.process.pid):
                since.pop(worker.name, None)
                continue
            stopped = now - since.setdefault(worker.name, now)
            if stopped < FROZEN_LIMIT:
                continue
            with self.lock:  # a task out on it, or an input another task waits to fetch
                waited_for = (
                    any(spec.worker == worker.name for spec in self.inflight.all())
                    or worker.name in self._fetch_source.values()
                )
            if not waited_for:
                continue  # nothing waits for it
            del since[worker.name]
            kill(worker.process)
            self.lost(worker, f"killed: stopped (SIGSTOP) for {stopped:.0f} s with tasks out")

    def _still_starting(self, spec: TaskSpec, now: float) -> bool:
        """Is ``spec``, expired without its worker having said it started, about to start
        after all? Its worker may be busy getting there (loading its function, say):
        then its clock starts again. Only a worker that cannot run (stopped) times it
        out. Under the lock."""
        if self.unconfirmed.pop(spec.key, None) is not spec:
            return False
        worker = self.workers.get(spec.worker)
        if worker is None or not worker.alive or is_stopped(worker.process.pid):
            return False
        self.inflight.add(spec)
        self.inflight.started(spec.key, spec.worker, now)
        self.unconfirmed[spec.key] = spec
        return True

    def lost(self, worker: WorkerProcess, reason: str) -> None:
        """A worker died: forget what it held, tell the scheduler, start a replacement."""
        assert self.events is not None
        with self.lock:
            if not worker.alive:
                return
            self.inflight.drop_worker(worker.name)
            stranded = self._forget(worker)
        running = worker.running_key()
        worker.close()
        log.warning("worker %s was lost: %s", worker.name, reason)
        # Not knowing what ran (it died between tasks), the scheduler charges in order.
        self.events.worker_lost(worker.name, reason, None if running is None else [running])
        with self.lock:
            for key in stranded:
                self.fetch_failed(key, missing=True)
        self._start_replacement(worker.name, None)

    def restart(self, worker: WorkerProcess, reason: str) -> None:
        """Stop ``worker``, which runs a task that must not go on (past its timeout, or
        abandoned), and start another under its name.

        Whatever else was out on it was queued behind that task and never started: it
        stays out, and goes to the replacement, in order. The scheduler is not told of a
        loss (it would count those tasks as attempts): a result the worker held that is
        asked for later is reported lost then, and recomputed.
        """
        kill(worker.process)
        with self.lock:
            if not worker.alive:
                return
            name = worker.name
            pending = [spec for spec in self.inflight.all() if spec.worker == name]
            for spec in pending:
                self.inflight.deadlines.pop(spec.key, None)
                self.unconfirmed.pop(spec.key, None)
            self.held[name] = pending
            stranded = self._forget(worker)
        worker.close()
        log.warning("worker %s was restarted: %s", name, reason)
        with self.lock:
            for key in stranded:
                self.fetch_failed(key, missing=True)
        self._start_replacement(name, reason)

    def _forget(self, worker: WorkerProcess) -> list[Key]:
        """``worker`` is gone: forget what it held; return the keys other workers' tasks
        were waiting to fetch from it. Under the lock."""
        worker.alive = False
        self.roster += 1
        worker.sent.clear()
        worker.timed = 0
        worker.abandoned.clear()
        worker.outbox.clear()
        self.shipper.forget_worker(worker.name)
        self.copies.holder_lost(worker.name)
        return [k for k, source in self._fetch_source.items() if source == worker.name]

    def _start_replacement(self, name: str, restarted: str | None) -> None:
        """Start a worker in place of ``name``, off the calling thread: the reader keeps
        serving the other workers meanwhile, however long the initializer takes.
        ``restarted``: why it was stopped, when the scheduler was not told of a loss."""
        if self.closing:
            return
        start_thread(
            f"dispatcher-mp-replace-{name}",
            lambda: self._replace(name, restarted is None),
            lambda exc: self._not_replaced(name, restarted, exc),
        )

    def _replace(self, name: str, announce: bool) -> None:
        if self.closing:
            return
        # Not under the lock: starting a process can block (on a frozen forkserver, for
        # good), and the reader takes the lock to serve the other workers meanwhile.
        replacement = self.spawn(name)
        with self.lock:
            closing = self.closing
            if not closing:
                self.starting[name] = replacement  # for close() to stop if it comes first
        if closing:
            kill(replacement.process)
            replacement.close()
            return
        try:
            replacement.await_ready(self.start_method, self.setup is not None)
        except BaseException:
            kill(replacement.process)
            replacement.close()
            raise
        finally:
            with self.lock:
                self.starting.pop(name, None)
                closing = self.closing
        if closing:
            kill(replacement.process)
            replacement.close()
            return
        with self.lock:
            self.workers[name] = replacement
            self.start_tries.pop(name, None)
            self.roster += 1
            held = self.held.pop(name, [])
            held = [spec for spec in held if self.inflight.get(spec.key, name) is spec]
        if self._reader is not None:
            self._reader.wake()
        if held:
            self.submit(held)
        if announce:
            assert self.events is not None
            self.events.worker_added(name, self.slots)

    def _not_replaced(self, name: str, restarted: str | None, error: BaseException) -> None:
        """The replacement of ``name`` could not start. With no worker left, nothing can
        run: say so to every task from now on."""
        if self.closing:
            return
        if isinstance(error, (KilledWhileStarting, ExitedWhileStarting)):
            tries = self.start_tries[name] = self.start_tries.get(name, 0) + 1
            if tries < START_TRIES:
                # (Its main module imported before, for the worker it replaces.)
                said = (
                    f"the replacement of worker {name} exited while it started"
                    if isinstance(error, ExitedWhileStarting)
                    else str(error)
                )
                log.warning("%s; starting another", said)
                time.sleep(0.1 * tries)  # on the failed start's own thread
                self._start_replacement(name, restarted)
                return
        assert self.events is not None
        reason = f"worker {name} was lost and could not be restarted: {error}"
        log.error("%s", reason)
        with self.lock:
            self.held.pop(name, None)
            self.inflight.drop_worker(name)
            left = any(w.alive for w in self.workers.values()) or bool(self.starting)
            if not left and self.broken is None:
                self.broken = f"the mp executor has no worker left: {reason}"
        if restarted is not None:  # the scheduler still counts on it
            self.events.worker_lost(name, f"{restarted}, and {reason}")
        if not left:
            # Every worker is gone for good: runs fail with why, rather than wait for one.
            assert self.broken is not None
            self.events.no_worker_left(self.broken)
