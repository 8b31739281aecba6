"""Frozen workers: a deadline fires even when the worker cannot say that its task started,
tasks that never started are not charged for another's timeout, and a worker stopped with an
untimed task is killed, so that the task runs again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mp_tasks
import pytest

from dispatcher import Op, TaskTimeoutError, get_executor, hookimpl, op, run
from dispatcher_mp import _supervision

pytestmark = pytest.mark.timeout(60)


def test_a_task_sent_to_a_frozen_idle_worker_times_out() -> None:
    with get_executor("mp", workers=1, retries=0) as ex:
        frozen = ex.run(Op(mp_tasks.pid))
        os.kill(frozen, signal.SIGSTOP)
        try:
            with pytest.raises(TaskTimeoutError):
                ex.run(op(mp_tasks.sleep_then, timeout=0.5)(0, "never"))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        assert ex.run(Op(mp_tasks.pid)) != frozen  # replaced


def test_tasks_queued_behind_a_timed_out_task_are_not_charged() -> None:
    with get_executor("mp", workers=1, retries=0) as ex:
        slow = op(mp_tasks.sleep_then, label="slow", timeout=0.5)(60, None)
        quick = [Op(mp_tasks.sleep_then, 0, i) for i in range(5)]
        results = ex.run([slow, *quick], throw=False)
    assert isinstance(results[0].error, TaskTimeoutError)
    assert [r.error for r in results[1:]] == [None] * 5
    assert [r.value for r in results[1:]] == list(range(5))


def test_a_worker_stopped_with_an_untimed_task_is_killed_and_the_task_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_supervision, "FROZEN_LIMIT", 1.0)
    with get_executor("mp", workers=1, retries=1) as ex:
        frozen = ex.run(Op(mp_tasks.pid))
        os.kill(frozen, signal.SIGSTOP)
        try:
            # No timeout: only the worker's stop can end this.
            assert ex.run(Op(mp_tasks.sleep_then, 0, "done")) == "done"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        assert ex.run(Op(mp_tasks.pid)) != frozen  # replaced
    assert "killed: stopped (SIGSTOP) for 1 s with tasks out" in caplog.text


class _FreezeWhenFinished:
    """Stops the worker whose pid ``path`` holds once a node labelled ``label`` finishes."""

    def __init__(self, path: str, label: str) -> None:
        self.path, self.label = path, label
        self.frozen: int | None = None

    @hookimpl
    def dispatcher_task_finished(self, node: Any) -> None:
        if self.frozen is None and node.label == self.label:
            self.frozen = int(Path(self.path).read_text())
            os.kill(self.frozen, signal.SIGSTOP)


@pytest.mark.timeout(60)
def test_a_worker_stopped_idle_holding_an_input_a_task_waits_for_is_killed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only workers with tasks out were killed: one holding the input of a task out on
    another worker was left stopped, and the run waited for it for ever."""
    pytest.importorskip("numpy")
    monkeypatch.setattr(_supervision, "FROZEN_LIMIT", 1.0)
    path = str(tmp_path / "pid")
    small = op(mp_tasks.ones_noting_pid, label="small")(path, 0.3, 10)
    large = Op(mp_tasks.array, 32, 1)  # the reader goes where this is
    freeze = _FreezeWhenFinished(path, "small")
    try:
        total = run(
            Op(mp_tasks.array_sum, small, Op(mp_tasks.sleep_then, 1.0, large)),
            executor="mp",
            workers=2,
            plugins=[freeze],
        )
    finally:
        if freeze.frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(freeze.frozen, signal.SIGCONT)
    assert freeze.frozen is not None
    assert total == 10 + 32 * (1 << 20) // 8
    assert "killed: stopped (SIGSTOP)" in caplog.text


PAUSED_CALLER = """
import os, sys
from dispatcher import get_executor, op
import mp_tasks

if __name__ == "__main__":
    with get_executor("mp", workers=2, retries=0) as ex:
        ex.run(op(mp_tasks.pid)())  # the workers are up
        nodes = [op(mp_tasks.sleep_then, timeout=1.5)(0.3, i) for i in range(12)]
        print(os.getpid(), flush=True)
        results = ex.run(nodes, throw=False)
        print([r.value for r in results] == list(range(12)) or [r.error for r in results])
"""


@pytest.mark.timeout(60)
def test_a_caller_stopped_for_a_while_keeps_what_its_workers_finished_in_time(
    tmp_path: Path,
) -> None:
    # The reader's wait for the next deadline timed out while the caller was stopped; the
    # reports written meanwhile were not read before deadlines were judged, so tasks that
    # took 0.3 s of their 1.5 s failed as timed out.
    script = tmp_path / "paused_caller.py"
    script.write_text(PAUSED_CALLER)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(mp_tasks.__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    with out.open("w") as stdout:
        child = subprocess.Popen(
            [sys.executable, str(script)], stdout=stdout, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while not out.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # its first tasks are running
        child.send_signal(signal.SIGSTOP)
        time.sleep(3)
        child.send_signal(signal.SIGCONT)
        child.wait(timeout=40)
    finally:
        child.kill()
        child.wait()
    assert out.read_text().split("\n")[1] == "True", out.read_text()
