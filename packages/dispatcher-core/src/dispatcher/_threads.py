"""A pool of daemon threads for plain functions under the ``async`` executor.

anyio's worker threads are not daemons, so a task abandoned at its timeout would keep the
interpreter from exiting; these threads never do.

A plain function cannot be stopped from outside its thread, so a task abandoned at its
deadline (or by a run that stopped) keeps its thread until the function returns, maybe
never. Such a thread stops counting toward the pool's size as soon as its job is known to
be abandoned -- at once through :meth:`Job.abandon`, or through the job's ``abandoned``
test the next time the pool needs a thread -- so a replacement can start and later work
never waits behind it. The abandoned thread ends when its function returns.

A job that waits for a nested run (a task calling ``run()``) likewise stops counting while
it waits (:func:`waiting`): the nested run's tasks get threads of their own, so runs
nested in every thread of the pool, at any depth, never wait for one another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from queue import SimpleQueue

__all__ = ["DaemonThreadPool", "Job", "in_pool_thread", "waiting"]

logger = logging.getLogger("dispatcher")


class _ThreadState(threading.local):
    # Defaults on the class: a thread that set nothing reads them without the
    # AttributeError a getattr with a default raises and swallows (every run() asks twice).
    pooled = False
    """This thread is a worker of some pool."""
    job: Job | None = None
    """The pool's job this thread runs now."""


_this_thread = _ThreadState()


def _forked() -> None:
    # A child forked by a task of some pool's thread runs in that thread's place, but
    # belongs to no pool: its parent's pools (and their locks, which another thread may
    # have held at the fork) are not its own.
    _this_thread.pooled = False
    _this_thread.job = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def in_pool_thread() -> bool:
    """Is this a worker thread of some :class:`DaemonThreadPool`?"""
    return _this_thread.pooled


_QUEUED, _RUNNING, _DONE, _ABANDONED, _WAITING = range(5)


def waiting() -> contextlib.AbstractContextManager[None]:
    """Around a blocking wait for a nested run: if this thread runs a job of a pool, the
    job stops counting toward the pool's size meanwhile (see the module docstring)."""
    job = _this_thread.job
    if job is None:
        return contextlib.nullcontext()
    return job._pool._waiting(job)


class Job:
    """A handle on one job submitted to a :class:`DaemonThreadPool`."""

    __slots__ = ("_pool", "_state", "abandoned", "run")

    def __init__(
        self,
        pool: DaemonThreadPool,
        run: Callable[[], None] | None,
        abandoned: Callable[[], bool] | None,
    ) -> None:
        self._pool = pool
        self._state = _QUEUED
        self.run = run
        self.abandoned = abandoned

    def abandon(self) -> None:
        """Nobody wants this job any more: if it is running, its thread stops counting
        toward the pool's size (and ends when the job returns); if it is still queued, it
        will not run."""
        self._pool._abandon(self)


class DaemonThreadPool:
    """At most ``size`` threads busy with jobs someone still wants, started on demand,
    kept while the pool lives."""

    def __init__(self, size: int, name: str = "dispatcher-thread") -> None:
        self.size = size
        self._name = name
        self._queue: SimpleQueue[Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # counted threads: idle, or running a job not yet abandoned
        self._idle = 0  # counted threads waiting for a job (or about to)
        self._pending = 0  # jobs in the queue, not yet taken by a thread
        self._running: set[Job] = set()
        self._asked = 0  # jobs submitted with an ``abandoned`` predicate, ever
        self._started = 0  # for thread names only
        self._closed = False

    def submit(self, job: Callable[[], None], abandoned: Callable[[], bool] | None = None) -> Job:
        """Run ``job()`` on some thread of the pool (it should not raise; what it raises
        is logged and the thread goes on).

        ``abandoned``, when given, says whether nobody wants the job any more; the pool
        asks it (from the submitting thread) when every thread is busy, so that threads
        stuck in unwanted jobs stop blocking new ones.
        """
        handle = Job(self, job, abandoned)
        with self._lock:
            self._pending += 1
            self._queue.put(handle)
            if abandoned is not None:
                self._asked += 1
            # Asking every running job costs each submit of a large batch: only where
            # some job can answer.
            if self._asked and self._pending > self._idle and self._threads >= self.size:
                self._release_unwanted()
            self._grow()
        return handle

    def _grow(self) -> None:
        # Called with the lock held: a thread for each queued job no idle thread will take.
        while self._pending > self._idle and self._threads < self.size and not self._closed:
            self._threads += 1
            self._idle += 1  # it starts by waiting for a job
            self._started += 1
            threading.Thread(
                target=self._work, name=f"{self._name}-{self._started}", daemon=True
            ).start()

    def _release_unwanted(self) -> None:
        # Called with the lock held.
        for handle in list(self._running):
            test = handle.abandoned
            if test is not None and test():
                self._uncount(handle)

    def _uncount(self, handle: Job) -> None:
        # Called with the lock held, for a running job.
        handle._state = _ABANDONED
        self._running.discard(handle)
        self._threads -= 1

    def _abandon(self, handle: Job) -> None:
        with self._lock:
            if handle._state in (_QUEUED, _WAITING):
                handle._state = _ABANDONED  # skipped when a thread takes it, or uncounted
            elif handle._state == _RUNNING:
                self._uncount(handle)
                self._grow()  # a replacement, if jobs are waiting

    @contextlib.contextmanager
    def _waiting(self, handle: Job) -> Iterator[None]:
        with self._lock:
            if handle._state == _RUNNING:
                self._uncount(handle)
                handle._state = _WAITING
                self._grow()  # a thread for the nested run's tasks, if they wait
        try:
            yield
        finally:
            with self._lock:
                if handle._state == _WAITING:  # counted again, even past the size
                    handle._state = _RUNNING
                    self._running.add(handle)
                    self._threads += 1

    def _work(self) -> None:
        _this_thread.pooled = True
        get = self._queue.get
        while True:
            handle = get()
            with self._lock:
                self._idle -= 1
                if handle is None:
                    self._threads -= 1
                    return
                self._pending -= 1
                if handle._state == _ABANDONED:
                    self._idle += 1
                    continue
                handle._state = _RUNNING
                self._running.add(handle)
                job = handle.run
            _this_thread.job = handle
            try:
                if job is not None:
                    job()
            except BaseException:  # a job must not raise; if one does, keep the thread
                logger.exception("a job of the %s pool raised", self._name)
            _this_thread.job = None
            # The handle may be kept by whoever submitted the job (and the job may refer
            # to it): let go of the job and what it holds, such as its input values.
            handle.run = handle.abandoned = job = None
            with self._lock:
                if handle._state == _ABANDONED:
                    return  # no longer counted: a replacement may already run
                handle._state = _DONE
                self._running.discard(handle)
                self._idle += 1

    def close(self) -> None:
        """Let idle threads go; a thread stuck in an abandoned task ends with it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = self._threads
        for _ in range(count):
            self._queue.put(None)
