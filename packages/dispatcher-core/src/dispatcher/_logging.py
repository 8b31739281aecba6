"""Logging under the ``dispatcher`` logger tree, as observers of the run.

``dispatcher.run`` gets one INFO record when a run starts and one when it ends;
``dispatcher.task`` gets DEBUG records for every task event, naming each node the way a
user recognises it (``parse('b.txt')``, as ``str(node)`` gives it), and
``dispatcher.task.traceback`` the whole traceback of a failed task, dispatcher's frames
included (the one the user is shown starts at their code). Nothing is printed unless the
application configures logging (``logging.basicConfig(level=logging.INFO)``, ``-v`` on the
command line).

Observers that exist are paid for on every task, so :func:`log_observer` decides once per
run, from the loggers' levels, which (if any) a run needs: none when the tree is quieter
than INFO, run events only at INFO, everything at DEBUG.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ._errors import DependencyError, safe_str
from ._hooks import hookimpl

if TYPE_CHECKING:
    from ._executor import Executor
    from ._graph import DispatchGraph
    from ._nodes import DispatchNode

__all__ = ["RunLog", "TaskLog", "log_observer"]

run_log = logging.getLogger("dispatcher.run")
task_log = logging.getLogger("dispatcher.task")


def log_observer() -> RunLog | None:
    """The observer a run needs for the current logging levels, or ``None``."""
    if task_log.isEnabledFor(logging.DEBUG):
        return TaskLog()
    if run_log.isEnabledFor(logging.INFO):
        return RunLog()
    return None


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


class RunLog:
    """INFO records for the start and the end of a run, with its counts."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._nodes = 0

    @hookimpl
    def dispatcher_run_started(self, graph: DispatchGraph, executor: Executor) -> None:
        self._t0 = time.perf_counter()
        self._nodes = len(graph)
        run_log.info("run of %s started on %r", _nodes(len(graph)), executor.name)

    @hookimpl
    def dispatcher_run_finished(self, executor: Executor, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - self._t0
        if error is None:
            run_log.info(
                "run of %s on %r finished in %.3f s", _nodes(self._nodes), executor.name, elapsed
            )
        else:
            run_log.info(
                "run of %s on %r stopped after %.3f s: %s: %s",
                _nodes(self._nodes),
                executor.name,
                elapsed,
                type(error).__name__,
                error,
            )


class TaskLog(RunLog):
    """:class:`RunLog` plus a DEBUG record for every task started, finished, failed, retried."""

    @hookimpl
    def dispatcher_task_started(self, node: DispatchNode, worker: str) -> None:
        task_log.debug("started %s on %s", node, worker)

    @hookimpl
    def dispatcher_task_finished(
        self, node: DispatchNode, worker: str, duration: float, nbytes: int | None
    ) -> None:
        if nbytes is None:
            task_log.debug("finished %s on %s in %.6f s", node, worker, duration)
        else:
            task_log.debug("finished %s on %s in %.6f s (%d bytes)", node, worker, duration, nbytes)

    @hookimpl
    def dispatcher_task_failed(self, node: DispatchNode, worker: str, error: BaseException) -> None:
        if isinstance(error, DependencyError):
            task_log.debug("skipped %s: its ancestor %s failed", node, error.node)
        else:
            text = safe_str(error)
            task_log.debug("failed %s on %s: %s: %s", node, worker, type(error).__name__, text)

    @hookimpl
    def dispatcher_task_retried(
        self, node: DispatchNode, worker: str, error: BaseException, attempt: int
    ) -> None:
        task_log.debug(
            "retrying %s (attempt %d) after %s on %s: %s",
            node,
            attempt,
            type(error).__name__,
            worker,
            safe_str(error),
        )
