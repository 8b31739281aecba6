"""``progress=True``: a live progress bar, drawn by tqdm, fed by the observer hooks.

tqdm is an optional dependency (``pip install tqdm``, or dispatcher-core's ``progress``
extra); it is imported when a bar is made, so a run without a bar never pays
for it and an install without tqdm fails only where a bar was asked for.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from ._errors import DependencyError
from ._hooks import hookimpl

if TYPE_CHECKING:
    from ._executor import Executor
    from ._graph import DispatchGraph
    from ._nodes import DispatchNode

FAILURE_WIDTH = 40
"""The most characters the bar gives the node that failed last."""

__all__ = ["ProgressBar", "in_notebook", "load_tqdm"]

INSTALL_HINT = (
    "progress=True draws its bar with tqdm, which is not installed: pip install tqdm "
    "(or install dispatcher-core with its 'progress' extra)"
)


def load_tqdm() -> tuple[Any, Any]:
    """tqdm's automatic class (a widget in Jupyter, text elsewhere) and its text class."""
    try:
        from tqdm.auto import tqdm as auto
        from tqdm.std import tqdm as text
    except ImportError:
        raise ModuleNotFoundError(INSTALL_HINT, name="tqdm") from None
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
    """An observer that shows done / total, failures, retries, rate and ETA of one run.

    ``run(..., progress=True)`` makes one per run; it can also be passed as a plugin
    (``run(..., plugins=[ProgressBar()])``) to choose where it draws. ``file`` defaults to
    standard error; ``enabled`` defaults to "standard error is a terminal, or this is a
    notebook", so a run whose output goes to a file or a pipe stays quiet.

    The counters (:attr:`done`, :attr:`failed`, :attr:`retried`, :attr:`total`) are kept
    whether or not the bar is drawn. After a failure the bar names the node that failed
    last, with its arguments (``failed=1, last=parse('b.txt')``): which of many it was.
    """

    def __init__(self, *, file: TextIO | None = None, enabled: bool | None = None) -> None:
        # Fail here, when the run is being prepared, not in the middle of it.
        self._auto, self._text = load_tqdm()
        self._file = file
        self._enabled = enabled
        self._bar: Any = None
        self._finished: set[DispatchNode] = set()
        self._failed: set[DispatchNode] = set()
        self.last_failure: str | None = None
        """The node whose own call failed last, described (``parse('b.txt')``)."""
        self.retried = 0
        """Re-runs announced (``retry_on`` failures and results recomputed after a loss)."""
        self.total = 0
        """Nodes in the graph that runs."""

    @property
    def done(self) -> int:
        """Nodes that produced their value (each counted once, even if recomputed)."""
        return len(self._finished)

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
            # refresh=False: tqdm redraws at its own pace (mininterval), so a run of a
            # million tiny tasks is not slowed down by drawing a million frames.
            bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.update(len(self._finished) + len(self._failed) - bar.n)

    # -- hooks ---------------------------------------------------------------------------

    @hookimpl
    def dispatcher_run_started(self, graph: DispatchGraph, executor: Executor) -> None:
        self.total = len(graph)
        self._finished.clear()
        self._failed.clear()
        self.last_failure = None
        self.retried = 0
        self._bar = self._make_bar(executor.name)
        self._show()

    @hookimpl
    def dispatcher_task_finished(self, node: DispatchNode) -> None:
        self._finished.add(node)
        self._failed.discard(node)
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
        self._show(counts_changed=True)

    @hookimpl
    def dispatcher_task_retried(self) -> None:
        self.retried += 1
        self._show(counts_changed=True)

    @hookimpl
    def dispatcher_run_finished(self, error: BaseException | None) -> None:
        bar = self._bar
        if bar is None:
            return
        settled = len(self._finished) + len(self._failed)
        if error is None and settled < bar.total:
            # Nodes given through ``inputs`` are in the graph but never run: a complete run
            # is complete, so the bar ends full rather than a few short.
            bar.total = settled
        self._show(counts_changed=True)
        self._bar = None
        bar.close()
