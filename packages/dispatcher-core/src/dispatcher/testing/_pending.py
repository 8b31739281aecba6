"""The checks of sending a task ahead of its inputs (``Capabilities.accepts_pending_inputs``,
or ``runs_tasks_in_order``, where a task may be queued behind its input on the worker
computing it): such a task is told started only once its inputs exist, never starts when
an input fails for good, and waits for an input's retry. Each check is skipped for an
executor that declares neither capability."""

from __future__ import annotations

from typing import Any

import pytest

from .. import DependencyError, Op, hookimpl, op
from . import tasks
from ._harness import ExecutorHarness

__all__ = ["ExecutorPendingInputs"]


class _Hooks:
    """An observer: ``(hook, node)`` for every task_started, task_finished and
    task_failed, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def dispatcher_task_started(self, node: Any) -> None:
        self.events.append(("started", node))

    @hookimpl
    def dispatcher_task_finished(self, node: Any) -> None:
        self.events.append(("finished", node))

    @hookimpl
    def dispatcher_task_failed(self, node: Any) -> None:
        self.events.append(("failed", node))

    def of(self, node: Op) -> list[str]:
        """The hooks fired for ``node``, in order."""
        return [hook for hook, seen in self.events if seen is node]


class ExecutorPendingInputs(ExecutorHarness):
    """The checks of tasks sent ahead of their inputs;
    :class:`~dispatcher.testing.ExecutorConformance` includes them."""

    def require_sending_ahead(self) -> None:
        """Skip the check unless the scheduler may send a task before its inputs exist."""
        capabilities = self.capabilities
        if not (capabilities.accepts_pending_inputs or capabilities.runs_tasks_in_order):
            pytest.skip(
                f"the {self.executor!r} executor declares neither accepts_pending_inputs "
                "nor runs_tasks_in_order"
            )

    def test_a_task_sent_ahead_is_told_started_once_its_inputs_exist(self, log: str) -> None:
        self.require_sending_ahead()
        slow = op(tasks.sleep_then, label="slow")(0.3, 1)
        made = op(tasks.logged, label="made")(log, "made", slow)
        after = op(tasks.inc, label="after")(made)  # sent with them, ahead of its input
        made_yet: dict[str, int] = {}

        class MadeYet:
            @hookimpl
            def dispatcher_task_started(self, node: Any) -> None:
                made_yet[node.label] = tasks.calls(log, "made")

        hooks = _Hooks()
        assert self.run(after, plugins=[MadeYet(), hooks]) == 2
        assert made_yet["after"] == 1, "task_started fired before its input was made"
        for node in (slow, made, after):
            assert hooks.of(node) == ["started", "finished"], node

    def test_what_was_sent_ahead_of_a_failed_input_never_starts(self, log: str) -> None:
        self.require_sending_ahead()
        bad = op(tasks.fail_once_started, label="bad")(log, "never", 0.3, "boom")
        first = op(tasks.logged, label="first")(log, "first", bad)
        second = op(tasks.logged, label="second")(log, "second", first)
        hooks = _Hooks()
        results = self.run([bad, second], throw=False, plugins=[hooks])
        assert isinstance(results[0].error, ValueError)
        assert isinstance(results[1].error, DependencyError)
        assert hooks.of(bad) == ["started", "failed"]
        assert hooks.of(first) == hooks.of(second) == ["failed"]  # skipped, never started
        with pytest.raises(ValueError, match="boom"):
            self.run(second)
        assert tasks.calls(log, "first") == tasks.calls(log, "second") == 0

    def test_what_was_sent_ahead_of_a_failed_input_waits_for_its_retry(self, log: str) -> None:
        self.require_sending_ahead()
        flaky = op(tasks.flaky, label="flaky")(log, "flaky", 1, 0)  # fails once
        first = op(tasks.logged, label="first")(log, "first", flaky)
        second = op(tasks.logged, label="second")(log, "second", first)
        last = op(tasks.inc, label="last")(second)
        hooks = _Hooks()
        assert self.run(last, retry_on=ValueError, retries=1, plugins=[hooks]) == 1
        assert tasks.calls(log, "first") == tasks.calls(log, "second") == 1
        assert hooks.of(flaky) == ["started", "started", "finished"]
        for node in (first, second, last):
            assert hooks.of(node) == ["started", "finished"], node
