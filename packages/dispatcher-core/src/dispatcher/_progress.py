"""``progress=True``: a live progress bar, drawn by tqdm, fed by the observer hooks.

In a terminal or a notebook the bar redraws in place. Where standard error is a pipe or a
file (under ``mpiexec``, in a batch job's log, behind ``| tee``), redrawing would fill it
with carriage returns, so the same counts go out as a status line every few seconds
instead, when they changed, and once more when the run ends.

tqdm is an optional dependency (``pip install tqdm``, or dispatcher-core's ``progress``
extra); it is imported when a bar is made, so a run without a bar never pays
for it and an install without tqdm fails only where a bar was asked for.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from ._errors import DependencyError
from ._hooks import hookimpl
from ._hosts import worker_host

if TYPE_CHECKING:
    from ._executor import Executor
    from ._graph import DispatchGraph
    from ._nodes import DispatchNode

__all__ = ["INTERVAL", "ProgressBar", "StatusLines", "in_notebook", "load_tqdm"]

FAILURE_WIDTH = 40
"""The most characters the bar gives the node that failed last."""

INTERVAL = 5.0
"""Seconds between two status lines where standard error is not a terminal."""
HEARTBEAT = 60.0
"""Seconds after which a status line goes out even if nothing changed: a long task's log
still shows the run is alive."""

log = logging.getLogger("dispatcher.progress")


def install_hint() -> str:
    """What to run to get tqdm, into this interpreter's environment (a bare ``pip`` is
    often another one's)."""
    return (
        "progress=True draws its bar with tqdm, which is not installed: "
        f"{sys.executable} -m pip install tqdm "
        "(or install dispatcher-core with its 'progress' extra)"
    )


def load_tqdm() -> tuple[Any, Any]:
    """tqdm's automatic class (a widget in Jupyter, text elsewhere) and its text class."""
    try:
        from tqdm.auto import tqdm as auto
        from tqdm.std import tqdm as text
    except ImportError:
        raise ModuleNotFoundError(install_hint(), name="tqdm") from None
    return auto, text


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget bar replaces the text one)."""
    # Only look if IPython is already loaded: importing it just to ask costs a second.
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class ProgressBar:
    """An observer that shows done / total, failures, retries, cache hits, rate and ETA
    of one run, and on how many hosts its tasks ran when that is more than one.

    ``run(..., progress=True)`` makes one per run; it can also be passed as a plugin
    (``run(..., plugins=[ProgressBar()])``) to choose where it draws. ``file`` defaults to
    standard error. With ``enabled=None`` (the default) a terminal or a notebook gets the
    bar, and any other ``file`` (a pipe, a log file) a :class:`StatusLines` line every
    ``interval`` seconds while the counts change, and one when the run ends.
    ``enabled=True`` draws the bar whatever ``file`` is; ``enabled=False`` shows nothing.

    The counters (:attr:`done`, :attr:`cached`, :attr:`failed`, :attr:`retried`,
    :attr:`total`) are kept whether or not anything is shown. A node served from the cache
    counts towards the progress, and apart, as ``cached=N``. After a failure the bar names
    the node that failed last, with its arguments (``failed=1, last=parse('b.txt')``):
    which of many it was.
    """

    def __init__(
        self,
        *,
        file: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = INTERVAL,
    ) -> None:
        # Fail here, when the run is being prepared, not in the middle of it.
        self._auto, self._text = load_tqdm()
        self._file = file
        self._enabled = enabled
        self._interval = interval
        self._bar: Any = None
        self._lines: StatusLines | None = None
        self._finished: set[DispatchNode] = set()
        self._failed: set[DispatchNode] = set()
        self.last_failure: str | None = None
        """The node whose own call failed last, described (``parse('b.txt')``)."""
        self._cached: set[DispatchNode] = set()
        self.retried = 0
        """Re-runs announced (``retry_on`` failures and results recomputed after a loss)."""
        self.total = 0
        """Nodes of the run: those of its graph, and of each graph it was planned again
        with (see ``dispatcher_run_replanned``)."""
        self._graphs: list[DispatchGraph] = []
        self.hosts: set[str] = set()
        """The hosts that the workers tasks finished on name (see
        :func:`dispatcher.transport.worker_host`)."""

    @property
    def done(self) -> int:
        """Nodes that produced their value (each counted once, even if recomputed)."""
        return len(self._finished)

    @property
    def cached(self) -> int:
        """Nodes whose value was read from the run's cache instead of computed."""
        return len(self._cached)

    @property
    def failed(self) -> int:
        """Nodes that failed, or were skipped because an ancestor failed."""
        return len(self._failed)

    def _make_bar(self, desc: str) -> Any:
        file = self._file if self._file is not None else sys.stderr
        notebook = in_notebook()
        enabled = self._enabled
        if enabled is None:
            isatty = getattr(file, "isatty", None)
            enabled = notebook or bool(isatty is not None and isatty())
            if not enabled:
                self._lines = StatusLines(self, desc, file, self._interval)
        options: dict[str, Any] = {
            "total": self.total,
            "desc": desc,
            "unit": "task",
            "disable": not enabled,
            "dynamic_ncols": True,
            "smoothing": 0.1,
            "postfix": "failed=0",
        }
        if notebook and self._file is None:
            try:
                return self._auto(**options)
            except ImportError:
                pass  # a notebook without ipywidgets: tqdm cannot draw a widget there
        return self._text(file=file, **options)

    def _show(self, counts_changed: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        if counts_changed:
            parts = [f"failed={len(self._failed)}"]
            if self.last_failure is not None:
                parts.append(f"last={self.last_failure}")
            if self.retried:
                parts.append(f"retried={self.retried}")
            if len(self.hosts) > 1:
                parts.append(f"hosts={len(self.hosts)}")
            if self._cached:
                parts.append(f"cached={len(self._cached)}")
            # refresh=False: tqdm redraws at its own pace (mininterval), so a run of a
            # million tiny tasks is not slowed down by drawing a million frames.
            bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.update(len(self._finished) + len(self._failed) + len(self._cached) - bar.n)

    # -- hooks ---------------------------------------------------------------------------

    @hookimpl
    def dispatcher_run_started(self, graph: DispatchGraph, executor: Executor) -> None:
        self.total = len(graph)
        self._graphs = [graph]
        self._finished.clear()
        self._failed.clear()
        self.last_failure = None
        self._cached.clear()
        self.retried = 0
        self.hosts.clear()
        self._bar = self._make_bar(executor.name)
        self._show()
        if self._lines is not None:
            self._lines.start()

    @hookimpl
    def dispatcher_run_replanned(self, graph: DispatchGraph) -> None:
        # The new graph adds what the unreadable entry had made unnecessary; what it
        # shares with the earlier ones is counted already.
        graphs = self._graphs
        self.total += sum(1 for node in graph if not any(node in g for g in graphs))
        graphs.append(graph)
        bar = self._bar
        if bar is not None:
            bar.total = self.total
            bar.refresh()

    # Each node counts once, as what it last came to; but a node this run computed and
    # then read back from the cache, once planned again, stays computed.

    @hookimpl
    def dispatcher_task_finished(self, node: DispatchNode, worker: str) -> None:
        self._finished.add(node)
        self._failed.discard(node)
        if self._cached:
            self._cached.discard(node)
        host = worker_host(worker)
        if host is not None and host not in self.hosts:
            self.hosts.add(host)
            self._show(counts_changed=True)
        else:
            self._show()

    @hookimpl
    def dispatcher_task_failed(self, node: DispatchNode, error: BaseException) -> None:
        # A recomputed node can fail after having finished once: it counts as failed.
        self._failed.add(node)
        if not isinstance(error, DependencyError):  # a skip: its ancestor was named
            text = str(node)  # label and arguments
            if len(text) > FAILURE_WIDTH:
                text = text[: FAILURE_WIDTH - 3] + "..."
            self.last_failure = text
        self._finished.discard(node)
        self._cached.discard(node)
        self._show(counts_changed=True)

    @hookimpl
    def dispatcher_task_cached(self, node: DispatchNode) -> None:
        if node in self._finished:
            return
        self._failed.discard(node)
        self._cached.add(node)
        self._show(counts_changed=True)

    @hookimpl
    def dispatcher_task_retried(self) -> None:
        self.retried += 1
        self._show(counts_changed=True)

    @hookimpl
    def dispatcher_run_finished(self, error: BaseException | None) -> None:
        self._graphs = []  # an observer kept for later runs does not keep this one's graphs
        bar = self._bar
        if bar is None:
            return
        settled = len(self._finished) + len(self._failed) + len(self._cached)
        if error is None and settled < bar.total:
            # Nodes given through ``inputs`` are in the graph but never run: a complete run
            # is complete, so the bar ends full rather than a few short.
            bar.total = settled
            self.total = settled
        self._show(counts_changed=True)
        self._bar = None
        bar.close()
        lines, self._lines = self._lines, None
        if lines is not None:
            lines.finish(error)


class StatusLines:
    """Progress as plain lines, for a ``file`` that is not a terminal: a thread writes the
    counts of ``bar`` every ``interval`` seconds while they change (and every
    :data:`HEARTBEAT` seconds regardless), and :meth:`finish` writes the last one.

    A line reads ``dispatcher mpi: 37/120 tasks (30%), 1 failed, 12.3 tasks/s,
    3.0 s elapsed, about 6.7 s left``: whole lines, no carriage returns, so it reads the
    same in a pipe, a log file or ``mpiexec``'s forwarded output.
    """

    def __init__(self, bar: ProgressBar, desc: str, file: TextIO, interval: float) -> None:
        self._bar = bar
        self._desc = desc
        self._file = file
        self._interval = interval
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[int, int, int] | None = None
        self._last_time = self._t0

    def start(self) -> None:
        """Start writing lines (from a daemon thread, which :meth:`finish` ends)."""
        self._t0 = self._last_time = time.perf_counter()
        self._thread = threading.Thread(
            target=self._supervised, name="dispatcher-progress", daemon=True
        )
        self._thread.start()

    def finish(self, error: BaseException | None) -> None:
        """Stop the thread and write the run's last line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        elapsed = time.perf_counter() - self._t0
        how = "done in" if error is None else "stopped after"
        self._write(f"{self._counts()}, {how} {_duration(elapsed)}")

    def _supervised(self) -> None:
        # Whatever escapes (standard error closed, say) ends the lines, never the run, and
        # is said once where the application's logging can see it.
        try:
            self._loop()
        except Exception:
            log.warning("progress lines stopped", exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            bar = self._bar
            state = (bar.done, bar.failed, bar.retried)
            now = time.perf_counter()
            if state != self._last or now - self._last_time >= HEARTBEAT:
                self._write(self._status(now - self._t0))
                self._last, self._last_time = state, now

    def _status(self, elapsed: float) -> str:
        bar = self._bar
        text = self._counts()
        settled = bar.done + bar.failed + bar.cached
        if settled and elapsed > 0:
            rate = settled / elapsed
            text += f", {rate:.3g} tasks/s"
        text += f", {_duration(elapsed)} elapsed"
        if settled and elapsed > 0 and bar.total > settled:
            # The rate so far, carried forward: rough, as any ETA is, but says "hours" or
            # "minutes" where that is the answer.
            text += f", about {_duration((bar.total - settled) / rate)} left"
        return text

    def _counts(self) -> str:
        bar = self._bar
        settled = bar.done + bar.failed + bar.cached
        share = f" ({100 * settled // bar.total}%)" if bar.total else ""
        text = f"dispatcher {self._desc}: {settled}/{bar.total} tasks{share}"
        if bar.failed:
            text += f", {bar.failed} failed"
            if bar.last_failure is not None:
                text += f" (last {bar.last_failure})"
        if bar.retried:
            text += f", {bar.retried} retried"
        if bar.cached:
            text += f", {bar.cached} from the cache"
        if len(bar.hosts) > 1:
            text += f", on {len(bar.hosts)} hosts"
        return text

    def _write(self, line: str) -> None:
        # One write per line: lines from other threads or ranks never cut into it.
        self._file.write(line + "\n")
        self._file.flush()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
