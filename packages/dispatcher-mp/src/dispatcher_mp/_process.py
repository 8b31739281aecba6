"""One worker process as the caller sees it: start it, wait until it is ready, talk to it,
stop it. Also where a worker's forwarded output and log records land."""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any, TypeVar

from dispatcher import DispatcherError
from dispatcher.remote import (
    Stop,
    check_count,
    ctrl_c_blocked_for_children,
    from_wire,
    restore_error,
    start_thread,
    to_wire,
)

from . import _worker
from ._messages import InitFailed, Initializing, Log, Output, Ready
from ._wire import sweep

__all__ = [
    "ExitedWhileStarting",
    "KilledWhileStarting",
    "Spawner",
    "WorkerProcess",
    "await_all_ready",
    "checked_options",
    "exit_reason",
    "kill",
    "kill_all",
    "reported_exits",
    "spawn",
    "wait_exits",
    "worker_limit",
    "write_output",
]

STARTING_NOTICE = 10.0
"""Seconds of starting workers after which the caller is told how far it got, and every
three times that after."""
START_TIMEOUT = 120.0
"""Seconds a new worker may take to import what it needs, run its initializer and say it
is ready."""


@dataclass
class WorkerProcess:
    name: str
    prefix: str
    process: Any
    conn: multiprocessing.connection.Connection
    outbox: deque[Any] = field(default_factory=deque)
    """Tasks not sent yet, in the order submitted: the first waits for inputs from other
    workers, and the rest must not overtake it (a task may need its result)."""
    sent: deque[Any] = field(default_factory=deque)
    """Tasks sent and not known to be over, in the order sent: the first is the one
    running, or the next to run (kept lazily: entries already reported are dropped when
    they reach the head, see ``WorkerSupervision.advance``)."""
    timed: int = 0
    """How many tasks in :attr:`sent` have a timeout: while there are any, the head of
    :attr:`sent` is kept current as reports arrive (their clocks may start there)."""
    abandoned: dict[int, float] = field(default_factory=dict)
    """Tasks cancelled after they were sent, by key, with the time by which the worker
    must have confirmed it is not running them; past it, the worker is stopped."""
    alive: bool = True
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    running: Any = None
    """A shared slot where the worker writes the key of the task it runs (``-1``
    between tasks): after its death, it names the one task that was running."""

    def running_key(self) -> int | None:
        """The task this worker was running when it died; ``None`` if none was."""
        key = self.running.value if self.running is not None else -1
        return None if key < 0 else int(key)

    def send(self, message: Any) -> None:
        data = pickle.dumps(to_wire(message), protocol=5)
        with self.send_lock:
            self.conn.send_bytes(data)

    def stop(self) -> None:
        try:
            self.send(Stop())
        except OSError:
            pass

    def close_pipe(self) -> None:
        """Close the pipe once, whichever thread gets here first: a restart and the
        executor's close() may race, and a second close could hit a descriptor that was
        reused meanwhile."""
        with self.send_lock:
            if not self.conn.closed:
                try:
                    self.conn.close()
                except OSError:
                    pass

    def close(self) -> None:
        """After its death: release the pipe, reap it, unlink the segments it left."""
        self.close_pipe()
        self.process.join(1)
        sweep(self.prefix)  # a dead worker never unlinks its segments

    def await_ready(self, start_method: str, initializer: bool = False) -> None:
        """Wait for :class:`Ready`; raise what its initializer raised, or why it died or
        did not start in time (``initializer``: whether it runs one)."""
        deadline = time.monotonic() + START_TIMEOUT
        initializing = False
        while True:
            ready = multiprocessing.connection.wait(
                [self.conn, self.process.sentinel], max(0.0, deadline - time.monotonic())
            )
            if self.conn in ready:
                try:
                    message = from_wire(pickle.loads(self.conn.recv_bytes()))
                except (EOFError, OSError):
                    message = None
                if type(message) is Ready:
                    return
                if type(message) is InitFailed:
                    raise restore_error(message.error, "initializer", pickle.loads)
                if type(message) is Initializing:
                    initializing = True
                    continue
                if type(message) in (Output, Log):
                    write_output(message)
                    continue
            if not ready and self.process.is_alive():
                kill(self.process)
                if initializing:
                    raise DispatcherError(
                        f"worker {self.name} did not start: its initializer did not "
                        f"return within {START_TIMEOUT:g} s"
                    )
                raise DispatcherError(
                    f"worker {self.name} did not start within {START_TIMEOUT:g} s: "
                    "importing what it needs (the main module, with start_method="
                    f"{start_method!r}) did not finish"
                )
            if not ready or self.process.sentinel in ready:
                self.process.join(1)
                code = self.process.exitcode
                if code is not None and code < 0:
                    raise KilledWhileStarting(
                        f"worker {self.name} was {exit_reason(code)} while it started"
                    )
                raise ExitedWhileStarting(
                    f"worker {self.name} did not start "
                    f"({exit_reason(self.process.exitcode)}); with start_method="
                    f"{start_method!r} the main module must be importable and guard "
                    "its own start-up with `if __name__ == '__main__':`"
                )


class KilledWhileStarting(DispatcherError):
    """A worker was killed by a signal before it was ready: from outside (the OOM
    killer, a user), not by what it runs, so starting another is worth trying."""


class ExitedWhileStarting(DispatcherError):
    """A worker exited before it was ready: its main module could not be imported, or a
    Ctrl-C reached it while it imported (it ignores Ctrl-C only once it runs). For the
    replacement of a worker that started, the second is the likely one, and starting
    another is worth trying."""


T = TypeVar("T")


SPAWNER_STOP_WAIT = 5.0
"""Seconds closing an executor waits for a worker start already under way to finish."""
_SPAWNER_NUDGE = 0.2  # seconds a start under way gets before a frozen forkserver is killed
_EXIT_POLL = 0.01  # seconds between looks at processes whose exits are awaited
_ZOMBIE_WAIT = 0.1  # seconds a zombie waits for its parent's word before it counts

log = logging.getLogger("dispatcher.mp")


class Spawner:
    """Starts the worker processes of one executor, from one thread that lives as long as
    the executor.

    A worker asks Linux to kill it when its parent dies, and for ``spawn`` and ``fork``
    that parent is the *thread* that started it: a worker started from a thread that ends
    first (the user's, or the one that waited for a replacement) would be killed with it.
    """

    def __init__(self) -> None:
        self._requests: SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def call(self, start: Callable[[], T]) -> T:
        """``start()``, run on the spawner thread; what it returns or raises. Once the
        spawner is stopped, a :class:`DispatcherError`: the executor is closing."""
        with self._lock:
            if self._stopped:
                raise DispatcherError("the mp executor is closing: no worker is started")
            if self._thread is None:
                self._thread = start_thread("dispatcher-mp-spawner", self._serve, _spawner_died)
            future: Future[T] = Future()
            self._requests.put((future, start))
        return future.result()

    def stop(self) -> None:
        """End the thread (once the workers it started are gone), after the starts asked
        for so far: a start cut short, by the interpreter exiting behind this daemon
        thread, leaves a process that reads half its instructions and prints a traceback.
        Waits at most :data:`SPAWNER_STOP_WAIT` (a frozen forkserver never answers)."""
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._requests.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(_SPAWNER_NUDGE)
            if thread.is_alive() and _kill_frozen_forkserver():
                log.warning("the forkserver was frozen (stopped by a signal): killed it")
            thread.join(SPAWNER_STOP_WAIT)

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            future, start = request
            try:
                future.set_result(start())
            except BaseException as exc:
                future.set_exception(exc)


def _spawner_died(error: BaseException) -> None:
    logging.getLogger("dispatcher.mp").error("the worker spawner thread failed: %r", error)


def spawn(
    context: Any, name: str, prefix: str, shared_memory: bool, setup: bytes | None
) -> WorkerProcess:
    """Start a worker process (without waiting for it to be ready)."""
    parent, child = context.Pipe(duplex=True)
    level = logging.getLogger().getEffectiveLevel()
    # (Its memory is a file unlinked as soon as it is made: nothing to clean up.)
    running = context.RawValue("q", -1)
    process = context.Process(
        target=_worker.main,
        args=(child, name, prefix, shared_memory, setup, level, running),
        name=f"dispatcher-{name}",
        daemon=True,
    )
    # (The forkserver too, with the first: neither takes a Ctrl-C meant for the caller.)
    with ctrl_c_blocked_for_children(resource_tracker=context.get_start_method() != "fork"):
        process.start()
    child.close()
    return WorkerProcess(name, prefix, process, parent, running=running)


def await_all_ready(workers: Sequence[WorkerProcess], start_method: str, initializer: bool) -> None:
    """Wait for each of ``workers`` to be ready (see :meth:`WorkerProcess.await_ready`),
    saying how far it got when that takes long: each worker imports what it needs, and
    many of them on a busy machine take minutes."""
    began = time.monotonic()
    tell_at = began + STARTING_NOTICE
    for count, worker in enumerate(workers, 1):
        worker.await_ready(start_method, initializer)
        now = time.monotonic()
        if now >= tell_at and count < len(workers):
            log.warning(
                "starting %d mp workers: %d ready after %.0f s", len(workers), count, now - began
            )
            tell_at = now + 3 * STARTING_NOTICE


WORKER_BYTES = 16 << 20
"""The least memory a worker process takes (an idle one holds about twice that): more
workers than the memory available holds at this size cannot all start."""


def worker_limit() -> tuple[int, str]:
    """The most workers this machine can start, and what sets it: the processes this user
    may run (``RLIMIT_NPROC``), and the memory available at :data:`WORKER_BYTES` each."""
    limits: list[tuple[int, str]] = []
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY:
            limits.append((soft, f"this user may run {soft} processes (RLIMIT_NPROC)"))
    except (ImportError, AttributeError, OSError, ValueError):
        pass
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        available = 0
    if available > 0:
        most = max(1, available // WORKER_BYTES)
        limits.append(
            (
                most,
                f"{available >> 20} MiB of memory is available, room for {most} worker "
                f"processes of at least {WORKER_BYTES >> 20} MiB each",
            )
        )
    if not limits:
        return 1 << 62, "no limit known"
    return min(limits)


def kill(process: Any) -> None:
    kill_all([process])


def kill_all(processes: Sequence[Any], grace: float = 5.0) -> None:
    """SIGKILL every one of ``processes``, then wait for their exits, ``grace`` seconds in
    all: with the forkserver frozen, an exit is never reported, and waiting for each in
    turn made closing take that long per worker."""
    for process in processes:
        if process.exitcode is not None:
            continue  # reaped: its pid may be another process's by now
        try:
            os.kill(process.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass
    wait_exits(processes, grace)


def reported_exits(processes: Sequence[Any]) -> None:
    """Make sure the exits of ``processes``, all killed, get reported to this process.

    A forkserver's child reports its exit through the forkserver: frozen, it never does,
    and the interpreter's exit, which joins every process multiprocessing started, would
    wait for them for ever. Killed, the forkserver closes the pipes they report through,
    which then say they ended."""
    if any(process.exitcode is None for process in processes) and _kill_frozen_forkserver():
        log.warning("the forkserver was frozen (stopped by a signal): killed it")


def wait_exits(processes: Sequence[Any], seconds: float) -> None:
    """Wait until every one of ``processes`` has exited, ``seconds`` at most in all.

    A process's exit is taken from its parent's word (``exitcode``) or, where the parent
    says nothing, from Linux: a forkserver's child reports its exit through the forkserver,
    and a frozen forkserver never does, but its dead child stays a zombie. A zombie counts
    once it has been one for :data:`_ZOMBIE_WAIT` (a forkserver that runs reaps it at
    once, and then its exit is known)."""
    deadline = time.monotonic() + seconds
    zombies: dict[int, float] = {}  # id of a process -> when it was first seen a zombie
    left = list(processes)
    while True:
        now = time.monotonic()
        left = [p for p in left if not _exited(p, zombies, now)]
        if not left or now >= deadline:
            return
        time.sleep(_EXIT_POLL)


def _exited(process: Any, zombies: dict[int, float], now: float) -> bool:
    """Has ``process`` exited? (``zombies``: when each was first seen a zombie.)"""
    if process.exitcode is not None:
        return True
    state = process_state(process.pid)
    if state is None:
        return True  # reaped: its parent's word is on its way
    if state not in ("Z", "X"):
        return False
    return now - zombies.setdefault(id(process), now) >= _ZOMBIE_WAIT


def process_state(pid: int | None) -> str | None:
    """The state letter of process ``pid`` in ``/proc`` ("R", "S", "T", "Z"...); ``None``
    if there is no such process, "?" where ``/proc`` cannot tell."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            line = stat.read()
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    # "pid (command) state ...": the command may hold spaces and parentheses.
    end = line.rfind(b")")
    return (line[end + 2 :][:1].decode() or "?") if end >= 0 else "?"


def _kill_frozen_forkserver() -> bool:
    """Kill this process's forkserver if it is stopped by a signal (SIGSTOP): frozen, it
    starts no worker and reports no exit, for any executor, and a start waiting for it
    waits for ever. Killed, the next start runs a new one. True if it was killed."""
    import multiprocessing.forkserver

    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if not isinstance(pid, int) or process_state(pid) not in ("T", "t"):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def exit_reason(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    if code == _worker.EXIT_PIPE_REPLACED:
        return (
            f"exited with status {code}: a task closed or replaced (os.dup2) its pipe to "
            "the caller, a file descriptor the task did not open; let tasks close only "
            "the descriptors they opened"
        )
    return f"exited with status {code}"


def write_output(message: Output | Log) -> None:
    """A worker's printed text to the caller's stream, its log record to the caller's
    logging."""
    if isinstance(message, Output):
        target = sys.stdout if message.stream == "stdout" else sys.stderr
        try:
            target.write(message.text)
            target.flush()
        except (OSError, ValueError):
            pass
        return
    record = logging.makeLogRecord(message.fields)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def checked_options(
    workers: int | None, start_method: str | None, prefetch: int
) -> tuple[int, str]:
    """The worker count and start method an ``mp`` executor uses; raises for options
    that cannot work here, before any process starts."""
    if _worker.IN_WORKER:
        raise DispatcherError(
            "an mp executor cannot be made inside an mp task (a worker process cannot "
            "start processes of its own); run a graph inside a task with "
            "executor='sync' or 'async', or make it part of the outer graph"
        )
    if workers is None:
        workers = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    check_count("workers", workers, 1, worker_limit())
    if start_method is None:
        methods = multiprocessing.get_all_start_methods()
        start_method = "forkserver" if "forkserver" in methods else "spawn"
    if start_method == "fork" and threading.active_count() > 1:
        raise ValueError(
            "start_method='fork' with threads running can deadlock the workers; "
            "use 'forkserver' or 'spawn'"
        )
    if start_method != "fork":
        _check_main_is_a_file(start_method)
    check_count("prefetch", prefetch, 0)
    return workers, start_method


def _check_main_is_a_file(start_method: str) -> None:
    """Fail before any worker starts when the main module names a file that is not there
    (``python - < job.py`` reads it from ``<stdin>``): multiprocessing would make every
    worker run that file first, and every worker would die of it."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or not isinstance(path, str):
        return  # run with -m, or -c, or interactively: workers do not run it
    where = os.path.join(getattr(multiprocessing.process, "ORIGINAL_DIR", None) or "", path)
    if not os.path.isfile(where):
        raise DispatcherError(
            f"the main module was read from {path}, not from a file, and worker processes "
            f"started with start_method={start_method!r} run the main module's file first: "
            "save the script to a file and run that (python job.py), or pass "
            "start_method='fork'"
        )
