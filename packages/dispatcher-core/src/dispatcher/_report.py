"""``report="run.html"``: record every task attempt of a run, then write an HTML report.

:class:`ReportWriter` is an observer: it notes when each task was handed to a worker, when
it finished, failed or was retried, and on ``dispatcher_run_finished`` writes a
self-contained page (see :mod:`dispatcher._report_html`) next to nothing else: no network,
no scripts from anywhere, so the file can be mailed, archived and opened offline.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import DependencyError, safe_str
from ._hooks import hookimpl
from ._report_model import (
    ABANDONED,
    CACHED,
    FAILED,
    LOST,
    OK,
    RETRIED,
    SKIPPED,
    Attempt,
    RunRecord,
)

if TYPE_CHECKING:
    from ._executor import Executor
    from ._graph import DispatchGraph
    from ._nodes import DispatchNode

__all__ = ["ReportWriter"]

log = logging.getLogger("dispatcher.report")


class ReportWriter:
    """An observer that writes an HTML report of each run it sees to ``path``.

    ``run(..., report="run.html")`` makes one per run. The directory must exist; a path that
    cannot be written is reported before the run starts, not after it ends.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"report path {str(self.path)!r} is a directory")
        parent = self.path.parent
        if not parent.is_dir():
            raise FileNotFoundError(
                f"cannot write the report to {str(self.path)!r}: "
                f"directory {str(parent)!r} does not exist"
            )
        self.record: RunRecord | None = None
        """The last run's record (kept after the report is written, for inspection)."""
        self._t0 = 0.0
        self._ids: dict[DispatchNode, int] = {}
        self._running: dict[DispatchNode, Attempt] = {}
        self._last: dict[DispatchNode, Attempt] = {}
        self._graphs: list[DispatchGraph] = []
        self._executor: Executor | None = None

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    def _task(self, node: DispatchNode) -> int:
        task = self._ids.get(node)
        if task is None:
            assert self.record is not None
            task = self._ids[node] = len(self.record.labels)
            self.record.labels.append(node.label)
            self.record.kinds.append(node.kind)
            self.record.descriptions.append(str(node))
        return task

    def _close(self, node: DispatchNode, status: str, error: BaseException | None) -> Attempt:
        """End the node's running attempt (or record one that never started)."""
        attempt = self._running.pop(node, None)
        now = self._now()
        if attempt is None:
            assert self.record is not None
            attempt = Attempt(self._task(node), "main", now)
            self.record.attempts.append(attempt)
        attempt.end = now
        attempt.status = status
        if error is not None:
            attempt.error = _one_line(error)
        self._last[node] = attempt
        return attempt

    def _unsent(self, node: DispatchNode) -> None:
        """Forget the node's attempt in progress: it never ran."""
        assert self.record is not None
        attempt = self._running.pop(node)
        attempts = self.record.attempts
        for i in range(len(attempts) - 1, -1, -1):
            if attempts[i] is attempt:
                del attempts[i]
                break

    # -- hooks ---------------------------------------------------------------------------

    @hookimpl
    def dispatcher_run_started(self, graph: DispatchGraph, executor: Executor) -> None:
        self._t0 = time.perf_counter()
        self._ids.clear()
        self._running.clear()
        self._last.clear()
        self._graphs = [graph]
        self.record = RunRecord(executor.name, len(graph), datetime.now().astimezone())
        # Workers that run one task at a time, in the order sent: the page can then tell
        # when each call really ran from when its end was reported.
        capabilities = getattr(executor, "capabilities", None)
        self.record.in_order = bool(getattr(capabilities, "runs_tasks_in_order", False))
        # Its link costs are read at the end, when they say what this run's moves took.
        self._executor = executor if getattr(capabilities, "separate_processes", False) else None

    @hookimpl
    def dispatcher_run_replanned(self, graph: DispatchGraph) -> None:
        record = self.record
        if record is None:
            return
        graphs = self._graphs
        record.total += sum(1 for node in graph if not any(node in g for g in graphs))
        graphs.append(graph)
        record.replans += 1
        # The run before ended once nothing it had sent was left to report: what it sent
        # and never reported was handed back before its call began (it waited for the
        # unreadable entry), and is sent again by the new plan.
        for node in list(self._running):
            self._unsent(node)

    @hookimpl
    def dispatcher_task_started(self, node: DispatchNode, worker: str) -> None:
        assert self.record is not None
        if node in self._running:
            # Sent ahead, then handed back unreported before its call began (an input
            # was lost): it did not run.
            self._unsent(node)
        previous = self._last.get(node)
        number = previous.number + 1 if previous is not None else 1
        attempt = Attempt(self._task(node), worker, self._now(), number)
        self.record.attempts.append(attempt)
        self._running[node] = attempt

    @hookimpl
    def dispatcher_task_finished(
        self, node: DispatchNode, worker: str, duration: float, nbytes: int | None
    ) -> None:
        attempt = self._close(node, OK, None)
        attempt.worker = worker
        attempt.duration = duration
        attempt.nbytes = nbytes

    @hookimpl
    def dispatcher_task_cached(self, node: DispatchNode, worker: str) -> None:
        assert self.record is not None
        last = self._last.get(node)
        if last is not None and last.status == OK:
            return  # computed by this run, and read back once it was planned again
        now = self._now()
        attempt = Attempt(self._task(node), worker, now, end=now, status=CACHED)
        self.record.attempts.append(attempt)
        self._last[node] = attempt

    @hookimpl
    def dispatcher_task_failed(
        self, node: DispatchNode, worker: str, error: BaseException, duration: float | None
    ) -> None:
        skipped = isinstance(error, DependencyError) and node not in self._running
        attempt = self._close(node, SKIPPED if skipped else FAILED, error)
        attempt.worker = worker
        if not skipped:
            attempt.duration = duration
            attempt.details = "".join(traceback.format_exception_only(error)).rstrip()

    @hookimpl
    def dispatcher_task_retried(
        self, node: DispatchNode, error: BaseException, duration: float | None
    ) -> None:
        if node in self._running:
            self._close(node, RETRIED, error).duration = duration
            return
        # Not running: a finished result was lost with its worker and will be recomputed.
        last = self._last.get(node)
        if last is not None and last.status == OK:
            last.status = LOST
            last.error = _one_line(error)

    @hookimpl
    def dispatcher_run_finished(self, error: BaseException | None) -> None:
        self._graphs = []  # an observer kept for later runs does not keep this one's graphs
        record = self.record
        if record is None:
            return
        now = self._now()
        for attempt in self._running.values():
            attempt.status = ABANDONED
            attempt.end = now
        self._running.clear()
        record.wall = now
        record.error = None if error is None else _one_line(error)
        executor, self._executor = self._executor, None
        links = getattr(executor, "link_costs", None)
        if links is not None:
            record.links = links.summary()
        self.write(record)

    def write(self, record: RunRecord) -> None:
        """Write ``record`` as HTML to :attr:`path`: a file is replaced in one step (through
        a symbolic link, the file it names); a FIFO, a terminal or another device
        (``/dev/stdout``) is written into, as a shell's redirection would."""
        from ._report_html import render

        # (a lone surrogate, from a file name that is not UTF-8, is escaped, not fatal)
        data = render(record).encode("utf-8", "backslashreplace")
        _put(self.path, data)
        log.info("report written to %s", self.path)


def _put(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path``, as :meth:`ReportWriter.write` says."""
    fd = _own_stream(path)
    if fd is not None:  # /dev/stdout: what that stream has open, where it is
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _write_all(fd, data)
        return
    try:
        mode = os.stat(path).st_mode  # (through links: a FIFO's)
    except FileNotFoundError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        _write_into(path, data)
        return
    target = Path(os.path.realpath(path))
    # Into a temporary file beside the target, then renamed: a reader never sees half a
    # report, and a failed write leaves the previous one in place.
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_into(target: Path, data: bytes) -> None:
    """Write ``data`` into a file that is not a regular one. A FIFO nobody reads is an
    error, not a wait for ever: it is opened without blocking (which fails then)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(exc.errno, f"nothing reads the FIFO {str(target)!r}") from None
        raise
    try:
        os.set_blocking(fd, True)  # (a reader is there: the report may exceed its buffer)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    # (_cache has one for several buffers; an observer does not import the store)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_STREAM = re.compile(r"/dev/(stdout|stderr|fd/(\d+))|/proc/self/fd/(\d+)")


def _own_stream(path: Path) -> int | None:
    """The descriptor ``path`` names in this process (``/dev/stdout``, ``/dev/fd/3``,
    ``/proc/self/fd/3``), if it does: written there, not opened anew, so a file the
    shell redirected it to (``>> log``) is appended to at its offset, not replaced."""
    match = _STREAM.fullmatch(str(path))
    if match is None:
        return None
    named, number, proc = match.groups()
    digits = number or proc
    fd = int(digits) if digits else {"stdout": 1, "stderr": 2}[named]
    try:
        os.fstat(fd)
    except OSError:
        return None  # not open here: let opening the path say what is wrong
    return fd


def _one_line(error: BaseException) -> str:
    text = safe_str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
