"""An observer that raises is logged and never fails the run, whatever it raises."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dispatcher import Op, hookimpl, run
from dispatcher.testing import tasks

pytestmark = pytest.mark.timeout(60)

HOOKS = ["run_started", "task_started", "task_finished", "task_failed", "run_finished"]


class Raising:
    """Raises ``exception`` from the hook ``hook`` and implements the others quietly."""

    def __init__(self, hook: str, exception: BaseException) -> None:
        self.hook, self.exception = hook, exception

    def _call(self, hook: str) -> None:
        if hook == self.hook:
            raise self.exception

    @hookimpl
    def dispatcher_run_started(self, graph: Any, executor: Any) -> None:
        self._call("run_started")

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        self._call("task_started")

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str) -> None:
        self._call("task_finished")

    @hookimpl
    def dispatcher_task_failed(self, node: Any, worker: str, error: BaseException) -> None:
        self._call("task_failed")

    @hookimpl
    def dispatcher_run_finished(self, graph: Any, executor: Any, error: Any) -> None:
        self._call("run_finished")


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize(
    "exception",
    [RuntimeError("observer"), SystemExit(3), GeneratorExit()],
    ids=["RuntimeError", "SystemExit", "GeneratorExit"],
)
def test_an_observer_raising_anything_but_ctrl_c_is_logged(
    hook: str, exception: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """A SystemExit or GeneratorExit from an observer used to end the run with it."""
    targets = [Op(tasks.inc, 1), Op(tasks.fail, "task")]
    with caplog.at_level(logging.ERROR, logger="dispatcher"):
        results = run(targets, executor="sync", throw=False, plugins=[Raising(hook, exception)])
    assert results[0].value == 2
    assert isinstance(results[1].error, ValueError)
    assert f"an observer of dispatcher_{hook} raised" in caplog.text


def test_an_observer_raising_keyboard_interrupt_stops_the_run() -> None:
    """A KeyboardInterrupt there cannot be told from Ctrl-C."""
    with pytest.raises(KeyboardInterrupt):
        run(
            Op(tasks.inc, 1),
            executor="sync",
            plugins=[Raising("task_started", KeyboardInterrupt())],
        )


class Counting:
    def __init__(self) -> None:
        self.started = self.finished = 0

    @hookimpl
    def dispatcher_task_started(self) -> None:
        self.started += 1

    @hookimpl
    def dispatcher_task_finished(self) -> None:
        self.finished += 1


@pytest.mark.parametrize("executor", ["sync", "async"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_an_observer_that_raises_does_not_silence_the_others(
    executor: str, order: str, caplog: pytest.LogCaptureFixture
) -> None:
    """pluggy stops a hook's call at the first implementation that raises: the others,
    registered before it, saw nothing."""
    counting = Counting()
    raising = Raising("task_started", RuntimeError("observer"))
    plugins = [counting, raising] if order == "before" else [raising, counting]
    with caplog.at_level(logging.ERROR, logger="dispatcher"):
        assert run([Op(tasks.inc, i) for i in range(5)], executor=executor, plugins=plugins)
    assert (counting.started, counting.finished) == (5, 5)
    assert "an observer of dispatcher_task_started raised (Raising)" in caplog.text
