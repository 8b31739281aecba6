"""Frozen workers and timeouts: a deadline fires even when the worker cannot say that its
task started, and tasks that never started are not charged for another's timeout."""

from __future__ import annotations

import contextlib
import os
import signal

import mp_tasks
import pytest

from dispatcher import Op, TaskTimeoutError, get_executor, op

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
