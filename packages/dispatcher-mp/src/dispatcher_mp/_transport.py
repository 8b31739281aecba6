"""The ``mp`` transport: worker processes on this machine.

The caller talks to each worker through one duplex pipe. Tasks go out in batches, one
message per worker per dispatch; completions come back in batches. One reader thread in
the caller watches every pipe and every worker's process sentinel: it turns messages into
scheduler events, notices a dead worker at once (its sentinel), replaces it under the same
name, and kills a worker whose task ran past its timeout.

Data: a result stays in the worker that made it. When a task needs a result held by
another worker, the caller asks that worker for it; the holder serialises it once (large
buffers into a shared-memory segment) and the caller passes the small descriptor on with
the task; the consumer maps the segment. Results the caller asked for come back with their
completion, the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import selectors
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher import DispatcherError, TaskTimeoutError
from dispatcher.transport import (
    SHAPE_POSITIONAL,
    Capabilities,
    EventSink,
    FunctionRegistry,
    Key,
    TaskSpec,
    Transport,
    WireError,
    dumps_for,
    restore_error,
    serialization_error,
    unpickling_error,
)

from . import _worker
from ._frames import FrameReader
from ._wire import Payload, dumps, load, sweep

__all__ = ["MpTransport"]

log = logging.getLogger("dispatcher.mp")

# Arguments of these types pickle the same with pickle as with cloudpickle: they need
# no pickle of their own.
_PLAIN = frozenset({int, float, bool, str, type(None)})
_START_TIMEOUT = 120.0  # seconds a new worker may take to import and report ready
_STOP_GRACE = 1.0  # seconds workers get to exit by themselves at close


@dataclass
class _Waiting:
    """A task held back until the inputs it needs from other workers arrive."""

    spec: TaskSpec
    missing: set[Key]
    payloads: dict[Key, Payload] = field(default_factory=dict)


@dataclass
class _Worker:
    name: str
    prefix: str
    process: Any
    conn: multiprocessing.connection.Connection
    tasks: dict[Key, TaskSpec] = field(default_factory=dict)
    """Submitted and not yet reported."""
    deadlines: dict[Key, float] = field(default_factory=dict)
    functions: set[int] = field(default_factory=set)
    """Function tokens this worker has been sent."""
    outbox: deque[_Waiting] = field(default_factory=deque)
    """Tasks not sent yet, in the order submitted: the first waits for inputs from other
    workers, and the rest must not overtake it (a task may need its result)."""
    alive: bool = True
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=5)
        with self.send_lock:
            self.conn.send_bytes(data)


class MpTransport(Transport):
    """``workers`` processes started with ``start_method``; see the module docstring."""

    capabilities = Capabilities(
        survives_worker_loss=True,
        interrupts_running_tasks=True,
        separate_processes=True,
        runs_tasks_in_order=True,
    )

    def __init__(
        self,
        workers: int | None = None,
        *,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        prefetch: int = 16,
        shared_memory: bool = True,
    ) -> None:
        if workers is None:
            workers = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1)
            )
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if start_method is None:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method == "fork" and threading.active_count() > 1:
            raise ValueError(
                "start_method='fork' with threads running can deadlock the workers; "
                "use 'forkserver' or 'spawn'"
            )
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative int, got {prefetch!r}")
        self.size = workers
        self.slots = 1 + prefetch
        self.context: Any = multiprocessing.get_context(start_method)
        self.start_method = start_method
        self.shared_memory = shared_memory
        self._setup = (
            dumps_for("initializer", "initializer", (initializer, tuple(initargs)), dumps)
            if initializer is not None
            else None
        )
        # Segment names: unique to this executor, then to each worker incarnation.
        self.prefix = f"dispatcher-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._generation = itertools.count()
        self._workers: dict[str, _Worker] = {}
        self._events: EventSink | None = None
        self._registry = FunctionRegistry()
        self._function_bytes: dict[int, bytes] = {}
        self._lock = threading.RLock()
        self._cache: dict[Key, tuple[str, Payload]] = {}  # key -> (holder, serialised form)
        self._fetching: dict[Key, list[_Waiting]] = {}
        self._fetch_source: dict[Key, str] = {}
        self._requests = itertools.count()
        self._closing = False
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        started: list[_Worker] = []
        try:
            for i in range(self.size):
                started.append(self._spawn(f"mp-{i}"))
            for worker in started:
                self._await_ready(worker)
                self._workers[worker.name] = worker
        except BaseException:
            for worker in started:
                _kill(worker.process)
            self.close()
            raise
        self._reader = threading.Thread(target=self._read, name="dispatcher-mp-reader", daemon=True)
        self._reader.start()
        return {name: self.slots for name in self._workers}

    def _spawn(self, name: str) -> _Worker:
        prefix = f"{self.prefix}{next(self._generation)}-"
        parent, child = self.context.Pipe(duplex=True)
        level = logging.getLogger().getEffectiveLevel()
        process = self.context.Process(
            target=_worker.main,
            args=(child, name, prefix, self.shared_memory, self._setup, level),
            name=f"dispatcher-{name}",
            daemon=True,
        )
        process.start()
        child.close()
        return _Worker(name, prefix, process, parent)

    def _await_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            ready = multiprocessing.connection.wait(
                [worker.conn, worker.process.sentinel], max(0.0, deadline - time.monotonic())
            )
            if worker.conn in ready:
                try:
                    message = pickle.loads(worker.conn.recv_bytes())
                except (EOFError, OSError):
                    message = ("died",)
                if message[0] == "ready":
                    return
                if message[0] == "init_failed":
                    error = restore_error(message[1], "initializer", pickle.loads)
                    raise error
                if message[0] == "out":
                    _write(message[1], message[2])
                    continue
                if message[0] == "log":
                    _log(message[1])
                    continue
            if not ready or worker.process.sentinel in ready:
                worker.process.join(1)
                raise DispatcherError(
                    f"worker {worker.name} did not start "
                    f"({_exit_reason(worker.process.exitcode)}); with start_method="
                    f"{self.start_method!r} the main module must be importable and guard "
                    "its own start-up with `if __name__ == '__main__':`"
                )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing = True
            workers = list(self._workers.values())
        for worker in workers:
            try:
                worker.send(("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + _STOP_GRACE
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.is_alive():
                _kill(worker.process)
            worker.conn.close()
        os.write(self._wake_w, b"x")
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        sweep(self.prefix)

    # -- the scheduler's calls -------------------------------------------------------------

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        batches: dict[str, list[tuple[Any, ...]]] = {}
        fetches: dict[str, list[Key]] = {}
        with self._lock:
            for spec in tasks:
                worker = self._workers.get(spec.worker)
                if worker is None or not worker.alive:
                    continue  # its loss is being reported; the scheduler will retry
                worker.tasks[spec.key] = spec
                if spec.sources is None and not worker.outbox:
                    self._encode(spec, None, batches)  # every input is there or inline
                    continue
                waiting = self._gather_inputs(spec, fetches)
                if waiting.missing or worker.outbox:
                    worker.outbox.append(waiting)
                else:
                    self._encode(spec, waiting.payloads or None, batches)
            # Under the lock, before any fetch is asked for: the reader thread sends
            # what was held back only once these are on their way, never before them.
            self._send_batches(batches)
            for source, keys in fetches.items():
                holder = self._workers.get(source)
                try:
                    if holder is None or not holder.alive:
                        raise OSError
                    holder.send(("fetch", next(self._requests), keys))
                except OSError:
                    for key in keys:
                        self._fetch_failed(key, missing=True)

    def _gather_inputs(self, spec: TaskSpec, fetches: dict[str, list[Key]]) -> _Waiting:
        """The inputs ``spec`` needs from other workers: those at hand in ``payloads``,
        the others in ``missing`` and added to ``fetches`` (by holder)."""
        waiting = _Waiting(spec, set())
        if spec.sources is None:
            return waiting
        for key, source in zip(spec.deps, spec.sources, strict=True):
            if source is None or source == spec.worker:
                continue
            cached = self._cache.get(key)
            if cached is not None:
                waiting.payloads[key] = cached[1]
                continue
            waiting.missing.add(key)
            if key in self._fetching:
                self._fetching[key].append(waiting)
                continue
            self._fetching[key] = [waiting]
            self._fetch_source[key] = source
            fetches.setdefault(source, []).append(key)
        return waiting

    def _encode(
        self,
        spec: TaskSpec,
        remote: dict[Key, Payload] | None,
        batches: dict[str, list[tuple[Any, ...]]],
    ) -> None:
        """Serialise ``spec`` for its worker, into ``batches`` (see :meth:`_send_batches`)."""
        worker = self._workers[spec.worker]
        try:
            token, _ = self._registry.token(spec.func)
            if token not in worker.functions:
                data = self._function_bytes.get(token)
                if data is None:
                    data = dumps_for(spec, "function", spec.func, dumps)
                    self._function_bytes[token] = data
                worker.send(("fn", token, data))
                worker.functions.add(token)
            blob: bytes | tuple[Any, ...] | None
            if spec.inline is None and (
                spec.shape == SHAPE_POSITIONAL
                or (not spec.kwargs and all(type(a) in _PLAIN for a in spec.args))
            ):
                # Plain values travel as they are, in the batch's own pickle.
                blob = spec.args or None
            else:
                blob = dumps_for(spec, "arguments", (spec.args, spec.kwargs, spec.inline), dumps)
        except DispatcherError as error:
            worker.tasks.pop(spec.key, None)
            assert self._events is not None
            self._events.task_failed(spec.key, spec.worker, error, 0.0)
            return
        except OSError:
            return  # the worker is dying; its loss will be reported
        task = (
            spec.key,
            token,
            blob,
            spec.shape,
            spec.deps,
            remote,
            spec.want_result,
            spec.timeout is not None,
            spec.last_use,
        )
        batches.setdefault(spec.worker, []).append(task)

    def _send_batches(self, batches: dict[str, list[tuple[Any, ...]]]) -> None:
        for name, tasks in batches.items():
            worker = self._workers.get(name)
            if worker is not None:
                try:
                    worker.send(("run", tasks))
                except OSError:
                    pass  # reported as lost by the reader

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        with self._lock:
            for key in keys:
                cached = self._cache.get(key)
                if cached is not None and cached[0] == worker:
                    del self._cache[key]
            target = self._workers.get(worker)
        if target is not None and target.alive:
            try:
                target.send(("free", list(keys)))
            except OSError:
                pass

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        by_worker: dict[str, list[Key]] = {}
        with self._lock:
            for spec in tasks:
                worker = self._workers.get(spec.worker)
                if worker is not None and spec.key in worker.tasks:
                    del worker.tasks[spec.key]
                    if spec.key not in worker.deadlines:  # not started: skip it
                        by_worker.setdefault(spec.worker, []).append(spec.key)
            for name in {spec.worker for spec in tasks}:
                self._send_outbox(name)  # a cancelled task may have held the others back
        for name, keys in by_worker.items():
            try:
                self._workers[name].send(("cancel", keys))
            except (OSError, KeyError):
                pass

    # -- the reader thread ---------------------------------------------------------------

    def _read(self) -> None:
        # One selector for the life of the thread, changed only when a worker comes or
        # goes: setting one up per wait cost more than the messages it waited for.
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        watched: dict[str, tuple[_Worker, FrameReader]] = {}
        try:
            while not self._closing:
                self._watch(selector, watched)
                try:
                    ready = selector.select(self._next_deadline())
                except OSError:
                    if self._closing:
                        return
                    continue
                if self._closing:
                    return
                exited: list[tuple[_Worker, FrameReader]] = []
                for selected, _ in ready:
                    what = selected.data
                    if what is None:
                        continue  # woken: look at the workers again
                    worker, frames = what[1], what[2]
                    if what[0] == "exit":
                        exited.append((worker, frames))
                    elif worker.alive:
                        self._receive(worker, frames)
                for worker, frames in exited:
                    if worker.alive:
                        while self._receive(worker, frames, check=True):
                            pass  # what it wrote before it died
                        self._lost(worker, _exit_reason(worker.process.exitcode))
                self._enforce_deadlines()
        finally:
            selector.close()

    def _watch(
        self, selector: selectors.BaseSelector, watched: dict[str, tuple[_Worker, FrameReader]]
    ) -> None:
        """Have ``selector`` watch the pipe and the sentinel of every live worker."""
        with self._lock:
            current = {w.name: w for w in self._workers.values() if w.alive}
        for name, (worker, frames) in list(watched.items()):
            if current.get(name) is not worker:
                del watched[name]
                # By number: the pipe is closed by now, and its number may be reused.
                for fd in (frames.fd, worker.process.sentinel):
                    with contextlib.suppress(KeyError):
                        selector.unregister(fd)
        for name, worker in current.items():
            if name not in watched:
                frames = FrameReader(worker.conn.fileno())
                watched[name] = (worker, frames)
                selector.register(frames.fd, selectors.EVENT_READ, ("pipe", worker, frames))
                selector.register(
                    worker.process.sentinel, selectors.EVENT_READ, ("exit", worker, frames)
                )

    def _receive(self, worker: _Worker, frames: FrameReader, check: bool = False) -> bool:
        """Handle what ``worker``'s pipe holds; False at its end, or when there was
        nothing to read. With ``check``, look first whether there is anything at all."""
        if check:
            poller = select.poll()
            poller.register(frames.fd, select.POLLIN)
            if not poller.poll(0):
                return False
        messages = frames.read()
        if messages is None:
            return False
        for data in messages:
            self._handle(worker, pickle.loads(data))
        return True

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        events = self._events
        assert events is not None
        kind = message[0]
        if kind == "done":
            for key, duration, nbytes, payload in message[1]:
                spec = worker.tasks.pop(key, None)
                worker.deadlines.pop(key, None)
                if payload is None:
                    events.task_finished(key, worker.name, duration, nbytes)
                    continue
                try:
                    value = load(payload)
                except Exception as exc:
                    label = spec.label if spec is not None else str(key)
                    events.task_failed(
                        key, worker.name, unpickling_error(label, "result", exc), duration
                    )
                    continue
                if payload.segment is not None:
                    with self._lock:
                        self._cache[key] = (worker.name, payload)
                events.task_finished(key, worker.name, duration, nbytes, value)
        elif kind == "fail":
            _, key, duration, _, wire = message
            spec = worker.tasks.pop(key, None)
            worker.deadlines.pop(key, None)
            label = spec.label if spec is not None else str(key)
            events.task_failed(key, worker.name, _restore(wire, label), duration)
        elif kind == "started":
            spec = worker.tasks.get(message[1])
            if spec is not None and spec.timeout is not None:
                worker.deadlines[message[1]] = time.monotonic() + spec.timeout
        elif kind == "lost":
            worker.tasks.pop(message[1], None)
            events.task_inputs_lost(message[1], worker.name, message[2])
        elif kind == "data":
            with self._lock:
                for key, ok, payload in message[2]:
                    if ok:
                        self._cache[key] = (worker.name, payload)
                        self._fetched(key, payload)
                    else:
                        self._fetch_failed(key, missing=payload is None, reason=payload)
        elif kind == "out":
            _write(message[1], message[2])
        elif kind == "log":
            _log(message[1])

    def _fetched(self, key: Key, payload: Payload) -> None:
        self._fetch_source.pop(key, None)
        for waiting in self._fetching.pop(key, ()):
            waiting.missing.discard(key)
            waiting.payloads[key] = payload
            if not waiting.missing:
                self._send_outbox(waiting.spec.worker)

    def _send_outbox(self, name: str) -> None:
        """Send the tasks at the head of ``name``'s outbox that have all their inputs."""
        worker = self._workers.get(name)
        if worker is None or not worker.alive:
            return
        outbox = worker.outbox
        batches: dict[str, list[tuple[Any, ...]]] = {}
        while outbox:
            head = outbox[0]
            if head.spec.key in worker.tasks:
                if head.missing:
                    break
                self._encode(head.spec, head.payloads or None, batches)
            outbox.popleft()  # sent, or failed or cancelled meanwhile
        self._send_batches(batches)

    def _tasks_of(self, spec: TaskSpec) -> dict[Key, TaskSpec]:
        worker = self._workers.get(spec.worker)
        return worker.tasks if worker is not None and worker.alive else {}

    def _fetch_failed(self, key: Key, missing: bool, reason: Any = None) -> None:
        events = self._events
        assert events is not None
        self._fetch_source.pop(key, None)
        for waiting in self._fetching.pop(key, ()):
            spec = waiting.spec
            if self._tasks_of(spec).pop(spec.key, None) is None:
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
            self._send_outbox(spec.worker)  # what queued behind it may go now

    def _next_deadline(self) -> float | None:
        deadlines = [d for w in self._workers.values() for d in w.deadlines.values()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            late = [k for k, d in worker.deadlines.items() if d <= now]
            if not late or not worker.alive:
                continue
            # A running function cannot be stopped from outside: stop its process. The
            # node fails first, so the loss that follows does not retry it.
            assert self._events is not None
            for key in late:
                spec = worker.tasks.pop(key, None)
                del worker.deadlines[key]
                if spec is not None and spec.timeout is not None:
                    self._events.task_failed(
                        key, worker.name, TaskTimeoutError(spec.label, spec.timeout), spec.timeout
                    )
            _kill(worker.process)

    def _lost(self, worker: _Worker, reason: str) -> None:
        """A worker died: forget what it held, tell the scheduler, start a replacement."""
        assert self._events is not None
        with self._lock:
            worker.alive = False
            worker.tasks.clear()
            worker.deadlines.clear()
            worker.outbox.clear()
            for key in [k for k, (holder, _) in self._cache.items() if holder == worker.name]:
                del self._cache[key]
            # Tasks elsewhere waiting for data from the dead worker will not get it.
            stranded = [k for k, source in self._fetch_source.items() if source == worker.name]
        try:
            worker.conn.close()
        except OSError:
            pass
        worker.process.join(1)
        sweep(worker.prefix)  # a dead worker never unlinks its segments
        log.warning("worker %s was lost: %s", worker.name, reason)
        self._events.worker_lost(worker.name, reason)
        with self._lock:
            for key in stranded:
                self._fetch_failed(key, missing=True)
        if self._closing:
            return
        try:
            replacement = self._spawn(worker.name)
            self._await_ready(replacement)
        except Exception as exc:
            log.error("could not replace worker %s: %s", worker.name, exc)
            return
        with self._lock:
            self._workers[worker.name] = replacement
        self._events.worker_added(worker.name, self.slots)


def _restore(wire: WireError, label: str) -> BaseException:
    return restore_error(wire, label, pickle.loads)


def _kill(process: Any) -> None:
    try:
        os.kill(process.pid, signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass
    process.join(5)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    return f"exited with status {code}"


def _write(stream: str, text: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    try:
        target.write(text)
        target.flush()
    except (OSError, ValueError):
        pass


def _log(fields: dict[str, Any]) -> None:
    record = logging.makeLogRecord(fields)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
