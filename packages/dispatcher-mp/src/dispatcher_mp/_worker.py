"""The worker process: runs tasks in order on its main thread (the kit's
:class:`~dispatcher.remote.TaskRunner`), while a second thread keeps the pipe to the caller
answered (new tasks, frees, data other workers need)."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from queue import SimpleQueue
from typing import Any

from dispatcher.remote import (
    Cancel,
    TaskRunner,
    capture_error,
    dumps,
    from_wire,
    start_thread,
    to_wire,
)

from ._messages import (
    Data,
    Fetch,
    InitFailed,
    Initializing,
    Log,
    Output,
    Ready,
    Skipped,
    Unshare,
)
from ._shared_arguments import forget_shared
from ._wire import Payload, SharedMemory, load, unlink

IN_WORKER = False
"""Whether this process is an mp worker (it cannot start workers of its own)."""


def set_parent_death_signal() -> None:
    """Ask Linux to kill this process when its parent dies (pipe EOF is the fallback)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


EXIT_THREAD_FAILED = 70
"""A worker's exit status when one of its threads failed."""
EXIT_PIPE_REPLACED = 71
"""A worker's exit status when a task closed or replaced its pipe to the caller."""


def _exit_now(exc: BaseException) -> None:
    # A thread of this worker failed: the caller sees the process end and replaces it.
    try:
        os.write(2, f"dispatcher-mp worker: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(EXIT_THREAD_FAILED)


def forget_pipes_in_children(conn: Connection) -> None:
    """Make every process a task forks (a daemon, say) let go of this worker's pipes: to
    the caller, and to multiprocessing's forkserver and resource tracker, which wait for
    them to close to end. Held by a child that outlived the worker, they kept those
    helpers alive, orphaned, for as long as it lived. Its descriptors are made to refer
    to /dev/null, not closed: their numbers stay taken, so nothing the child inherited
    closes a later file by mistake."""
    from multiprocessing import forkserver, process, resource_tracker

    # (Private names: where a later Python moves them, only that pipe stays held.)
    fds = [
        conn.fileno(),
        getattr(getattr(process, "_parent_process", None), "_sentinel", None),
        getattr(resource_tracker._resource_tracker, "_fd", None),
        getattr(forkserver._forkserver, "_forkserver_alive_fd", None),
    ]
    held = [fd for fd in fds if isinstance(fd, int) and fd > 2]

    def after_in_child() -> None:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in held:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        os.close(null)

    os.register_at_fork(after_in_child=after_in_child)


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Channel:
    """The pipe to the caller; both threads send, so sends are serialised.

    The listening thread must never block on a full pipe (the caller may be blocked
    sending to us at that moment): it hands its replies to a sender thread instead.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self._later: SimpleQueue[bytes] = SimpleQueue()
        start_thread("dispatcher-mp-send", self._send_later, _exit_now)

    def send(self, message: Any) -> None:
        data = pickle.dumps(to_wire(message), protocol=5)
        with self.lock:
            self.conn.send_bytes(data)

    def send_soon(self, message: Any) -> None:
        """Send without ever blocking the calling thread."""
        self._later.put(pickle.dumps(to_wire(message), protocol=5))

    def _send_later(self) -> None:
        while True:
            data = self._later.get()
            try:
                with self.lock:
                    self.conn.send_bytes(data)
            except OSError:
                return


class _Forward:
    """A text stream whose writes are shipped to the caller's stream of the same name."""

    def __init__(self, channel: _Channel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.encoding = "utf-8"

    def write(self, text: str) -> int:
        if text:
            try:
                self.channel.send(Output(self.name, text))
            except OSError:
                pass
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _ForwardLogs(logging.Handler):
    """Ships log records to the caller, where its own handlers deal with them."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = self.format(record).split("\n", 1)[-1]
            fields["exc_info"] = None
            self.channel.send(Log(fields))
        except Exception:
            self.handleError(record)


class Worker(TaskRunner):
    """A worker process's tasks, results and pipe."""

    # Inputs move between workers through the caller: a small result there already
    # saves a fetch's two trips through it, and the wait of everything queued behind.
    carried_types = frozenset({int, float, complex, bool, str, bytes})

    def __init__(self, conn: Connection, prefix: str, shm: bool, running: Any = None) -> None:
        super().__init__()
        self.running = running
        """The caller's slot for the key of the task being run (see ``execute``)."""
        self.channel = _Channel(conn)
        self.conn = conn
        self.pipe = _identity(conn.fileno())
        """What the pipe's descriptor refers to: a task that closed it, or made it refer
        to something else (``os.dup2`` over descriptors it did not open), cut the worker
        off, and what it then sent went nowhere while the caller waited for ever."""
        self.shm = SharedMemory(prefix, enabled=shm)
        self.published: dict[int, Payload] = {}  # results already serialised for others
        # The caller stops a worker that does not confirm soon that it is not running a
        # cancelled task: between the two threads, ``current`` changes under this lock.
        self.ack_lock = threading.Lock()
        self.abandoning: int | None = None
        """The running task, cancelled: confirmed as soon as it ends."""

    def receive(self, message: Any) -> bool:
        if type(message) is not Cancel:
            return super().receive(message)
        with self.ack_lock:
            super().receive(message)
            current = self.current
            idle = [key for key in message.keys if key != current]
            if len(idle) != len(message.keys):
                self.abandoning = current
        if idle:
            self.channel.send_soon(Skipped(idle))
        return True

    def execute(self, record: tuple[Any, ...], func: Any) -> None:
        running = self.running
        if running is not None:
            # Should this process die now, the caller charges this task, and no other.
            running.value = -1 if self.current is None else self.current
        try:
            super().execute(record, func)
        finally:
            if _identity(self.conn.fileno()) != self.pipe:
                # Lost to the caller, which charges this task (``running`` still names it).
                os._exit(EXIT_PIPE_REPLACED)
            if running is not None:
                running.value = -1
            with self.ack_lock:
                key, self.current = self.current, None
                ended = key is not None and key == self.abandoning
                if ended:
                    self.abandoning = None
            if ended:
                self.channel.send_soon(Skipped([key]))  # type: ignore[list-item]

    def send(self, message: Any) -> None:
        self.channel.send(message)

    def answer(self, message: Any) -> None:
        self.channel.send_soon(message)

    def remote_inputs(self, deps: tuple[int, ...], remote: dict[int, Payload]) -> dict[int, Any]:
        values = {}
        for key, payload in remote.items():
            try:
                values[key] = load(payload)
            except FileNotFoundError:
                pass  # its holder dropped the segment meanwhile: reported lost, recomputed
        return values

    def pack_result(self, key: int, value: Any) -> tuple[Any, int]:
        payload = self.shm.dump(value)
        if payload.segment is not None:
            self.published[key] = payload
        return payload, payload.nbytes

    def drop(self, keys: Sequence[int]) -> None:
        super().drop(keys)
        published = self.published
        for key in keys:
            payload = published.pop(key, None)
            if payload is not None and payload.segment is not None:
                unlink(payload.segment)

    # -- the communication thread -----------------------------------------------------

    def listen(self) -> None:
        try:
            while True:
                message = from_wire(pickle.loads(self.conn.recv_bytes()))
                if type(message) is Fetch:
                    self._serve(message.keys)
                elif type(message) is Unshare:
                    forget_shared(message.segments)
                else:
                    self.receive(message)
        except (EOFError, OSError):
            # The caller is gone: nobody will ever want our results.
            self.shm.sweep()
            os._exit(0)

    def _serve(self, keys: list[int]) -> None:
        """Other workers need these results: hand over their serialised forms."""
        replies: list[tuple[int, Payload | str | None]] = []
        for key in keys:
            if key not in self.store:
                replies.append((key, None))
                continue
            payload = self.published.get(key)
            if payload is None:
                value = self.store[key]
                try:
                    payload = self.shm.dump(value)
                except BaseException as exc:
                    culprit = f"{type(value).__module__}.{type(value).__qualname__}: {exc!r}"
                    replies.append((key, culprit))
                    continue
                self.published[key] = payload
            replies.append((key, payload))
        self.channel.send_soon(Data(replies))


def main(
    conn: Connection,
    name: str,
    prefix: str,
    shm: bool,
    setup: bytes | None,
    log_level: int,
    running: Any = None,
) -> None:
    """Entry point of a worker process."""
    # The terminal sends Ctrl-C to the whole process group: the caller handles it and
    # stops us; a worker that died of it would look like a crash.
    global IN_WORKER
    IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Started with it blocked (see _process.spawn): a task's own handler must see it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    set_parent_death_signal()
    worker = Worker(conn, prefix, shm, running)
    forget_pipes_in_children(conn)
    sys.stdout = _Forward(worker.channel, "stdout")  # type: ignore[assignment]
    sys.stderr = _Forward(worker.channel, "stderr")  # type: ignore[assignment]
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(worker.channel)]
    root.setLevel(log_level)
    if setup is not None:
        worker.channel.send(Initializing())
        try:
            initializer, args = pickle.loads(setup)
            initializer(*args)
        except BaseException as exc:
            worker.channel.send(InitFailed(capture_error(exc, dumps)))
            return
    worker.channel.send(Ready(os.getpid()))
    start_thread("dispatcher-mp-listen", worker.listen, _exit_now)
    worker.serve()
    worker.shm.sweep()
