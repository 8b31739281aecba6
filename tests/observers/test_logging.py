"""Logging under the ``dispatcher`` tree: INFO per run, DEBUG per task, silent by default."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dispatcher import Op, op, run
from dispatcher._logging import RunLog, TaskLog, log_observer
from dispatcher.testing import tasks

pytestmark = pytest.mark.timeout(60)


def core_adds_the_log_observer() -> bool:
    """Whether runs log by themselves once the loggers are enabled (else tests pass it)."""
    logger = logging.getLogger("dispatcher")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        run(Op(tasks.inc, 1), executor="sync")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return bool(seen)


WIRED = core_adds_the_log_observer()


def observers(observer: object) -> list[object]:
    return [] if WIRED else [observer]


def test_no_observer_unless_the_loggers_want_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dispatcher")
    assert log_observer() is None
    caplog.set_level(logging.INFO, logger="dispatcher")
    assert type(log_observer()) is RunLog
    caplog.set_level(logging.DEBUG, logger="dispatcher")
    assert type(log_observer()) is TaskLog


def test_run_records_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher")
    run([Op(tasks.inc, 1), Op(tasks.inc, 2)], executor="sync", plugins=observers(RunLog()))
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[0] == ("dispatcher.run", logging.INFO, "run of 2 nodes started on 'sync'")
    assert messages[1][2].startswith("run of 2 nodes on 'sync' finished in ")
    assert len(messages) == 2
    caplog.clear()
    run(Op(tasks.inc, 1), executor="sync", plugins=observers(RunLog()))
    assert caplog.records[0].getMessage() == "run of 1 node started on 'sync'"


def test_task_records_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dispatcher")
    a = Op(tasks.fail, 1)
    with pytest.raises(ValueError):
        run(Op(tasks.inc, a), executor="sync", plugins=observers(TaskLog()))
    tasks_log = [r.getMessage() for r in caplog.records if r.name == "dispatcher.task"]
    # Each node is named with its arguments: which of many `fail` nodes it was.
    assert tasks_log == ["started fail(1) on main", "failed fail(1) on main: ValueError: 1"]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "dispatcher.task")
    last = [r for r in caplog.records if r.name == "dispatcher.run"][-1]
    assert "stopped after" in last.getMessage()
    assert "ValueError: 1" in last.getMessage()


def test_skips_and_retries_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dispatcher.task")
    calls = []

    def flaky_call() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("again")
        return 1

    run(
        [Op(tasks.inc, Op(tasks.fail, 1)), op(flaky_call, label="flaky")()],
        executor="sync",
        throw=False,
        retry_on=ConnectionError,
        plugins=observers(TaskLog()),
    )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipped inc(fail(1)): its ancestor fail(1) failed" in text
    assert "retrying flaky() (attempt 2) after ConnectionError on main: again" in text


@pytest.mark.skipif(not WIRED, reason="core does not add the logging observer to runs yet")
def test_runs_log_once_the_loggers_are_enabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dispatcher")
    run(Op(tasks.inc, 1), executor="sync")
    names = [r.name for r in caplog.records]
    assert names == ["dispatcher.run", "dispatcher.task", "dispatcher.task", "dispatcher.run"]


def test_nothing_is_printed_by_default() -> None:
    code = (
        "from dispatcher import Op, run\n"
        "from dispatcher._logging import TaskLog\n"
        "from dispatcher.testing import tasks\n"
        "print(run([Op(tasks.inc, 1)], executor='sync', plugins=[TaskLog()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (done.stdout, done.stderr) == ("[2]\n", "")
