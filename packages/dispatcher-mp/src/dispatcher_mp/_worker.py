"""The worker process: runs tasks in order on its main thread, while a second thread keeps
the pipe to the caller answered (new tasks, frees, data other workers need).

Messages are pickled tuples; see ``_transport`` for the caller's side of each.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from queue import SimpleQueue
from time import perf_counter
from typing import Any

from dispatcher.transport import (
    capture_error,
    serialization_error,
    size_of,
    unpickling_error,
)

from ._wire import Payload, SharedMemory, dumps, load

_STOP = object()
_REPORT_NOW = 1e-3  # seconds: a task this long is reported without waiting for others


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


class _Channel:
    """The pipe to the caller; both threads send, so sends are serialised.

    The listening thread must never block on a full pipe (the caller may be blocked
    sending to us at that moment): it hands its replies to a sender thread instead.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self._later: SimpleQueue[bytes] = SimpleQueue()
        threading.Thread(target=self._send_later, name="dispatcher-mp-send", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=5)
        with self.lock:
            self.conn.send_bytes(data)

    def send_soon(self, message: tuple[Any, ...]) -> None:
        """Send without ever blocking the calling thread."""
        self._later.put(pickle.dumps(message, protocol=5))

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
                self.channel.send(("out", self.name, text))
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
            self.channel.send(("log", fields))
        except Exception:
            self.handleError(record)


class Worker:
    def __init__(self, conn: Connection, name: str, prefix: str, shm: bool) -> None:
        self.name = name
        self.channel = _Channel(conn)
        self.conn = conn
        self.shm = SharedMemory(prefix, enabled=shm)
        self.store: dict[int, Any] = {}
        self.published: dict[int, Payload] = {}  # results already serialised for others
        self.functions: dict[int, Any] = {}
        self.cancelled: set[int] = set()
        self.queue: SimpleQueue[Any] = SimpleQueue()
        self.done: list[tuple[Any, ...]] = []

    # -- the communication thread -----------------------------------------------------

    def listen(self) -> None:
        try:
            while True:
                message = pickle.loads(self.conn.recv_bytes())
                kind = message[0]
                if kind == "run":
                    for task in message[1]:
                        self.queue.put(task)
                elif kind == "fn":
                    self._define(message[1], message[2])
                elif kind == "free":
                    self._free(message[1])
                elif kind == "fetch":
                    self._serve(message[1], message[2])
                elif kind == "cancel":
                    self.cancelled.update(message[1])
                elif kind == "stop":
                    self.queue.put(_STOP)
                    return
        except (EOFError, OSError):
            # The caller is gone: nobody will ever want our results.
            self.shm.sweep()
            os._exit(0)

    def _define(self, token: int, data: bytes) -> None:
        try:
            self.functions[token] = pickle.loads(data)
        except BaseException as exc:  # kept for the tasks that use it to report
            self.functions[token] = _Unloadable(exc)

    def _free(self, keys: Sequence[int]) -> None:
        store, published = self.store, self.published
        for key in keys:
            store.pop(key, None)
            self.cancelled.discard(key)
            payload = published.pop(key, None)
            if payload is not None and payload.segment is not None:
                from ._wire import unlink

                unlink(payload.segment)

    def _serve(self, request: int, keys: list[int]) -> None:
        """Other workers need these results: hand over their serialised forms."""
        replies: list[tuple[int, bool, Payload | str | None]] = []
        for key in keys:
            if key not in self.store:
                replies.append((key, False, None))
                continue
            payload = self.published.get(key)
            if payload is None:
                value = self.store[key]
                try:
                    payload = self.shm.dump(value)
                except Exception as exc:
                    culprit = f"{type(value).__module__}.{type(value).__qualname__}: {exc}"
                    replies.append((key, False, culprit))
                    continue
                self.published[key] = payload
            replies.append((key, True, payload))
        self.channel.send_soon(("data", request, replies))

    # -- the main thread -------------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self.listen, name="dispatcher-mp-listen", daemon=True).start()
        queue = self.queue
        while True:
            task = queue.get()
            if task is _STOP:
                break
            self._execute(task)
            if self.done and queue.empty():
                self._flush()
        self._flush()

    def _flush(self) -> None:
        done, self.done = self.done, []
        if done:
            self.channel.send(("done", done))

    def _execute(self, task: tuple[Any, ...]) -> None:
        key, token, blob, shape, deps, remote, want, timed, last_use = task
        if key in self.cancelled:
            self.cancelled.discard(key)
            return
        func = self.functions[token]
        if isinstance(func, _Unloadable):
            self._fail_now(key, unpickling_error(key, "function", func.error))
            return
        try:
            if blob is None:
                args, kwargs, inline = (), None, None
            elif type(blob) is tuple:  # plain arguments, unpickled with the batch
                args, kwargs, inline = blob, None, None
            else:
                args, kwargs, inline = pickle.loads(blob)
        except Exception as exc:
            self._fail_now(key, unpickling_error(key, "arguments", exc))
            return
        values = []
        missing = []
        store = self.store
        for dep in deps:
            if inline is not None and dep in inline:
                values.append(inline[dep])
            elif remote is not None and dep in remote:
                values.append(load(remote[dep]))
            elif dep in store:
                values.append(store[dep])
            else:
                missing.append(dep)
        if missing:
            self._flush()
            self.channel.send(("lost", key, missing))
            return
        if last_use:
            self._free(last_use)  # nothing else reads them: do not wait to be told
        if timed:
            self._flush()
            self.channel.send(("started", key))
        start = perf_counter()
        try:
            value = _call(func, args, kwargs, shape, values)
        except Exception as exc:
            self._flush()
            self.channel.send(
                ("fail", key, perf_counter() - start, "error", capture_error(exc, dumps))
            )
            return
        duration = perf_counter() - start
        store[key] = value
        payload = None
        if want:
            try:
                payload = self.shm.dump(value)
            except Exception as exc:
                del store[key]
                self._fail_now(key, serialization_error(key, "result", value, exc))
                return
            if payload.segment is not None:
                self.published[key] = payload
        self.done.append((key, duration, payload.nbytes if payload else size_of(value), payload))
        # Completions of tiny tasks travel together; after a long one the caller hears
        # at once, so the next task arrives before this worker's queue runs dry.
        if len(self.done) >= 64 or duration >= _REPORT_NOW:
            self._flush()

    def _fail_now(self, key: int, error: BaseException) -> None:
        self._flush()
        self.channel.send(("fail", key, 0.0, "error", capture_error(error, dumps)))


class _Unloadable:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _call(func: Any, args: Any, kwargs: Any, shape: int, values: list[Any]) -> Any:
    from dispatcher.transport import call_task

    value = call_task(func, args, kwargs, shape, values)
    if inspect.isawaitable(value):

        async def wait() -> Any:
            return await value

        value = asyncio.run(wait())
    return value


def main(
    conn: Connection, name: str, prefix: str, shm: bool, setup: bytes | None, log_level: int
) -> None:
    """Entry point of a worker process."""
    # The terminal sends Ctrl-C to the whole process group: the caller handles it and
    # stops us; a worker that died of it would look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal()
    worker = Worker(conn, name, prefix, shm)
    sys.stdout = _Forward(worker.channel, "stdout")  # type: ignore[assignment]
    sys.stderr = _Forward(worker.channel, "stderr")  # type: ignore[assignment]
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(worker.channel)]
    root.setLevel(log_level)
    if setup is not None:
        try:
            initializer, args = pickle.loads(setup)
            initializer(*args)
        except BaseException as exc:
            worker.channel.send(("init_failed", capture_error(exc, dumps)))
            return
    worker.channel.send(("ready", os.getpid()))
    worker.serve()
    worker.shm.sweep()
