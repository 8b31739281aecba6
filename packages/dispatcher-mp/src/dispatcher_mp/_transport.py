"""The ``mp`` transport: worker processes on this machine.

The caller talks to each worker through one duplex pipe. Tasks go out in batches, one
message per worker per dispatch; completions come back in batches. One reader thread in
the caller watches every pipe and every worker's process sentinel: it turns messages into
scheduler events, notices a dead worker at once (its sentinel), and enforces deadlines.
Replacing lost workers and restarting those that run a task past its timeout or one no
run wants is :mod:`._supervision`'s job. What is not about processes and pipes comes from
:mod:`dispatcher.remote`: the messages, the function shipper, the in-flight table and the
worker's task loop.

Data: a result stays in the worker that made it. When a task needs a result held by
another worker, the caller asks that worker for it; the holder serialises it once (large
buffers into a shared-memory segment) and the caller passes the small descriptor on with
the task; the consumer maps the segment. Results the caller asked for come back with their
completion, the same way. Large values held by the caller go the same way, written once
per run: ``DataNode`` and ``inputs=`` values (:mod:`._caller_values`), and plain arguments
(:mod:`._shared_arguments`, released when the run ends: :meth:`MpTransport.run_finished`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher import DispatcherError
from dispatcher.remote import (
    Cancel,
    Free,
    FunctionShipper,
    InFlight,
    Pickled,
    Run,
    TakeBack,
    dumps,
    dumps_for,
    packs_arguments,
    serialization_error,
    task_record,
)
from dispatcher.transport import (
    Capabilities,
    EventSink,
    Key,
    TaskSpec,
    Transport,
)

from ._caller_values import CallerValues
from ._copies import Copies
from ._janitor import Janitor
from ._messages import Fetch, Unshare
from ._process import (
    Spawner,
    WorkerProcess,
    await_all_ready,
    checked_options,
    kill,
    kill_all,
    reported_exits,
    spawn,
    wait_exits,
)
from ._reader import Reader
from ._shared_arguments import SharedArguments
from ._supervision import ABANDON_GRACE, SupervisedReports, WorkerSupervision
from ._wire import Payload, SharedMemory, mapped

__all__ = ["MpTransport"]

log = logging.getLogger("dispatcher.mp")


@dataclass
class _Waiting:
    """A task held back until the inputs it needs from other workers arrive."""

    spec: TaskSpec
    missing: set[Key]
    payloads: dict[Key, Payload] = field(default_factory=dict)
    asked: float = 0.0
    """When the first input it waits for was asked for (``time.perf_counter``)."""
    sources: dict[str, None] = field(default_factory=dict)
    """The workers its fetched inputs came from, in order."""
    fetched: int = 0
    """Bytes of the inputs fetched for it (those at hand cost no wait)."""

    def ask(self, key: Key) -> None:
        """It waits for ``key`` too, from now if it waited for nothing yet."""
        if not self.missing:
            self.asked = time.perf_counter()
        self.missing.add(key)

    def arrived(self, key: Key, payload: Payload, source: str | None) -> bool:
        """``key`` came from ``source``: True once nothing is missing."""
        self.missing.discard(key)
        self.payloads[key] = payload
        self.fetched += payload.nbytes
        if source is not None:
            self.sources[source] = None
        return not self.missing


def _report_move(events: EventSink | None, waiting: _Waiting) -> None:
    """Report the wait of a task whose fetched inputs have all arrived (see
    ``EventSink.inputs_moved``): they come through the caller, so the caller times them,
    from asking for them to having them; the worker then only maps them."""
    if events is not None and waiting.sources:
        seconds = time.perf_counter() - waiting.asked
        events.inputs_moved(
            waiting.spec.worker, [(tuple(waiting.sources), waiting.fetched, seconds)]
        )


class _Batch:
    """What one dispatch sends one worker: the :class:`Run` entries, and their specs in
    the same order (for the worker's :attr:`~._process.WorkerProcess.sent`)."""

    __slots__ = ("defines", "records", "specs", "timed", "worker")

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.records: list[tuple[Any, ...]] = []
        self.defines: list[tuple[int, bytes]] = []
        """The functions to define first (sent whatever becomes of their tasks: the
        shipper counts them held there)."""
        self.specs: list[TaskSpec] = []
        self.timed = 0
        """How many of them have a timeout."""


class MpTransport(WorkerSupervision, Transport):
    """``workers`` processes started with ``start_method``; see the module docstring."""

    capabilities = Capabilities(
        survives_worker_loss=True,
        interrupts_running_tasks=True,
        separate_processes=True,
        runs_tasks_in_order=True,
        takes_back_queued_tasks=True,
    )

    def __init__(
        self,
        workers: int | None = None,
        *,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        prefetch: int = 256,
        shared_memory: bool = True,
    ) -> None:
        workers, start_method = checked_options(workers, start_method, prefetch)
        self.size = workers
        self.slots = 1 + prefetch
        self.context: Any = multiprocessing.get_context(start_method)
        self.start_method = start_method
        self.shared_memory = shared_memory
        self.setup = _setup(initializer, initargs)
        # Segment names: unique to this executor, then to each worker incarnation.
        self.prefix = f"dispatcher-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._generation = itertools.count()
        self.spawner = Spawner()
        self.janitor = Janitor(self.prefix)
        self.caller_values = CallerValues(SharedMemory(f"{self.prefix}c-", shared_memory))
        self.workers: dict[str, WorkerProcess] = {}
        self.events: EventSink | None = None
        self.inflight = InFlight()
        self.shared_arguments = SharedArguments(self.prefix, shared_memory, self.inflight.all)
        self.shipper = FunctionShipper(dumps)
        self.lock = threading.RLock()
        self.copies = Copies()
        self._fetching: dict[Key, list[_Waiting]] = {}
        self._fetch_source: dict[Key, str] = {}
        self.unconfirmed: dict[Key, TaskSpec] = {}
        """Timed tasks whose clock runs from their turn, not their start (:meth:`advance`)."""
        self.new_deadline = False
        """A deadline was set outside the reader thread, which must be woken to see it."""
        self.abandoning = False
        """Some worker may have abandoned tasks to confirm (the reader then looks)."""
        self.roster = 0
        """Counts changes to the live workers (the reader then watches them anew)."""
        self.held: dict[str, list[TaskSpec]] = {}
        """Tasks for a worker being restarted, by name, to send to its replacement."""
        self.starting: dict[str, WorkerProcess] = {}
        """Replacements being started, by name."""
        self.start_tries: dict[str, int] = {}
        """Replacements of a name killed while starting, in a row (see ``_not_replaced``)."""
        self.closing = False
        self._closed = False
        self.broken: str | None = None
        """Why this transport can run nothing more (its reader thread failed)."""
        self._reader: Reader | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, events: EventSink) -> Mapping[str, int]:
        self.events = events
        started: list[WorkerProcess] = []
        try:
            for i in range(self.size):
                started.append(self.spawn(f"mp-{i}"))
            await_all_ready(started, self.start_method, self.setup is not None)
            self.workers.update((worker.name, worker) for worker in started)
        except BaseException:
            for worker in started:
                kill(worker.process)
            self.close()
            raise
        reports = SupervisedReports(
            self, self.inflight, events, self._received, self.free, carried=self._carried
        )
        self._reader = Reader(self, reports)
        self._reader.start()
        return {name: self.slots for name in self.workers}

    def spawn(self, name: str) -> WorkerProcess:
        """Start (not wait for) a worker process named ``name``."""
        prefix = f"{self.prefix}{next(self._generation)}-"
        return self.spawner.call(
            lambda: spawn(self.context, name, prefix, self.shared_memory, self.setup)
        )

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self.closing = True
            workers = list(self.workers.values())
            starting = list(self.starting.values())
        starting_processes = [worker.process for worker in starting]
        kill_all(starting_processes, grace=0.0)  # its thread sees ``closing`` and stops there
        for worker in workers:
            worker.stop()
        wait_exits([w.process for w in workers], 1.0)  # seconds to exit by themselves
        # Waited for together (a frozen forkserver reports no exit: waits would add up).
        kill_all(starting_processes + [w.process for w in workers if w.process.is_alive()])
        reported_exits(starting_processes + [w.process for w in workers])
        for worker in workers:
            worker.close_pipe()
        if self._reader is not None:
            self._reader.stop()
        self.spawner.stop()
        self.caller_values.close()
        self.shared_arguments.close()
        self.janitor.sweep_and_stop()

    # -- the scheduler's calls -------------------------------------------------------------

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        if self.broken is not None:
            _fail_all(self, tasks, self.broken)
            return
        batches: dict[str, _Batch] = {}
        fetches: dict[str, list[Key]] = {}
        unsent: list[TaskSpec] = []
        with self.lock:
            try:
                self._encode_all(tasks, batches, fetches, unsent)
                # Under the lock, before any fetch is asked for: the reader thread sends
                # what was held back only once these are on their way, never before them.
                self._send_batches(batches)
            except BaseException:  # Ctrl-C: the functions of batches not sent are not held
                for name, batch in batches.items():
                    self.shipper.unship(name, [token for token, _ in batch.defines])
                raise
            for source, keys in fetches.items():
                holder = self.workers.get(source)
                try:
                    if holder is None or not holder.alive:
                        raise OSError
                    holder.send(Fetch(keys))
                except OSError:
                    for key in keys:
                        self.fetch_failed(key, missing=True)
        assert self.events is not None
        for spec in unsent:  # never sent, so not an attempt: the scheduler places it again
            self.events.task_inputs_lost(spec.key, spec.worker, [])
        self._wake_for_deadlines()

    def _gather_inputs(self, spec: TaskSpec, fetches: dict[str, list[Key]]) -> _Waiting:
        """The inputs ``spec`` needs from other workers: those at hand in ``payloads``,
        the others in ``missing`` and added to ``fetches`` (by holder)."""
        waiting = _Waiting(spec, set())
        if spec.sources is None:
            return waiting
        for key, source in zip(spec.deps, spec.sources, strict=True):
            if source is None or source == spec.worker:
                continue
            copy = self.copies.get(key)
            if copy is not None:
                waiting.payloads[key] = copy
                continue
            waiting.ask(key)
            if key in self._fetching:
                self._fetching[key].append(waiting)
                continue
            self._fetching[key] = [waiting]
            self._fetch_source[key] = source
            fetches.setdefault(source, []).append(key)
        return waiting

    def _encode_all(
        self,
        tasks: Sequence[TaskSpec],
        batches: dict[str, _Batch],
        fetches: dict[str, list[Key]],
        unsent: list[TaskSpec],
    ) -> None:
        """Serialise ``tasks`` into ``batches`` (the inputs to ask for into ``fetches``,
        what cannot go now into ``unsent``). Under the lock."""
        out, workers = self.inflight.tasks, self.workers
        for spec in tasks:
            worker = workers.get(spec.worker)
            if worker is None or not worker.alive:
                held = self.held.get(spec.worker)
                if held is not None:  # being restarted: it will go to the replacement
                    out[spec.key] = spec
                    held.append(spec)
                else:
                    unsent.append(spec)  # its loss is being reported
                continue
            out[spec.key] = spec
            if spec.sources is None and not worker.outbox:
                self._encode(spec, None, batches)  # every input is there or inline
                continue
            waiting = self._gather_inputs(spec, fetches)
            if waiting.missing or worker.outbox:
                worker.outbox.append(waiting)
            else:
                self._encode(spec, waiting.payloads or None, batches)

    def _encode(
        self, spec: TaskSpec, remote: dict[Key, Payload] | None, batches: dict[str, _Batch]
    ) -> None:
        """Serialise ``spec`` for its worker, into ``batches`` (see :meth:`_send_batches`)."""
        name = spec.worker
        batch = batches.get(name)
        if batch is None:
            batch = batches[name] = _Batch(self.workers[name])
        try:
            token, define = self.shipper.ship(name, spec)
            if define is not None:
                batch.defines.append((define.token, define.data))
            inline = spec.inline
            if not packs_arguments(spec):
                # Plain values travel as they are, in the batch's own pickle.
                record = task_record(spec, token, None, remote)
            else:
                if inline is not None:
                    inline, mapped = self.caller_values.split(inline, self._in_use)
                    if mapped:
                        remote = {**remote, **mapped} if remote else mapped
                packed, _ = self.shared_arguments.pack(spec, (spec.args, spec.kwargs, inline))
                record = task_record(spec, token, packed, remote)
        except DispatcherError as error:
            if self.inflight.take(spec.key, name) is not None:
                assert self.events is not None
                self.events.task_failed(spec.key, name, error, 0.0)
            return
        except OSError:
            return  # the worker is dying; its loss will be reported
        batch.records.append(record)
        batch.specs.append(spec)
        if spec.last_use:
            self.copies.used_up_by(spec, self.inflight.tasks)
        if spec.timeout is not None:
            batch.timed += 1

    def _in_use(self, key: Key) -> bool:
        """Does a task out read caller value ``key``?"""
        return any(s.inline is not None and key in s.inline for s in self.inflight.all())

    def _send_batches(self, batches: dict[str, _Batch]) -> None:
        """Send each worker its batch, taking those sent out of ``batches``. Locked."""
        for name, batch in list(batches.items()):
            worker = batch.worker
            if self.workers.get(name) is not worker:
                continue  # replaced meanwhile: what was out on it is being dealt with
            try:
                worker.send(Run(batch.records, batch.defines or None))
                del batches[name]
                forget = self.shipper.trim(name)
                if forget is not None:
                    worker.send(forget)
            except OSError:
                pass  # reported as lost by the reader
            worker.sent.extend(batch.specs)
            worker.timed += batch.timed
            self.advance(worker)
        _unshare(self.workers.values(), self.shared_arguments.take_unshared())

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        with self.lock:
            self.copies.freed(worker, keys)
            target = self.workers.get(worker)
            if target is not None:
                self.advance(target)  # so that what is over is not kept until the next send
        if target is not None and target.alive:
            try:
                target.send(Free(list(keys)))
            except OSError:
                pass

    def run_finished(self, run: int) -> None:
        """Unlink the segments of run ``run``'s large arguments; workers drop them, and
        what else of it they hold for tasks it gave up on."""
        with self.lock:
            _unshare(self.workers.values(), self.shared_arguments.segments_of(run))
            self.tell_run_ended(run)
            self.copies.run_ended(run)

    def take_back(self, worker: str, keys: Sequence[Key]) -> None:
        """The worker gives back those still queued; a task still in its outbox stays."""
        target = self.workers.get(worker)
        if target is not None and target.alive:
            with contextlib.suppress(OSError):  # lost: its loss says what becomes of them
                target.send(TakeBack(list(keys)))

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        """Forget these tasks. Those sent already are abandoned: the worker skips them
        if queued, and must confirm within :data:`ABANDON_GRACE` that it is not running
        any of them, or it is stopped and replaced (see :meth:`enforce_deadlines`)."""
        by_worker: dict[str, list[Key]] = {}
        with self.lock:
            waiting, running = self.inflight.cancel(tasks)
            confirm_by = time.monotonic() + ABANDON_GRACE
            sent: dict[str, set[int]] = {}  # per worker, the specs on their way to it
            for spec in (*waiting, *running):
                worker = self.workers.get(spec.worker)
                if worker is None or not worker.alive:
                    continue
                on_its_way = sent.get(spec.worker)
                if on_its_way is None:
                    on_its_way = sent[spec.worker] = {id(s) for s in worker.sent}
                if id(spec) in on_its_way:
                    worker.abandoned[spec.key] = confirm_by
                    self.abandoning = True
                    by_worker.setdefault(spec.worker, []).append(spec.key)
            for name in {spec.worker for spec in tasks}:
                self.send_outbox(name)  # a cancelled task may have held the others back
                worker = self.workers.get(name)
                if worker is not None:
                    self.advance(worker)
        for name, keys in by_worker.items():
            try:
                self.workers[name].send(Cancel(keys))
            except (OSError, KeyError):
                pass
        if by_worker:
            self.given_up(by_worker)
            self.new_deadline = True
        self._wake_for_deadlines()

    # -- called by the reader thread -----------------------------------------------------

    def _received(self, worker: str, key: Key, payload: Payload) -> Pickled:
        """A wanted result, left for its run's driver to unpickle (see
        :class:`~dispatcher.remote.Reports`). A segment is mapped now, while it is sure to
        exist: the worker's segments are swept if it dies before the driver unpickles."""
        if payload.segment is None:
            return Pickled(payload.data, payload.buffers)
        buffers = mapped(payload)
        with self.lock:
            self.copies.keep(worker, key, payload)
        return Pickled(payload.data, buffers)

    def _carried(self, worker: str, finished: list[tuple[Key, float, int | None, Any]]) -> None:
        """The small results ``worker`` sent along unasked are kept as if fetched."""
        with self.lock:
            self.copies.carried(worker, finished, self.inflight.tasks)

    def fetched(self, key: Key, payload: Payload) -> None:
        """Result ``key`` arrived serialised: send what waited for it, and report the
        move each task that has all its inputs now waited for. Under the lock."""
        source = self._fetch_source.pop(key, None)
        for waiting in self._fetching.pop(key, ()):
            if waiting.arrived(key, payload, source):
                _report_move(self.events, waiting)
                self.send_outbox(waiting.spec.worker)

    def send_outbox(self, name: str) -> None:
        """Send the tasks at the head of ``name``'s outbox that have all their inputs."""
        worker = self.workers.get(name)
        if worker is None or not worker.alive:
            return
        outbox = worker.outbox
        batches: dict[str, _Batch] = {}
        while outbox:
            head: _Waiting = outbox[0]
            if self.inflight.get(head.spec.key, name) is head.spec:
                if head.missing:
                    break
                self._encode(head.spec, head.payloads or None, batches)
            outbox.popleft()  # sent, or failed or cancelled meanwhile
        self._send_batches(batches)

    def fetch_failed(self, key: Key, missing: bool, reason: Any = None) -> None:
        """Result ``key`` could not be had (gone, or not serialisable). Under the lock."""
        events = self.events
        assert events is not None
        self._fetch_source.pop(key, None)
        for waiting in self._fetching.pop(key, ()):
            spec = waiting.spec
            if self.inflight.take(spec.key, spec.worker) is None:
                continue
            if missing:
                events.task_inputs_lost(spec.key, spec.worker, [key])
            else:
                error = DispatcherError(f"an input of {spec.label!r} could not be sent: {reason}")
                events.task_failed(
                    spec.key,
                    spec.worker,
                    serialization_error(spec.label, "input", None, error),
                    0.0,
                )
            self.send_outbox(spec.worker)  # what queued behind it may go now

    def reader_failed(self, error: BaseException) -> None:
        """The reader thread died of ``error``: nothing more will be heard from any
        worker. Fail what is out and whatever comes, saying why."""
        reason = (
            f"the mp executor stopped working: its reader thread failed with "
            f"{type(error).__name__}: {error}; close it and make a new one"
        )
        log.error("%s", reason, exc_info=error)
        with self.lock:
            self.broken = reason
            specs = self.inflight.all()
        _fail_all(self, specs, reason)


def _fail_all(transport: MpTransport, specs: Sequence[TaskSpec], reason: str) -> None:
    """Fail ``specs`` with ``reason``: ``transport`` can run nothing more."""
    events = transport.events
    assert events is not None
    for spec in specs:
        transport.inflight.take(spec.key, spec.worker)
        events.task_failed(spec.key, spec.worker, DispatcherError(reason), 0.0)


def _unshare(workers: Iterable[WorkerProcess], segments: list[str]) -> None:
    """Tell ``workers`` to drop their mappings of the shared arguments in ``segments``."""
    if segments:
        for worker in workers:
            with contextlib.suppress(OSError):  # lost: its mappings went with it
                worker.send(Unshare(segments))


def _setup(initializer: Callable[..., Any] | None, initargs: Sequence[Any]) -> bytes | None:
    """What each worker runs first, pickled: ``initializer(*initargs)``; ``None``: nothing."""
    if initializer is None:
        return None
    if not callable(initializer):
        raise TypeError(f"initializer must be callable, got {initializer!r}")
    try:
        arguments = tuple(initargs)
    except TypeError:
        raise TypeError(
            f"initargs must be a sequence of the initializer's arguments, got {initargs!r}"
        ) from None
    return dumps_for("initializer", "initializer", (initializer, arguments), dumps)
