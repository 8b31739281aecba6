"""Sending a task's report in the same message as its completion.

A task's report (run time, result size, a small wanted value: :func:`~._task.run_task`)
must reach the caller ahead of the task's completion. Logged from the task's thread
(``Worker.log_event``), it leaves on the worker's stream to the scheduler at once, alone,
and the completion that follows a moment later then waits out the stream's batching
interval (a few ms): the scheduler learns that the task ended, and starts the next link
of a chain, that much later, for every task. :class:`TaskReports`, the transport's worker
plugin, holds the report instead (:func:`hold_report`) and puts it on the stream when the
task's state becomes "memory", on the worker's event loop: just before dask puts the
completion there, so that both leave in one batch, the report first.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._quiet import QuietFailures

__all__ = ["TaskReports", "hold_report"]

_DONE = frozenset({"memory", "error", "released", "forgotten"})
"""A task's states after it ran: its held report goes (in "memory") or is dropped."""


class TaskReports(QuietFailures):
    """The transport's worker plugin: quiets dask's log of failed tasks (see
    :class:`~._quiet.QuietFailures`) and sends the reports held for the tasks on
    ``topic`` with their completions."""

    def __init__(self, token: str, topic: str | None) -> None:
        super().__init__(token)
        self.topic = topic
        self._worker: Any = None
        self._held: dict[Any, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "topic": self.topic, "_worker": None, "_held": {}}

    def setup(self, worker: Any) -> None:
        super().setup(worker)
        self._worker = worker

    def teardown(self, worker: Any) -> None:
        super().teardown(worker)
        self._worker = None
        held, self._held = self._held, {}
        with contextlib.suppress(Exception):  # (the worker's stream may be closed)
            for message in held.values():  # a task still running at close: sent as it was
                worker.batched_send(message)

    def hold(self, dask_key: Any, message: dict[str, Any]) -> None:
        """Send ``message`` when the dask task ``dask_key`` completes (from its thread)."""
        self._held[dask_key] = message

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        # On the worker's event loop, for every task it runs: keep it short.
        if not self._held or finish not in _DONE:
            return
        message = self._held.pop(key, None)
        if message is not None and finish == "memory" and self._worker is not None:
            self._worker.batched_send(message)


def hold_report(worker: Any, topic: str, message: Any) -> bool:
    """Have the report ``message`` of the task this thread runs on ``worker`` sent on
    ``topic`` with the task's completion; False if nothing there can (the plugin is not
    on this worker: the caller then sends it itself)."""
    from distributed.worker import thread_state

    dask_key = getattr(thread_state, "key", None)
    if dask_key is None:
        return False
    for plugin in worker.plugins.values():
        if type(plugin) is TaskReports and plugin.topic == topic and plugin._worker is worker:
            plugin.hold(dask_key, {"op": "log-event", "topic": topic, "msg": message})
            return True
    return False
