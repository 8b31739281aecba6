"""Rank 0's side: the transport the scheduler talks to, over the job's hub.

Worker ranks are named ``rank-1`` ... ``rank-N``; ``rank-N@host`` when they run on more than
one host (the host is the rank's MPI processor name), so that the scheduler keeps data on
its host and every message says where a rank runs. Tasks go to their rank in one message
per rank per dispatch; a task's inputs held by other ranks are named by rank, and the worker
fetches them from there itself, so data moves rank to rank and reaches rank 0 only when the
caller asked for it. A large plain argument goes to each rank once per run, not with every
task (:mod:`._held_arguments`; dropped by the ranks at :meth:`MpiTransport.run_finished`).

Timeouts: a rank cannot be killed and kept. When a task runs past its timeout, its node
fails with :class:`~dispatcher.TaskTimeoutError` at once; the rank is taken out of
scheduling (reported lost: what was queued there runs elsewhere, what it held is
recomputed) until the late task returns, and then comes back. A task abandoned by a
fail-fast stop is handled the same way. A task that never returns keeps its rank out for
the rest of the job, and does not stop the job from ending.

What a deadline is measured from: from the moment the rank says the task started. A task
that holds the GIL can stop its rank from saying anything at all; so a rank that runs a
task says :class:`~._messages.Alive` when it has been quiet for half a second, and a timed
task its rank has not reported started is presumed started, and stuck, once its rank has
been silent for the task's timeout plus :data:`SILENCE_GRACE` -- silence counted from the
later of the task's send and the last word from its rank. Such a task fails with
:class:`~dispatcher.TaskTimeoutError` at most that grace late.

An untimed task has no deadline: a rank silent for the silence limit while tasks are out
(a host cut off from the network, a frozen process; idle or not, since another rank's task
may fetch what it holds) is retired the same way, and the other ranks give up what they
fetch from it (:mod:`._silence`).

No capacity: a retired rank is reported paused, with the task it still runs; once every
rank is, the scheduler's one rule applies (runs wait :attr:`MpiTransport.paused_wait` for
one to come back, then fail with an error naming each rank and that task).

At the end of the job every rank is asked to stop; a rank that does not answer within
:data:`STOP_GRACE` (a task holding the GIL, forever) is named, and the job is aborted with
the program's own exit status, since otherwise ``mpiexec`` would wait for it forever.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

from dispatcher import DispatcherError, TaskTimeoutError
from dispatcher.remote import (
    Cancel,
    Done,
    Failed,
    Free,
    FunctionShipper,
    InFlight,
    Lost,
    Pickled,
    Reports,
    Run,
    RunEnded,
    Stop,
    TakeBack,
    check_count,
    dumps,
    dumps_for,
    reported_keys,
)
from dispatcher.transport import (
    KEY_BITS,
    Capabilities,
    EventSink,
    Key,
    TaskSpec,
    Transport,
)

from ._batches import encode_batches
from ._channel import STARVED, Hub, abort_job, encode
from ._held_arguments import HeldArguments
from ._launch import LAUNCH_HELP
from ._messages import IDLE, Alive, Busy, Bye, DropArguments, Peer, Reset
from ._ranks import rank_names, rank_of
from ._silence import ROOT_HEARTBEAT, SILENT, give_up_silent, silence_limit
from ._watch import Watcher

__all__ = ["IN_WORKER_RANK", "LAUNCH_HELP", "MpiTransport", "Root", "current_root"]


PREFETCH = 1024
"""The most tasks queued on a rank beyond the one it runs, by default. The scheduler keeps
about 2 ms of work queued there (``QUEUED_SECONDS``, by the tasks' calls alone), so this
caps only the queues of tasks under 2 µs; those need it long: a round trip to a rank takes
hundreds of µs on a busy machine, each one refills only the half of a queue reported done,
and rank 0's cost per task falls with the size of what it sends and hears at once. (The
price: that many tiny tasks' arguments may wait on a rank; pass ``prefetch`` lower for
tiny tasks with large list or dict arguments.)"""
_BUSY_SLEEP = 200e-6  # rank 0's longest nap while tasks are out
_IDLE_SLEEP = 5e-3  # with nothing out no report is awaited, and what rank 0 sends wakes it
SILENCE_GRACE = 2.0
"""Seconds of silence, beyond its timeout, after which a rank's unreported timed task is
presumed stuck (the rank says :class:`~._messages.Alive` every 0.5 s while it can)."""
STOP_GRACE = 5.0
"""Seconds every rank gets to answer the stop at the end of the job."""
_REMEMBERED = 256  # tasks per rank whose outcome rank 0 remembers (see Root.reported)
_SILENCE_CHECK = 0.1  # how often rank 0 looks for silent ranks
_QUIET_CHECK = 1.0  # how often rank 0 looks for silent ranks while tasks are out (_silence)
_WATCH_EVERY = 0.02  # how often rank 0 tells the watcher what each rank does


_WORKER = attrgetter("worker")


class Root:
    """Rank 0's view of the job: the hub, the worker ranks, the functions each holds."""

    def __init__(self, comm: Any, peers: Sequence[tuple[str, int]] | None = None) -> None:
        self.comm = comm
        self.peers = list(peers) if peers is not None else [("?", 0)] * comm.Get_size()
        """(host, pid) of every rank, by rank."""
        self.names = rank_names(self.peers)
        """The worker name of every rank, by rank."""
        self.ranks = list(range(1, comm.Get_size()))
        self.hub = Hub(comm, self.deliver, peers=peers)
        self.hub.tick = self.tick
        # Ranks outlive executors: what each holds is the job's to track.
        self.shipper = FunctionShipper(dumps)
        self.sending = threading.Lock()
        """Held while tasks are shipped and posted: runs on several threads submit at once,
        and the shipper counts a function held when it makes its definition, so a rank
        must get that before another run's tasks using it (and a ``Forget`` after them)."""
        self.transport: MpiTransport | None = None
        self.busy: dict[int, Key] = {}  # rank -> key of a task given up on, still running
        self.why_busy: dict[int, str] = {}
        self.reported: dict[int, dict[Key, None]] = {}
        """Per rank, (at least) the last :data:`_REMEMBERED` tasks whose outcome it
        reported: a ``Busy`` naming one of them came after its outcome, and means nothing."""
        self.heard: dict[int, float] = {}  # rank -> when it last said anything
        self.sent: dict[int, float] = {}  # rank -> when it was last sent tasks
        self.unreachable: set[int] = set()  # ranks given up on for their silence
        self.silence_limit = silence_limit()
        self._next_quiet_check = 0.0
        # When the hub came back from not running (the program held the GIL, the job was
        # stopped): what it missed meanwhile is not the ranks' silence.
        self.resumed = 0.0
        self._last_tick = time.monotonic()
        self.said_bye: set[int] = set()
        self.all_said_bye = threading.Event()
        self._next_silence_check = 0.0
        self.watcher: Watcher | None = None
        self._next_watch = 0.0
        self._next_heartbeat = 0.0
        self.lock = threading.RLock()

    def start(self) -> None:
        self.hub.start(self._hub_failed)
        self.watcher = Watcher(self.peers)

    def _hub_failed(self, error: BaseException) -> None:
        # Nothing can reach the worker ranks any more: every run would wait forever.
        abort_job(
            self.comm,
            "".join(traceback.format_exception(error))
            + "dispatcher_mpi: rank 0's communication thread failed; ending the job\n",
            1,
        )

    def deliver(self, source: int, message: Any) -> None:
        """On the hub thread: a worker rank reports."""
        self.heard[source] = time.monotonic()
        kind = type(message)
        if kind is Alive:
            return
        if kind is Bye:
            self.said_bye.add(source)
            if len(self.said_bye) == len(self.ranks):
                self.all_said_bye.set()
            return
        if kind is Busy:
            done = message.key == IDLE or message.key in self.reported.get(source, ())
            if self.busy.get(source) == SILENT:  # it speaks again: back when it is free
                if done:
                    self._back(source)
                else:
                    self.busy[source] = message.key
            elif not done:
                # It still runs a task we gave up on (its run failed fast, or its executor
                # closed): keep the rank out of scheduling until that task ends, whichever
                # executor is open by then.
                self.retire(source, message.key, "finishing a task that was abandoned")
            return
        if kind is Done or kind is Failed or kind is Lost:
            # Lost is an outcome too: an abandoned task whose inputs were gone by the
            # time it asked for them never runs, and its rank must come back all the same.
            keys = reported_keys(message)
            recent = self.reported.setdefault(source, {})
            recent.update(dict.fromkeys(keys))
            if len(recent) > 2 * _REMEMBERED:  # trimmed now and then, not once per task
                self.reported[source] = dict.fromkeys(list(recent)[-_REMEMBERED:])
            if source in self.busy and self.busy[source] in keys:
                self._back(source)
        transport = self.transport
        if transport is not None:
            transport.reports.handle(self.names[source], message)
        elif kind is Done:  # nobody wants these any more
            self.hub.post(source, Free([entry[0] for entry in message.finished]))

    def retire(self, rank: int, key: Key, reason: str, running: Sequence[Key] | None = ()) -> None:
        """Take ``rank`` out of scheduling until the task ``key`` it runs returns.
        ``running``: what is charged for it (see :meth:`MpiTransport.lose`); by default
        nothing: the task it runs failed or was given up on already, and what was queued
        behind it never started."""
        if rank in self.busy:
            return
        self.busy[rank] = key
        self.why_busy[rank] = reason
        self.hub.post(rank, Reset())  # what was queued there will run elsewhere
        transport = self.transport
        if transport is not None:
            transport.lose(rank, reason, running)
            if transport.events is not None and rank in transport.ranks:
                transport.events.worker_paused(self.names[rank], self.paused_reason(rank))

    def _back(self, rank: int) -> None:
        del self.busy[rank]
        if rank in self.unreachable:
            self.unreachable.discard(rank)
            for other in self.ranks:
                if other != rank:
                    self.hub.post(other, Peer(rank, True))
        self.why_busy.pop(rank, None)
        transport = self.transport
        if transport is not None and transport.events is not None and rank in transport.ranks:
            transport.events.worker_added(self.names[rank], transport.slots)

    def tick(self) -> None:
        now = time.monotonic()
        starved = now - self._last_tick > STARVED
        if starved:
            self.resumed = now
        self._last_tick = now
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + ROOT_HEARTBEAT
            for rank in self.ranks:
                self.hub.post(rank, Alive())
        transport = self.transport
        # While tasks are out, a completion should not wait out a long nap: nap briefly.
        self.hub.max_sleep = (
            _BUSY_SLEEP if transport is not None and transport.inflight.tasks else _IDLE_SLEEP
        )
        # A deadline passed is judged on what the ranks said until now: the hub reads
        # first (it may have been held up, by a stall or the GIL, past a report); and,
        # back from not running, once more, as reports sent meanwhile may still come in.
        if transport is not None and transport.inflight.deadlines and not starved:
            first = transport.inflight.next_deadline()
            if first is not None and first <= now:
                self.hub.receive_all()
                transport.enforce_deadlines()
        watcher = self.watcher
        if now >= self._next_watch and watcher is not None and watcher.process is not None:
            self._next_watch = now + _WATCH_EVERY
            try:
                doing = self.doing()
            except Exception:  # naming a lost rank is not worth ending the job for
                watcher.stop()
            else:
                watcher.tell(doing)
        if transport is None:
            return
        if now >= self._next_quiet_check and transport.inflight.tasks:
            self._next_quiet_check = now + _QUIET_CHECK
            give_up_silent(self, transport, now)
        if now >= self._next_silence_check and transport.unstarted:
            self._next_silence_check = now + _SILENCE_CHECK
            transport.enforce_silence(now)

    def doing(self) -> dict[int, str]:
        """What each worker rank does now, as far as rank 0 knows, for :class:`Watcher`."""
        doing = {rank: "idle" for rank in self.ranks}
        transport = self.transport
        if transport is not None:
            # Every 20 ms while tasks are out, on the hub's thread: what is out is counted
            # per rank in C, and only the head of each rank's queue is looked at.
            specs = list(transport.inflight.tasks.values())
            out = Counter(map(_WORKER, specs))
            deadlines = transport.inflight.deadlines
            shown: dict[str, TaskSpec] = {}  # per worker, the first started, or the first
            if deadlines:
                for spec in specs:
                    if spec.key in deadlines:
                        shown.setdefault(spec.worker, spec)
            for spec in specs:
                if len(shown) == len(out):
                    break
                shown.setdefault(spec.worker, spec)
            for worker, count in out.items():
                doing[rank_of(worker)] = f"running {shown[worker].label!r}" + (
                    f" ({count - 1} more queued there)" if count > 1 else ""
                )
        for rank, why in list(self.why_busy.items()):
            doing[rank] = why
        return doing

    def paused_reason(self, rank: int) -> str:
        """Why retired ``rank`` takes no task, with where it runs."""
        host, pid = self.peers[rank] if rank < len(self.peers) else ("?", 0)
        return f"{self.why_busy.get(rank, 'unavailable')} (on host {host}, pid {pid})"

    def where(self, rank: int) -> str:
        """``rank N (host H, pid P)``, for messages."""
        host, pid = self.peers[rank] if rank < len(self.peers) else ("?", 0)
        return f"rank {rank} (host {host}, pid {pid})"

    def stop(self) -> str | None:
        """At the end of the job: the open executor's work is abandoned, and every worker
        rank stops serving. Returns why the job cannot end normally (ranks that did not
        answer: ``mpiexec`` would wait for them forever), or ``None``."""
        if self.watcher is not None:
            self.watcher.stop()  # ranks exit from here on
        transport = self.transport
        if transport is not None:
            transport.close()
        for rank in self.ranks:
            self.hub.post(rank, Stop())
        if not self.ranks:
            self.all_said_bye.set()
        self.all_said_bye.wait(STOP_GRACE)
        silent = [rank for rank in self.ranks if rank not in self.said_bye]
        late = self.hub.stop(unreachable=silent)
        silent += [rank for rank in late if rank not in silent]  # said bye, then froze
        if not silent:
            return None
        lines = [f"  {self.where(rank)}: {self.why_busy.get(rank, 'no answer')}" for rank in silent]
        return (
            "dispatcher_mpi: the program is done, but these ranks do not answer (a task "
            f"holding the GIL, or a frozen process) after {STOP_GRACE:g} s:\n"
            + "\n".join(lines)
            + "\ndispatcher_mpi: ending the job\n"
        )


_root: Root | None = None


IN_WORKER_RANK = False
"""Whether this process is a worker rank (it serves rank 0; it has no ranks of its own)."""


def current_root() -> Root:
    if IN_WORKER_RANK:
        raise DispatcherError(
            "an mpi executor cannot be used inside an mpi task (a worker rank serves rank "
            "0 and has no ranks of its own); run a graph inside a task with "
            "executor='sync' or 'async', or make it part of the outer graph"
        )
    if _root is None:
        if _job_ending:
            raise DispatcherError(
                "this MPI job is ending (the program on rank 0 returned, and the worker "
                "ranks stopped): run graphs before the program returns, from its main "
                "thread or from threads it waits for"
            )
        raise DispatcherError(LAUNCH_HELP)
    if not _root.ranks:
        raise DispatcherError("this MPI job has no worker ranks (-n 1): " + LAUNCH_HELP)
    return _root


_job_ending = False  # rank 0's program returned: no root any more


def install_root(root: Root | None) -> None:
    global _root, _job_ending
    _job_ending = _root is not None and root is None
    _root = root


class MpiTransport(Transport):
    """Worker ranks of the current job; one such transport may be open at a time."""

    capabilities = Capabilities(
        separate_processes=True,
        runs_tasks_in_order=True,
        keeps_fetched_inputs=True,
        takes_back_queued_tasks=True,
    )

    def __init__(self, workers: int | None = None, prefetch: int = PREFETCH) -> None:
        self.root = current_root()
        if workers is not None:
            check_count("workers", workers, 1)
        check_count("prefetch", prefetch, 0)
        self.ranks = self.root.ranks[:workers] if workers else list(self.root.ranks)
        self.slots = 1 + prefetch
        self.events: EventSink | None = None
        self.inflight = InFlight()
        self.unstarted: dict[Key, tuple[float, TaskSpec]] = {}
        """Timed tasks out and not reported started, with when they were sent."""
        self.reports: Reports
        self.held = HeldArguments(self._out_on)
        """Large plain arguments, sent to each rank once per run."""
        self.gave_up: dict[int, set[int]] = {}
        """By run, the ranks with tasks it gave up on: told when it ends (run_finished)."""

    def start(self, events: EventSink) -> Mapping[str, int]:
        with self.root.lock:
            if self.root.transport is not None:
                raise DispatcherError(
                    "an 'mpi' executor is already open in this job; close it first "
                    "(or reuse it: with get_executor('mpi') as ex: ...)"
                )
            self.events = events
            root = self.root
            # A rank names the ranks it fetched from by number.
            self.reports = Reports(
                self.inflight, events, _received, self._free_stale, lambda rank: root.names[rank]
            )
            for rank in list(root.why_busy):
                if rank in self.ranks:  # retired by an executor before this one
                    events.worker_paused(root.names[rank], root.paused_reason(rank))
            self.root.transport = self
        return {root.names[r]: self.slots for r in self.ranks if r not in root.busy}

    def capacity_advice(self) -> str:
        return (
            "(each rank comes back when its task returns; one that never returns keeps "
            "its rank for the rest of the job)"
        )

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        with self.root.sending:
            self._submit(tasks)

    def _submit(self, tasks: Sequence[TaskSpec]) -> None:
        root = self.root
        shipper, post = root.shipper, root.hub.post
        batches: dict[int, list[tuple[Any, ...]]] = {}
        defines: dict[int, list[tuple[int, bytes]]] = {}  # sent with the batch, before it
        try:
            encode_batches(self, tasks, batches, defines)
        except BaseException:  # Ctrl-C: the functions of batches not sent are not held
            for rank, sent in defines.items():
                shipper.unship(root.names[rank], [token for token, _ in sent])
            raise
        for rank in batches.keys() | defines.keys():
            self._post_tasks(rank, batches.get(rank, []), defines.get(rank))
            forget = shipper.trim(root.names[rank])
            if forget is not None:
                post(rank, forget)

    def _post_tasks(
        self, rank: int, batch: list[tuple[Any, ...]], defines: list[tuple[int, bytes]] | None
    ) -> None:
        self.root.sent[rank] = time.monotonic()
        try:
            self.root.hub.post(rank, Run(batch, defines))
            return
        except Exception:
            pass
        # Something in the batch cannot be pickled: find it, fail it, send the rest.
        good = []
        for task in batch:
            try:
                encode(task)
                good.append(task)
            except Exception as exc:
                spec = self.inflight.take(task[0], self.root.names[rank])
                if spec is None:
                    continue
                assert self.events is not None
                try:
                    dumps_for(spec, "arguments", (spec.args, spec.kwargs, spec.inline), dumps)
                    error: BaseException = exc
                except DispatcherError as serialization:
                    error = serialization
                self.events.task_failed(spec.key, spec.worker, error, 0.0)
        if good or defines:
            self.root.hub.post(rank, Run(good, defines))

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        self.root.hub.post(rank_of(worker), Free(list(keys)))

    def run_finished(self, run: int) -> None:
        """The ranks that hold run ``run``'s large arguments drop them; those with tasks
        it gave up on drop what else of it they hold or those tasks keep (their fetched
        inputs, results), which their late reports cannot free. (A run that gave up on
        nothing has had every result it made freed already.)"""
        self._drop_held(self.held.finish(run))
        for rank in self.gave_up.pop(run, ()):
            self.root.hub.post(rank, RunEnded(run))

    def _giving_up(self, spec: TaskSpec) -> None:
        """``spec`` is given up on: its rank is told when its run ends."""
        # setdefault: the hub thread (deadlines) and a driver (cancel) may both be here.
        self.gave_up.setdefault(spec.key >> KEY_BITS, set()).add(rank_of(spec.worker))

    def _out_on(self, rank: int) -> list[TaskSpec]:
        """The tasks sent to ``rank`` and not reported yet."""
        return [s for s in list(self.inflight.tasks.values()) if rank_of(s.worker) == rank]

    def _drop_held(self, by_rank: Mapping[int, list[str]]) -> None:
        for rank, names in by_rank.items():
            self.root.hub.post(rank, DropArguments(names))

    def _free_stale(self, worker: str, keys: list[Key]) -> None:
        self.root.hub.post(rank_of(worker), Free(keys))

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        waiting, running = self.inflight.cancel(tasks)
        by_rank: dict[int, list[Key]] = {}
        for spec in waiting + running:
            by_rank.setdefault(rank_of(spec.worker), []).append(spec.key)
            self._giving_up(spec)
        for rank, keys in by_rank.items():
            self.root.hub.post(rank, Cancel(keys))

    def take_back(self, worker: str, keys: Sequence[Key]) -> None:
        self.root.hub.post(rank_of(worker), TakeBack(list(keys)))

    def close(self) -> None:
        root = self.root
        with root.lock:
            if root.transport is not self:
                return
            root.transport = None
        # Whatever this executor left on the ranks is nobody's any more.
        self._drop_held(self.held.finish())
        for rank in self.ranks:
            root.hub.post(rank, Reset())

    # -- on the hub thread ---------------------------------------------------------------

    def enforce_deadlines(self) -> None:
        assert self.events is not None
        for spec in self.inflight.expired(time.monotonic()):
            assert spec.timeout is not None
            self._giving_up(spec)
            self.events.task_failed(
                spec.key, spec.worker, TaskTimeoutError(spec.label, spec.timeout), spec.timeout
            )
            self.root.retire(
                rank_of(spec.worker), spec.key, f"still running {spec.label!r}, past its timeout"
            )

    def enforce_silence(self, now: float) -> None:
        """Fail the timed tasks whose ranks went silent without saying they started. A
        rank runs its tasks in the order sent: only the first of them still out there can
        be running, and one queued behind it waits (for as long as that one takes)."""
        assert self.events is not None
        tasks, deadlines, heard = self.inflight.tasks, self.inflight.deadlines, self.root.heard
        first: dict[str, Key] = {}
        for key, spec in tasks.items():  # in the order sent
            first.setdefault(spec.worker, key)
        for key, (sent, spec) in list(self.unstarted.items()):
            if tasks.get(key) is not spec or key in deadlines:
                del self.unstarted[key]  # reported, cancelled, or its deadline runs
                continue
            if first[spec.worker] != key:
                continue  # queued behind a task still out: its clock has not started
            rank = rank_of(spec.worker)
            assert spec.timeout is not None
            if (
                now - max(sent, heard.get(rank, 0.0), self.root.resumed)
                < spec.timeout + SILENCE_GRACE
            ):
                continue
            del self.unstarted[key]
            if self.inflight.take(key, spec.worker) is None:
                continue
            self._giving_up(spec)
            self.events.task_failed(
                key, spec.worker, TaskTimeoutError(spec.label, spec.timeout), spec.timeout
            )
            self.root.retire(
                rank, key, f"silent since {spec.label!r} was due to start, past its timeout"
            )

    def lose(self, rank: int, reason: str, running: Sequence[Key] | None = None) -> None:
        """Tell the scheduler ``rank`` is gone for now: its queue and results with it.
        ``running``: the task it still runs (failed or given up on already), so that
        none of those queued behind it, which never started, is charged."""
        if rank not in self.ranks or self.events is None:
            return
        for spec in self.inflight.drop_worker(self.root.names[rank]):
            self._giving_up(spec)  # the one it runs may report after its run is over
        self.events.worker_lost(self.root.names[rank], reason, running)


def _received(worker: str, key: Key, result: tuple[bytes, list[Any]]) -> Pickled:
    """A wanted result, left for its run's driver to unpickle: the hub's thread, which
    reports here, serves every run (see :class:`~dispatcher.remote.Reports`)."""
    header, buffers = result  # see WorkerRank.pack_result
    return Pickled(header, buffers)
