"""The checks of taking back queued tasks (``Capabilities.takes_back_queued_tasks``): a
task queued behind a blocked one runs on a worker gone idle instead of waiting, started
once, not charged; a chain sent ahead stays on its worker; a run that fails fast while a
task is asked back ends, and the executor goes on. Each check is skipped for an executor
that does not declare the capability."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .. import Executor, op
from .._hooks import hookimpl
from . import tasks
from ._harness import ExecutorHarness

__all__ = ["ExecutorTakingBack"]

_SHORT = 12  # quick tasks beside the blocked one: more than the other workers' room
_GUARD = 30.0  # seconds the blocked task waits at most for the quick ones


class _Starts:
    """An observer: per node, the hooks fired for it (``started``, ``finished``...), and
    the worker of each."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, Any, str]] = []
        self._lock = threading.Lock()

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        with self._lock:
            self.fired.append(("started", node, worker))

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str) -> None:
        with self._lock:
            self.fired.append(("finished", node, worker))

    @hookimpl
    def dispatcher_task_retried(self, node: Any, worker: str) -> None:
        with self._lock:
            self.fired.append(("retried", node, worker))

    def of(self, node: Any) -> list[str]:
        return [hook for hook, seen, _ in self.fired if seen is node]

    def where(self, node: Any) -> str:
        """The worker ``node`` finished on."""
        return next(w for hook, seen, w in self.fired if seen is node and hook == "finished")


@contextmanager
def _gate_once_quick_ones_ran(log: str, gate: Path, count: int) -> Iterator[list[bool]]:
    """Open ``gate`` once ``count`` quick tasks logged ``short`` (or after
    :data:`_GUARD` seconds); the list yielded holds whether they all ran first."""
    ran_first: list[bool] = []

    def opener() -> None:
        deadline = time.monotonic() + _GUARD
        while tasks.calls(log, "short") < count and time.monotonic() < deadline:
            time.sleep(0.01)
        ran_first.append(tasks.calls(log, "short") >= count)
        gate.touch()

    thread = threading.Thread(target=opener, name="open-gate", daemon=True)
    thread.start()
    try:
        yield ran_first
    finally:
        gate.touch()
        thread.join(_GUARD + 5)


class ExecutorTakingBack(ExecutorHarness):
    """The taking-back checks; :class:`~dispatcher.testing.ExecutorConformance` includes
    them."""

    @pytest.mark.timeout(90)
    def test_tasks_queued_behind_a_blocked_one_run_on_idle_workers(
        self, log: str, tmp_path: Path
    ) -> None:
        self.require("takes_back_queued_tasks")
        gate = tmp_path / "gate"
        blocked = op(tasks.blocked, label="blocked")(log, "blocked", str(gate), _GUARD + 30)
        quick = [op(tasks.logged, label=f"quick{i}")(log, "short", i) for i in range(_SHORT)]
        starts = _Starts()
        with _gate_once_quick_ones_ran(log, gate, _SHORT) as ran_first:
            result = self.run([blocked, *quick], retries=0, plugins=[starts])
        assert result == ["blocked", *range(_SHORT)]
        assert ran_first == [True], "quick tasks waited behind the blocked one"
        assert tasks.calls(log, "short") == _SHORT  # each ran once
        for node in (blocked, *quick):
            assert starts.of(node) == ["started", "finished"], node

    @pytest.mark.timeout(90)
    def test_a_chain_sent_ahead_behind_a_blocked_task_stays_with_it(
        self, log: str, tmp_path: Path
    ) -> None:
        self.require("takes_back_queued_tasks")
        gate = tmp_path / "gate"
        blocked = op(tasks.blocked, label="blocked")(log, "blocked", str(gate), _GUARD + 30)
        after = op(tasks.identity, label="after")(blocked)  # sent ahead behind it
        quick = [op(tasks.logged, label=f"quick{i}")(log, "short", i) for i in range(_SHORT)]
        starts = _Starts()
        with _gate_once_quick_ones_ran(log, gate, _SHORT):
            result = self.run([after, *quick], plugins=[starts])
        assert result == ["blocked", *range(_SHORT)]
        assert starts.where(after) == starts.where(blocked)
        assert starts.of(after) == ["started", "finished"]

    @pytest.mark.timeout(120)
    def test_a_run_failing_fast_while_tasks_are_asked_back_ends(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        self.require("takes_back_queued_tasks")
        gate = tmp_path / "gate"
        blocked = op(tasks.blocked, label="blocked")(log, "blocked", str(gate), _GUARD + 30)
        quick = [op(tasks.logged, label=f"quick{i}")(log, "short", i) for i in range(_SHORT)]
        # Fails once the blocked task runs, wherever it was queued: behind it, only once
        # it is taken back.
        failing = op(tasks.fail_once_started, label="failing")(log, "blocked", _GUARD, "boom")
        try:
            with pytest.raises(ValueError, match="boom"):
                ex.run([blocked, *quick, failing])
        finally:
            gate.touch()
        assert ex.run([op(tasks.inc)(i) for i in range(8)]) == list(range(1, 9))
