"""The caller's reader thread: every worker's pipe and process sentinel, one selector.

It hands each message to the kit's :class:`~dispatcher.remote.Reports` (completions,
failures, starts, lost inputs) or to the transport (data fetched for other workers,
forwarded output), notices a worker's death at once, and enforces deadlines. It runs
supervised: whatever escapes it fails every task out, with the reason, and the transport
refuses further work, rather than leaving every run waiting for reports that never come.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import selectors
import threading
import time
from typing import Any, Protocol

from dispatcher.remote import InFlight, Reports, from_wire, start_thread

from ._copies import Copies
from ._frames import FrameReader
from ._messages import Data, Log, Output, Skipped
from ._process import WorkerProcess, exit_reason, write_output
from ._wire import Payload

__all__ = ["Reader"]

_TRIM_AT = 256


class Owner(Protocol):
    """What the reader needs of its transport."""

    closing: bool
    roster: int
    lock: Any
    workers: dict[str, WorkerProcess]
    inflight: InFlight
    copies: Copies

    def lost(self, worker: WorkerProcess, reason: str) -> None: ...
    def advance(self, worker: WorkerProcess) -> None: ...
    def confirmed(self, worker: WorkerProcess, keys: list[int]) -> None: ...
    def next_deadline(self) -> float | None: ...
    def enforce_deadlines(self) -> None: ...
    def fetched(self, key: int, payload: Payload) -> None: ...
    def fetch_failed(self, key: int, missing: bool, reason: Any = None) -> None: ...
    def reader_failed(self, error: BaseException) -> None: ...


_LONGEST_WAIT = 86400.0
"""Seconds the reader waits at most for a deadline (days-long timeouts are valid)."""


_DRAIN_ROUNDS = 64
"""Reads of every ready pipe, at most, before a deadline is judged (one read takes what
one ``os.read`` returns: a long pause can leave more than that in a pipe)."""


class Reader:
    """The thread that listens to ``transport``'s workers."""

    def __init__(self, transport: Owner, reports: Reports) -> None:
        self.transport = transport
        self.reports = reports
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        self._thread = start_thread("dispatcher-mp-reader", self.run, self.transport.reader_failed)

    def wake(self) -> None:
        """Have the thread look at the workers and deadlines again."""
        if not self._stopped:  # after stop, the number may belong to another file
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Wake the thread to see the transport closing, and wait for it."""
        self._stopped = True
        os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def run(self) -> None:
        # One selector for the life of the thread, changed only when a worker comes or
        # goes: setting one up per wait cost more than the messages it waited for.
        transport = self.transport
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        watched: dict[str, tuple[WorkerProcess, FrameReader]] = {}
        roster = None
        try:
            while not transport.closing:
                if roster != transport.roster:
                    roster = transport.roster
                    self._watch(selector, watched)
                deadline = transport.next_deadline()
                try:
                    ready = selector.select(
                        None
                        if deadline is None
                        # (A wait past what poll() takes overflows: look again by then.)
                        else min(_LONGEST_WAIT, max(0.0, deadline - time.monotonic()))
                    )
                except OSError:
                    if transport.closing:
                        return
                    continue
                if transport.closing:
                    return
                self._take(ready)
                if deadline is not None and time.monotonic() >= deadline:
                    self._drain(selector)
                transport.enforce_deadlines()
        finally:
            selector.close()

    def _drain(self, selector: selectors.BaseSelector) -> None:
        """Read what the workers wrote while this thread did not run (its process stopped,
        or starved), before any deadline is judged: a report waiting in a pipe says its
        task ended in time. (A wait that timed out may not say what became readable
        meanwhile.)"""
        for _ in range(_DRAIN_ROUNDS):
            try:
                ready = selector.select(0)
            except OSError:  # a pipe closed meanwhile: the next turn watches anew
                return
            if not ready or self.transport.closing:
                return
            self._take(ready)

    def _take(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Handle what the selector found: messages, and workers that ended."""
        transport = self.transport
        exited: list[tuple[WorkerProcess, FrameReader]] = []
        for selected, _ in ready:
            what = selected.data
            if what is None:
                os.read(self._wake_r, 4096)
                continue  # woken: look at the workers again
            worker, frames = what[1], what[2]
            if what[0] == "exit":
                exited.append((worker, frames))
            elif worker.alive and not self._receive(worker, frames):
                # The end of its pipe: it is gone, whether or not its exit was
                # seen (a frozen forkserver never reports it).
                exited.append((worker, frames))
        for worker, frames in exited:
            if worker.alive:
                while self._receive(worker, frames, check=True):
                    pass  # what it wrote before it died
                transport.lost(worker, _ending(worker))

    def _watch(
        self,
        selector: selectors.BaseSelector,
        watched: dict[str, tuple[WorkerProcess, FrameReader]],
    ) -> None:
        """Have ``selector`` watch the pipe and the sentinel of every live worker."""
        transport = self.transport
        with transport.lock:
            current = {w.name: w for w in transport.workers.values() if w.alive}
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

    def _receive(self, worker: WorkerProcess, frames: FrameReader, check: bool = False) -> bool:
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
        handle, name = self.reports.handle, worker.name
        for data in messages:
            message = from_wire(pickle.loads(data))
            if not handle(name, message):
                self._other(worker, message)
        # Sending trims ``sent`` too: here only when a timed task's clock may start now
        # that those before it are over, or when sends are rare.
        if worker.timed or len(worker.sent) > _TRIM_AT:
            with self.transport.lock:
                self.transport.advance(worker)
        return True

    def _other(self, worker: WorkerProcess, message: object) -> None:
        if type(message) is Data:
            transport = self.transport
            with transport.lock:
                for key, reply in message.replies:
                    if isinstance(reply, Payload):
                        transport.copies.keep(worker.name, key, reply)
                        transport.fetched(key, reply)
                    else:
                        transport.fetch_failed(key, missing=reply is None, reason=reply)
        elif type(message) is Skipped:
            self.transport.confirmed(worker, message.keys)  # type: ignore[attr-defined]
        elif type(message) in (Output, Log):
            write_output(message)  # type: ignore[arg-type]


def _ending(worker: WorkerProcess) -> str:
    """How ``worker`` ended, as far as can be told now."""
    process = worker.process
    if process.exitcode is None:
        process.join(0.1)  # its pipe ended as it exited: its status is usually there
    if process.exitcode is None:
        return "its pipe to the caller closed, and its exit was not reported"
    return exit_reason(process.exitcode)
